"""The campaign's timeline (<results>/campaign/timeline.png): one bar per job attempt over time,
coloured by how it ended, one lane per run (training attempts full height, evaluations a thinner
bar inside the lane), jobs of no run (data, pre-training, collect, report) in a lane of their own,
as Nextflow's -with-timeline. Drawn from the ledger (rethink.ledger.frame) with one `barh` call
per outcome, so 1,470 attempts draw in a second or two (bench/bench_ledger.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .atomic import atomic_file

COLOURS = {
    "done": "#4c9a2a",
    "running": "#1f77b4",
    "pre-empted": "#ff7f0e",
    "timed out": "#d62728",
    "node failure": "#8c564b",
    "killed": "#9467bd",
    "interrupted": "#bcbd22",
    "failed": "#e377c2",
    "diverged": "#000000",
}
OTHER = "(jobs of no run)"


def draw(df: pd.DataFrame, out, title: str = "Campaign timeline") -> str:
    """Draw the ledger frame `df` to `out` (PNG, atomic); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = df.assign(lane=df["run"].fillna(OTHER))
    lanes = sorted(set(df["lane"]) - {OTHER}) + ([OTHER] if (df["lane"] == OTHER).any() else [])
    y = df["lane"].map({name: i for i, name in enumerate(lanes)})
    t0 = float(df["start"].min()) if len(df) else 0.0
    span = float((df["start"] + df["elapsed_s"]).max() - t0) if len(df) else 0.0
    unit, scale = ("minutes", 60.0) if span < 2 * 3600 else ("hours", 3600.0)
    left = (df["start"] - t0) / scale
    width = (df["elapsed_s"] / scale).clip(lower=1e-6)
    is_eval = df["rule"].isin(("evaluate", "evaluate_tta"))
    fig, ax = plt.subplots(figsize=(12, max(3.0, 0.18 * len(lanes) + 1.5)))
    for outcome, colour in COLOURS.items():
        for evals, height in ((False, 0.8), (True, 0.35)):
            sel = (df["outcome"] == outcome) & (is_eval == evals)
            if sel.any():
                ax.barh(
                    y[sel],
                    width[sel],
                    left=left[sel],
                    height=height,
                    color=colour,
                    edgecolor="white",
                    linewidth=0.4,
                    label=outcome if not evals or not ((df["outcome"] == outcome) & ~is_eval).any() else None,
                )
    ax.set_yticks(range(len(lanes)), lanes, fontsize=6 if len(lanes) > 30 else 8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{unit} since the first job started (evaluations: thin bars)")
    ax.set_title(f"{title}: {len(df)} job attempts")
    if len(df):
        ax.legend(loc="upper right", fontsize=7, ncol=3)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    with atomic_file(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return str(out)


def write_campaign(results: str) -> list[str]:
    """<results>/campaign/jobs.csv and timeline.png from the ledger's rows (nothing without rows)."""
    from . import ledger

    df = ledger.frame(results)
    if df.empty:
        return []
    rehearsal = bool(df["rehearsal"].fillna(False).astype(bool).any())
    title = "REHEARSAL (simulated jobs): campaign timeline" if rehearsal else "Campaign timeline"
    return [ledger.write_jobs_csv(results, df), draw(df, Path(results) / "campaign" / "timeline.png", title)]
