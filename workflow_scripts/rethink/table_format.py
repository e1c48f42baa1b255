"""A table of ours beside the paper's, and its files: the cells, the table, and its rendering as
<name>.md (readable), <name>.tex (booktabs tabular) and <name>.csv (tidy: one line per cell with
ours, paper, diff, status). rethink.tables fills them with the paper's tables, rethink.claims
escapes its LaTeX here.

A cell reads ``ours (paper, ours − paper)``, e.g. ``41.0 (41.3, −0.3)``; ``—`` marks a missing
number. ``†`` marks a run that has not finished (its latest milestone is shown); ``diverged`` a run
whose training stopped on a non-finite loss (never shown as a result). With several seeds: mean ±
sample standard deviation [n = seeds]; a Δ cell's ± is the standard error of the difference.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .metrics import is_finite

MINUS = "\u2212"
DASH = "\u2014"


@dataclass
class Cell:
    ours: float = math.nan
    paper: float = math.nan
    status: str = ""  # "", "partial", "diverged"
    signed: bool = False  # a difference (Δ row): shown with its sign
    std: float = math.nan  # the seed spread of ours (a Δ cell: the standard error of the difference)
    n: int = 1  # seeds behind ours

    @property
    def diff(self) -> float:
        return self.ours - self.paper

    def text(self, minus: str = MINUS) -> str:
        def num(v, signed=self.signed):
            s = f"{v:+.1f}" if signed else f"{v:.1f}"
            return s.replace("-", minus)

        have_o, have_p = is_finite(self.ours), is_finite(self.paper)
        if self.status == "diverged":
            return "diverged" + (f" ({num(self.paper)})" if have_p else "")
        if not have_o and not have_p:
            return DASH
        mark = "\u2020" if self.status == "partial" else ""
        if not have_o:
            return f"{DASH} ({num(self.paper)})"
        ours = num(self.ours) + (f" \u00b1 {self.std:.1f}" if is_finite(self.std) else "") + mark
        if self.n > 1:
            ours += f" [n={self.n}]"
        if not have_p:
            return ours
        shown = round(float(self.ours), 1) - round(float(self.paper), 1)  # the difference of what is shown
        return f"{ours} ({num(self.paper)}, {num(shown + 0.0, True)})"


@dataclass
class Table:
    name: str
    title: str
    label_header: list[str]
    header: list[str]
    rows: list[tuple[list[str], list[Cell]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rehearsal: bool = False  # ours are a rehearsal's simulated numbers (rethink.rehearsal): every format says so

    def cell(self, labels: list[str], column: str) -> Cell:
        """The cell at a row (its labels) and column; KeyError if absent."""
        j = self.header.index(column)
        for lab, cells in self.rows:
            if list(lab) == list(labels):
                return cells[j]
        raise KeyError(f"{self.name}: no row {labels}")


# --------------------------------------------------------------------------- notes
NOTE_CELLS = (
    f"Cells: ours (paper, ours {MINUS} paper); {DASH} = no number; \u2020 = run not finished "
    "(latest milestone shown); diverged = training stopped on a non-finite loss. With several "
    "seeds: mean \u00b1 sample standard deviation [n = seeds]; on a \u0394 row, \u00b1 is the "
    "standard error of the difference."
)


# --------------------------------------------------------------------------- rendering
def to_markdown(t: Table) -> str:
    head = t.label_header + t.header
    lines = [f"# {t.title}", "", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for labels, cells in t.rows:
        lines.append("| " + " | ".join(list(labels) + [c.text() for c in cells]) + " |")
    if not t.rows:
        lines.append("| " + " | ".join([DASH] * len(head)) + " |")
    lines += [""] + t.notes
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in [
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        (MINUS, "$-$"),
        (DASH, "---"),
        ("\u00b1", r"$\pm$"),
        ("\u2020", r"$^\dagger$"),
        (chr(0x394), r"$\Delta$"),
    ]:
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    head = t.label_header + t.header
    out = [
        f"% {t.title}",
        r"\begin{tabular}{" + "l" * len(t.label_header) + "c" * len(t.header) + "}",
        r"\toprule",
        " & ".join(_tex_escape(h) for h in head) + r" \\",
        r"\midrule",
    ]
    if t.rehearsal:
        out.insert(3, rf"\multicolumn{{{len(head)}}}{{l}}{{REHEARSAL (simulated, not measured)}} \\")
    for labels, cells in t.rows:
        out.append(" & ".join(_tex_escape(x) for x in list(labels) + [c.text() for c in cells]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"] + [f"% {_tex_escape(n)}" for n in t.notes]
    return "\n".join(out) + "\n"


def to_frame(t: Table) -> pd.DataFrame:
    """Tidy: one line per cell."""
    recs = []
    for labels, cells in t.rows:
        for col, c in zip(t.header, cells):
            recs.append(
                {
                    **dict(zip(t.label_header, labels)),
                    "column": col,
                    "ours": c.ours,
                    "std": c.std,
                    "n": c.n,
                    "paper": c.paper,
                    "diff": c.diff,
                    "status": c.status,
                    "cell": c.text(minus="-"),
                }
            )
    df = pd.DataFrame(recs, columns=t.label_header + ["column", "ours", "std", "n", "paper", "diff", "status", "cell"])
    if t.rehearsal:
        df["rehearsal"] = True
    return df


def write(t: Table, folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, text in (("md", to_markdown(t)), ("tex", to_latex(t))):
        p = folder / f"{t.name}.{ext}"
        p.write_text(text)
        paths.append(p)
    p = folder / f"{t.name}.csv"
    to_frame(t).to_csv(p, index=False)
    paths.append(p)
    return paths
