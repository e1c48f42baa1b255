"""The campaign's ledger (rethink.ledger, rethink.costs, rethink.timeline): rows written by real
training jobs (train.py as the rules run it) that are killed with SIGKILL, stopped by SIGTERM
before and at their walltime, and resumed; how open rows are read; what the waste is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import switches
from test_loop import tiny_specs, wait_for

from conftest import PY, ROOT, small_tiny_config
from rethink import checkpoint, costs, jobs, ledger, scorecard, timeline

TRAIN = str(ROOT / "workflow_scripts" / "train.py")


# ------------------------------------------------------------------------------ rows, read back
def _row(**kw) -> dict:
    base = {k: None for k in ledger.ROW_FIELDS}
    base.update(
        format=ledger.FORMAT,
        rule="train_segment",
        job="train_segment/F/trunk/0000100",
        run="r",
        gpus=8,
        identity="h",
        host="elsewhere",
        node="n1",
        pid=1,
        start=1000.0,
    )
    base.update(kw)
    return base


def _write_rows(results: Path, rows: list[dict]) -> None:
    for i, r in enumerate(rows):
        p = ledger.rows_dir(str(results)) / r["rule"] / f"x@{i}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(r))


def test_outcomes_of_exit_codes():
    assert ledger.outcome_of(0) == "done"
    assert ledger.outcome_of(3) == "diverged"
    assert ledger.outcome_of(1) == "failed"
    assert ledger.outcome_of(130) == "interrupted"
    assert ledger.outcome_of(143, env={}) == "pre-empted"
    # SIGTERM inside the last minutes of the allocation is the walltime (resources: --signal=TERM@300)
    assert ledger.outcome_of(143, env={"SLURM_JOB_END_TIME": "10300"}, now=10000.0) == "timed out"
    assert ledger.outcome_of(138, env={"SLURM_JOB_END_TIME": "20000"}, now=10000.0) == "pre-empted"
    # with the job's own signal lead (a rehearsal's 60 s): only a signal that late is the walltime
    assert ledger.outcome_of(143, env={"SLURM_JOB_END_TIME": "10100"}, now=10000.0, signal_s=60) == "timed out"
    assert ledger.outcome_of(143, env={"SLURM_JOB_END_TIME": "10200"}, now=10000.0, signal_s=60) == "pre-empted"


def test_open_rows_read_as_killed_running_or_node_failure(tmp_path):
    old = time.time() - 10 * ledger.STALE_S
    rows = [
        _row(job="train_segment/F/trunk/0000100", start=old, slurm_job_id="7", slurm_restart=0),  # requeued below
        _row(
            job="train_segment/F/trunk/0000100",
            start=old + 5,
            slurm_job_id="7",
            slurm_restart=1,
            end=old + 50,
            exit_code=0,
            outcome="done",
        ),
        _row(job="train_segment/F/trunk/0000200", start=old),  # unclosed, silent: killed
        _row(job="train_segment/F/trunk/0000300", start=time.time()),  # unclosed, fresh: running
    ]
    _write_rows(tmp_path, rows)
    stale = ledger.rows_dir(str(tmp_path)) / "train_segment"
    for p in (stale / "x@0.json", stale / "x@2.json"):
        os.utime(p, (old, old))
    got = {(r["job"], r.get("slurm_restart")): r["outcome"] for r in ledger.read_rows(str(tmp_path))}
    assert got[("train_segment/F/trunk/0000100", 0)] == "node failure"
    assert got[("train_segment/F/trunk/0000100", 1)] == "done"
    assert got[("train_segment/F/trunk/0000200", None)] == "killed"
    assert got[("train_segment/F/trunk/0000300", None)] == "running"


def test_waste_is_what_the_next_attempt_trains_again(tmp_path):
    """Attempt 1 reached 70 and its last checkpoint was 60: attempt 2 resumes at 60 and trains
    60..70 again (10 iterations wasted); attempt 2 is pre-empted at 95 after a checkpoint at 95
    (nothing wasted); attempt 3 finishes. Another identity is another job: not a retry."""
    rows = [
        _row(
            start=0.0,
            end=100.0,
            resumed_from=0,
            iter_reached=70,
            last_checkpoint=60,
            first_iter=10.0,
            last_iter=80.0,
            exit_code=-9,
            outcome="killed",
        ),
        _row(
            start=200.0,
            end=300.0,
            resumed_from=60,
            iter_reached=95,
            last_checkpoint=95,
            first_iter=210.0,
            last_iter=280.0,
            exit_code=143,
            outcome="pre-empted",
        ),
        _row(
            start=400.0,
            end=420.0,
            resumed_from=95,
            iter_reached=100,
            first_iter=405.0,
            last_iter=415.0,
            exit_code=0,
            outcome="done",
        ),
        _row(
            start=500.0,
            end=600.0,
            resumed_from=0,
            iter_reached=100,
            first_iter=505.0,
            last_iter=595.0,
            exit_code=0,
            outcome="done",
            identity="other",
        ),
    ]
    _write_rows(tmp_path, rows)
    df = ledger.frame(str(tmp_path))
    assert list(df["attempt"]) == [1, 2, 3, 1]
    assert list(ledger.wasted_iterations(df)) == [10, 0, 0, 0]
    assert list(df["iters_done"]) == [70, 35, 5, 100]
    assert df["seconds_per_iter"].tolist() == pytest.approx([1.0, 2.0, 2.0, 0.9])
    # GPU-hours: wall x GPUs, to the second
    assert df["gpu_hours"].sum() * 3600 == pytest.approx((100 + 100 + 20 + 100) * 8)
    a = costs.attempts(None, df)
    assert a["wasted_gpu_hours"].sum() * 3600 == pytest.approx(10 * 1.0 * 8)  # 10 iterations at 1 s on 8 GPUs


def test_waste_against_the_unavoidable(tmp_path):
    """The scorecard's waste: iterations trained again over what each fault had to lose (what was
    trained after its newest checkpoint). A rerun that ignored the checkpoint counts in full."""
    rows = [
        _row(start=0.0, end=100.0, resumed_from=0, iter_reached=70, last_checkpoint=60, outcome="killed"),
        _row(start=200.0, end=300.0, resumed_from=60, iter_reached=100, outcome="done", exit_code=0),
        _row(
            job="train_segment/F/trunk/0000200",
            start=0.0,
            end=100.0,
            resumed_from=100,
            iter_reached=170,
            last_checkpoint=160,
            outcome="killed",
        ),
        _row(
            job="train_segment/F/trunk/0000200",
            start=200.0,
            end=300.0,
            resumed_from=100,
            iter_reached=200,
            outcome="done",
            exit_code=0,
        ),
    ]
    _write_rows(tmp_path, rows)
    df = ledger.frame(str(tmp_path))
    assert list(scorecard.unavoidable_iterations(df)) == [10, 10, 0, 0]  # in start order: 0-100, 100-200, ...
    assert int(ledger.wasted_iterations(df).sum()) == 10 + 70


def test_the_scorecard_counts_a_job_that_ended_marked_diverged_as_done(tmp_path):
    """A diverged segment ends with its output (rethink.segment): done, and said; not a fault."""
    from rethink import config, grid
    from rethink.plan import Plan

    rows = [
        _row(start=0.0, end=100.0, resumed_from=0, iter_reached=100, outcome="done", exit_code=0),
        _row(
            job="train_segment/F/trunk/0000200",
            start=100.0,
            end=150.0,
            resumed_from=100,
            iter_reached=130,
            outcome="diverged",
            exit_code=0,
        ),
        _row(job="train_segment/F/2x/0000300", start=150.0, end=151.0, outcome="diverged", exit_code=0),
        _row(
            job="train_segment/G/trunk/0000100",
            start=0.0,
            end=50.0,
            resumed_from=0,
            iter_reached=40,
            outcome="pre-empted",
            exit_code=143,
        ),
    ]
    _write_rows(tmp_path, rows)
    cfg = small_tiny_config()
    plan = Plan(grid.build(config.validate(cfg, "tiny.yaml"), "tiny.yaml"))
    s = scorecard.score(plan, ledger.frame(str(tmp_path)), planned_jobs=5, slots=4)
    assert (s["jobs_done"], s["jobs_diverged"], s["faults"]) == (3, 2, {"pre-empted": 1})
    assert scorecard.render(s)[0] == "jobs: 3/5 done (2 of them with an output marked diverged), in 4 attempts"


def test_a_rehearsals_times_read_as_simulated(tmp_path):
    """ledger.frame(scale=compression): a job's start-up as it was, the rest of its wall time
    stretched, so its GPU-hours and seconds per iteration are the simulated ones."""
    _write_rows(
        tmp_path,
        [
            _row(
                start=1000.0,
                end=1010.0,
                resumed_from=0,
                iter_reached=100,
                first_iter=1001.0,
                last_iter=1009.0,
                exit_code=0,
                outcome="done",
            )
        ],
    )
    real, sim = ledger.frame(str(tmp_path)), ledger.frame(str(tmp_path), scale=3600.0)
    assert real["wall_s"].iloc[0] == 10.0 and sim["wall_s"].iloc[0] == 1 + 9 * 3600.0
    assert sim["elapsed_s"].iloc[0] == 10.0 and sim["first_iter_s"].iloc[0] == 1.0
    assert sim["gpu_hours"].iloc[0] == pytest.approx((1 + 9 * 3600) * 8 / 3600)  # on 8 GPUs
    assert sim["seconds_per_iter"].iloc[0] == pytest.approx(8 * 3600 / 100)
    assert costs.time_scale({"rehearsal": {"compression": 3600.0}}) == 3600.0 and costs.time_scale({}) == 1.0


# ------------------------------------------------------------------------------ real jobs
@pytest.fixture(scope="module")
def faulted_segment(module_tmp):
    """One training segment (0 -> 8, checkpoints every 2) run as its rule runs it (--config snapshot
    --job key), killed with SIGKILL after its first checkpoint, resumed and stopped by SIGTERM,
    resumed and stopped by SIGTERM inside its walltime's last minutes, then resumed to the end."""
    tmp = module_tmp("ledger")
    p = tiny_specs(tmp, schedules={"2x": {"x": 2}})
    snap = jobs.write_snapshot(p.cfg, "ledger-test")
    seg = max(p.plan.segments.values(), key=lambda s: s.end)
    key = (
        f"train_final/{seg.owner}"
        if (seg.family, seg.line, seg.end) in p.plan.finals
        else f"train_segment/{seg.family}/{seg.line}/{seg.end:07d}"
    )
    rdir = Path(p.paths.resume_dir(seg.family, seg.line, seg.end))
    env = {**os.environ, **switches.environment(sleep=0.5), "RETHINK_LEDGER_HEARTBEAT": "0.2"}
    rows = ledger.rows_dir(p.paths.results)

    def start(**extra):
        return subprocess.Popen(
            [PY, TRAIN, "--config", snap, "--job", key],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**env, **extra},
        )

    def reached(pid: int) -> int:  # the iteration of the row of process `pid`, as its heartbeat wrote it
        mine = [json.loads(f.read_text()) for f in rows.rglob(f"*-{pid}.json")]
        return max([r.get("iter_reached") or 0 for r in mine] or [0])

    proc = start()
    wait_for(lambda: checkpoint.resume_candidates(rdir), proc, timeout=300, what="the first resume checkpoint")
    first_ckpt = max(i for i, _ in checkpoint.resume_candidates(rdir))
    wait_for(lambda: reached(proc.pid) > first_ckpt, proc, timeout=120, what="an iteration after the checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    read_after_kill = ledger.read_rows(p.paths.results)

    for extra in ({}, {"SLURM_JOB_END_TIME": str(int(time.time()) + 120)}):
        proc = start(**extra)
        before = max(i for i, _ in checkpoint.resume_candidates(rdir))
        wait_for(lambda b=before, pid=proc.pid: reached(pid) > b, proc, timeout=300, what="an iteration after resuming")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    proc = start()
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return {
        "specs": p,
        "key": key,
        "seg": seg,
        "read_after_kill": read_after_kill,
        "frame": ledger.frame(p.paths.results),
        "first_ckpt": first_ckpt,
    }


def test_a_killed_job_reads_as_killed_and_its_rerun_resumes(faulted_segment):
    s = faulted_segment
    assert [r["outcome"] for r in s["read_after_kill"]] == ["killed"]  # its pid is gone: no wait for staleness
    df = s["frame"]
    assert list(df["job"].unique()) == [s["key"]]
    assert list(df["outcome"]) == ["killed", "pre-empted", "timed out", "done"]
    assert list(df["attempt"]) == [1, 2, 3, 4]
    assert pd.isna(df["end"].iloc[0])  # the killed row never closed
    assert df["resumed_from"].iloc[0] == s["seg"].start and df["resumed_from"].iloc[1] >= s["first_ckpt"]
    # each attempt resumed where the previous one's last checkpoint was
    assert list(df["resumed_from"].iloc[1:]) == [int(v) for v in df["last_checkpoint"].iloc[:-1]]
    assert df["iter_reached"].iloc[-1] == s["seg"].end
    assert (df["first_iter_s"].dropna() >= 0).all() and df["first_iter_s"].notna().all()


def test_waste_and_gpu_hours_of_the_real_attempts(faulted_segment):
    df = faulted_segment["frame"]
    waste = ledger.wasted_iterations(df)
    # the killed attempt trained past its checkpoint: those iterations were trained again
    assert waste.iloc[0] == df["iter_reached"].iloc[0] - df["resumed_from"].iloc[1] > 0
    # SIGTERM checkpoints the iteration it stops at: nothing is trained again
    assert list(waste.iloc[1:]) == [0, 0, 0]
    assert df["gpu_hours"].sum() * 3600 == pytest.approx(df["wall_s"].sum(), abs=1e-3)  # CPU: one device
    a = costs.attempts(faulted_segment["specs"].plan, df)
    assert a["wasted_gpu_hours"].sum() * 3600 == pytest.approx(waste.iloc[0] * df["seconds_per_iter"].iloc[0])


def test_campaign_files_and_grid_figures_from_the_rows(faulted_segment, tmp_path):
    p = faulted_segment["specs"]
    written = timeline.write_campaign(p.paths.results)
    csv = pd.read_csv(written[0])
    assert len(csv) == 4 and list(csv["outcome"]) == ["killed", "pre-empted", "timed out", "done"]
    assert csv["wasted_iters"].iloc[0] > 0
    assert Path(written[1]).stat().st_size > 10_000
    e = costs.eta(p.plan, p.paths, faulted_segment["frame"])
    assert e["left_gpu_hours"] > 0 and e["devices_running"] == 0 and e["devices_average"] > 0


# ------------------------------------------------------------------------------ under SLURM
@pytest.mark.slurm
def test_a_slurm_jobs_row_starts_with_its_allocation_and_reads_its_walltime(slurm_cluster, tmp_path):
    """A job step on the private cluster: its row's start is the allocation's (the batch step's
    start, 2 s before the job's own step), its node and job id are SLURM's, and SIGTERM inside its
    walltime's last minutes (sbatch --signal=TERM@..., as the rules ask) closes it as `timed out`
    (SLURM 22.05 sets no SLURM_JOB_START_TIME / SLURM_JOB_END_TIME: the row reads /proc and squeue)."""
    c = slurm_cluster
    results = tmp_path / "results"
    script = tmp_path / "job.py"
    script.write_text(
        "import signal, sys, time\n"
        "from rethink import ledger\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
        f"with ledger.recording({str(results)!r}, rule='train_segment', job='train_segment/F/trunk/0000010'):\n"
        "    time.sleep(120)\n"
    )
    jid = c.run(
        "sbatch",
        "--parsable",
        "-t",
        "1",
        "--signal=TERM@45",
        "-o",
        str(tmp_path / "out"),
        "--wrap",
        f"sleep 2; exec srun {PY} {script}",
    ).stdout.strip()
    c.wait_job(jid, timeout=120)
    (row,) = ledger.read_rows(str(results))
    assert row["slurm_job_id"] == jid and row["node"] in c.nodes, row
    assert row["outcome"] == "timed out", (row, (tmp_path / "out").read_text())
    assert row["pid_start"] - row["start"] >= 1.5  # its step started 2 s after the allocation
