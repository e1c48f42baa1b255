"""The paper's published numbers (results/paper/published.csv) and their join to ours.

results/paper/published.csv is a copy of the paper's published numbers (every number the
paper states, one row each: source, task, backbone, norm, init, data, schedule, iterations,
metric, value, note) with two names normalised so they match the workflow's names:

* data ``coco_3.5k`` -> ``coco_3_5k`` (data names must match ``^[a-z][a-z0-9_]*$``);
* data ``voc_07trainval_12train`` -> ``voc`` (config.yaml's name for VOC 2007 trainval + 2012 train);
* metric ``voc_mAP50`` -> ``voc_AP50`` (the metrics table's column for VOC AP at IoU 0.5).

:func:`load` applies the same aliases, so the original file loads too.

Joining: a paper number matches our cell by (task, backbone, norm, init, data, schedule,
metric). Paper schedule ``best`` (Table 2) = the longest schedule of that (backbone, norm,
init, data) present in ours; ``train_aug`` / ``train_aug+test_aug`` (Table 3) = a run trained
with scale augmentation, evaluated without / with test-time augmentation; an empty paper
schedule (Figures 7, 8: no length given) matches our run of the paper's iterations where the
paper gives them (10k images: 60k / 220k; VOC: 18k / 144k), any run of that setting otherwise
(1k, 3.5k images).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from .metrics import is_finite

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = ROOT / "results" / "paper" / "published.csv"
COLUMNS = ["source", "task", "backbone", "norm", "init", "data", "schedule", "iterations", "metric", "value", "note"]
DATA_ALIASES = {"coco_3.5k": "coco_3_5k", "voc_07trainval_12train": "voc"}
METRIC_ALIASES = {"voc_mAP50": "voc_AP50"}


class PublishedError(ValueError):
    pass


def load(path: str | os.PathLike = DEFAULT_PATH) -> pd.DataFrame:
    """The paper's numbers as a DataFrame (names normalised); errors name the file, row and field."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise PublishedError(f"{path}: no such file (the paper's published numbers)") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise PublishedError(f"{path}: missing column(s) {', '.join(missing)}")
    df = df[COLUMNS].copy()
    df["data"] = df["data"].replace(DATA_ALIASES)
    df["metric"] = df["metric"].replace(METRIC_ALIASES)
    values = pd.to_numeric(df["value"], errors="coerce")
    bad = values.isna()
    if bad.any():
        i = int(bad.idxmax())
        raise PublishedError(f"{path}: row {i + 2}: field value {df.loc[i, 'value']!r} is not a number")
    df["value"] = values.astype(float)
    df["iterations"] = pd.to_numeric(df["iterations"], errors="coerce")
    return df


def schedule_length(name: str) -> float:
    """'6x' -> 6.0 for ordering schedules; other names sort after the numbered ones by name."""
    try:
        return float(str(name).rstrip("x"))
    except ValueError:
        return math.inf


def sort_schedules(names) -> list[str]:
    return sorted(set(map(str, names)), key=lambda s: (schedule_length(s), s))


AUG_TAGS = ("train_aug", "test_aug")  # Table 3's schedule field: "train_aug" or "train_aug+test_aug"


def aug_tag(train_aug: bool, test_aug: bool) -> str:
    """(train, test augmentation) -> Table 3's schedule field ("" for neither)."""
    return "+".join(t for t, on in zip(AUG_TAGS, (train_aug, test_aug)) if on)


def aug_flags(tag: str) -> tuple[bool, bool]:
    """A paper row's schedule field -> (train augmentation, test augmentation); (False, False)
    for a schedule length."""
    parts = set(str(tag).split("+"))
    return AUG_TAGS[0] in parts, AUG_TAGS[1] in parts


def lookup(
    pub: pd.DataFrame,
    *,
    task: str,
    backbone: str,
    norm: str,
    init: str,
    data: str,
    metric: str,
    schedule: str | None = None,
    best: bool = False,
    iterations: float | None = None,
    train_aug: bool = False,
    test_aug: bool = False,
) -> float:
    """The paper's number for one cell, or NaN.

    best=True asks for Table 2's 'best' row. Otherwise, in this order:
    * a run with train/test augmentation matches Table 3's row of the same augmentation (the paper's
      schedule field 'train_aug' or 'train_aug+test_aug'); an evaluation with test-time augmentation
      matches nothing else;
    * the exact schedule;
    * a paper row with no schedule (Figures 7, 8): where the paper gives its iterations, only a
      run of that many `iterations` matches (unknown iterations: any)."""
    m = pub[
        (pub.task == task)
        & (pub.backbone == backbone)
        & (pub.norm == norm)
        & (pub.init == init)
        & (pub.data == data)
        & (pub.metric == metric)
    ]
    if m.empty:
        return float("nan")
    if best:
        hit = m[m.schedule == "best"]
        if hit.empty:  # no Table 2 row: the longest numbered schedule the paper gives
            numbered = m[m.schedule.map(schedule_length) < math.inf]
            if numbered.empty:
                return float("nan")
            hit = numbered.loc[[numbered.schedule.map(schedule_length).idxmax()]]
        return float(hit.value.iloc[0])
    if train_aug or test_aug:
        hit = m[m.schedule == aug_tag(train_aug, test_aug)]
        if not hit.empty:
            return float(hit.value.iloc[0])
        if test_aug:
            return float("nan")
    hit = m[m.schedule == schedule] if schedule is not None else m.iloc[0:0]
    if hit.empty:
        hit = m[m.schedule == ""]
        if is_finite(iterations):
            hit = hit[hit.iterations.isna() | (hit.iterations == float(iterations))]
    return float(hit.value.iloc[0]) if not hit.empty else float("nan")


def iterations_of(pub: pd.DataFrame, **key) -> float:
    """The paper's iteration count of a (task, backbone, norm, init, data, schedule, metric) row, or NaN."""
    m = pub
    for k, v in key.items():
        m = m[m[k] == v]
    return float(m.iterations.iloc[0]) if not m.empty else float("nan")


def join(finals: pd.DataFrame, pub: pd.DataFrame, metric: str, best: bool = False) -> pd.Series:
    """For each row of `finals` (one per run: task, backbone, norm, init, data, schedule), the paper's
    value of `metric` (NaN where the paper has none). With best=True every row is matched to
    Table 2's 'best' row (callers pass only the longest schedule per setting)."""
    return finals.apply(
        lambda r: lookup(
            pub,
            task=r.task,
            backbone=r.backbone,
            norm=r.norm,
            init=r.init,
            data=r.data,
            metric=metric,
            schedule=r.schedule,
            best=best,
        ),
        axis=1,
    )
