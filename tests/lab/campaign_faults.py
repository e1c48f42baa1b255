"""A campaign on the private SLURM cluster (tests/lab/slurm_cluster.py), started and restarted by the
documented command (workflow_scripts/slurm_run.py), with the faults of a shared cluster injected at
seeded random times: what bench/bench_campaign.py runs.

Fault kinds (each as SLURM or the login node does it; SlurmCluster's fault methods):
    requeue     scontrol requeue of a running training job (an administrator's requeue)
    preempt     a job of the higher-tier partition needs a node's GPUs: PreemptMode=REQUEUE
    node_down   a node with a training job fails; it comes back NODE_BACK_S later
    walltime    a running training job's limit becomes its run time (+0 minutes): SIGTERM, then TIMEOUT
    kill9       the supervisor and its Snakemake die (kill -9); the documented command starts again at once
    controller  slurmctld stops for CONTROLLER_DOWN_S (sbatch, squeue, srun fail), then restarts from
                its saved state
A diverging run is not injected here: the rehearsal's `diverge` setting makes one (rethink.rehearsal).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from .slurm_cluster import SlurmCluster

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("requeue", "preempt", "node_down", "walltime", "kill9", "controller")
NODE_BACK_S = 20
CONTROLLER_DOWN_S = 65


class Supervisor:
    """The documented command (slurm_run.py) in `cwd` against the cluster, its output in supervisor.out."""

    def __init__(self, cluster: SlurmCluster, cwd: Path, args: list[str], env: dict | None = None):
        self.cluster, self.cwd = cluster, Path(cwd)
        self.env = cluster.job_env(**(env or {}))
        self.cmd = [
            sys.executable,
            str(ROOT / "workflow_scripts" / "slurm_run.py"),
            "--snakefile",
            str(ROOT / "Snakefile"),
            *args,
        ]
        self.log = open(self.cwd / "supervisor.out", "a")
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.log.write(f"\n===== start {self.starts} =====\n")
        self.log.flush()
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        """The login node's processes die: the supervisor and its Snakemake, by their PIDs."""
        kids = [
            k for k in psutil.Process(self.proc.pid).children(recursive=True) if "snakemake" in " ".join(k.cmdline())
        ]
        self.cluster.kill9(self.proc)
        for k in kids:
            k.kill()
        psutil.wait_procs(kids, timeout=30)

    def text(self) -> str:
        self.log.flush()
        return (self.cwd / "supervisor.out").read_text(errors="replace")


def training(jobs: list[dict], exclude=()) -> list[dict]:
    return [
        j for j in jobs if j["state"] == "RUNNING" and j["comment"].startswith("rule_train_") and j["id"] not in exclude
    ]


class FaultInjector:
    """Faults at seeded random times: `schedule(kinds, until)` draws one time per kind in
    [0.1, 0.9] x `until` seconds; `poll(now)`, called about every second with the time since the
    campaign started, injects those that are due where a victim is running, and brings a downed
    node back. `log` lists what was done: kind, time, SLURM job id, node, and the jobs it hit."""

    def __init__(self, cluster: SlurmCluster, supervisor: Supervisor, seed: int = 0, rows: Path | None = None):
        self.cluster, self.sup, self.rng = cluster, supervisor, random.Random(seed)
        self.rows = rows  # the campaign's ledger rows (rethink.ledger): a victim is a job that is training
        self.due: list[tuple[float, str]] = []
        self.log: list[dict] = []
        self.hit: set[str] = set()
        self.node_back: tuple[float, str] | None = None
        self.doubles: list[tuple[float, str]] = []  # two copies of one job running at once

    def schedule(self, kinds, until: float) -> None:
        self.due = sorted((self.rng.uniform(0.1, 0.9) * until, k) for k in kinds)

    def training_ids(self) -> set[str]:
        """SLURM ids of the jobs whose open ledger row says they have begun training."""
        out = set()
        for f in self.rows.glob("train_*/*.json") if self.rows and self.rows.is_dir() else ():
            try:
                row = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if row.get("outcome") is None and row.get("first_iter") and row.get("slurm_job_id"):
                out.add(str(row["slurm_job_id"]))
        return out

    def pending(self) -> list[str]:
        return [k for _, k in self.due]

    def poll(self, now: float) -> list[dict]:
        jobs = self.cluster.jobs()
        active = Counter(  # Snakemake's jobs (comment rule_<rule>_wildcards_<...>), not the pre-empting ones
            j["comment"] for j in jobs if j["state"] in ("RUNNING", "COMPLETING") and j["comment"].startswith("rule_")
        )
        self.doubles += [(now, c) for c, n in active.items() if n > 1]
        if self.node_back and now >= self.node_back[0]:
            self.cluster.node_up(self.node_back[1])
            self.node_back = None
        if not self.due or self.due[0][0] > now or self.node_back:
            return jobs
        kind = self.due[0][1]
        victims = training(jobs, self.hit)
        if kind in ("requeue", "preempt", "node_down", "walltime"):
            training_ids = self.training_ids()
            victims = [j for j in victims if j["id"] in training_ids]  # past its start-up: work to lose
            if not victims:
                return jobs
        self.due.pop(0)
        v = self.rng.choice(victims) if victims else {"id": "", "node": "", "comment": ""}
        self.hit.add(v["id"])
        on_node = [j["comment"] for j in training(jobs) if j["node"] == v["node"]]
        entry = {
            "fault": kind,
            "t": round(now),
            "job": v["id"],
            "node": v["node"],
            "victims": on_node if kind in ("preempt", "node_down") else [v["comment"]],
        }
        if kind == "requeue":
            self.cluster.requeue(v["id"])
        elif kind == "preempt":
            entry["by"] = self.cluster.preempt(v["node"], seconds=15)
        elif kind == "node_down":
            self.cluster.node_down(v["node"])
            self.node_back = (now + NODE_BACK_S, v["node"])
        elif kind == "walltime":
            entry["limit_min"] = self.cluster.shorten_walltime(v["id"], minutes_left=0)
        elif kind == "kill9":
            entry["victims"] = [j["comment"] for j in jobs if j["state"] == "RUNNING"]
            self.sup.kill9()
            self.sup.start()  # the documented command, at once, while the dead one's jobs run
        elif kind == "controller":
            t = time.monotonic()
            self.cluster.stop_controller()
            time.sleep(CONTROLLER_DOWN_S)
            self.cluster.start_controller()
            entry["down_s"] = round(time.monotonic() - t)
        self.log.append(entry)
        return jobs
