"""Overhead of the training loop (rethink.loop) over a plain PyTorch loop, same model, data and process.

    .venv/bin/python bench/bench_loop.py [--iters 20] [--repeats 2] [--period N]

Both loops drive the torchvision engine on the embedded default's model (configs/tiny.yaml: R18 GN
Mask R-CNN, batch 2, its image sizes) on a synthetic set made in a temp folder. The time of an
iteration is measured between consecutive engine.losses() calls, from the 2nd iteration's to the
last one's (model build, start-up and the final output checkpoint excluded), so the loop's
per-iteration work (LR from the schedule, loss check, counters, logging, periodic resume checkpoints)
is inside it. Runs alternate plain / loop and the median s/iter of each is compared.
--period sets recipe.checkpoint_period for the loop (default: larger than --iters, i.e. no resume
checkpoint; pass the recipe's value to include its checkpoint cost). Prints the ratio loop / plain;
the target is <= 1.03. Not a test: timings on a shared machine are noisy.

    --scale paper --gpus 1     the paper's setting on one GPU: R50-FPN GN, 800 px images (synthetic),
                               the recipe's proposal and RoI counts, batch 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch
from common import Timed, bench_config

from rethink import data, grid, loop, plan
from rethink.engines import get_engine
from rethink.job_specs import JobSpecs
from rethink.paths import Paths

ROOT = Path(__file__).resolve().parents[1]


def plain(engine: Timed, spec: dict, dataset: dict, iters: int) -> float:
    run = spec["run"]
    torch.manual_seed(run["seed"])
    device = torch.device("cuda" if run["recipe"]["gpus"] > 0 else "cpu")
    model = engine.build_model(run, device, distributed=False, dataset=dataset).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=run["recipe"]["base_lr"], momentum=0.9, weight_decay=1e-4)
    stream = engine.train_stream(run, dataset, 0, 0, 1)
    for _ in range(iters + 2):
        batch = next(stream)
        loss = sum(engine.losses(model, batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return engine.s_per_iter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--period", type=int, default=None)
    ap.add_argument("--scale", choices=["tiny", "paper"], default="tiny")
    ap.add_argument("--gpus", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cfg = bench_config(args.scale, args.gpus, tmp)
        p = JobSpecs(Paths(cfg, plan.Plan(grid.build(cfg, "tiny"))))
        seg = min(p.plan.segments.values(), key=lambda s: (s.start, s.family))
        spec = copy.deepcopy(p.train_spec(seg))
        spec["init_weights"] = None
        spec["run"]["recipe"]["checkpoint_period"] = args.period or (args.iters + 10)
        spec["schedule"]["iterations"] = max(spec["schedule"]["iterations"], args.iters + 2)
        data.prepare(p.data_spec(spec["run"]["data"]))
        dataset = data.load_manifest(spec["dataset"])
        engine = get_engine(spec["engine"])
        times = {"plain": [], "loop": []}
        for k in range(-1, args.repeats):  # repeat -1 warms up (allocator, cuDNN autotuning) and is not counted
            t = Timed(engine)
            times["plain"].append(plain(t, spec, dataset, args.iters))
            t = Timed(engine)
            s = {
                **spec,
                "end": args.iters + 2,
                "output": str(tmp / f"out{k}.pth"),
                "resume_dir": str(tmp / f"r{k}"),
                "log_period": 20,
            }
            loop.train(t, s, dataset)
            times["loop"].append(t.s_per_iter())
            print(f"repeat {k}: plain {times['plain'][-1]:.3f} s/iter, loop {times['loop'][-1]:.3f} s/iter", flush=True)
            if k < 0:
                times = {"plain": [], "loop": []}
        a, b = statistics.median(times["plain"]), statistics.median(times["loop"])
        print(
            f"plain loop: {a:.3f} s/iter; rethink.loop: {b:.3f} s/iter "
            f"(checkpoint_period {spec['run']['recipe']['checkpoint_period']}); ratio {b / a:.3f} (target <= 1.03)"
        )


if __name__ == "__main__":
    main()
