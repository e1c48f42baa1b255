"""What the campaign cost, from its ledger (rethink.ledger): per run and per experiment GPU-hours
planned, spent and wasted, measured speeds against the config's estimates, an ETA for the rest,
the cost table (<results>/tables/cost.{md,csv,tex}) and the measured-speeds overlay.

- **Spent**: every job attempt's wall time x its devices (rethink.ledger.frame's gpu_hours), charged
  to the run the plan charges the work to (`Plan.payer`: a trunk segment to the member whose branch
  point it leads to). Jobs that belong to no run (data, pre-training, collect, report) count in the
  total only.
- **Wasted**: per training attempt, the iterations another attempt of the same job trains again
  (rethink.ledger.wasted_iterations) x that attempt's measured seconds per iteration (else the
  run's, else the config's estimate) x its devices.
- **ETA**: the GPU-hours of the segments and evaluations not done yet, at the measured seconds per
  iteration (the estimate where nothing was measured), over the devices in use now (the running
  rows), or, with nothing running, over the average devices the ledger shows in use. It ignores
  that a run's segments follow each other, so it is a lower bound.
- **Overlay** (`snakemake speeds`): the config's `seconds_per_iter` and `eval_seconds` lists with
  each measured entry replaced by the ledger's median, written as a YAML file to review and pass
  with `--configfile`; both lists are left out of every result's identity (rethink.identity), so
  passing it redoes nothing.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pandas as pd

from . import evalcost, ledger
from .atomic import atomic_file
from .grid import Grid, gpu_hours
from .plan import Plan
from .resources import seconds_per_iter

EVAL_RULES = ("evaluate", "evaluate_tta")
COST_COLUMNS = ["experiment", "runs", "planned_gpu_h", "spent_gpu_h", "wasted_gpu_h", "spent_share", "wasted_share"]


def time_scale(cfg: dict) -> float:
    """Simulated seconds per wall second of the campaign's jobs' work: a rehearsal's compression
    (rethink.rehearsal), else 1. The ledger's cost figures are read through it (ledger.frame's
    scale: a job's start-up as it was, the rest x compression)."""
    rh = cfg.get("rehearsal")
    return float(rh.get("compression", 1.0)) if isinstance(rh, dict) else 1.0


def attempts(plan: Plan | None, df: pd.DataFrame) -> pd.DataFrame:
    """The ledger frame with `wasted_iters`, `wasted_gpu_hours` and `spi` (the seconds
    per iteration the waste is priced at)."""
    df = df.copy()
    df["wasted_iters"] = ledger.wasted_iterations(df)
    run_spi = measured_spi(df)
    estimate = {r: seconds_per_iter(plan, run) for r, run in plan.grid.runs.items()} if plan else {}
    fallback = df["run"].map(run_spi).fillna(df["run"].map(estimate))
    df["spi"] = df["seconds_per_iter"].fillna(fallback)
    df["wasted_gpu_hours"] = (df["wasted_iters"] * df["spi"].fillna(0) * df["devices"] / 3600.0).fillna(0.0)
    return df


def measured_spi(df: pd.DataFrame, by: str = "run") -> pd.Series:
    """Measured seconds per iteration per `by` value: the training attempts' time from first to
    last iteration over the iterations they did."""
    t = df[
        df["rule"].isin(ledger.TRAIN_RULES)
        & (df["iters_done"] > 0)
        & df["first_iter"].notna()
        & df["last_iter"].notna()
    ]
    if t.empty:
        return pd.Series(dtype=float)
    g = t.assign(secs=t["last_iter"] - t["first_iter"]).groupby(by)
    return g["secs"].sum() / g["iters_done"].sum()


def by_setting(grid: Grid, df: pd.DataFrame) -> pd.DataFrame:
    """The training attempts of the grid's runs, with `key`: (backbone, norm, gpus) of the run, as
    the config's `seconds_per_iter` entries name a setting."""
    runs = grid.runs
    train = df[df["rule"].isin(ledger.TRAIN_RULES) & df["run"].isin(list(runs))]
    return train.assign(key=[(runs[r].backbone, runs[r].norm, int(runs[r].recipe["gpus"])) for r in train["run"]])


def per_run(plan: Plan, df: pd.DataFrame) -> pd.DataFrame:
    """Per run id: gpu_hours_spent, gpu_hours_wasted, seconds_per_iter_measured."""
    a = attempts(plan, df)
    g = a[a["run"].notna()].groupby("run")
    out = pd.DataFrame({"gpu_hours_spent": g["gpu_hours"].sum(), "gpu_hours_wasted": g["wasted_gpu_hours"].sum()})
    out["seconds_per_iter_measured"] = measured_spi(a)
    return out


def _done_segments(plan: Plan, paths, df: pd.DataFrame) -> set:
    """Segments (family, line, end) with a `done` attempt in the ledger, an output on disk, or an
    evaluation at or after their end on their line."""
    done_jobs = set(df.loc[df["outcome"] == "done", "job"])
    out = set()
    evaluated = {
        (m.family, m.line): m.iteration
        for m in plan.milestones.values()
        if os.path.exists(paths.metrics(m.family, m.line, m.iteration))
    }
    finals = {(plan.run(r).family, *plan.run_lines[r][-1][::2]): r for r in plan.grid.runs}
    for key, seg in plan.segments.items():
        job = f"train_segment/{seg.family}/{seg.line}/{seg.end:07d}"
        final_run = finals.get((seg.family, seg.line, seg.end))
        if (
            job in done_jobs
            or (final_run and f"train_final/{final_run}" in done_jobs)
            or os.path.exists(paths.checkpoint(seg.family, seg.line, seg.end))
            or (final_run and os.path.exists(paths.model(final_run)))
            or evaluated.get((seg.family, seg.line), -1) >= seg.end
        ):
            out.add(key)
    return out


def eta(plan: Plan, paths, df: pd.DataFrame) -> dict:
    """GPU-hours left at the measured rate and the time they take at the devices in use (see the
    module docstring)."""
    cfg = plan.grid.config
    spi = measured_spi(df)
    done = _done_segments(plan, paths, df)
    left = 0.0
    for key, seg in plan.segments.items():
        if key not in done:
            run = plan.run(seg.owner)
            s = spi.get(seg.owner, seconds_per_iter(plan, run))
            left += gpu_hours(seg.iterations, s, int(run.recipe["gpus"]))
    for milestones, tta in ((plan.milestones, False), (plan.tta_milestones, True)):
        for ms in milestones.values():
            if not os.path.exists(paths.metrics(ms.family, ms.line, ms.iteration, tta)):
                run = plan.run(plan.lines[(ms.family, ms.line)].owner)
                left += evalcost.seconds(cfg, run, tta) * max(int(run.recipe["eval_gpus"]), 1) / 3600.0
    running = float(df.loc[df["outcome"] == "running", "devices"].sum()) if len(df) else 0.0
    span = (df["start"] + df["elapsed_s"]).max() - df["start"].min() if len(df) else 0.0
    average = float((df["elapsed_s"] * df["devices"]).sum() / span) if len(df) and span > 0 else 0.0
    slots = running or average
    return {
        "left_gpu_hours": left,
        "devices_running": running,
        "devices_average": average,
        "hours": left / slots if slots > 0 else float("nan"),
    }


def cost_table(plan: Plan | None, df: pd.DataFrame) -> pd.DataFrame:
    """Per enabled experiment, and in total: runs, GPU-hours planned (training and evaluation, as
    `snakemake grid` predicts them), spent and wasted (the ledger). Without a plan (a report built
    without its config) only the total, with nothing planned."""
    a = attempts(plan, df) if len(df) else None
    total = {
        "experiment": "all jobs",
        "spent_gpu_h": float(a["gpu_hours"].sum()) if a is not None else 0.0,
        "wasted_gpu_h": float(a["wasted_gpu_hours"].sum()) if a is not None else 0.0,
    }
    if plan is None:
        return _shares(
            pd.DataFrame(
                [{**total, "runs": df["run"].nunique() if len(df) else 0, "planned_gpu_h": float("nan")}],
                columns=COST_COLUMNS[:5],
            )
        )
    grid, cfg = plan.grid, plan.grid.config
    runs = per_run(plan, df) if len(df) else pd.DataFrame(columns=["gpu_hours_spent", "gpu_hours_wasted"])
    planned = {
        r: gpu_hours(plan.trained_iterations[r], seconds_per_iter(plan, run), run.recipe["gpus"])
        for r, run in grid.runs.items()
    }
    for milestones, tta in ((plan.milestones, False), (plan.tta_milestones, True)):
        for ms in milestones.values():
            run_id = plan.payer(ms.family, ms.line, ms.iteration)
            run = plan.run(run_id)
            planned[run_id] += evalcost.seconds(cfg, run, tta) * max(int(run.recipe["eval_gpus"]), 1) / 3600.0
    rows = []
    for exp, spec in cfg["experiments"].items():
        if not spec.get("enabled", True):
            continue
        ids = [r for r, run in grid.runs.items() if exp in run.experiments]
        rows.append(
            {
                "experiment": exp,
                "runs": len(ids),
                "planned_gpu_h": sum(planned[r] for r in ids),
                "spent_gpu_h": float(runs["gpu_hours_spent"].reindex(ids).fillna(0).sum()),
                "wasted_gpu_h": float(runs["gpu_hours_wasted"].reindex(ids).fillna(0).sum()),
            }
        )
    rows.append({**total, "runs": len(grid.runs), "planned_gpu_h": sum(planned.values())})
    return _shares(pd.DataFrame(rows, columns=COST_COLUMNS[:5]))


def _shares(out: pd.DataFrame) -> pd.DataFrame:
    out["spent_share"] = out["spent_gpu_h"] / out["planned_gpu_h"].where(out["planned_gpu_h"] > 0)
    out["wasted_share"] = out["wasted_gpu_h"] / out["spent_gpu_h"].where(out["spent_gpu_h"] > 0)
    return out


def write_for(results: str, plan: Plan | None) -> list[Path]:
    """The cost table of the ledger under `results`, into <results>/tables/cost.{md,csv,tex}
    (a rehearsal's in simulated hours)."""
    df = ledger.frame(results, scale=time_scale(plan.grid.config) if plan else 1.0)
    rehearsal = bool(len(df) and df["rehearsal"].fillna(False).astype(bool).any())
    return write_cost_table(cost_table(plan, df), Path(results) / "tables", rehearsal, len(df))


def write_cost_table(table: pd.DataFrame, folder, rehearsal: bool = False, n_attempts: int = 0) -> list[Path]:
    """tables/cost.{md,csv,tex}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    title = (
        "REHEARSAL (simulated jobs): " if rehearsal else ""
    ) + "Campaign cost: GPU-hours planned, spent and wasted per experiment"
    note = (
        "Simulated GPU-hours: each job's start-up as it was, the rest of its wall time x the compression. "
        if rehearsal
        else ""
    ) + (
        f"From the ledger ({n_attempts} job attempts, <results>/campaign/jobs.csv). An experiment counts every "
        "run it names (a run in two experiments counts in both); `all jobs` also counts data, pre-training and "
        "report jobs. Wasted: iterations trained again after a fault, at the measured seconds per iteration. "
        "A CPU training or evaluation job counts as one device."
    )
    shown = table.copy()
    for c in ("planned_gpu_h", "spent_gpu_h", "wasted_gpu_h"):
        shown[c] = shown[c].map(_hours)
    for c in ("spent_share", "wasted_share"):
        shown[c] = shown[c].map(lambda v: "\u2014" if pd.isna(v) else f"{v:.1%}")
    head = list(shown.columns)
    md = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    md += ["| " + " | ".join(str(v) for v in r) + " |" for r in shown.itertuples(index=False)]
    (folder / "cost.md").write_text("\n".join(md + ["", note]) + "\n")

    def tex(s) -> str:
        return str(s).replace("_", r"\_").replace("%", r"\%").replace("\u2014", "---")

    body = [" & ".join(tex(v) for v in r) + r" \\" for r in shown.itertuples(index=False)]
    (folder / "cost.tex").write_text(
        "\n".join(
            [
                f"% {tex(title)}",
                r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
                r"\toprule",
                " & ".join(tex(h) for h in head) + r" \\",
                r"\midrule",
                *body,
                r"\bottomrule",
                r"\end{tabular}",
                f"% {tex(note)}",
            ]
        )
        + "\n"
    )
    table.assign(rehearsal=rehearsal).to_csv(folder / "cost.csv", index=False, float_format="%.6g")
    return [folder / f"cost.{e}" for e in ("md", "csv", "tex")]


# ------------------------------------------------------------------------------ speeds overlay
def overlay(grid: Grid, df: pd.DataFrame, min_iterations: int = 20) -> dict:
    """The config's `seconds_per_iter` and `eval_seconds` with every entry the ledger measured
    replaced by the measurement (training: the runs' summed time over iterations, for entries
    with at least `min_iterations` measured; evaluation: median start-up and median seconds per
    val image pass). Entries it did not measure are kept as they are."""
    cfg, today = grid.config, datetime.date.today().isoformat()
    df = df[df["outcome"] == "done"]
    runs = grid.runs
    train = by_setting(grid, df)
    spi, iters = measured_spi(train, by="key"), train.groupby("key")["iters_done"].sum()
    entries = [dict(e) for e in cfg.get("seconds_per_iter", [])]
    for k, s in spi.items():
        if iters[k] < min_iterations:
            continue
        new = {
            "backbone": k[0],
            "norm": k[1],
            "gpus": k[2],
            "seconds": round(float(s), 4),
            "source": f"measured by the ledger {today}: {int(iters[k])} iterations, "
            f"{int((train['key'] == k).sum())} job attempts",
        }
        _replace(entries, new, ("backbone", "norm", "gpus"))
    ev_entries = [dict(e) for e in cfg.get("eval_seconds", [])]
    ev = df[df["rule"].isin(EVAL_RULES) & df["run"].isin(list(runs)) & df["first_iter"].notna()]
    if len(ev):
        images = ev.apply(
            lambda r: (
                evalcost.val_images(cfg, runs[r["run"]].data)
                * evalcost.passes(runs[r["run"]], r["rule"] == "evaluate_tta")
            ),
            axis=1,
        )
        ev = ev.assign(
            setup=ev["first_iter"] - ev["start"],
            per_image=(ev["end"] - ev["first_iter"]) / images,
            key=[(runs[r].backbone, int(g)) for r, g in zip(ev["run"], ev["gpus"].fillna(0))],
        )
        for k, g in ev.groupby("key"):
            new = {
                "backbone": k[0],
                "gpus": k[1],
                "seconds_per_image": round(float(g["per_image"].median()), 5),
                "setup_seconds": round(float(g["setup"].median()), 2),
                "source": f"measured by the ledger {today}: median of {len(g)} evaluations",
            }
            _replace(ev_entries, new, ("backbone", "gpus"))
    return {"seconds_per_iter": entries, "eval_seconds": ev_entries}


def _hours(v: float) -> str:
    if pd.isna(v):
        return "\u2014"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.4f}"


def _replace(entries: list[dict], new: dict, keys: tuple) -> None:
    for i, e in enumerate(entries):
        if all(str(e.get(k)) == str(new[k]) for k in keys):
            entries[i] = {**e, **new}
            return
    entries.append(new)


def write_overlay(path, data: dict, source: str) -> str:
    import yaml

    head = (
        f"# Measured speeds from the campaign ledger of {source}, written {datetime.date.today()}.\n"
        "# Review, then pass it after your config:  snakemake --configfile <your config> <this file> ...\n"
        "# Walltime requests and GPU-hour predictions follow it; no result's identity changes.\n"
    )
    with atomic_file(path) as f:
        f.write(head + yaml.safe_dump(data, sort_keys=False, width=200))
    return str(path)
