"""The faults of a shared cluster, injected into one campaign of the tiny grid (small_tiny_config: 10
training segments, 10 evaluations, pre-training, data) run through the real Snakemake with
`--profile profiles/slurm`, started and restarted by the documented command
(workflow_scripts/slurm_run.py), on a private cluster of 3 nodes with 4 fake GPUs each and
preemption (tests/lab/slurm_cluster.py). While it runs, one training job each is

  requeued (scontrol requeue), preempted (a job of the higher-tier partition needs its node:
  PreemptMode=REQUEUE), on a node that goes down and comes back 20 s later, and given a walltime
  that is too short (SIGTERM from --signal, then TIMEOUT);
  then Snakemake and its supervisor are killed with kill -9 while jobs run, and the documented
  command is started again at once; then the controller stops for 65 s (sbatch, squeue and srun
  fail) and restarts from its saved state;
  and one line of training (random init, 2x) diverges (a NaN loss at iteration 10): its segments end
  marked diverged and the campaign finishes, tables included.

Asserted: every result of every run that did not diverge present and valid, never two copies of a
segment running at once (SLURM polled every second), and what was trained twice (the campaign's
ledger, rethink.ledger: where each attempt resumed from and got to): at most a checkpoint period
and the step under way per fault that kills a trainer, nothing for unfaulted jobs and for those
that outlived the killed Snakemake. The waits are bounded by progress.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import switches

from conftest import ROOT, small_tiny_config, write_yaml
from rethink import config, grid, ledger, metrics, plan
from rethink.paths import Paths
from rethink_lab.campaign_faults import KINDS, Supervisor
from rethink_lab.slurm_cluster import FAST_POLL, SlurmCluster, skip_reason

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

NAN_FAMILY, NAN_LINE, NAN_AT = "R18-GN-random-synthetic-s0", "2x", 10
NAN_RUN = "R18-GN-random-synthetic-2x-s0"
ITER_SLEEP = 6.0  # s per iteration: segments long enough for every fault to find a victim (with the
# status polled every second the campaign took 163 s at 4 s and ended before the kill -9 and the outage)
FAULTS = KINDS
LOST_AFTER_S = 100  # s; the supervisor restarts a Snakemake silent this long with no job in SLURM (default 300)
IDLE_LIMIT_S = 420  # no new job, result or fault for this long: the campaign is stuck


def campaign_config() -> dict:
    cfg = small_tiny_config()
    cfg["eval_period"], cfg["max_segment_iters"] = 8, 8
    return cfg


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(f"no SLURM test cluster: {reason}")
    c = SlurmCluster(tmp_path_factory.mktemp("faults-slurm"), nodes=3, gpus_per_node=4, preemption=True)
    try:
        c.start()
    except Exception as e:
        pytest.fail(f"could not start the 3-node SLURM test cluster: {e}", pytrace=False)
    yield c
    c.stop()


class Campaign(Supervisor):
    """The supervisor (the documented command) in `cwd`, and what the test saw of SLURM."""

    def __init__(self, cluster: SlurmCluster, cwd: Path):
        super().__init__(
            cluster,
            cwd,
            [
                "--poll",
                "2",
                "--lost-after",
                str(LOST_AFTER_S),
                "--profile",
                str(ROOT / "profiles" / "slurm"),
                "-j",
                "8",
                "--configfile",
                "tiny.yaml",
                *FAST_POLL,
            ],
            env=switches.environment(nan_at=NAN_AT, nan_line=f"{NAN_FAMILY}/{NAN_LINE}", sleep=ITER_SLEEP),
        )
        self.doubles: list[tuple[float, str]] = []  # (time, comment) two copies running at once
        self.faults: list[dict] = []


def _train(jobs, min_s=0, max_s=10**9, exclude=()):
    return [
        j
        for j in jobs
        if j["state"] == "RUNNING"
        and j["comment"].startswith("rule_train_")
        and min_s <= j["seconds"] <= max_s
        and j["id"] not in exclude
        and j["comment"] not in exclude
    ]


def test_campaign_survives_every_fault(cluster, tmp_path):
    cfg = campaign_config()
    write_yaml(tmp_path / "tiny.yaml", cfg)
    validated = config.validate(cfg, "tiny.yaml")
    p = plan.Plan(grid.build(validated, "tiny.yaml"))
    paths = Paths(validated, p)
    camp = Campaign(cluster, tmp_path)
    try:
        _drive(camp, cluster, tmp_path, cfg, p, paths)
    finally:
        if camp.proc.poll() is None:  # a failed check: the supervisor and its Snakemake go, by PID
            camp.kill9()
        camp.log.close()


def _drive(camp, cluster, tmp_path, cfg, p, paths):
    camp.start()
    t0 = time.monotonic()
    injector = _Injector(camp, cluster, t0)
    while camp.proc.poll() is None:
        time.sleep(1)
        injector.step(time.monotonic())
    wall = time.monotonic() - t0
    text = camp.text()
    report = (
        f"{wall:.0f} s, {camp.starts} start(s), faults {json.dumps(camp.faults)}\n{text[-8000:]}\n"
        f"{cluster.debug_info(tail=15)}"
    )
    print(
        f"\ncampaign with faults: {wall:.0f} s; faults: {json.dumps(camp.faults)}\nsupervisor:\n"
        + "\n".join(ln for ln in text.splitlines() if ln.startswith(("slurm_run", "=====", "Error in rule")))
    )
    assert not injector.pending, f"faults never injected: {injector.pending}\n{report}"
    assert not camp.doubles, f"two copies of a segment ran at once: {camp.doubles}\n{report}"
    # the diverged line stops nothing: its segments end marked diverged, and Snakemake finishes,
    # collect, tables and report included (rethink.segment)
    assert camp.proc.returncode == 0, report
    # the diverged line's last segment is its run's train_final job: passed the mark on
    assert "marked diverged" in (tmp_path / paths.log("train", NAN_RUN, "model_final")).read_text()
    assert "Directory cannot be locked" not in text, report
    assert sorted((tmp_path / "results" / "tables").glob("*.md")), "no tables"
    table = pd.read_csv(tmp_path / paths.metrics_table)
    assert set(table[table.run_diverged].run_id) == {NAN_RUN}, table[["run_id", "iteration", "diverged"]]
    _check_results(tmp_path, p, paths, report)
    _check_retrained(camp, tmp_path, cfg, p, injector.running_at_kill)


class _Injector:
    """The faults, one at a time, each on a training job that fits it, while the campaign makes
    progress (asserted: a new job, result or fault within IDLE_LIMIT_S); `camp.doubles` gets every
    moment two copies of a job run."""

    def __init__(self, camp, cluster, t0: float):
        self.camp, self.cluster, self.t0 = camp, cluster, t0
        self.progress, self.seen_ids = t0, set()
        self.pending = list(FAULTS)
        self.hit: set[str] = set()  # job ids and comments already faulted
        self.node_back_at, self.node_back_at_node, self.last_fault = None, None, t0
        self.running_at_kill: set[str] = set()

    def step(self, now: float) -> None:
        camp, cluster = self.camp, self.cluster
        jobs = cluster.jobs()
        ids = {j["id"] for j in jobs}
        if ids - self.seen_ids or (self.pending and self.pending[0] == "controller" and not jobs):
            self.progress = now
        self.seen_ids |= ids
        active = Counter(j["comment"] for j in jobs if j["state"] in ("RUNNING", "COMPLETING"))
        camp.doubles += [(now - self.t0, c) for c, n in active.items() if n > 1]
        if self.node_back_at and now >= self.node_back_at:
            cluster.node_up(self.node_back_at_node)
            self.node_back_at = None
        assert now - self.progress < IDLE_LIMIT_S, (
            f"no progress for {IDLE_LIMIT_S} s; faults left {self.pending}\n"
            f"{camp.text()[-6000:]}\n{cluster.debug_info(tail=15)}"
        )
        if not self.pending or self.node_back_at or now - self.last_fault < 5:
            return
        picked = self._pick(jobs)
        if picked:
            self._inject(*picked, jobs, now)

    def _pick(self, jobs) -> tuple[str, dict] | None:
        """The first pending fault that has a victim now, and the victim."""
        said = [ln for ln in self.camp.text().splitlines() if ln.startswith("slurm_run")]
        for fault in self.pending:
            if fault == "controller" and not (said and "snakemake started" in said[-1]):
                continue  # the outage hits a running Snakemake, not the supervisor between two of them
            # a victim with a resume checkpoint (every 2 iterations, ITER_SLEEP s each) and iterations
            # left; for the walltime, one that just started a long segment (SLURM signals within 30 s)
            victims = (
                _train(jobs, min_s=10, exclude=self.hit)
                if fault != "walltime"
                else [j for j in _train(jobs, max_s=8, exclude=self.hit) if j["comment"].endswith("_0000008")]
            )
            if victims:
                return fault, victims[0]
        return None

    def _inject(self, fault: str, v: dict, jobs, now: float) -> None:
        camp, cluster = self.camp, self.cluster
        self.hit.add(v["id"])
        # preemption and a node failure hit every job on the node
        on_node = [j for j in _train(jobs) if j["node"] == v["node"]] if fault in ("preempt", "node_down") else [v]
        camp.faults.append(
            {
                "fault": fault,
                "job": v["id"],
                "node": v["node"],
                "t": round(now - self.t0),
                "victims": [j["comment"] for j in on_node],
                "victim_ids": [j["id"] for j in on_node],
            }
        )
        self.pending.remove(fault)
        self.progress = self.last_fault = now
        if fault == "requeue":
            cluster.requeue(v["id"])
        elif fault == "preempt":
            camp.faults[-1]["by"] = cluster.preempt(v["node"], seconds=15)
        elif fault == "node_down":
            cluster.node_down(v["node"])
            self.node_back_at, self.node_back_at_node = now + 20, v["node"]
        elif fault == "walltime":
            camp.faults[-1]["limit_min"] = cluster.shorten_walltime(v["id"], minutes_left=0)
        elif fault == "kill9":
            self.running_at_kill = {j["id"] for j in _train(jobs)}
            camp.kill9()
            camp.start()  # the documented command, at once, while the dead one's jobs run
        elif fault == "controller":
            cluster.stop_controller()
            time.sleep(65)
            cluster.start_controller()
            camp.faults[-1]["down_s"] = round(time.monotonic() - now)


def _check_results(tmp_path, p, paths, report: str) -> None:
    """Every result of every run that did not diverge: present and valid; the diverged line's: diverged."""
    missing = []
    for ms in p.milestones.values():
        f = tmp_path / paths.metrics(ms.family, ms.line, ms.iteration)
        if not f.exists():
            missing.append(str(f))
            continue
        rec = metrics.read(f)
        assert rec["iteration"] == ms.iteration, f
        diverged = (ms.family, ms.line) == (NAN_FAMILY, NAN_LINE) and ms.iteration > NAN_AT
        assert rec["diverged"] is diverged, f
    assert not missing, f"results missing: {missing}\n{report}"
    for run_id in p.grid.runs:
        if run_id != NAN_RUN:
            assert (tmp_path / paths.model(run_id)).exists(), run_id


def _check_retrained(camp, tmp_path, cfg, p, running_at_kill: set) -> None:
    """What was trained twice, from the campaign's ledger (one row per job attempt: where it resumed
    from and got to; rethink.ledger): per attempt, what the next attempt of its job trained again."""
    df = ledger.frame(str(tmp_path / "results"))
    train = df[df["rule"].isin(ledger.TRAIN_RULES)]
    wasted = ledger.wasted_iterations(df)[train.index]
    done = train.groupby("job")["iter_reached"].max()
    marked = [s for s in p.segments.values() if (s.family, s.line) == (NAN_FAMILY, NAN_LINE) and s.end > NAN_AT]
    assert (done == train.groupby("job")["to_iter"].max()).sum() == len(p.segments) - len(marked), done
    per_job = Counter()
    for idx, w in wasted.items():
        if w:
            per_job[str(df.at[idx, "slurm_job_id"])] += int(w)
    # a fault that kills a trainer: what it trained since its last checkpoint, + the step under way;
    # SIGTERM (walltime, and SLURM's own SIGTERM before a requeue): a checkpoint where it stopped
    period = int(cfg["recipe"]["checkpoint_period"])
    allowed = Counter()
    for f in camp.faults:
        for i in f["victim_ids"]:
            allowed[i] += {
                "requeue": period + 1,
                "preempt": period + 1,
                "node_down": period + 1,
                "walltime": 1,
                "controller": period + 1,
            }.get(f["fault"], 0)
    print(f"iterations trained again, per SLURM job: {dict(per_job)} (allowed {dict(allowed)})")
    for job_id, n in per_job.items():
        assert n <= allowed[job_id], (job_id, n, allowed, camp.faults)
    for job_id in running_at_kill:  # outlived the killed Snakemake: kept, never trained again
        assert per_job[job_id] == 0, (job_id, per_job)
    for f in camp.faults:
        f["retrained"] = sum(per_job[i] for i in f["victim_ids"])
    print(f"per fault: {json.dumps(camp.faults)}")
