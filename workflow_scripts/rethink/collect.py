"""Collect: every metrics JSON -> one tidy table (``results/metrics.csv``).

A metrics JSON belongs to one checkpoint (milestone). The runs whose curve passes through it
come from the plan of the config (:meth:`rethink.plan.Plan.runs_through`; a trunk milestone
is shared by all schedules of its family), or, without a config, from the record's optional
``runs``. Collect writes **one row per (run_id, iteration, test_aug)**; a trunk milestone shared by five
schedules gives five rows with equal stats. Tables and figures read only this table (and the paper's numbers).

Columns (one line each; NaN / empty = unknown or undefined):

    run_id            the run (e.g. R50-GN-random-coco_full-6x-s0)
    family, line      where the checkpoint lies in the plan: "trunk" or the schedule's tail
    iteration         training iterations done at this checkpoint
    task, backbone, norm, init, data, seed, variant   the run's settings (variant "" = none)
    train_aug         the run trained with scale augmentation (recipe scale_aug)
    test_aug          this row's evaluation used test-time augmentation (a second row of the
                      run's final checkpoint; curves use the rows without it)
    schedule          schedule name, from the run id (2x ... 6x)
    iterations        the run's total iterations (from the record's optional ``schedules``
                      field, else from the config passed with --config, else NaN)
    lr_drops          the run's LR drop iterations, ";"-joined ("" = unknown)
    final             this row is the run's last iteration (iteration == iterations)
    lr                learning rate of the last iteration trained
    images, instances, pixels                 samples seen by fine-tuning / from-scratch training
    pretrain_iterations, pretrain_images, pretrain_instances, pretrain_pixels
                      the init's pre-training cost (NaN for random init)
    wall_seconds, device_seconds, gpus, eval_seconds, engine
    diverged          this checkpoint's training stopped on a non-finite loss (stats empty)
    run_diverged      any checkpoint of this run diverged: the run is never shown as a result
    rehearsal         a rehearsal's simulated row (rethink.rehearsal; false in a table without the column)
    source            the metrics JSON, relative to the results folder
    <type>_<stat>     COCO stats in percent: bbox_AP, bbox_AP50, bbox_AP75, bbox_APs, bbox_APm,
                      bbox_APl, bbox_AR1, bbox_AR10, bbox_AR100, bbox_ARs, bbox_ARm, bbox_ARl;
                      segm_* (same 12); keypoints_AP, keypoints_AP50, keypoints_AP75,
                      keypoints_APm, keypoints_APl, keypoints_AR, keypoints_AR50,
                      keypoints_AR75, keypoints_ARm, keypoints_ARl; voc_AP50

Rows are sorted by (run_id, iteration, test_aug). Every stat column is always present, so the CSV
header does not depend on which evaluations ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import metrics as M
from .atomic import atomic_file
from .grid import parse_run_id

STAT_COLUMNS = [f"{t}_{s}" for t, names in M.STAT_NAMES.items() for s in names]
ID_COLUMNS = [
    "run_id",
    "family",
    "line",
    "iteration",
    "task",
    "backbone",
    "norm",
    "init",
    "data",
    "schedule",
    "seed",
    "variant",
    "train_aug",
    "test_aug",
]
RUN_COLUMNS = ["iterations", "lr_drops", "final"]
COST_COLUMNS = [
    "lr",
    "images",
    "instances",
    "pixels",
    "pretrain_iterations",
    "pretrain_images",
    "pretrain_instances",
    "pretrain_pixels",
    "wall_seconds",
    "device_seconds",
    "gpus",
    "eval_seconds",
    "engine",
    "diverged",
    "run_diverged",
    "rehearsal",
    "source",
]
COLUMNS = ID_COLUMNS + RUN_COLUMNS + COST_COLUMNS + STAT_COLUMNS
PRETRAIN_KEYS = ["iterations", "images", "instances", "pixels"]


class CollectError(ValueError):
    pass


def metrics_files(results: str | os.PathLike) -> list[Path]:
    """Every metrics JSON under <results>/metrics (any depth), sorted."""
    root = Path(results) / "metrics"
    return sorted(root.rglob("iter_*.json")) if root.is_dir() else []


def planned_runs(cfg: dict, source: str = "config") -> pd.DataFrame:
    """The config's runs: run_id, family, schedule, iterations, lr_drops (";"-joined).
    `cfg` is a config dict (validated here; defaults filled). The plan rides along in
    ``.attrs["plan"]`` (the validated config in ``.attrs["config"]``): collect asks it which runs pass
    through each checkpoint."""
    from . import config as rconfig
    from . import grid as rgrid
    from .plan import Plan

    cfg = rconfig.validate(cfg, source)
    g = rgrid.build(cfg, source)
    rows = [
        {
            "run_id": r.run_id,
            "family": r.family,
            "schedule": r.schedule_name,
            "iterations": r.iterations,
            "lr_drops": ";".join(str(d) for d in r.schedule.lr_drops),
            "task": r.task,
            "backbone": r.backbone,
            "norm": r.norm,
            "init": r.init,
            "data": r.data,
            "seed": r.seed,
            "variant": r.variant or "",
        }
        for r in g.runs.values()
    ]
    df = pd.DataFrame(
        rows,
        columns=[
            "run_id",
            "family",
            "schedule",
            "iterations",
            "lr_drops",
            "task",
            "backbone",
            "norm",
            "init",
            "data",
            "seed",
            "variant",
        ],
    )
    df.attrs["plan"] = Plan(g)
    df.attrs["config"] = cfg
    return df


def planned_files(planned: pd.DataFrame) -> list[Path]:
    """The metrics files of the plan (what the collect rule declares as its input), sorted."""
    from .paths import Paths

    return sorted(Path(f) for f in Paths(planned.attrs["config"], planned.attrs["plan"]).all_metrics())


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def runs_of(record: dict, source: str, plan=None) -> list[str]:
    """The runs through this record's checkpoint: the plan's answer, else the record's own list."""
    if plan is not None:
        runs = plan.runs_through(record["family"], record["line"], record["iteration"])
        if runs:
            return list(runs)
    if record.get("runs"):
        return list(record["runs"])
    raise CollectError(
        f"{source}: checkpoint {record['family']}/{record['line']}@{record['iteration']} is not in "
        "the configured grid and the file names no runs; collect it with the config it was made with"
    )


def rows_of(record: dict, source: str, plan=None) -> list[dict]:
    """One metrics record -> one row per run through it (the columns above, less run-level ones)."""
    samples = record["samples_seen"]
    pre = record.get("pretrain_samples") or {}
    stats = {c: float("nan") for c in STAT_COLUMNS}
    for iou_type, named in (record.get("stats") or {}).items():
        for name, v in named.items():
            col = f"{iou_type}_{name}"
            if col in stats:
                stats[col] = _num(v)
    schedules = record.get("schedules") or {}
    out = []
    for rid in runs_of(record, source, plan):
        try:
            ids = parse_run_id(rid)
        except ValueError as e:
            raise CollectError(f"{source}: runs: {e}") from None
        for key in ("backbone", "norm", "init", "data", "seed"):
            if ids[key] != record[key]:
                raise CollectError(f"{source}: run {rid} has {key} {ids[key]!r} but the record says {record[key]!r}")
        sch = schedules.get(rid) or {}
        out.append(
            {
                "run_id": rid,
                "family": record["family"],
                "line": record["line"],
                "iteration": record["iteration"],
                "task": record["task"],
                "backbone": record["backbone"],
                "norm": record["norm"],
                "init": record["init"],
                "data": record["data"],
                "schedule": ids["schedule"],
                "seed": int(record["seed"]),
                "variant": record["variant"] or "",
                "train_aug": bool(record.get("train_aug", False)),
                "test_aug": bool(record.get("test_aug", False)),
                "iterations": _num(sch.get("iterations")),
                "lr_drops": ";".join(str(int(d)) for d in sch["lr_drops"]) if "lr_drops" in sch else "",
                "lr": _num(record["lr"]),
                **{k: _num(samples.get(k)) for k in M.COUNTERS},
                **{f"pretrain_{k}": _num(pre.get(k)) for k in PRETRAIN_KEYS},
                "wall_seconds": _num(record["wall_seconds"]),
                "device_seconds": _num(record["device_seconds"]),
                "gpus": _num(record["gpus"]),
                "eval_seconds": _num(record["eval_seconds"]),
                "engine": record["engine"],
                "diverged": bool(record["diverged"]),
                "rehearsal": bool(record.get("rehearsal", False)),
                "source": source,
                **stats,
            }
        )
    return out


def collect(
    results: str | os.PathLike, planned: pd.DataFrame | None = None, files: list[Path] | None = None
) -> pd.DataFrame:
    """Read every metrics JSON under `results` (or `files`) into the tidy table.

    `planned` (from :func:`planned_runs`) fills the runs' total iterations and LR drops where
    the records do not carry them. A malformed file raises MetricsError naming it; two files
    claiming the same (run, iteration) raise CollectError naming both."""
    results = Path(results)
    files = metrics_files(results) if files is None else files
    rows: list[dict] = []
    rehearsal = bool(planned.attrs["config"].get("rehearsal")) if planned is not None else None
    for path in files:
        record = M.read(path)
        if rehearsal is not None and bool(record.get("rehearsal", False)) != rehearsal:
            raise CollectError(
                f"{path}: a {'rehearsal' if record.get('rehearsal') else 'real'} metrics file, but the "
                f"config is {'a rehearsal' if rehearsal else 'a real campaign'}: the two never mix "
                "(rethink.rehearsal)"
            )
        try:
            rel = str(Path(path).relative_to(results))
        except ValueError:
            rel = str(path)
        rows += rows_of(record, rel, planned.attrs.get("plan") if planned is not None else None)
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("final", "run_diverged")])
    if df.empty:
        df = df.astype(
            {"iteration": "int64", "seed": "int64", "diverged": "bool", "train_aug": "bool", "test_aug": "bool"}
        )
    dup = df[df.duplicated(["run_id", "iteration", "test_aug"], keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        others = dup[
            (dup.run_id == first.run_id) & (dup.iteration == first.iteration) & (dup.test_aug == first.test_aug)
        ].source.tolist()
        raise CollectError(
            f"run {first.run_id} iteration {first.iteration} appears in several metrics files: " + ", ".join(others)
        )
    if planned is not None and not planned.empty and not df.empty:
        p = planned.set_index("run_id")
        known = df.run_id.map(p["iterations"]).astype(float)
        drops = df.run_id.map(p["lr_drops"])
        df["iterations"] = df["iterations"].where(df["iterations"].notna(), known)
        df["lr_drops"] = df["lr_drops"].where(df["lr_drops"] != "", drops.fillna(""))
    df["final"] = df["iteration"].astype(float) == df["iterations"]
    df["run_diverged"] = df.groupby("run_id")["diverged"].transform("any").astype(bool) if not df.empty else False
    df = df[COLUMNS].sort_values(["run_id", "iteration", "test_aug"], kind="stable").reset_index(drop=True)
    return df


def write_csv(df: pd.DataFrame, out: str | os.PathLike) -> None:
    """Write atomically (temp + rename): the report never reads half a table."""
    with atomic_file(out) as f:
        df.to_csv(f, index=False)


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read metrics.csv back with the right types; a missing column is an error naming the file."""
    try:
        text_cols = ["variant", "lr_drops", "engine", "source", "line", "family", "schedule", "run_id"]
        df = pd.read_csv(path, keep_default_na=False, na_values=["", "NaN", "nan"], dtype={c: str for c in text_cols})
    except FileNotFoundError:
        raise CollectError(f"{path}: no such metrics table (run collect first)") from None
    except pd.errors.EmptyDataError:
        raise CollectError(f"{path}: empty file (truncated?)") from None
    if "rehearsal" not in df.columns:  # a table collected before rehearsals existed
        df["rehearsal"] = False
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CollectError(f"{path}: missing column(s) {', '.join(missing)}")
    for c in ("variant", "lr_drops", "engine", "source", "line", "family"):
        df[c] = df[c].fillna("").astype(str)
    df["schedule"] = df["schedule"].astype(str)
    for c in ("diverged", "run_diverged", "final", "train_aug", "test_aug", "rehearsal"):
        df[c] = df[c].astype(str).str.lower().isin(["true", "1"])
    return df


def load_config_arg(config: str | None) -> tuple[dict | None, str]:
    """--config FILE: a config snapshot the workflow wrote (rethink.jobs) or a config YAML ->
    (config dict or None, the name its errors are blamed on)."""
    if not config:
        return None, ""
    from . import jobs
    from .config import read_yaml

    try:
        return jobs.read_snapshot(config)
    except jobs.JobError:
        pass
    return read_yaml(config), config
