"""The paper's tables, rebuilt from the metrics table, each cell beside the paper's number.

Every table is written as <results>/tables/<name>.md, .tex and .csv; what a cell reads and what the
files hold: rethink.table_format.

Tables (always built, whatever the config: a table with no runs of ours shows the paper's
numbers with ours ``—``; rows come from the union of the paper's settings and whatever
(task, backbone, norm, data, variant) the metrics contain, so the tiny config's R18/synthetic
runs get rows of their own):

    table1     bbox AP by schedule (2x..6x), rows = setting x init        (paper Table 1)
    table2     bbox/mask AP, AP50, AP75 of the longest schedule per setting, random vs each
               pre-trained init, with a Δ row (random − pre-trained)      (paper Table 2)
    table3     bbox/mask AP of the enhanced baselines: train-time scale augmentation, X152,
               cascade, test-time augmentation                            (paper Table 3)
    keypoints  keypoint AP by schedule (task keypoint_rcnn)                (paper Figure 6)
    less_data  bbox AP with fewer COCO images (data coco_<subset>)         (paper Figures 7, 8)
    voc        VOC AP50 (data voc_*)                                       (paper Figure 8)

Which table a setting belongs to: task keypoint_rcnn -> keypoints; data voc_* -> voc;
data coco_* other than coco_full -> less_data; Mask R-CNN / cascade trained with scale
augmentation, and every evaluation with test-time augmentation -> table3; everything else ->
table1 and table2.
Runs with several seeds: mean ± sample standard deviation over the seeds that did not diverge,
with n (rethink.seeds); a Δ row's ± is the standard error of the difference.
"""

from __future__ import annotations

import math

import pandas as pd

from . import published as pubmod
from .metrics import is_finite
from .report_targets import kind_of  # noqa: F401 (which table a setting belongs to; figures, claims use it)
from .seeds import AUG, GROUP, finals, standard_error, std_of
from .setting import RANDOM, group_order, inits_in_order, setting_label
from .table_format import DASH, MINUS, NOTE_CELLS, Cell, Table


# --------------------------------------------------------------------------- data
def _groups(fin: pd.DataFrame, pub: pd.DataFrame, kind: str, tasks: set[str] | None, pub_sources: list[str]):
    """(task, backbone, norm, data, variant) groups of `kind`: ours, then the paper's."""
    keys = []
    if not fin.empty:
        for key in fin[GROUP + AUG].drop_duplicates().itertuples(index=False):
            if kind_of(key.task, key.data, key.train_aug, key.test_aug) == kind and (
                tasks is None or key.task in tasks
            ):
                if tuple(key)[: len(GROUP)] not in keys:
                    keys.append(tuple(key)[: len(GROUP)])
    p = pub[pub.source.isin(pub_sources)]
    for r in p.itertuples(index=False):
        if kind_of(r.task, r.data, *pubmod.aug_flags(r.schedule)) != kind or (
            tasks is not None and r.task not in tasks
        ):
            continue
        key = (r.task, r.backbone, r.norm, r.data, "")
        if key not in keys:
            keys.append(key)
    return sorted(keys, key=group_order)


def _select(fin: pd.DataFrame, group: tuple, init: str) -> pd.DataFrame:
    if fin.empty:
        return fin
    m = fin[~fin.test_aug]  # the plain evaluations (Table 3 picks the TTA ones itself)
    for col, v in zip(GROUP, group):
        m = m[m[col] == v]
    return m[m.init == init]


def _cell(row, pub, group, init, metric, schedule=None, best=False, any_schedule=False) -> Cell:
    """Our number (row; None = no run) beside the paper's. any_schedule: the paper gives
    iterations, not schedules (less data, VOC): a run of ours matches by its iterations, the
    paper's number is shown alone where we have no run."""
    task, backbone, norm, data, variant = group
    paper = math.nan
    if not variant:  # a variant is a recipe the paper's row does not describe
        if any_schedule and row is None:
            m = pub[
                (pub.task == task)
                & (pub.backbone == backbone)
                & (pub.norm == norm)
                & (pub.init == init)
                & (pub.data == data)
                & (pub.metric == metric)
            ]
            paper = float(m.value.iloc[0]) if not m.empty else math.nan
        else:
            paper = pubmod.lookup(
                pub,
                task=task,
                backbone=backbone,
                norm=norm,
                init=init,
                data=data,
                metric=metric,
                schedule=row["schedule"] if any_schedule else schedule,
                best=best,
                iterations=row["iterations"] if any_schedule else None,
            )
    if row is None:
        return Cell(paper=paper)
    return _ours(row, metric, paper)


def _ours(row, metric: str, paper: float) -> Cell:
    return Cell(
        ours=float(row[metric]),
        paper=paper,
        status=row["status"],
        std=float(row.get(std_of(metric), math.nan)),
        n=int(row.get("n", 1) or 1),
    )


def _longest(sel: pd.DataFrame):
    """The longest schedule that finished (else the longest present); None if none."""
    if sel.empty:
        return None
    done = sel[sel.status == ""]
    pool = done if not done.empty else sel
    order = pool.schedule.map(pubmod.schedule_length)
    return pool.loc[order.idxmax()] if order.notna().any() else pool.iloc[-1]


# --------------------------------------------------------------------------- tables
def by_schedule(fin, pub, name, title, kind, metric, pub_sources, tasks=None) -> Table:
    groups = _groups(fin, pub, kind, tasks, pub_sources)
    scheds = set(pub[pub.source.isin(pub_sources) & (pub.metric == metric)].schedule) - {"", "best"}
    if not fin.empty:
        scheds |= {
            s
            for s, t, d in zip(fin.schedule, fin.task, fin.data)
            if kind_of(t, d) == kind and (tasks is None or t in tasks)
        }
    scheds = pubmod.sort_schedules(scheds)
    t = Table(name, title, ["setting", "init"], scheds, notes=[NOTE_CELLS])
    for group in groups:
        inits = set(fin[(fin[GROUP] == pd.Series(group, index=GROUP)).all(axis=1)].init) if not fin.empty else set()
        inits |= set(
            pub[
                (pub.task == group[0])
                & (pub.backbone == group[1])
                & (pub.norm == group[2])
                & (pub.data == group[3])
                & pub.source.isin(pub_sources)
            ].init
        )
        for init in inits_in_order(inits):
            sel = _select(fin, group, init)
            cells = []
            for s in scheds:
                hit = sel[sel.schedule == s] if not sel.empty else sel
                cells.append(_cell(hit.iloc[0] if not hit.empty else None, pub, group, init, metric, schedule=s))
            t.rows.append(([setting_label(*group), init], cells))
    return t


def table2(fin, pub) -> Table:
    metrics = ["bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"]
    header = ["AP bbox", "AP50 bbox", "AP75 bbox", "AP mask", "AP50 mask", "AP75 mask"]
    t = Table(
        "table2",
        "Table 2: longest schedule per setting, random init vs pre-trained",
        ["setting", "init", "schedule"],
        header,
        notes=[
            NOTE_CELLS,
            f"schedule = the longest finished schedule of ours (paper: its 'best', "
            f"the longest it shows); {chr(0x394)} = random {MINUS} pre-trained.",
        ],
    )
    groups = _groups(fin, pub, "main", {"mask_rcnn", "cascade_mask_rcnn"}, ["table2"])
    for group in groups:
        inits = set(fin[(fin[GROUP] == pd.Series(group, index=GROUP)).all(axis=1)].init) if not fin.empty else set()
        inits |= set(
            pub[
                (pub.source == "table2")
                & (pub.task == group[0])
                & (pub.backbone == group[1])
                & (pub.norm == group[2])
                & (pub.data == group[3])
            ].init
        )
        by_init = {}
        for init in inits_in_order(inits):
            row = _longest(_select(fin, group, init))
            cells = [_cell(row, pub, group, init, m, best=True) for m in metrics]
            by_init[init] = cells
            t.rows.append(([setting_label(*group), init, row["schedule"] if row is not None else DASH], cells))
        if RANDOM in by_init:
            for init, cells in by_init.items():
                if init == RANDOM:
                    continue
                delta = []
                for r, p in zip(by_init[RANDOM], cells):
                    st = (
                        "diverged"
                        if "diverged" in (r.status, p.status)
                        else ("partial" if "partial" in (r.status, p.status) else "")
                    )
                    delta.append(
                        Cell(
                            ours=r.ours - p.ours,
                            paper=r.paper - p.paper,
                            status=st,
                            signed=True,
                            std=standard_error(r.std, r.n, p.std, p.n),
                            n=min(r.n, p.n),
                        )
                    )
                t.rows.append(([setting_label(*group), f"{chr(0x394)} {RANDOM} {MINUS} {init}", ""], delta))
    return t


def single_metric(fin, pub, name, title, kind, metric, pub_sources) -> Table:
    """One row per (setting, init): our longest schedule and its number (less data, VOC)."""
    t = Table(
        name,
        title,
        ["setting", "init", "schedule", "paper iterations"],
        [metric],
        notes=[
            NOTE_CELLS,
            "schedule = our longest finished schedule; the paper gives iterations, not "
            "schedules, for these experiments.",
        ],
    )
    for group in _groups(fin, pub, kind, None, pub_sources):
        inits = set(fin[(fin[GROUP] == pd.Series(group, index=GROUP)).all(axis=1)].init) if not fin.empty else set()
        p = pub[
            (pub.task == group[0])
            & (pub.backbone == group[1])
            & (pub.norm == group[2])
            & (pub.data == group[3])
            & pub.source.isin(pub_sources)
        ]
        inits |= set(p.init)
        for init in inits_in_order(inits):
            row = _longest(_select(fin, group, init))
            cell = _cell(row, pub, group, init, metric, any_schedule=True)
            its = p[(p.init == init) & (p.metric == metric)].iterations
            its = f"{int(its.iloc[0]) // 1000}k" if not its.empty and is_finite(its.iloc[0]) else DASH
            t.rows.append(([setting_label(*group), init, row["schedule"] if row is not None else DASH, its], [cell]))
    return t


TABLE3_METRICS = ["bbox_AP", "segm_AP"]


def table3(fin, pub) -> Table:
    """Paper Table 3: the enhanced baselines (train-time scale augmentation, ResNeXt-152, cascade,
    test-time augmentation). One row per paper row, in the paper's order, matched to our run of
    the same task, backbone, norm, init and data that trained with scale augmentation and was
    evaluated with (or without) test-time augmentation, longest schedule first; then our
    enhanced runs the paper has no row for."""
    t = Table(
        "table3",
        "Table 3: enhanced baselines (train/test augmentation, ResNeXt-152, cascade)",
        ["model", "init", "schedule", "train aug", "test aug"],
        ["AP bbox", "AP mask"],
        notes=[
            NOTE_CELLS,
            "train aug = shorter side sampled from [640, 800] in training; test aug = "
            "multi-scale + flip at test time (an evaluation of the same checkpoint).",
        ],
    )
    mine = (
        fin[[kind_of(r.task, r.data, r.train_aug, r.test_aug) == "enhanced" for r in fin.itertuples(index=False)]]
        if not fin.empty
        else fin
    )
    used: set = set()
    p = pub[pub.source == "table3"]
    for key, _ in p.groupby(["task", "backbone", "norm", "init", "data", "schedule"], sort=False):
        task, backbone, norm, init, data, tag = key
        train_aug, test_aug = pubmod.aug_flags(tag)
        sel = mine
        if not sel.empty:
            sel = sel[
                (sel.task == task)
                & (sel.backbone == backbone)
                & (sel.norm == norm)
                & (sel.init == init)
                & (sel.data == data)
                & (sel.train_aug == train_aug)
                & (sel.test_aug == test_aug)
                & ~sel.index.isin(used)
            ]
        _table3_row(t, pub, used, task, backbone, norm, data, "", init, train_aug, test_aug, sel)
    if not mine.empty:
        rest = mine[~mine.index.isin(used)]
        for key, sel in rest.groupby(GROUP + ["init"] + AUG, sort=False):
            task, backbone, norm, data, variant, init, train_aug, test_aug = key
            _table3_row(t, pub, used, task, backbone, norm, data, variant, init, train_aug, test_aug, sel)
    return t


def _table3_row(t: Table, pub, used: set, task, backbone, norm, data, variant, init, train_aug, test_aug, sel) -> None:
    """A row of Table 3: our longest run in `sel` (its index added to `used`; none: the paper's
    numbers alone) beside the paper's numbers of that setting and augmentation."""
    row = _longest(sel)
    cells = []
    for m in TABLE3_METRICS:
        paper = pubmod.lookup(
            pub,
            task=task,
            backbone=backbone,
            norm=norm,
            init=init,
            data=data,
            metric=m,
            schedule=None if row is None else row["schedule"],
            train_aug=train_aug,
            test_aug=test_aug,
        )
        cells.append(Cell(paper=paper) if row is None else _ours(row, m, paper))
    if row is not None:
        used.add(row.name)
        variant = row["variant"]
    yes = {True: "yes", False: "no"}
    t.rows.append(
        (
            [
                setting_label(task, backbone, norm, data, variant),
                init,
                row["schedule"] if row is not None else DASH,
                yes[bool(train_aug)],
                yes[bool(test_aug)],
            ],
            cells,
        )
    )


def build_all(df: pd.DataFrame, pub: pd.DataFrame) -> dict[str, Table]:
    from .rehearsal import LABEL, in_table

    tables = _build_all(df, pub)
    if in_table(df):
        for t in tables.values():
            t.title, t.rehearsal = f"{LABEL}: {t.title}", True
            t.notes.append("REHEARSAL: every number of ours here is simulated (rethink/rehearsal.py), not measured.")
    return tables


def _build_all(df: pd.DataFrame, pub: pd.DataFrame) -> dict[str, Table]:
    fin = finals(df)
    return {
        "table1": by_schedule(
            fin,
            pub,
            "table1",
            "Table 1: bbox AP by schedule, random init vs pre-trained",
            "main",
            "bbox_AP",
            ["table1"],
            tasks={"mask_rcnn", "cascade_mask_rcnn", "faster_rcnn"},
        ),
        "table2": table2(fin, pub),
        "table3": table3(fin, pub),
        "keypoints": by_schedule(
            fin, pub, "keypoints", "Keypoint AP by schedule (paper Figure 6)", "keypoints", "keypoints_AP", ["figure6"]
        ),
        "less_data": single_metric(
            fin,
            pub,
            "less_data",
            "Less data: bbox AP with 35k/10k/3.5k/1k COCO images (paper Figures 7, 8)",
            "less_data",
            "bbox_AP",
            ["figure7", "figure8"],
        ),
        "voc": single_metric(fin, pub, "voc", "PASCAL VOC: AP50 (paper Figure 8)", "voc", "voc_AP50", ["figure8"]),
    }
