"""Training speed on one GPU at the paper's setting: the project's loop against detectron2's trainer.

    .venv/bin/python bench/bench_gpu.py [--iters 40] [--norms GN SyncBN] [--out FILE.json]
    .venv/bin/python bench/bench_gpu.py --smoke      # the same code on the CPU, before a GPU is lent

Needs a CUDA GPU and detectron2 (--smoke: detectron2 only; the tiny config's R18 on the CPU, fp32,
14 iterations, warm-up 4: it checks that both trainers run, not their speed). For each norm (GN,
SyncBN) and precision (fp32, AMP) it trains R50-FPN Mask R-CNN from random init on synthetic
800 x 1000 px images, 2 images per GPU, the paper's recipe (the schema's defaults, detectron2's
config for the run: rethink.engines.detectron2_config):

    ours   rethink.loop with the detectron2 engine (recipe.amp for AMP), what a train_segment job runs
    d2     detectron2's DefaultTrainer on the same CfgNode (SOLVER.AMP.ENABLED for AMP): the trainer
           tools/train_net.py subclasses, without its evaluator

s/iter is the median over iterations after the first 10 (warm-up: cuDNN autotuning, allocator) of
the time between consecutive iterations' starts, each after torch.cuda.synchronize(). Each setting
runs both trainers twice, ours then d2, and the second round is measured: the process's first run
of a setting pays the one-off cost of every input shape it meets first (oneDNN primitives on the
CPU, cuDNN execution plans on the GPU, which torch builds once per shape; the mask head's number of
RoIs and the images' orientation keep bringing new shapes), and measured in one round the trainer
that runs first (ours) paid them for both. gc.collect() before each trainer frees the one before
(the loop's Trainer and its hooks form a reference cycle: its model, optimizer, data loader). Prints, per
setting, both s/iter and the ratio ours / d2 (goal <= 1.02), and AMP's speed-up per engine; with
--out, the same as JSON. 8 GPUs at 16 images per iteration run at about the 1-GPU s/iter at 2 per
GPU plus the gradient all-reduce, which this does not measure.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import Timed, bench_config, sync

from rethink import data, grid, loop, plan
from rethink.engines import get_engine
from rethink.engines.detectron2_engine import register
from rethink.job_specs import JobSpecs
from rethink.paths import Paths

WARMUP = {"paper": 10, "smoke": 4}


def median_step(stamps: list[float], warmup: int) -> float:
    steps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :])]
    return statistics.median(steps)


def spec_for(tmp: Path, norm: str, amp: bool, iters: int, smoke: bool = False) -> tuple[dict, dict]:
    if smoke:
        cfg = bench_config("tiny", 0, tmp / norm, engine="detectron2", norm=norm)
    else:
        cfg = bench_config("paper", 1, tmp / norm, engine="detectron2", norm=norm, train_size=32, val_size=4)
    cfg["recipe"]["amp"] = amp
    p = JobSpecs(Paths(cfg, plan.Plan(grid.build(cfg, "bench"))))
    seg = min(p.plan.segments.values(), key=lambda s: (s.start, s.family))
    spec = copy.deepcopy(p.train_spec(seg))
    spec["init_weights"] = None
    spec["run"]["recipe"]["checkpoint_period"] = iters + 100
    spec["schedule"]["iterations"] = max(spec["schedule"]["iterations"], iters + 2)
    data.prepare(p.data_spec(spec["run"]["data"]))
    return spec, data.load_manifest(spec["dataset"])


def ours(spec: dict, dataset: dict, iters: int, tmp: Path, warmup: int) -> float:
    engine = Timed(get_engine("detectron2"))
    s = {**spec, "end": iters, "output": str(tmp / "ours.pth"), "resume_dir": None, "log_period": 1000}
    loop.train(engine, s, dataset)
    return median_step(engine.stamps, warmup)


def d2(spec: dict, dataset: dict, iters: int, amp: bool, tmp: Path, warmup: int) -> float:
    from detectron2.engine import DefaultTrainer, HookBase

    run = spec["run"]
    register(run, dataset)
    device = "cuda" if run["recipe"]["gpus"] else "cpu"
    cfg = get_engine("detectron2").config(run, spec["schedule"], None, dataset, device=device).clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = iters
    cfg.SOLVER.AMP.ENABLED = amp
    cfg.SOLVER.CHECKPOINT_PERIOD = iters + 100
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(tmp / "d2")
    cfg.freeze()
    stamps: list[float] = []

    class Stamp(HookBase):
        def before_step(self):
            sync()
            stamps.append(time.perf_counter())

    torch.manual_seed(int(run["seed"]))
    trainer = DefaultTrainer(cfg)
    trainer.register_hooks([Stamp()])
    trainer.train()
    return median_step(stamps, warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--norms", nargs="+", default=["GN", "SyncBN"])
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--smoke", action="store_true", help="the tiny config on the CPU, fp32: checks the code, not a speed"
    )
    args = ap.parse_args()
    if args.smoke:
        iters, warmup, precisions, model, where = 14, WARMUP["smoke"], (False,), "R18-FPN (tiny)", "CPU"
    elif not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA GPU here (this benchmark is for a GPU machine; --smoke runs its code on the CPU)")
    else:
        iters, warmup, precisions, model, where = args.iters, WARMUP["paper"], (False, True), "R50-FPN", None
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for norm in args.norms:
            for amp in precisions:
                spec, dataset = spec_for(tmp, norm, amp, iters, smoke=args.smoke)
                for _ in range(2):  # the first round warms both up, the second is measured (docstring)
                    gc.collect()
                    a = ours(spec, dataset, iters, tmp / norm, warmup)
                    gc.collect()
                    b = d2(spec, dataset, iters, amp, tmp / norm, warmup)
                rows.append(
                    {
                        "norm": norm,
                        "amp": amp,
                        "ours_s_per_iter": a,
                        "d2_s_per_iter": b,
                        "ratio": a / b,
                        "device": where or torch.cuda.get_device_name(0),
                    }
                )
                print(
                    f"{model} {norm:<6} {'AMP ' if amp else 'fp32'}: ours {a:.4f} s/iter, detectron2 {b:.4f} s/iter, "
                    f"ratio {a / b:.3f} (goal <= 1.02)",
                    flush=True,
                )
    for norm in args.norms:
        r = {row["amp"]: row for row in rows if row["norm"] == norm}
        if len(r) == 2:
            print(
                f"{norm}: AMP speed-up ours {r[False]['ours_s_per_iter'] / r[True]['ours_s_per_iter']:.2f}x, "
                f"detectron2 {r[False]['d2_s_per_iter'] / r[True]['d2_s_per_iter']:.2f}x"
            )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
