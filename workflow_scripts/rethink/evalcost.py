"""What an evaluation costs: a start-up per evaluation job (imports, model build, reading the
checkpoint, loading the ground truth) plus seconds per val image (inference and its share of
COCOeval), from the config's `eval_seconds` table (measured by bench/bench_eval.py, which prints
the entry to paste). One place for the walltime an evaluation asks for (rethink.resources), the
device-hours of the plan's evaluations and their overhead over training (`snakemake grid`).

A run with no entry for its backbone and `recipe.eval_gpus` is priced at DEFAULT (a CPU-sized
guess, generous on a GPU). The val set sizes are the datasets' own: a synthetic set's val_size,
COCO val2017's 5,000 images for every COCO set (the subsets only shrink the train set), VOC 2012
val's 5,823.
"""

from __future__ import annotations

from .grid import Run
from .plan import Plan

VAL_IMAGES = {"coco": 5000, "voc": 5823}
DEFAULT = {"seconds_per_image": 1.0, "setup_seconds": 120.0, "source": "no entry: a guess"}


def val_images(cfg: dict, data: str) -> int:
    """Images in the val set of dataset `data`."""
    d = cfg["datasets"][data]
    return int(d["val_size"]) if d["kind"] == "synthetic" else VAL_IMAGES[d["kind"]]


def entry(cfg: dict, run: Run) -> dict:
    """The `eval_seconds` entry for the run's backbone and eval GPU count (DEFAULT if none)."""
    gpus = int(run.recipe["eval_gpus"])
    for e in cfg.get("eval_seconds", []):
        if e["backbone"] == run.backbone and int(e["gpus"]) == gpus:
            return e
    return DEFAULT


def passes(run: Run, tta: bool) -> int:
    """Inference passes over each val image: 1, or with test-time augmentation each test size,
    flipped and not."""
    if not tta:
        return 1
    from .engines.shared import test_aug_sizes

    return 2 * len(test_aug_sizes(run.recipe)[0])


def seconds(cfg: dict, run: Run, tta: bool = False) -> float:
    """Predicted seconds of one evaluation of the run's model on its val set."""
    e = entry(cfg, run)
    return float(e["setup_seconds"]) + val_images(cfg, run.data) * float(e["seconds_per_image"]) * passes(run, tta)


def device_hours(cfg: dict, plan: Plan) -> float:
    """Device-hours of every evaluation the plan has (a CPU job counts as one device)."""
    total = 0.0
    for milestones, tta in ((plan.milestones, False), (plan.tta_milestones, True)):
        for ms in milestones.values():
            run = plan.run(plan.lines[(ms.family, ms.line)].owner)
            total += seconds(cfg, run, tta) * max(int(run.recipe["eval_gpus"]), 1) / 3600.0
    return total


def overhead(cfg: dict, plan: Plan, training_hours: float) -> tuple[float, float]:
    """(evaluation device-hours of the plan, their fraction of `training_hours`, the plan's
    training device-hours: rethink.summary.planned_hours)."""
    ev = device_hours(cfg, plan)
    return ev, ev / max(training_hours, 1e-9)
