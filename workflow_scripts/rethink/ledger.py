"""The campaign's ledger: one row per job attempt, written by the job itself.

Only a job knows its attempt, node, GPUs, the iteration it resumed from and how it ended, so every
job of the workflow (rethink.cli.job) opens a row when it starts and closes it when it exits::

    <results>/campaign/rows/<rule>/<job key, '+'-joined>@<start ms>-<host>-<pid>.json

A row is written atomically (rethink.atomic) when it opens, at the job's first iteration, at each
periodic checkpoint, every HEARTBEAT_S seconds while the job lives (a daemon thread; 30, or
$RETHINK_LEDGER_HEARTBEAT) and when it closes, so a killed job's iterations are known to within a
heartbeat. A job killed with SIGKILL, by the OOM killer or with its node leaves its row open; reading
the ledger then says `killed` (or `node failure`, when SLURM requeued the same job id, which started
again with a higher SLURM_RESTART_COUNT), and `running` while the row's heartbeat is fresh.

Fields (jobs.csv has one column each, in ROW_FIELDS order, then the derived ones of `frame`):
    rule, job, run, family, line     the job (`job` is rethink.jobs.key); run is the run that pays
                                     for the work (a trunk segment's: the run the plan charges it to)
    from_iter, to_iter               the segment's iterations (an evaluation: its milestone both)
    identity                         hash of what determines the result (rethink.identity)
    gpus                             the GPUs the job asked for (0: CPU); a rehearsal's training
                                     job: the GPUs of the job it simulates (it trains on the CPU)
    slurm_job_id, slurm_restart, node (SLURM's name for it), host, pid, pid_start (when that process started)
    start                            the job's start (SLURM_JOB_START_TIME under SLURM, else the start
                                     of the job's command), epoch seconds
    first_iter, last_iter            when its first iteration began and its latest ended (an
                                     evaluation: when inference began and the stats were done)
    resumed_from, iter_reached       where its training started and got to (iterations done = the
                                     difference), last_checkpoint: its newest periodic checkpoint
    signal_s                         how long before its walltime SLURM signals the job (rethink.resources)
    end, exit_code, outcome          done, timed out, pre-empted, interrupted, diverged, failed;
                                     read: killed, node failure, running

Writing a row costs well under 10 ms (bench/bench_ledger.py). `snakemake grid`, the cost table, the
timeline (rethink.costs, rethink.timeline) and the campaign benchmark read the rows with `frame`.
Standard library only at import: every job imports it before its heavy modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

from .atomic import write_json_atomic

FORMAT = "rethink-ledger-row-1"
HEARTBEAT_S = float(os.environ.get("RETHINK_LEDGER_HEARTBEAT") or 30.0)
STALE_S = 3 * HEARTBEAT_S + 30  # an open row whose file is older than this belongs to a dead job
TIMEOUT_WINDOW_S = 600  # without the job's signal lead: a SIGTERM this close to the walltime's end is the walltime
SIGNAL_SLACK_S = 90  # SLURM signals up to 60 s before the lead the job asked for (--signal=TERM@lead)
# rules whose jobs hold a device for training or evaluation: a CPU job counts as one device there, as
# the plan counts it (rethink.grid.gpu_hours); other rules count their GPUs, 0 on a CPU
DEVICE_RULES = ("train_segment", "train_final", "evaluate", "evaluate_tta", "pretrain")
TRAIN_RULES = ("train_segment", "train_final")
OUTCOMES = ("done", "timed out", "pre-empted", "interrupted", "diverged", "failed", "killed", "node failure", "running")
ROW_FIELDS = (
    "rule",
    "job",
    "run",
    "family",
    "line",
    "from_iter",
    "to_iter",
    "identity",
    "gpus",
    "rehearsal",
    "slurm_job_id",
    "slurm_restart",
    "node",
    "host",
    "pid",
    "pid_start",
    "start",
    "first_iter",
    "last_iter",
    "resumed_from",
    "iter_reached",
    "last_checkpoint",
    "signal_s",
    "end",
    "exit_code",
    "outcome",
)


def rows_dir(results: str) -> Path:
    return Path(results) / "campaign" / "rows"


def process_start(pid: int | str = "self") -> float | None:
    """When process `pid` started (epoch seconds), from /proc; None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        boot = next(
            float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def job_start(env=os.environ) -> float:
    """The start of this job: SLURM's start of the allocation (SLURM_JOB_START_TIME, SLURM >= 23.02;
    before, the start of the job's first process under slurmstepd), else RETHINK_JOB_START (the
    warm interpreter's client sets it: workflow_scripts/warm.py), else this process's start."""
    now = time.time()
    for var in ("SLURM_JOB_START_TIME", "RETHINK_JOB_START"):
        with contextlib.suppress(TypeError, ValueError):
            t = float(env.get(var))
            if 0 < t <= now + 1:
                return t
    if env.get("SLURM_JOB_ID"):
        t = _slurm_batch_start(str(env["SLURM_JOB_ID"]))
        if t is not None:
            return t
    return process_start() or now


def _slurm_batch_start(job_id: str) -> float | None:
    """When this node's `slurmstepd: [<job>.batch]` started: the allocation's start, where the batch
    step runs on this node (the first node of the job)."""
    want = f"slurmstepd: [{job_id}.batch]".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "cmdline").read_bytes().startswith(want):
                    return process_start(proc.name)
    return None


def _slurm_end_time(env) -> float | None:
    """When this SLURM job's allocation ends: SLURM_JOB_END_TIME (SLURM >= 23.02), else squeue's
    end time (asked only when a stop signal ended the job)."""
    with contextlib.suppress(TypeError, ValueError):
        return float(env.get("SLURM_JOB_END_TIME"))
    if not env.get("SLURM_JOB_ID"):
        return None
    import datetime
    import subprocess

    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", str(env["SLURM_JOB_ID"]), "-o", "%e"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return datetime.datetime.fromisoformat(out).timestamp()
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def outcome_of(exit_code: int, env=os.environ, now: float | None = None, signal_s: float | None = None) -> str:
    """How a job that exited with `exit_code` ended (rethink.loop.main_cli's codes); `signal_s`: how
    long before its walltime the job asked SLURM to signal it (a stop signal then is the walltime)."""
    if exit_code == 0:
        return "done"
    if exit_code == 3:
        return "diverged"
    if exit_code == 130:
        return "interrupted"
    if exit_code in (138, 143):  # SIGUSR1 / SIGTERM after a resume checkpoint
        end = _slurm_end_time(env)
        window = TIMEOUT_WINDOW_S if signal_s is None else float(signal_s) + SIGNAL_SLACK_S
        if end is not None and (now or time.time()) >= end - window:
            return "timed out"
        return "pre-empted"
    return "failed"


class Row:
    """This job's open row; `update` changes fields in memory, `flush` writes them, `close` ends it."""

    def __init__(self, results: str, fields: dict, env=os.environ):
        self.lock = threading.Lock()
        self.fields = {k: None for k in ROW_FIELDS}
        self.fields.update(
            slurm_job_id=env.get("SLURM_JOB_ID"),
            slurm_restart=int(env.get("SLURM_RESTART_COUNT") or 0),
            node=env.get("SLURMD_NODENAME") or socket.gethostname(),
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=process_start(),
            start=job_start(env),
            rehearsal=False,
        )
        self.fields.update(fields)
        name = "+".join(str(self.fields["job"]).split("/")[1:]) or "job"
        stamp = f"{int(self.fields['start'] * 1000)}-{self.fields['node']}-{self.fields['pid']}"
        self.path = rows_dir(results) / str(self.fields["rule"]) / f"{name}@{stamp}.json"
        self.env = env
        self._stop = threading.Event()
        self._diverged = False
        self.flush()
        self._beat = threading.Thread(target=self._heartbeat, name="ledger-heartbeat", daemon=True)
        self._beat.start()

    def update(self, **fields) -> None:
        self.fields.update(fields)

    def flush(self) -> None:
        with self.lock:
            write_json_atomic(self.path, {"format": FORMAT, **self.fields}, sort_keys=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                self.flush()

    def mark_diverged(self) -> None:
        """The job ends with an output marked diverged (rethink.segment): exit status 0 reads as diverged."""
        self._diverged = True

    def close(self, exit_code: int) -> None:
        self._stop.set()
        now = time.time()
        diverged = exit_code == 0 and self._diverged
        self.fields.update(
            end=now,
            exit_code=int(exit_code),
            outcome="diverged" if diverged else outcome_of(exit_code, self.env, now, self.fields.get("signal_s")),
        )
        self.flush()


_current: Row | None = None


def current() -> Row | None:
    """The row this process's job opened (None outside a job: tests, a spec run by hand)."""
    return _current


def exit_code_of(exc: BaseException | None) -> int:
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


@contextlib.contextmanager
def recording(results: str | None, **fields):
    """Open this job's row under `results` for the block; close it with the block's exit status
    (a SystemExit's code, 1 for an exception). Nothing is recorded without `results`, or on a rank
    other than 0 of a multi-process job (torchrun: one row per job)."""
    global _current
    if not results or os.environ.get("RANK", "0") != "0" or _current is not None:
        yield None
        return
    try:
        row = Row(results, fields)
    except OSError as e:  # a ledger that cannot be written must not cost the job
        print(f"ledger: cannot write a row under {results}: {e}", flush=True)
        yield None
        return
    _current = row
    exc = None
    try:
        yield row
    except BaseException as e:
        exc = e
        raise
    finally:
        _current = None
        with contextlib.suppress(OSError):
            row.close(exit_code_of(exc))


# ------------------------------------------------------------------------------------ reading
def read_rows(results: str) -> list[dict]:
    """Every row under `results`, with `outcome` read for the open ones (see the module docstring)."""
    rows = []
    now = time.time()
    for p in sorted(rows_dir(results).glob("*/*.json")):
        try:
            rec = json.loads(p.read_text())
            mtime = p.stat().st_mtime
        except (OSError, ValueError):
            continue  # a row being replaced, or not one of ours
        if not isinstance(rec, dict) or rec.get("format") != FORMAT:
            continue
        if rec.get("outcome") is None:
            rec["outcome"] = "running" if now - mtime < STALE_S and _maybe_alive(rec) else "killed"
            rec["_seen"] = mtime  # the last sign of life of an open row
        rows.append(rec)
    requeued = {}
    for r in rows:  # a SLURM job id that started again after an unclosed row: the node went away
        if r.get("slurm_job_id"):
            requeued.setdefault(r["slurm_job_id"], []).append(int(r.get("slurm_restart") or 0))
    for r in rows:
        if (
            r["outcome"] == "killed"
            and r.get("slurm_job_id")
            and max(requeued[r["slurm_job_id"]]) > int(r.get("slurm_restart") or 0)
        ):
            r["outcome"] = "node failure"
    return rows


def _maybe_alive(rec: dict) -> bool:
    """False only where this machine can tell: the row's process (pid and start time) is gone."""
    if rec.get("host") != socket.gethostname() or rec.get("pid_start") is None:
        return True
    started = process_start(rec.get("pid"))
    return started is not None and abs(started - float(rec["pid_start"])) < 1.0


def frame(results: str, rows: list[dict] | None = None, scale: float = 1.0):
    """The ledger as a DataFrame, one row per job attempt in start order, with derived columns:
    attempt (1, 2, ... per job and identity), elapsed_s (wall seconds from start to end, so far for
    a running job), wall_s, devices (its GPUs; a CPU training or evaluation job counts as one), gpu_hours,
    iters_done, first_iter_s, seconds_per_iter, start_utc,
    end_utc. With `scale` (a rehearsal's compression) wall_s, gpu_hours and seconds_per_iter are
    simulated: a job's start-up to its first iteration (or evaluation) as it was, the compressed
    rest x scale. start, end and first_iter_s stay wall-clock."""
    import pandas as pd

    rows = read_rows(results) if rows is None else rows
    df = pd.DataFrame(rows, columns=[*ROW_FIELDS, "_seen"])
    for c in ("start", "first_iter", "last_iter", "end", "_seen", "resumed_from", "iter_reached", "last_checkpoint"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df.sort_values(["start", "pid"], kind="stable").reset_index(drop=True)
    df["attempt"] = df.groupby(["job", df["identity"].fillna("")], sort=False).cumcount() + 1
    now = time.time()
    end = df["end"].fillna(df["_seen"]).fillna(now)
    end = end.where(df["outcome"] != "running", now)  # a live job's wall time so far
    df["elapsed_s"] = (end - df["start"]).clip(lower=0).round(3)
    ready = df["first_iter"].clip(upper=end).fillna(df["start"])  # the compressed part starts here
    df["wall_s"] = ((ready - df["start"]) + (end - ready) * scale).clip(lower=0).round(3)
    devices = df["gpus"].fillna(0).astype(int)
    df["devices"] = devices.where(~df["rule"].isin(DEVICE_RULES), devices.clip(lower=1))
    df["gpu_hours"] = df["wall_s"] * df["devices"] / 3600.0
    df["iters_done"] = (df["iter_reached"] - df["resumed_from"]).where(df["rule"].isin((*TRAIN_RULES, "pretrain")))
    df["first_iter_s"] = (df["first_iter"] - df["start"]).round(3)
    done = df["iters_done"]  # first_iter: when the first iteration began; last_iter: when the latest ended
    df["seconds_per_iter"] = ((df["last_iter"] - df["first_iter"]) * scale / done).where(done > 0)
    for c in ("start", "end"):
        df[f"{c}_utc"] = pd.to_datetime(df[c], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return df.drop(columns=["_seen"])


def wasted_iterations(df):
    """Per training job attempt, the iterations it trained that another attempt of the same job and
    identity trains (or trained) again: what it did beyond the state it left behind for the next
    attempt (the next attempt's resumed_from). The last attempt wastes nothing."""
    out = df["iters_done"].fillna(0) * 0
    train = df[df["rule"].isin(TRAIN_RULES) & df["resumed_from"].notna()]
    for _, g in train.groupby(["job", train["identity"].fillna("")], sort=False):
        idx = list(g.index)
        for a, b in zip(idx, idx[1:]):
            out[a] = max(0, int(df.at[a, "iter_reached"]) - int(df.at[b, "resumed_from"]))
    return out


def write_jobs_csv(results: str, df=None) -> str:
    """<results>/campaign/jobs.csv from the rows (atomic); returns its path."""
    from .atomic import atomic_file

    df = frame(results) if df is None else df
    out = Path(results) / "campaign" / "jobs.csv"
    df = df.assign(wasted_iters=wasted_iterations(df))
    with atomic_file(out) as f:
        df.to_csv(f, index=False, float_format="%.6g")
    return str(out)
