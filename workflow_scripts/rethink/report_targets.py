"""The report's files: every table and figure that `rule all` asks for.

A fixed list, whatever the config: tables and figures with no runs of ours are still built
(paper numbers only, or a figure that says it has nothing to draw), so the DAG never depends
on which metrics exist. `entries` adds each file's caption and category for `snakemake --report`.
"""
from __future__ import annotations

TABLES = ["table1", "table2", "table3", "keypoints", "less_data", "voc", "claims"]  # claims: rethink.claims
FIGURES = ["convergence", "samples_seen", "less_data"]
TABLE_FORMATS = ["md", "csv", "tex"]
FIGURE_FORMATS = ["png", "pdf"]


def tables(results: str) -> list[str]:
    return [f"{results}/tables/{t}.{ext}" for t in TABLES for ext in TABLE_FORMATS]


def figures(results: str) -> list[str]:
    return [f"{results}/figures/{f}.{ext}" for f in FIGURES for ext in FIGURE_FORMATS]


def targets(results: str) -> list[str]:
    return tables(results) + figures(results)


def entries(results: str, captions: str = "report") -> list[dict]:
    """One dict per report target: path, caption (.rst under `captions`, or None), category,
    subcategory. Figures' PNGs and tables' CSVs carry captions (snakemake --report shows them)."""
    out = []
    for t in TABLES:
        for ext in TABLE_FORMATS:
            out.append({"path": f"{results}/tables/{t}.{ext}", "category": "Tables", "subcategory": t,
                        "caption": f"{captions}/table_{t}.rst" if ext == "csv" else None})
    for f in FIGURES:
        for ext in FIGURE_FORMATS:
            out.append({"path": f"{results}/figures/{f}.{ext}", "category": "Figures", "subcategory": f,
                        "caption": f"{captions}/figure_{f}.rst" if ext == "png" else None})
    return out
