"""The report's files: every table and figure that `rule all` asks for, and which table a
setting belongs to (`kind_of`).

Every table, whatever the config: a table with no runs of ours still shows the paper's numbers,
so the DAG never depends on which metrics exist. The figures are those the config's grid can draw
(`figures_for`): the convergence and samples-seen figures always, the less-data figure only for a
grid with COCO-subset or VOC runs (a figure is never a text placeholder for runs the config does
not have). `entries` adds each file's caption and category for `snakemake --report`;
`final_targets` and `report_entries` are those of one config's plan (the rules ask for them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import rehearsal

if TYPE_CHECKING:
    from .paths import Paths
    from .plan import Plan

TABLES = ["table1", "table2", "table3", "keypoints", "less_data", "voc", "claims", "cost"]  # claims: rethink.claims,
# cost: rethink.costs (from the campaign's ledger)
FIGURES = ["convergence", "samples_seen", "less_data"]
TABLE_FORMATS = ["md", "csv", "tex"]
FIGURE_FORMATS = ["png", "pdf"]


def kind_of(task: str, data: str, train_aug: bool = False, test_aug: bool = False) -> str:
    """Which table a setting belongs to: keypoints, voc, less_data, enhanced (Table 3: Mask R-CNN /
    cascade on full COCO with train-time scale augmentation, and every evaluation with test-time
    augmentation) or main."""
    if task == "keypoint_rcnn":
        return "keypoints"
    if data.startswith("voc"):
        return "voc"
    if data.startswith("coco_") and data != "coco_full":
        return "less_data"
    if test_aug or (train_aug and task in ("mask_rcnn", "cascade_mask_rcnn")):
        return "enhanced"
    return "main"


def figures_for(settings) -> list[str]:
    """The figures of a grid whose runs have these (task, data) settings."""
    kinds = {kind_of(task, data) for task, data in settings}
    return [f for f in FIGURES if f != "less_data" or kinds & {"less_data", "voc"}]


def tables(results: str) -> list[str]:
    return [f"{results}/tables/{t}.{ext}" for t in TABLES for ext in TABLE_FORMATS]


def figures(results: str, names=FIGURES) -> list[str]:
    return [f"{results}/figures/{f}.{ext}" for f in names for ext in FIGURE_FORMATS]


def targets(results: str, figure_names=FIGURES) -> list[str]:
    return tables(results) + figures(results, figure_names)


def entries(results: str, captions: str = "report", figure_names=FIGURES) -> list[dict]:
    """One dict per report target: path, caption (.rst under `captions`, or None), category,
    subcategory. Figures' PNGs and tables' CSVs carry captions (snakemake --report shows them)."""
    out = []
    for t in TABLES:
        for ext in TABLE_FORMATS:
            out.append(
                {
                    "path": f"{results}/tables/{t}.{ext}",
                    "category": "Tables",
                    "subcategory": t,
                    "caption": f"{captions}/table_{t}.rst" if ext == "csv" else None,
                }
            )
    for f in figure_names:
        for ext in FIGURE_FORMATS:
            out.append(
                {
                    "path": f"{results}/figures/{f}.{ext}",
                    "category": "Figures",
                    "subcategory": f,
                    "caption": f"{captions}/figure_{f}.rst" if ext == "png" else None,
                }
            )
    return out


def figure_names(plan: Plan) -> list[str]:
    """The figures this plan's grid can draw (`figures_for` its runs)."""
    return figures_for((r.task, r.data) for r in plan.grid.runs.values())


def final_targets(paths: Paths) -> list[str]:
    """What `rule all` asks for: the metrics table, every table and the figures of the plan."""
    return [paths.metrics_table, *targets(paths.results, figure_names(paths.plan))]


def report_entries(paths: Paths) -> list[dict]:
    """`entries` of the plan's results; in a rehearsal every category says so."""
    out = entries(paths.results, figure_names=figure_names(paths.plan))
    if rehearsal.settings(paths.cfg):
        out = [{**e, "category": f"REHEARSAL {e['category']}"} for e in out]
    return out
