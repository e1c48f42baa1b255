"""Benchmark: rebuild every table and figure from cached metrics for the full paper grid.

Builds the grid and plan from config.yaml, writes one metrics JSON per milestone with plausible
values (rethink.metrics.write) into a temp folder, then times collect + tables + figures
(report.build) and prints seconds, the ratio to a reference measured in the same run (just
reading and checking the JSON files: rethink.metrics.read on each) and the goal (< 15 s).

    .venv/bin/python bench/bench_report.py [--config config.yaml] [--keep DIR]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

from rethink import collect as C
from rethink import config as rconfig
from rethink import grid as rgrid
from rethink import metrics as M
from rethink.paths import Paths
from rethink.plan import Plan

ROOT = Path(__file__).resolve().parents[1]

GOAL_S = 15.0


def plausible_ap(iteration: int, run, pretrained: bool, rng: random.Random) -> float:
    """A curve with the paper's shape: slow rise from scratch, fast when pre-trained, jumps at LR drops."""
    sched = run.schedule
    tau = run.recipe["iters_per_x"] * (0.3 if pretrained else 1.6)
    top = 35.0 if pretrained else 36.5
    ap = top * (1 - math.exp(-iteration / tau))
    drops = [d for d in sched.lr_drops if d < iteration]
    ap += 4.5 * (len(drops) >= 1) + 1.0 * (len(drops) >= 2)
    return round(ap + rng.uniform(-0.2, 0.2), 2)


def pretrain_samples(init: dict) -> dict:
    """A pre-trained init's samples seen in pre-training: its `cost`, else its iterations x batch."""
    cost = init.get("cost") or {}
    its = cost.get("iterations", init.get("iterations", 0))
    imgs = cost.get("images", its * init.get("batch", 256))
    return {
        "iterations": its,
        "images": imgs,
        "instances": cost.get("instances", imgs),
        "pixels": cost.get("pixels", imgs * 224 * 224),
    }


def samples_seen(iteration: int, batch: int) -> dict:
    """Fine-tuning's samples seen at `iteration` (7 instances and 800 x 1200 pixels per image)."""
    return {
        "images": iteration * batch,
        "instances": iteration * batch * 7,
        "pixels": iteration * batch * 800 * 1200,
    }


def write_grid_metrics(cfg: dict, results: str | Path, seed: int = 0, only=None, source="config") -> int:
    """One metrics JSON per milestone of the config's plan under `results`; returns how many.
    `only(milestone) -> bool` writes a subset (a partial grid)."""
    grid = rgrid.build(cfg, source)
    plan = Plan(grid)
    paths = Paths({**cfg, "results": str(results)}, plan)
    rng = random.Random(seed)
    n = 0
    for ms in plan.milestones.values():
        if only is not None and not only(ms):
            continue
        line = plan.lines[(ms.family, ms.line)]
        run = plan.run(line.owner)
        init = cfg["inits"][run.init]
        pretrained = init["kind"] != "random"
        ap = plausible_ap(ms.iteration, run, pretrained, rng)
        box = {s: (ap if s == "AP" else ap * 1.5 if s == "AP50" else ap * 1.1) for s in M.BOX_STATS}
        seg = {s: v * 0.9 for s, v in box.items()}
        batch = run.recipe["batch"]
        pre = pretrain_samples(init) if pretrained else None
        record = {
            "family": ms.family,
            "line": ms.line,
            "iteration": ms.iteration,
            "runs": list(ms.runs),
            "owner": line.owner,
            "task": run.task,
            "backbone": run.backbone,
            "norm": run.norm,
            "init": run.init,
            "data": run.data,
            "seed": run.seed,
            "variant": run.variant,
            "lr": run.schedule.lr(ms.iteration - 1),
            "samples_seen": samples_seen(ms.iteration, batch),
            "pretrain_samples": pre,
            "wall_seconds": ms.iteration * 0.34,
            "device_seconds": ms.iteration * 0.34 * 8,
            "gpus": run.recipe["gpus"],
            "eval_seconds": 300.0,
            "diverged": False,
            "stats": ({"bbox": box} if run.task == "faster_rcnn" else {"bbox": box, "segm": seg})
            | ({"voc": {"AP50": box["AP50"]}} if run.data.startswith("voc") else {}),
            "engine": cfg["engine"],
            "train_aug": bool(run.recipe["scale_aug"]),
        }
        M.write(record, paths.metrics(ms.family, ms.line, ms.iteration))
        n += 1
        if (ms.family, ms.line, ms.iteration) in plan.tta_milestones:  # + the evaluation with test-time aug
            tta = {"bbox": {k: v + 2.0 for k, v in box.items()}, "segm": {k: v + 1.5 for k, v in seg.items()}}
            M.write(
                {**record, "stats": tta, "test_aug": True}, paths.metrics(ms.family, ms.line, ms.iteration, tta=True)
            )
            n += 1
    return n


def _script(name: str):
    """workflow_scripts/<name>.py as a module (a program, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "workflow_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--keep", help="write into this folder instead of a temp folder (and keep it)")
    a = ap.parse_args(argv)
    report_cli = _script("report")  # workflow_scripts/report.py

    cfg = rconfig.load(a.config)
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(a.keep or tmp)
        t = time.perf_counter()
        n = write_grid_metrics(cfg, results, source=a.config)
        t_write = time.perf_counter() - t
        files = C.metrics_files(results)
        t = time.perf_counter()
        for f in files:
            M.read(f)
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        planned = C.planned_runs(cfg, a.config)
        df = C.collect(results, planned, files)
        C.write_csv(df, results / "metrics.csv")
        t_collect = time.perf_counter() - t
        t = time.perf_counter()
        report_cli.build(str(results / "metrics.csv"), str(results), planned)
        t_report = time.perf_counter() - t
        total = t_collect + t_report
        print(f"grid: {len(planned)} runs, {n} metrics JSONs ({len(df)} rows) written in {t_write:.2f} s")
        print(f"reference (read + check every JSON): {t_read:.3f} s")
        print(f"collect: {t_collect:.3f} s ({t_collect / t_read:.1f}x reference)")
        print(f"tables + figures: {t_report:.3f} s ({t_report / t_read:.1f}x reference)")
        print(
            f"total rebuild: {total:.3f} s = {total / t_read:.1f}x reference; goal < {GOAL_S:.0f} s: "
            f"{'met' if total < GOAL_S else 'NOT met'} ({total / GOAL_S:.2f} of the goal)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
