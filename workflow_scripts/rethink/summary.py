"""The grid summary (`snakemake grid`): per run, what the plan trains, what it costs and how far
it is; then totals, what trunk sharing saves, and from the campaign's ledger (rethink.ledger,
rethink.costs) the GPU-hours spent and wasted, measured speeds against the estimates and an ETA.
Writes <results>/grid.csv, and <results>/campaign/jobs.csv and timeline.png where jobs have run."""

from __future__ import annotations

import os

import pandas as pd

from . import costs, evalcost, ledger
from .grid import Grid, gpu_hours
from .identity_files import IdentityFiles, recorded_identity
from .paths import DIVERGED_MARKER, Paths
from .plan import Plan
from .resources import seconds_per_iter

COLUMNS = [
    "run_id",
    "family",
    "experiments",
    "schedule",
    "iterations",
    "trained_iterations",
    "segments",
    "gpus",
    "seconds_per_iter",
    "seconds_per_iter_measured",
    "gpu_hours",
    "gpu_hours_spent",
    "gpu_hours_wasted",
    "status",
]


def _stale(identities: IdentityFiles, done) -> bool:
    for m in done:
        rec = recorded_identity(identities.paths.metrics(m.family, m.line, m.iteration))
        if rec is not None and rec != identities.line_identity(m.family, m.line)[1]:
            return True
    return False


def summarize(grid: Grid, plan: Plan, identities: IdentityFiles, jobs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run; spent, wasted and measured speed from the ledger frame `jobs`."""
    paths = identities.paths
    spent = (
        costs.per_run(plan, jobs)
        if jobs is not None and len(jobs)
        else pd.DataFrame(columns=["gpu_hours_spent", "gpu_hours_wasted", "seconds_per_iter_measured"])
    )
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
            not run.test_aug or os.path.exists(paths.metrics(final.family, final.line, final.iteration, tta=True))
        ):
            status = "done"
        elif done_metrics or any(
            os.path.exists(paths.checkpoint(s.family, s.line, s.end))
            or os.path.isdir(paths.resume_dir(s.family, s.line, s.end))
            for s in segs
        ):
            status = "partial"
        else:
            status = "to do"
        if status != "to do" and _stale(identities, done_metrics):
            status = "stale: recipe changed"  # its results were made with other result fields
        led = spent.loc[run_id] if run_id in spent.index else {}
        rows.append(
            {
                "run_id": run_id,
                "family": run.family,
                "experiments": " ".join(run.experiments),
                "schedule": run.schedule_name,
                "iterations": run.iterations,
                "trained_iterations": plan.trained_iterations[run_id],
                "segments": len(segs),
                "gpus": gpus,
                "seconds_per_iter": spi,
                "seconds_per_iter_measured": _round(led.get("seconds_per_iter_measured"), 4),
                "gpu_hours": round(gpu_hours(plan.trained_iterations[run_id], spi, gpus), 2),
                "gpu_hours_spent": _round(led.get("gpu_hours_spent", 0.0), 4),
                "gpu_hours_wasted": _round(led.get("gpu_hours_wasted", 0.0), 4),
                "status": status,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _round(v, digits: int):
    return None if v is None or pd.isna(v) else round(float(v), digits)


def render(df: pd.DataFrame, grid: Grid, plan: Plan) -> str:
    lines = [df.drop(columns=["experiments"]).to_string(index=False), ""]
    standalone = plan.standalone_iterations
    total = plan.total_iterations
    lines.append(
        f"runs: {len(df)}   families: {len(grid.families)}   training jobs: {len(plan.segments)}   "
        f"evaluations: {len(plan.milestones) + len(plan.tta_milestones)}"
        + (f" ({len(plan.tta_milestones)} with test-time augmentation)" if plan.tta_milestones else "")
    )
    lines.append(
        f"iterations: {total:,} planned vs {standalone:,} stand-alone "
        f"(trunk sharing saves {standalone - total:,}, ratio {total / max(standalone, 1):.3f})"
    )
    lines.append(f"GPU-hours: {df['gpu_hours'].sum():,.1f} planned, {df['gpu_hours_spent'].sum():,.1f} spent")
    ev_hours, fraction = evalcost.overhead(grid.config, plan, planned_hours(grid, plan))
    lines.append(
        f"evaluations: {ev_hours:,.1f} GPU-h predicted, {fraction:.1%} of training "
        "(eval_seconds; bench/bench_eval.py measures it)"
    )
    counts = df["status"].value_counts()
    lines.append(
        "status: "
        + ", ".join(
            f"{counts.get(s, 0)} {s}" for s in ["done", "partial", "to do", "diverged", "stale: recipe changed"]
        )
    )
    lines.append("")
    lines.append("GPU-hours per experiment (a run in several experiments counts in each):")
    for exp, spec in grid.config["experiments"].items():
        if not spec.get("enabled", True):
            runs, hours = would_add(grid, plan, exp)
            lines.append(f"  {exp:<28} (enabled: false) would add {runs} runs, {hours:,.1f} GPU-h")
            continue
        sub = df[df["experiments"].str.split().apply(lambda e, exp=exp: exp in e)]
        lines.append(
            f"  {exp:<28} {len(sub):>4} runs  {sub['gpu_hours'].sum():>10,.1f} GPU-h planned  "
            f"{sub['gpu_hours_spent'].sum():>10,.2f} spent  {sub['gpu_hours_wasted'].sum():>8,.2f} wasted"
        )
    return "\n".join(lines)


def render_ledger(jobs: pd.DataFrame, grid: Grid, plan: Plan, paths: Paths) -> str:
    """The ledger's part of `snakemake grid`: attempts by outcome, GPU-hours spent and wasted,
    measured speeds against the config's estimates, and the ETA."""
    if jobs is None or jobs.empty:
        return "ledger: no job has run yet (rows: <results>/campaign/rows/)"
    a = costs.attempts(plan, jobs)
    outcomes = a["outcome"].value_counts()
    scale = costs.time_scale(grid.config)
    lines = (
        [f"REHEARSAL: times below are simulated (each job's start-up as it was, the rest x compression {scale:g})"]
        if scale != 1.0
        else []
    )
    lines += [
        f"ledger: {len(a)} job attempts of {a['job'].nunique()} jobs: "
        + ", ".join(f"{outcomes[o]} {o}" for o in ledger.OUTCOMES if o in outcomes)
    ]
    train = a["rule"].isin(ledger.TRAIN_RULES)
    lines.append(
        f"GPU-hours spent: {a['gpu_hours'].sum():,.3f} (training {a.loc[train, 'gpu_hours'].sum():,.3f}, "
        f"evaluation {a.loc[a['rule'].isin(costs.EVAL_RULES), 'gpu_hours'].sum():,.3f}); wasted "
        f"{a['wasted_gpu_hours'].sum():,.3f} ({int(a['wasted_iters'].sum()):,} iterations trained again)"
    )
    runs = grid.runs
    for (backbone, norm, gpus), measured in costs.measured_spi(costs.by_setting(grid, a), by="key").items():
        estimate = seconds_per_iter(
            plan,
            next(r for r in runs.values() if (r.backbone, r.norm, int(r.recipe["gpus"])) == (backbone, norm, gpus)),
        )
        lines.append(
            f"seconds per iteration, {backbone} {norm} on {gpus} GPU(s): measured {measured:.4g} "
            f"vs estimate {estimate:.4g} (x{measured / estimate:.2f}; `snakemake speeds` writes an overlay)"
        )
    e = costs.eta(plan, paths, jobs)
    if e["left_gpu_hours"] <= 0:
        lines.append("ETA: nothing left to train or evaluate")
    else:
        slots = (
            f"{e['devices_running']:g} devices in use now"
            if e["devices_running"]
            else f"nothing running now; {e['devices_average']:.2f} devices in use on average so far"
        )
        lines.append(
            f"ETA: {e['left_gpu_hours']:,.2f} GPU-h left at the measured rate; {slots} -> "
            f"{e['hours']:,.2f} h (a lower bound: a run's segments follow each other)"
        )
    return "\n".join(lines)


def planned_hours(grid: Grid, plan: Plan) -> float:
    """GPU-hours of the whole plan (trunk sharing counted once)."""
    return sum(
        gpu_hours(plan.trained_iterations[r], seconds_per_iter(plan, run), run.recipe["gpus"])
        for r, run in grid.runs.items()
    )


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
    jobs = ledger.frame(paths.results, scale=costs.time_scale(cfg))  # a rehearsal's: simulated time
    df = summarize(g, p, IdentityFiles(paths), jobs)
    os.makedirs(os.path.dirname(paths.grid_csv) or ".", exist_ok=True)
    df.to_csv(paths.grid_csv, index=False)
    from .timeline import write_campaign

    written = [paths.grid_csv, *write_campaign(paths.results)]
    return render(df, g, p) + "\n\n" + render_ledger(jobs, g, p, paths) + f"\n\nwritten: {', '.join(written)}"


def speeds(cfg: dict, source: str) -> str:
    """`snakemake speeds`: the measured-speeds overlay (rethink.costs.overlay) of the ledger, written
    to <results>/campaign/measured_speeds.yaml; returns what to tell the user."""
    from . import grid as rgrid

    g = rgrid.build(cfg, source)
    jobs = ledger.frame(cfg["results"])
    if jobs.empty:
        return "speeds: the ledger has no job yet; nothing measured"
    data = costs.overlay(g, jobs)
    out = costs.write_overlay(os.path.join(cfg["results"], "campaign", "measured_speeds.yaml"), data, source)
    lines = [
        f"  seconds_per_iter: {e['backbone']} {e['norm']} {e['gpus']} GPU(s): {e['seconds']}  ({e['source']})"
        for e in data["seconds_per_iter"]
        if str(e.get("source", "")).startswith("measured by the ledger")
    ]
    lines += [
        f"  eval_seconds: {e['backbone']} {e['gpus']} GPU(s): {e['setup_seconds']} s + "
        f"{e['seconds_per_image']} s/image  ({e['source']})"
        for e in data["eval_seconds"]
        if str(e.get("source", "")).startswith("measured by the ledger")
    ]
    return "\n".join(
        [
            "speeds: measured entries (the others are the config's, unchanged):",
            *lines,
            f"written: {out}; review it, then pass it after your config with --configfile",
        ]
    )
