"""Run the campaign on SLURM unattended: start it, or start it again after Snakemake died, without
training anything twice and without a manual step.

    python workflow_scripts/slurm_run.py --profile slurm -j 32 [any other snakemake option]

Run it in the working directory, as `snakemake` itself (tmux/screen/nohup). Every option it does
not know goes to Snakemake. Before Snakemake starts, and again whenever it restarts it:

1. No other supervisor of this directory is alive: ``.snakemake/slurm_run.json`` names its host and
   pid; it is refreshed every HEARTBEAT_S, so one that is older than 4 heartbeats, or whose pid is
   gone on this host, is stale. A live one, or a Snakemake of this directory running on this host
   without a supervisor, stops this one, naming it.
2. Leftover jobs: SLURM jobs of this directory that a dead Snakemake left queued or running (its
   "incomplete" marks name their SLURM ids; any job whose working directory is this one counts).
   It waits for them to end, printing them, so that no segment runs twice and their work is kept;
   with ``--cancel-leftovers`` it sends them SIGTERM instead (training writes a resume checkpoint
   and exits) and starts at once.
3. Outputs of leftover jobs that ended COMPLETED lose their "incomplete" mark
   (``snakemake --cleanup-metadata``): Snakemake keeps them instead of training them again
   (`rerun-incomplete` would delete and redo them). A job SLURM no longer lists (older than
   MinJobAge) counts as completed where its output is a checkpoint that loads whole.
4. ``snakemake --unlock`` (safe now: no Snakemake of this directory is alive), then Snakemake.

While Snakemake runs, a watchdog restarts it (from step 2, at most ``--max-restarts`` times) when
  * it has lost its jobs: its log silent for ``--lost-after`` seconds (LOST_AFTER_S: longer than
    the plugin's longest wait between two status checks, 180 s, + latency-wait), no job of this
    directory queued or running in SLURM, no local rule running.
    snakemake-executor-plugin-slurm 2.8.0 drops every job it tracks when all status queries of one
    cycle fail (the controller down, and no slurmdbd for its fallback to sacct), then waits
    forever (docs/slurm.md). It is killed (SIGKILL; none of its jobs is alive);
  * it ended with an error after ``sbatch`` failed (the controller unreachable for all retries).
Exit status: Snakemake's last one (2: another supervisor is alive).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HEARTBEAT_S = 30
# What Snakemake runs itself, which is no rule: the SLURM commands (through `sh`), and the solvers of
# its ILP job scheduler (pulp runs `cbc` at every job selection; with a thousand jobs to choose from,
# often enough that a Snakemake which had lost its jobs was never seen idle: bench_campaign, full grid)
SNAKEMAKE_TOOLS = {"squeue", "sacct", "scontrol", "sbatch", "scancel", "sinfo", "sh", "cbc", "glpsol", "highs"}
LOST_AFTER_S = 300  # > the plugin's longest wait between status checks (180 s) + latency-wait (60 s)
STATE = Path(".snakemake") / "slurm_run.json"
ACTIVE = {
    "PENDING",
    "RUNNING",
    "COMPLETING",
    "CONFIGURING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}  # not PREEMPTED: final under
# PreemptMode=CANCEL, where the plugin (2.8.0) takes it for running forever: the watchdog then restarts


def say(msg: str) -> None:
    print(f"slurm_run {time.strftime('%H:%M:%S')}: {msg}", flush=True)


def slurm_jobs(poll_s: float) -> dict[str, dict]:
    """Every job of this user SLURM lists (finished ones until MinJobAge): id -> state, workdir,
    comment. Waits, saying so, while the controller does not answer."""
    cmd = ["squeue", "--me", "-h", "-t", "all", "-o", "%i|%T|%e|%Z|%k"]
    told = False
    while True:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            r = None
        if r is not None and r.returncode == 0:
            break
        if not told:
            say(f"squeue fails ({(r.stderr.strip() if r else 'timed out')}); waiting for the controller")
            told = True
        time.sleep(poll_s)
    jobs = {}
    for line in r.stdout.splitlines():
        parts = line.split("|", 4)
        if len(parts) == 5:
            try:
                end = datetime.datetime.fromisoformat(parts[2]).timestamp()
            except ValueError:  # N/A, Unknown
                end = None
            jobs[parts[0]] = {"state": parts[1].split()[0], "end": end, "workdir": parts[3], "comment": parts[4]}
    return jobs


def incomplete_marks(root: Path) -> dict[str, str | None]:
    """Snakemake's "incomplete" marks (.snakemake/incomplete): output path -> SLURM job id."""
    base = root / ".snakemake" / "incomplete"
    out = {}
    for f in base.rglob("*") if base.is_dir() else ():
        if not f.is_file() or f.name == "migration_underway":
            continue
        b64 = "".join(p.lstrip("@") for p in f.relative_to(base).parts)
        try:
            path = base64.urlsafe_b64decode(b64.encode()).decode()
            out[path] = json.loads(f.read_text() or "{}").get("external_jobid")
        except (ValueError, OSError):
            continue
    return out


def own_active(jobs: dict[str, dict], root: Path, marked: set) -> dict[str, dict]:
    here = str(root.resolve())
    return {
        i: j
        for i, j in jobs.items()
        if j["state"] in ACTIVE and (i in marked or (j["workdir"] == here and j["comment"].startswith("rule_")))
    }


def whole_checkpoint(path: str) -> bool:
    if not path.endswith(".pth") or not os.path.exists(path):
        return False
    from rethink import checkpoint  # torch: only here

    try:
        checkpoint.load(path)
        return True
    except checkpoint.CheckpointError:
        return False


class Supervisor:
    def __init__(self, args, smk_args: list[str]):
        self.a, self.smk = args, smk_args
        self.root = Path.cwd()
        self.state = self.root / STATE

    def snakemake(self, *extra: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "snakemake", *self.smk, *extra], **kw)

    # ------------------------------------------------------------------ 1: one supervisor
    def claim(self) -> bool:
        if self.state.exists():
            try:
                other = json.loads(self.state.read_text())
            except (ValueError, OSError):
                other = {}
            age = time.time() - self.state.stat().st_mtime
            alive = age < 4 * HEARTBEAT_S and (
                other.get("host") != socket.gethostname() or _pid_alive(int(other.get("pid", 0)))
            )
            if alive and other.get("pid") != os.getpid():
                say(
                    f"another supervisor of {self.root} is alive (pid {other.get('pid')} on host "
                    f"{other.get('host')}, heartbeat {age:.0f} s ago); not starting a second one"
                )
                return False
        other = _snakemake_here(self.root)
        if other:
            say(f"a snakemake of {self.root} runs without this supervisor (pid {other}); not starting")
            return False
        self.beat()
        return True

    def beat(self) -> None:
        self.state.parent.mkdir(exist_ok=True)
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))
        tmp.replace(self.state)

    # ------------------------------------------------------------------ 2-4: before Snakemake
    def settle_leftovers(self) -> None:
        marks = incomplete_marks(self.root)
        marked = {j for j in marks.values() if j}
        left = own_active(slurm_jobs(self.a.poll), self.root, marked)
        if left:
            if self.a.cancel_leftovers:
                say(f"sending SIGTERM to {len(left)} leftover job(s): {' '.join(sorted(left))}")
                subprocess.run(["scancel", "--signal=TERM", "--full", *left], check=False)
            else:
                say(
                    f"waiting for {len(left)} leftover job(s) of a previous Snakemake to end (they keep "
                    f"their work): " + ", ".join(f"{i} {j['comment']}" for i, j in sorted(left.items()))
                )
        t0, waited = time.monotonic(), bool(left)
        while left:
            time.sleep(self.a.poll)
            self.beat()
            left = own_active(slurm_jobs(self.a.poll), self.root, marked)
        if waited:
            say(f"leftover jobs ended after {time.monotonic() - t0:.0f} s")
        marks, jobs = incomplete_marks(self.root), slurm_jobs(self.a.poll)  # a job that completes unmarks its outputs
        keep = [
            p
            for p, j in marks.items()
            if os.path.exists(p)
            and ((j in jobs and jobs[j]["state"] == "COMPLETED") or (j not in jobs and whole_checkpoint(p)))
        ]
        if keep:
            say(f"keeping {len(keep)} output(s) that leftover jobs completed: " + ", ".join(keep))
            self.snakemake("--cleanup-metadata", *keep, stdout=subprocess.DEVNULL).wait()
        if (self.root / ".snakemake" / "locks").is_dir() and any((self.root / ".snakemake" / "locks").iterdir()):
            say("removing the dead Snakemake's lock (snakemake --unlock)")
            self.snakemake("--unlock", stdout=subprocess.DEVNULL).wait()

    # ------------------------------------------------------------------ Snakemake and its watchdog
    def run_once(self) -> tuple[int, str]:
        logdir = self.root / ".snakemake" / "log"
        before = set(logdir.glob("*.snakemake.log")) if logdir.is_dir() else set()
        proc = self.snakemake()
        say(f"snakemake started (pid {proc.pid})")
        last, silent_since = None, time.monotonic()
        while proc.poll() is None:
            try:
                time.sleep(self.a.poll)
            except KeyboardInterrupt:  # Ctrl-C reached Snakemake too: it cancels its jobs and ends
                proc.wait()
                raise
            self.beat()
            log = _newest(logdir, before)
            mark = (log, log.stat().st_size) if log else None
            if mark != last or _busy_children(proc.pid):
                last, silent_since = mark, time.monotonic()
                continue
            silent = time.monotonic() - silent_since
            if silent < self.a.lost_after or own_active(slurm_jobs(self.a.poll), self.root, set()):
                continue
            if proc.poll() is None:
                say(
                    f"snakemake (pid {proc.pid}) lost track of its jobs: silent for {silent:.0f} s, no job of "
                    "this directory queued or running in SLURM, nothing running locally; restarting it"
                )
                proc.kill()  # SIGKILL: none of its jobs is alive; what they left is judged as after a crash
                proc.wait()
                return proc.returncode, "lost its jobs"
        log = _newest(logdir, before)
        text = log.read_text(errors="replace") if log else ""
        return proc.returncode, ("sbatch failed" if proc.returncode and "SLURM sbatch failed" in text else "")

    def main(self) -> int:
        if not self.claim():
            return 2
        try:
            restarts = 0
            while True:
                self.settle_leftovers()
                rc, why = self.run_once()
                if not why or restarts >= self.a.max_restarts:
                    say(f"snakemake ended with exit status {rc}" + (f" ({why}; no restarts left)" if why else ""))
                    return rc
                restarts += 1
                say(f"restart {restarts}/{self.a.max_restarts} ({why})")
        finally:
            self.state.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return pid > 0
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _busy_children(pid: int) -> bool:
    """A child of Snakemake other than the tools it runs itself (SNAKEMAKE_TOOLS): a local rule running."""
    import psutil

    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return False
    for k in kids:
        try:
            if k.name() not in SNAKEMAKE_TOOLS:
                return True
        except psutil.Error:
            continue
    return False


def _snakemake_here(root: Path) -> int | None:
    """The pid of a Snakemake on this host whose working directory is `root`, other than a SLURM
    job's own (``--target-jobs``), or None."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if (
            "snakemake" in cmd
            and "--target-jobs" not in cmd
            and "slurm_run.py" not in cmd
            and proc.info["cwd"] == str(root.resolve())
            and proc.info["pid"] != os.getpid()
        ):
            return proc.info["pid"]
    return None


def _newest(logdir: Path, before: set) -> Path | None:
    logs = [p for p in logdir.glob("*.snakemake.log") if p not in before] if logdir.is_dir() else []
    return max(logs, key=lambda p: p.stat().st_mtime, default=None)


def parse(argv: list[str]):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument(
        "--cancel-leftovers", action="store_true", help="SIGTERM a dead Snakemake's jobs instead of waiting for them"
    )
    ap.add_argument(
        "--lost-after",
        type=float,
        default=LOST_AFTER_S,
        help=f"restart a Snakemake silent this long with no job of this directory in SLURM and "
        f"nothing running locally (seconds, default {LOST_AFTER_S})",
    )
    ap.add_argument("--max-restarts", type=int, default=5, help="default 5")
    ap.add_argument("--poll", type=float, default=30.0, help="seconds between checks (default 30)")
    return ap.parse_known_args(argv)


if __name__ == "__main__":
    args, rest = parse(sys.argv[1:])
    sys.exit(Supervisor(args, rest).main())
