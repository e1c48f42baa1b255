"""The metrics schema: one JSON per evaluated checkpoint (milestone).

Written by the evaluate rule (any engine), read by collect; nothing else reads or writes
metrics files. A file describes one checkpoint; which runs pass through it (a trunk
checkpoint is shared by every schedule of its family) is the plan's business: collect asks
:meth:`rethink.plan.Plan.runs_through` and writes one row per such run. Keeping that out of
the file keeps the evaluate job's params fixed when the grid grows, so Snakemake never
re-runs an evaluation (whose checkpoint may be long deleted) because a schedule was added.

Fields (all required unless marked optional):

    schema          "rethink-metrics/1"
    family, line    where the checkpoint lies in the plan ("trunk" or a schedule name)
    iteration       training iterations done by this checkpoint
    runs            (optional) run ids through this checkpoint, for files read without a config
    owner           the run whose recipe trained this line ("<family>-trunk" on a shared trunk)
    task, backbone, norm, init, data, seed, variant    the family's settings
    lr              learning rate of the last iteration trained
    samples_seen    {"images", "instances", "pixels"} seen by the fine-tuning/scratch training
    pretrain_samples {"iterations", "images", "instances", "pixels"} of the init's pre-training, or null
    wall_seconds    training wall time to this checkpoint, summed over segments
    device_seconds  accelerator-seconds (GPUs x wall; on CPU: process CPU seconds)
    gpus            GPUs per training job
    eval_seconds    wall time of this evaluation
    diverged        true if training stopped on a non-finite loss (then stats is {})
    stats           {"bbox": {...}, "segm": {...}, "keypoints": {...}, "voc": {...}}: COCOeval's
                    12 stats per type (10 for keypoints), in percent, under the names below
    train_aug       (optional, default false) the run trained with scale augmentation (recipe scale_aug)
    test_aug        (optional, default false) evaluated with test-time augmentation (its own file,
                    iter_<N>-tta.json, beside the plain evaluation of the same checkpoint)
    identity        (optional) hash of what determined this result: the line's identity file
                    (rethink.identity); absent in files written before identities
    engine          "torchvision" or "detectron2"
    coco_eval       (optional, default "pycocotools") what computed the stats (config coco_eval)
    rehearsal       (optional, default false) true: a rehearsal's simulated record (rethink.rehearsal),
                    its stats a documented function, never a measurement; then also
    compression     (optional) the rehearsal's simulated seconds per wall second
    created         ISO time of writing
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime

from .atomic import write_json_atomic

SCHEMA = "rethink-metrics/1"
# what may compute a record's stats (its "coco_eval"; absent: pycocotools); rethink.evaluate.BACKENDS
# says where each one's COCO and COCOeval come from, the config schema's coco_eval enum lists the same
COCO_EVAL = ("pycocotools", "faster_coco_eval")
BOX_STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
KEYPOINT_STATS = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
STAT_NAMES = {"bbox": BOX_STATS, "segm": BOX_STATS, "keypoints": KEYPOINT_STATS, "voc": ["AP50"]}
REQUIRED = [
    "schema",
    "family",
    "line",
    "iteration",
    "owner",
    "task",
    "backbone",
    "norm",
    "init",
    "data",
    "seed",
    "variant",
    "lr",
    "samples_seen",
    "pretrain_samples",
    "wall_seconds",
    "device_seconds",
    "gpus",
    "eval_seconds",
    "diverged",
    "stats",
    "engine",
    "created",
]
COUNTERS = ["images", "instances", "pixels"]


def is_finite(v) -> bool:
    """A number that is not NaN or infinite (a stat that is defined); False for None or text."""
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class MetricsError(ValueError):
    pass


def stats_from_cocoeval(iou_type: str, stats) -> dict:
    """COCOeval.stats (fractions, -1 = undefined) -> named stats in percent (NaN = undefined)."""
    names = STAT_NAMES[iou_type]
    if len(stats) != len(names):
        raise MetricsError(f"{iou_type}: expected {len(names)} COCOeval stats, got {len(stats)}")
    return {n: (float(v) * 100.0 if v >= 0 else float("nan")) for n, v in zip(names, stats)}


def check(record: dict, source: str = "metrics") -> dict:
    """Raise MetricsError naming `source` and the field if `record` breaks the schema."""
    if not isinstance(record, dict):
        raise MetricsError(f"{source}: not a JSON object")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise MetricsError(f"{source}: missing field(s) {', '.join(missing)}")
    if record["schema"] != SCHEMA:
        raise MetricsError(f"{source}: schema is {record['schema']!r}, expected {SCHEMA!r}")
    if not isinstance(record["iteration"], int) or record["iteration"] < 0:
        raise MetricsError(f"{source}: iteration {record['iteration']!r} is not a non-negative integer")
    if "runs" in record and (not record["runs"] or not all(isinstance(r, str) for r in record["runs"])):
        raise MetricsError(f"{source}: runs must be a non-empty list of run ids")
    for key in ("train_aug", "test_aug", "rehearsal"):
        if key in record and not isinstance(record[key], bool):
            raise MetricsError(f"{source}: {key} {record[key]!r} is not true or false")
    if record.get("coco_eval", COCO_EVAL[0]) not in COCO_EVAL:
        raise MetricsError(f"{source}: coco_eval {record['coco_eval']!r} is not one of {', '.join(COCO_EVAL)}")
    for key in COUNTERS:
        if key not in record["samples_seen"]:
            raise MetricsError(f"{source}: samples_seen.{key} missing")
    if not record["diverged"]:
        if not record["stats"]:
            raise MetricsError(f"{source}: stats is empty but the run is not marked diverged")
        for iou_type, stats in record["stats"].items():
            if iou_type not in STAT_NAMES:
                raise MetricsError(f"{source}: stats.{iou_type}: unknown evaluation type")
            missing = [n for n in STAT_NAMES[iou_type] if n not in stats]
            if missing:
                raise MetricsError(f"{source}: stats.{iou_type} lacks {', '.join(missing)}")
    return record


def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def write(record: dict, path: str | os.PathLike) -> None:
    """Check and write atomically (temp file + rename): a reader never sees half a file."""
    record = dict(record)
    record.setdefault("schema", SCHEMA)
    record.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
    check(record, str(path))
    write_json_atomic(path, _nan_to_none(record), indent=1, sort_keys=True)


def read(path: str | os.PathLike) -> dict:
    """Read and check one metrics file; undefined stats come back as NaN."""
    try:
        with open(path) as f:
            record = json.load(f)
    except json.JSONDecodeError as e:
        raise MetricsError(f"{path}: not valid JSON (truncated or corrupt?): {e}") from None
    except UnicodeDecodeError as e:
        raise MetricsError(f"{path}: not a text file (binary or corrupt?): {e}") from None
    except OSError as e:
        raise MetricsError(f"{path}: cannot be read: {e.strerror or e}") from None
    check(record, str(path))
    for stats in record["stats"].values():
        for k, v in stats.items():
            if v is None:
                stats[k] = float("nan")
    return record
