"""What one evaluation costs, and the periodic evaluations' overhead over training.

    .venv/bin/python bench/bench_eval.py [--counts 4 8 16] [--iters 6]
    .venv/bin/python bench/bench_eval.py --scale paper --gpus 1 --counts 50 200 500   (on a GPU)

For each val-set size N (synthetic images made in a temp folder) it times one evaluation as the
evaluate job does it (rethink.evaluate): the model built and loaded from a checkpoint file, the
engine's predictions on the N images, COCOeval (pycocotools) of bbox and segm. The score threshold
is set to 0, so every image gets `recipe.detections_per_image` detections and the mask head runs on
all of them: an upper bound for a trained model. A least-squares line over N gives seconds per
image; the start-up per job is the model build and checkpoint load plus the imports of a fresh
interpreter (measured in a subprocess). It prints the `eval_seconds` entry for the config.

The reference, measured in the same run: `--iters` training iterations of the same model (s/iter).
The overhead is the plan's evaluations (rethink.evalcost, with the entry just measured) over its
training at that s/iter, for configs/tiny.yaml (tiny) or config.yaml (paper; the 1-GPU s/iter at
2 images per GPU stands for the 8-GPU s/iter at 16 images). Goal (issue: a cheaper campaign): <= 5 %.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, bench_config, sync

from rethink import checkpoint, config, data, evalcost, evaluate, grid, loop, plan, summary
from rethink.engines import get_engine
from rethink.job_specs import JobSpecs
from rethink.paths import Paths


def worst_case(model) -> None:
    """Score threshold 0: every image gets detections_per_image detections (both engines' models)."""
    heads = getattr(model, "roi_heads", None)
    if hasattr(heads, "score_thresh"):  # torchvision
        heads.score_thresh = 0.0
    predictor = getattr(heads, "box_predictor", None)
    for p in predictor if isinstance(predictor, torch.nn.ModuleList) else [predictor]:
        if hasattr(p, "test_score_thresh"):  # detectron2 (cascade: one per stage)
            p.test_score_thresh = 0.0


def import_seconds(engine: str) -> float:
    code = (
        "import sys, time; t = time.perf_counter(); "
        f"from rethink import evaluate; from rethink.engines import get_engine; get_engine({engine!r}); "
        "import pycocotools.cocoeval; print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def one_evaluation(engine, spec: dict, ckpt: str, device) -> dict:
    run = spec["run"]
    sync()
    t0 = time.perf_counter()
    model = engine.build_model(run, device, distributed=False, dataset=spec["manifest"])
    checkpoint.load_model_weights(model, ckpt)
    worst_case(model)
    model.eval()
    sync()
    t1 = time.perf_counter()
    with torch.no_grad():
        results = engine.predict(model, run, spec["manifest"], device)
    sync()
    t2 = time.perf_counter()
    evaluate.evaluate_results(spec["manifest"], results, run["recipe"]["task"], log=io.StringIO())
    t3 = time.perf_counter()
    return {"setup": t1 - t0, "predict": t2 - t1, "cocoeval": t3 - t2, "detections": len(results)}


def reference_s_per_iter(engine, spec: dict, full: dict, ckpt: str, iters: int) -> float:
    """The reference: training iterations of the same model, (time to 2 + iters) - (time to 2), so
    model build, the first iterations (warm-up) and the checkpoint cancel out. Leaves the
    checkpoint at `ckpt`."""
    took = {}
    for end in (2, 2 + iters):
        t = time.perf_counter()
        loop.train(engine, {**spec, "end": end, "output": ckpt, "resume_dir": None, "log_period": 1000}, full)
        took[end] = time.perf_counter() - t
    return (took[2 + iters] - took[2]) / iters


def timed_evaluations(engine, run: dict, full: dict, ckpt: str, device, counts: list[int]) -> list[tuple]:
    """(n, one_evaluation's times) for each val-set size n in `counts`, after a warm-up on the first."""
    rows = []
    one_evaluation(engine, {"run": run, "manifest": subset(full, counts[0])}, ckpt, device)  # warm-up
    for n in counts:
        r = one_evaluation(engine, {"run": run, "manifest": subset(full, n)}, ckpt, device)
        rows.append((n, r))
        print(
            f"{n:>5} images: setup {r['setup']:.2f} s, predict {r['predict']:.2f} s, "
            f"COCOeval {r['cocoeval']:.2f} s, "
            f"{r['detections']} detections",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=["tiny", "paper"], default="tiny")
    ap.add_argument("--gpus", type=int, default=0)
    ap.add_argument("--engine", default=None, help="torchvision or detectron2 (default: the tiny config's)")
    ap.add_argument("--counts", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--iters", type=int, default=6, help="training iterations for the reference s/iter")
    args = ap.parse_args()
    device = torch.device("cuda" if args.gpus else "cpu")
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cfg = bench_config(args.scale, args.gpus, tmp, engine=args.engine, val_size=max(args.counts))
        p = JobSpecs(Paths(cfg, plan.Plan(grid.build(cfg, "bench"))))
        seg = min(p.plan.segments.values(), key=lambda s: (s.start, s.family))
        spec = copy.deepcopy(p.train_spec(seg))
        spec["init_weights"] = None
        spec["run"]["recipe"]["checkpoint_period"] = args.iters + 10
        spec["schedule"]["iterations"] = max(spec["schedule"]["iterations"], args.iters + 2)
        data.prepare(p.data_spec(spec["run"]["data"]))
        full = data.load_manifest(spec["dataset"])
        engine = get_engine(spec["engine"])
        ckpt = str(tmp / "model.pth")
        s_per_iter = reference_s_per_iter(engine, spec, full, ckpt, args.iters)
        rows = timed_evaluations(engine, spec["run"], full, ckpt, device, args.counts)
        ns = np.array([n for n, _ in rows], dtype=float)
        ts = np.array([r["predict"] + r["cocoeval"] for _, r in rows])
        per_image, fixed = np.polyfit(ns, ts, 1) if len(rows) > 1 else (ts[0] / ns[0], 0.0)
        per_image = max(float(per_image), 1e-4)
        setup = (
            import_seconds(spec["engine"]) + float(np.median([r["setup"] for _, r in rows])) + max(float(fixed), 0.0)
        )
        where = torch.cuda.get_device_name(0) if args.gpus else f"CPU, {torch.get_num_threads()} thread(s)"
        run = p.plan.run(seg.owner)
        entry = {
            "backbone": run.backbone,
            "gpus": int(run.recipe["eval_gpus"]),
            "seconds_per_image": round(per_image, 4),
            "setup_seconds": round(setup, 1),
            "source": f"measured {datetime.date.today()}, bench/bench_eval.py, {where}, score threshold 0",
        }
        print(f"seconds per val image {per_image:.4f}, start-up per job {setup:.1f} s ({where})")
        print(
            "eval_seconds entry: - {"
            + ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in entry.items()).replace(
                "'", '"'
            )
            + "}"
        )
        print(f"reference: training {s_per_iter:.3f} s/iter (same model, batch {run.recipe['batch']}, {where})")
        overhead(args.scale, entry, s_per_iter)


def subset(manifest: dict, n: int) -> dict:
    """The manifest with its first n val images (a ground-truth file of those n)."""
    import json

    gt_path = Path(manifest["val"]["annotations"])
    gt = json.loads(gt_path.read_text())
    keep = {im["id"] for im in gt["images"][:n]}
    cut = {
        **gt,
        "images": [im for im in gt["images"] if im["id"] in keep],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in keep],
    }
    out = gt_path.with_name(f"val-{n}.json")
    out.write_text(json.dumps(cut))
    return {**manifest, "num_val_images": n, "val": {**manifest["val"], "annotations": str(out)}}


def overhead(scale: str, entry: dict, s_per_iter: float) -> None:
    name = "configs/tiny.yaml" if scale == "tiny" else "config.yaml"
    cfg = config.validate(config.load(ROOT / name), name)
    cfg["eval_seconds"] = [entry] + [e for e in cfg.get("eval_seconds", []) if e["backbone"] != entry["backbone"]]
    for e in cfg["seconds_per_iter"]:
        if e["backbone"] == entry["backbone"] and e["norm"] == "GN":
            e["seconds"] = s_per_iter
    g = grid.build(cfg, name)
    pl = plan.Plan(g)
    train_h = summary.planned_hours(g, pl)
    ev_h, fraction = evalcost.overhead(cfg, pl, train_h)
    runs = [r for r in g.runs.values() if r.backbone == entry["backbone"]]
    print(
        f"{name}: {len(pl.milestones) + len(pl.tta_milestones)} evaluations, {ev_h:,.2f} device-h against "
        f"{train_h:,.2f} of training ({len(runs)} of {len(g.runs)} runs on {entry['backbone']} at the speeds just "
        f"measured, the others at the config's): overhead {fraction:.1%} (goal <= 5%)"
    )


if __name__ == "__main__":
    main()
