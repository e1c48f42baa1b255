"""Benchmark: the dress rehearsal of the paper's campaign on a private SLURM cluster, with faults.

The whole config.yaml grid (or, with --quick, the Table 1 family pair R50-FPN GN random and
pre-trained, 2x-6x) in rehearsal mode (rethink.rehearsal: every job through its real rule, resource
request, segment chain, the one training loop and the report; the arithmetic simulated, time
compressed by --compression) goes through a private cluster of 4 nodes x 8 CPUs (tests/lab/slurm_cluster.py,
fake GPUs, a higher-tier partition that preempts), started and restarted by the documented command
(workflow_scripts/slurm_run.py --profile profiles/slurm -j 32, with fast status polling: at the
compression every second of polling is minutes of simulated time), unattended. Faults at seeded
random times (tests/lab/campaign_faults.py): every kind at least once, requeue, preemption, a node
down and back, a walltime hit, kill -9 of Snakemake and its supervisor (started again at once with
the documented command), the controller down for 65 s; and one run diverges (rehearsal.diverge).

It prints, from the campaign's ledger (rethink.ledger, rethink.scorecard) so that a user reads the
same figures after a real campaign: jobs planned / done; faults injected and what they hit; what
was trained again against the unavoidable; simulated GPU-hours spent / planned; the makespan
against max(critical path, work / 32 slots); the interventions the bench had to make (a
supervisor that ended with work left); results lost; the per-job overhead. Last line:

    campaign rehearsal: 1470/1470 jobs, 23 faults survived, waste 1.04, makespan 1.09, interventions 0, lost 0

Needs root (the cluster's daemons; `bash .ci/slurm.sh` installs SLURM). Everything it makes is in
a temp folder, removed at the end unless --keep; every file there is a rehearsal's.

    .venv/bin/python bench/bench_campaign.py [--quick] [--seed 0] [--compression 600] [--faults N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rethink import config as rconfig
from rethink import grid as rgrid
from rethink import ledger, metrics, scorecard
from rethink.paths import Paths
from rethink.plan import Plan
from rethink_lab.campaign_faults import KINDS, FaultInjector, Supervisor
from rethink_lab.slurm_cluster import FAST_POLL, SlurmCluster, skip_reason

ROOT = Path(__file__).resolve().parents[1]

SLOTS = 32
QUICK_EXPERIMENT = "table1_r50_gn"
DIVERGE = {"quick": ("R50-GN-random-coco_full-s0", 500_000), "full": ("R101-GN-random-voc-s0", 100_000)}
IDLE_LIMIT_S = 900  # no new job for this long: the campaign is stuck (an intervention)


def campaign_config(quick: bool, compression: float) -> dict:
    cfg = rconfig.read_yaml(ROOT / "config.yaml")
    if quick:
        for name in cfg["experiments"]:
            if name != QUICK_EXPERIMENT:
                cfg["experiments"][name]["enabled"] = False
    family, at = DIVERGE["quick" if quick else "full"]
    cfg["workdir"], cfg["results"] = "work", "results"
    cfg["rehearsal"] = {"compression": compression, "request": "cpu", "diverge": {family: at}}
    cfg["resources"] = {**cfg.get("resources", {}), "min_cpus": 1, "min_mem_mb": 400}
    return cfg


def planned_jobs(cwd: Path, env: dict) -> int:
    """Jobs of the plan as a dry run counts them (without `all`)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--configfile",
            "campaign.yaml",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    m = re.search(r"^total\s+(\d+)", out.stdout, re.M)
    if out.returncode or not m:
        sys.exit(f"bench_campaign: the dry run failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return int(m.group(1)) - 1


def lost_results(cfg: dict, cwd: Path) -> tuple[list[str], list[str], set[str]]:
    """(results missing or invalid: every metrics JSON and kept model of every run that did not
    diverge; metrics-table rows missing; runs that diverged). The table is built by collect, which
    needs every planned metrics file: a diverged run's missing ones block it (and the report)."""
    validated = rconfig.validate(cfg, "campaign.yaml")
    plan = Plan(rgrid.build(validated, "campaign.yaml"))
    paths = Paths(validated, plan)
    family, at = next(iter(validated["rehearsal"]["diverge"].items()))
    diverged = {r for r in plan.grid.runs if plan.run(r).family == family and plan.run(r).iterations > at}
    lost = []
    for ms in plan.milestones.values():
        if set(ms.runs) <= diverged:
            continue
        f = cwd / paths.metrics(ms.family, ms.line, ms.iteration)
        try:
            rec = metrics.read(f)
            if rec.get("rehearsal") is not True or rec["iteration"] != ms.iteration:
                lost.append(f"{f} (not this rehearsal's)")
        except (OSError, metrics.MetricsError, KeyError) as e:
            lost.append(f"{f} ({type(e).__name__})")
    unbuilt = []
    table = cwd / paths.metrics_table
    finals = set()
    if table.exists():
        import pandas as pd

        df = pd.read_csv(table)
        finals = set(df.loc[df["final"].astype(str).str.lower() == "true", "run_id"])
    for run_id in sorted(set(plan.grid.runs) - diverged):
        if not (cwd / paths.model(run_id)).exists():
            lost.append(f"{paths.model(run_id)}")
        if run_id not in finals:
            unbuilt.append(f"{paths.metrics_table}: no final row of {run_id}")
    return lost, unbuilt, diverged


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the Table 1 R50-FPN GN pair only, every fault kind once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--compression",
        type=float,
        default=None,
        help="simulated seconds per wall second (default: 1200 quick, 600 full)",
    )
    ap.add_argument("--faults", type=int, default=None, help="faults in all (default: one per kind quick, 3 full)")
    ap.add_argument("--keep", help="keep the campaign's folder here")
    return ap.parse_args()


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    a = _args()
    for s in (signal.SIGINT, signal.SIGTERM):  # (SIGINT too: a shell starts a background job ignoring it)
        signal.signal(s, _interrupted)  # so `finally` stops the cluster's daemons and the supervisor
    reason = skip_reason()
    if reason:
        print(f"bench_campaign: cannot start the private SLURM cluster: {reason}")
        return 2
    compression = a.compression or (1200.0 if a.quick else 600.0)
    n_faults = a.faults or (len(KINDS) if a.quick else 3 * len(KINDS))
    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="rethink-campaign-"))
    tmp.mkdir(parents=True, exist_ok=True)
    cwd = tmp / "campaign"
    cwd.mkdir(exist_ok=True)
    cfg = campaign_config(a.quick, compression)
    (cwd / "campaign.yaml").write_text(
        "# REHEARSAL (bench/bench_campaign.py): simulated, never real results\n" + yaml.safe_dump(cfg, sort_keys=False)
    )
    cluster = SlurmCluster(tmp / "slurm", nodes=4, gpus_per_node=8, preemption=True)
    cluster.start()
    sup = None
    try:
        planned = planned_jobs(cwd, cluster.job_env())
        sup = _supervisor(cluster, cwd)
        validated = rconfig.validate(cfg, "campaign.yaml")
        plan = Plan(rgrid.build(validated, "campaign.yaml"))
        bound_s = max(scorecard.critical_path_s(plan), scorecard.work_s(plan) / SLOTS) / compression
        faults = FaultInjector(cluster, sup, a.seed, rows=cwd / validated["results"] / "campaign" / "rows")
        kinds = [KINDS[i % len(KINDS)] for i in range(n_faults)]
        faults.schedule(kinds, until=bound_s)
        print(
            f"REHEARSAL of {'the Table 1 R50-FPN GN pair' if a.quick else 'config.yaml'}: {planned} jobs, "
            f"compression {compression:g} (lower bound {bound_s:.0f} wall s), faults {kinds} (seed {a.seed}), "
            f"in {tmp}",
            flush=True,
        )
        t0 = time.monotonic()
        sup.start()
        interventions = _watch(sup, faults, t0)
        wall = time.monotonic() - t0
    finally:
        if sup is not None and sup.proc is not None and sup.proc.poll() is None:
            sup.kill9()  # interrupted: the supervisor and its Snakemake end with the bench
        cluster.stop()
    ok = _report(cfg, cwd, validated["results"], plan, planned, compression, sup, faults, wall, interventions)
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


def _supervisor(cluster: SlurmCluster, cwd: Path) -> Supervisor:
    """The supervisor of the documented command (slurm_run.py --profile profiles/slurm -j SLOTS on
    campaign.yaml), with fast status polling."""
    return Supervisor(
        cluster,
        cwd,
        [
            "--poll",
            "2",
            "--lost-after",
            "60",
            "--profile",
            str(ROOT / "profiles" / "slurm"),
            "-j",
            str(SLOTS),
            "--configfile",
            "campaign.yaml",
            *FAST_POLL,
        ],
    )


def _watch(sup: Supervisor, faults: FaultInjector, t0: float) -> int:
    """Inject the faults while the supervisor works; restart it (an intervention, as a person would)
    when it gives up with work or faults left or nothing new happens for IDLE_LIMIT_S. Returns the
    interventions (more than 5: given up)."""
    interventions, progress, seen = 0, t0, set()
    while True:
        time.sleep(1)
        now = time.monotonic() - t0
        jobs = faults.poll(now)
        ids = {j["id"] for j in jobs}
        if ids - seen:
            progress = time.monotonic()
        seen |= ids
        if sup.proc.poll() is not None:
            if not faults.pending() and _finished(sup.text()):
                return interventions
            interventions += 1  # the supervisor gave up with work or faults left: a person would restart it
            print(
                f"intervention {interventions}: the supervisor ended ({sup.proc.returncode}) at {now:.0f} s; "
                "starting it again",
                flush=True,
            )
            sup.start()
        elif time.monotonic() - progress > IDLE_LIMIT_S:
            interventions += 1
            print(
                f"intervention {interventions}: nothing new for {IDLE_LIMIT_S} s; restarting the supervisor", flush=True
            )
            sup.kill9()
            sup.start()
            progress = time.monotonic()
        if interventions > 5:
            print(sup.text()[-5000:])
            return interventions


def _report(
    cfg, cwd: Path, results: str, plan, planned: int, compression: float, sup, faults, wall: float, interventions: int
) -> bool:
    """The scorecard and what survived; True when nothing was lost or left unbuilt and nobody intervened."""
    sim = ledger.frame(str(cwd / results), scale=compression)
    s = scorecard.score(plan, sim, planned, SLOTS, compression)
    lost, unbuilt, diverged = lost_results(cfg, cwd)
    blocked = planned - s["jobs_done"]
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min); supervisor started {sup.starts} time(s)")
    print("\n".join(scorecard.render(s)))
    print(f"faults injected: {json.dumps(faults.log)}")
    print(
        f"diverged on purpose: {sorted(diverged)}; its jobs ended marked diverged: {s['jobs_diverged']}; "
        f"jobs not run: {blocked}"
    )
    print(f"two copies of a job running at once: {len(faults.doubles)} {faults.doubles[:5]}")
    print(f"results lost (metrics JSONs, models): {len(lost)} {lost[:5]}")
    print(f"metrics-table rows missing: {len(unbuilt)} {unbuilt[:3]}")
    survived = len(faults.log) if not lost and not faults.doubles else 0  # a lost result: none counts as survived
    print(
        f"campaign rehearsal: {s['jobs_done']}/{planned} jobs, {survived} faults survived, waste {s['waste']:.2f}, "
        f"makespan {s['makespan']:.2f}, interventions {interventions}, lost {len(lost)}"
    )
    return not lost and not unbuilt and interventions == 0


def _finished(text: str) -> bool:
    """The supervisor's Snakemake ended, with everything done or only what the diverged run blocks."""
    return "steps (100%) done" in text or "Exiting because a job execution failed" in text


if __name__ == "__main__":
    sys.exit(main())
