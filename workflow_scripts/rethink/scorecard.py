"""The campaign's scorecard, from its ledger (rethink.ledger): how a whole campaign went, in the
figures bench/bench_campaign.py prints after a rehearsal and a user reads after a real campaign.

- **jobs**: distinct jobs that ended with their output (an attempt `done`, or `diverged`: its output
  marked diverged, rethink.segment), against the jobs planned; how many of them diverged.
- **faults**: attempts per outcome other than those (pre-empted, timed out, node failure, killed,
  failed, interrupted).
- **waste**: the iterations trained again (rethink.ledger.wasted_iterations) over the unavoidable:
  at each attempt that ended before its segment did and was followed by another, what it trained
  after its newest checkpoint (iter_reached - max(resumed_from, last_checkpoint)). 1.0: nothing
  was trained again that a checkpoint could have saved.
- **makespan**: from the first job's start to the last job's end (wall clock; a rehearsal's x its
  compression), over its lower bound max(critical path, work / slots): the critical path is the
  longest run's chain of segments (iterations x the config's seconds_per_iter) plus its final
  evaluation (rethink.evalcost); the work is every segment and evaluation of the plan, spread over
  `slots` jobs at once (-j). Start-ups, scheduling and faults are what lies above 1.
- **overhead**: seconds from a training job's start (SLURM's start of the allocation) to its
  first iteration, median and max, in wall seconds (never scaled).
"""

from __future__ import annotations

import pandas as pd

from . import evalcost, ledger
from .plan import Plan
from .resources import seconds_per_iter

FINISHED = ("done", "diverged")  # outcomes of a job that ended with its output


def critical_path_s(plan: Plan) -> float:
    """Seconds of the longest chain a run's results wait for: its segments one after another, then
    its final evaluation (the config's estimates)."""
    cfg = plan.grid.config
    best = 0.0
    for run_id, run in plan.grid.runs.items():
        chain = sum(s.iterations * seconds_per_iter(plan, plan.run(s.owner)) for s in plan.segments_of_run(run_id))
        best = max(best, chain + evalcost.seconds(cfg, run, run.test_aug))
    return best


def work_s(plan: Plan) -> float:
    """Job-seconds of every segment and evaluation of the plan (the config's estimates)."""
    cfg = plan.grid.config
    total = sum(s.iterations * seconds_per_iter(plan, plan.run(s.owner)) for s in plan.segments.values())
    for milestones, tta in ((plan.milestones, False), (plan.tta_milestones, True)):
        total += sum(
            evalcost.seconds(cfg, plan.run(plan.lines[(m.family, m.line)].owner), tta) for m in milestones.values()
        )
    return total


def unavoidable_iterations(df: pd.DataFrame) -> pd.Series:
    """Per attempt: what it trained after its newest checkpoint, where another attempt of its job
    followed it (a fault's unavoidable loss); 0 elsewhere."""
    out = pd.Series(0, index=df.index, dtype=int)
    train = df[df["rule"].isin(ledger.TRAIN_RULES) & df["resumed_from"].notna()]
    for _, g in train.groupby(["job", train["identity"].fillna("")], sort=False):
        for a in list(g.index)[:-1]:
            saved = max(
                float(df.at[a, "resumed_from"]),
                float(df.at[a, "last_checkpoint"]) if pd.notna(df.at[a, "last_checkpoint"]) else 0.0,
            )
            out[a] = max(0, int(df.at[a, "iter_reached"] - saved))
    return out


def score(plan: Plan, sim: pd.DataFrame, planned_jobs: int, slots: int, compression: float = 1.0) -> dict:
    """The scorecard of a ledger read with its compression (ledger.frame's scale); `planned_jobs`
    as Snakemake counts them (without `all`)."""
    ended = sim["outcome"].isin(FINISHED)  # a diverged job ends with its output marked diverged (rethink.segment)
    done = int(sim.loc[ended, "job"].nunique())
    diverged = int(sim.loc[sim["outcome"] == "diverged", "job"].nunique())
    faults = sim.loc[~ended, "outcome"].value_counts().to_dict()
    wasted = int(ledger.wasted_iterations(sim).sum())
    unavoidable = int(unavoidable_iterations(sim).sum())
    span_h = (
        float((sim["start"] + sim["elapsed_s"]).max() - sim["start"].min()) * compression / 3600 if len(sim) else 0.0
    )
    bound_h = max(critical_path_s(plan), work_s(plan) / max(slots, 1)) / 3600.0
    spent = float(sim.loc[sim["rule"].isin(ledger.DEVICE_RULES), "gpu_hours"].sum())
    planned = (
        sum(
            s.iterations * seconds_per_iter(plan, plan.run(s.owner)) * max(plan.run(s.owner).recipe["gpus"], 1)
            for s in plan.segments.values()
        )
        / 3600.0
    )
    first = sim.loc[sim["rule"].isin(ledger.TRAIN_RULES), "first_iter_s"].dropna()
    return {
        "jobs_planned": planned_jobs,
        "jobs_done": done,
        "jobs_diverged": diverged,
        "attempts": len(sim),
        "faults": faults,
        "wasted_iterations": wasted,
        "unavoidable_iterations": unavoidable,
        "waste": (wasted / unavoidable) if unavoidable else (1.0 if wasted == 0 else float("inf")),
        "makespan_h": span_h,
        "lower_bound_h": bound_h,
        "makespan": span_h / bound_h if bound_h else float("nan"),
        "gpu_hours_spent": spent,
        "gpu_hours_planned": planned,
        "overhead_median_s": float(first.median()) if len(first) else float("nan"),
        "overhead_max_s": float(first.max()) if len(first) else float("nan"),
    }


def render(s: dict) -> list[str]:
    faults = ", ".join(f"{n} {k}" for k, n in sorted(s["faults"].items())) or "none"
    return [
        f"jobs: {s['jobs_done']}/{s['jobs_planned']} done ({s.get('jobs_diverged', 0)} of them with an output marked "
        f"diverged), in {s['attempts']} attempts",
        f"attempts that did not finish, by how they ended: {faults}",
        f"iterations trained again: {s['wasted_iterations']:,} against {s['unavoidable_iterations']:,} unavoidable "
        f"(trained after the newest checkpoint at each fault): waste {s['waste']:.2f}",
        f"GPU-hours (simulated): {s['gpu_hours_spent']:,.0f} spent on training and evaluation / "
        f"{s['gpu_hours_planned']:,.0f} planned for training",
        f"makespan (simulated): {s['makespan_h']:,.1f} h against a lower bound of {s['lower_bound_h']:,.1f} h "
        f"(max of the critical path and the work over the job slots): {s['makespan']:.2f}",
        f"per-job overhead, job start to first iteration (wall): median {s['overhead_median_s']:.1f} s, "
        f"max {s['overhead_max_s']:.1f} s",
    ]
