"""The grid summary (`snakemake grid`): per run, what the plan trains, what it costs and how far
it is; then totals and what trunk sharing saves. Writes <results>/grid.csv."""
from __future__ import annotations

import json
import os

import pandas as pd

from . import evalcost
from .grid import Grid, gpu_hours
from .paths import DIVERGED_MARKER, Paths, recorded_identity
from .plan import Plan
from .resources import seconds_per_iter

COLUMNS = ["run_id", "family", "experiments", "schedule", "iterations", "trained_iterations", "segments",
           "gpus", "seconds_per_iter", "gpu_hours", "gpu_hours_spent", "status"]


def _spent_hours(path: str) -> float:
    try:
        with open(path) as f:
            return float(json.load(f)["device_seconds"]) / 3600.0
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _stale(paths: Paths, done) -> bool:
    for m in done:
        rec = recorded_identity(paths.metrics(m.family, m.line, m.iteration))
        if rec is not None and rec != paths.line_identity(m.family, m.line)[1]:
            return True
    return False


def summarize(grid: Grid, plan: Plan, paths: Paths) -> pd.DataFrame:
    rows = []
    for run_id, run in sorted(grid.runs.items()):
        spi = seconds_per_iter(plan, run)
        gpus = run.recipe["gpus"]
        segs = plan.segments_of_run(run_id)
        milestones = plan.milestones_of_run(run_id)
        done_metrics = [m for m in milestones if os.path.exists(paths.metrics(m.family, m.line, m.iteration))]
        final = plan.final_milestone(run_id)
        if any(os.path.exists(os.path.join(paths.resume_dir(s.family, s.line, s.end), DIVERGED_MARKER)) for s in segs):
            status = "diverged"
        elif os.path.exists(paths.metrics(final.family, final.line, final.iteration)) and (
                not run.test_aug or os.path.exists(paths.metrics(final.family, final.line, final.iteration, tta=True))):
            status = "done"
        elif done_metrics or any(
            os.path.exists(paths.checkpoint(s.family, s.line, s.end)) or os.path.isdir(paths.resume_dir(s.family, s.line, s.end))
            for s in segs
        ):
            status = "partial"
        else:
            status = "to do"
        if status != "to do" and _stale(paths, done_metrics):
            status = "stale: recipe changed"  # its results were made with other result fields
        # GPU time already spent on this run's path (cumulative in the latest metrics it has)
        spent = _spent_hours(paths.metrics(done_metrics[-1].family, done_metrics[-1].line, done_metrics[-1].iteration)) \
            if done_metrics else 0.0
        rows.append({
            "run_id": run_id, "family": run.family, "experiments": " ".join(run.experiments),
            "schedule": run.schedule_name, "iterations": run.iterations,
            "trained_iterations": plan.trained_iterations[run_id], "segments": len(segs), "gpus": gpus,
            "seconds_per_iter": spi, "gpu_hours": round(gpu_hours(plan.trained_iterations[run_id], spi, gpus), 2),
            "gpu_hours_spent": round(spent, 2), "status": status,
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def render(df: pd.DataFrame, grid: Grid, plan: Plan) -> str:
    lines = [df.drop(columns=["experiments"]).to_string(index=False), ""]
    standalone = plan.standalone_iterations
    total = plan.total_iterations
    lines.append(f"runs: {len(df)}   families: {len(grid.families)}   training jobs: {len(plan.segments)}   "
                 f"evaluations: {len(plan.milestones) + len(plan.tta_milestones)}"
                 + (f" ({len(plan.tta_milestones)} with test-time augmentation)" if plan.tta_milestones else ""))
    lines.append(f"iterations: {total:,} planned vs {standalone:,} stand-alone "
                 f"(trunk sharing saves {standalone - total:,}, ratio {total / max(standalone, 1):.3f})")
    lines.append(f"GPU-hours: {df['gpu_hours'].sum():,.1f} planned, {df['gpu_hours_spent'].sum():,.1f} spent")
    ev_hours, fraction = evalcost.overhead(grid.config, plan, planned_hours(grid, plan))
    lines.append(f"evaluations: {ev_hours:,.1f} GPU-h predicted, {fraction:.1%} of training "
                 "(eval_seconds; bench/bench_eval.py measures it)")
    counts = df["status"].value_counts()
    lines.append("status: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ["done", "partial", "to do", "diverged", "stale: recipe changed"]))
    lines.append("")
    lines.append("GPU-hours per experiment (a run in several experiments counts in each):")
    for exp, spec in grid.config["experiments"].items():
        if not spec.get("enabled", True):
            runs, hours = would_add(grid, plan, exp)
            lines.append(f"  {exp:<28} (enabled: false) would add {runs} runs, {hours:,.1f} GPU-h")
            continue
        sub = df[df["experiments"].str.split().apply(lambda e, exp=exp: exp in e)]
        lines.append(f"  {exp:<28} {len(sub):>4} runs  {sub['gpu_hours'].sum():>10,.1f} GPU-h planned  "
                     f"{sub['gpu_hours_spent'].sum():>10,.1f} spent")
    return "\n".join(lines)


def planned_hours(grid: Grid, plan: Plan) -> float:
    """GPU-hours of the whole plan (trunk sharing counted once)."""
    return sum(gpu_hours(plan.trained_iterations[r], seconds_per_iter(plan, run), run.recipe["gpus"])
               for r, run in grid.runs.items())


def would_add(grid: Grid, plan: Plan, exp: str) -> tuple[int, float]:
    """(runs, GPU-hours) that enabling the disabled experiment `exp` adds to the plan: runs it shares
    with enabled experiments, and trunks it can share, cost nothing extra."""
    import copy

    from . import grid as rgrid

    cfg = copy.deepcopy(grid.config)
    cfg["experiments"][exp]["enabled"] = True
    g = rgrid.build(cfg, "enabled")
    return len(set(g.runs) - set(grid.runs)), planned_hours(g, Plan(g)) - planned_hours(grid, plan)


def main(cfg: dict, source: str) -> str:
    from . import grid as rgrid

    g = rgrid.build(cfg, source)
    p = Plan(g)
    paths = Paths(cfg, p)
    df = summarize(g, p, paths)
    os.makedirs(os.path.dirname(paths.grid_csv) or ".", exist_ok=True)
    df.to_csv(paths.grid_csv, index=False)
    text = render(df, g, p) + f"\n\nwritten: {paths.grid_csv}"
    return text
