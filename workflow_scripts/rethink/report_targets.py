"""The report's files: every table and figure that `rule all` asks for."""
from __future__ import annotations

TABLES = ["table1", "table2"]
FIGURES = ["convergence", "samples_seen"]
TABLE_FORMATS = ["md", "csv", "tex"]
FIGURE_FORMATS = ["png", "pdf"]


def tables(results: str) -> list[str]:
    return [f"{results}/tables/{t}.{ext}" for t in TABLES for ext in TABLE_FORMATS]


def figures(results: str) -> list[str]:
    return [f"{results}/figures/{f}.{ext}" for f in FIGURES for ext in FIGURE_FORMATS]


def targets(results: str) -> list[str]:
    return tables(results) + figures(results)
