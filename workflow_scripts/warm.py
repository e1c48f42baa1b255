"""A warm interpreter for local runs: a job's script runs in a process forked from one that has
torch, torchvision, pycocotools and the workflow's modules imported already, instead of importing
them again (the seconds of imports each job would spend: the README gives what was measured).

    python workflow_scripts/warm.py SCRIPT [ARGS...]

is what the rules run instead of `python SCRIPT ARGS` where the config sets `warm_interpreter: true`
(for local runs: configs/tiny.yaml sets it, config.yaml does not). The command behaves as the plain one: the
script's stdin, stdout and stderr are this process's (passed over the socket), its working folder
and environment are this process's, SIGTERM / SIGINT / SIGUSR1 sent here reach it, and the exit
status is the script's (128 + n if signal n ended it).

The server is started by the first job that finds none (under a lock, so two jobs start one) and
ends after IDLE_S seconds without a job, or when the workflow ends (`--stop`; jobs running then
finish). Its socket (in $RETHINK_WARM_DIR, else /tmp) has a name that
holds a hash of the interpreter and of every workflow module's path and mtime: after an edit of the
code or a new environment, jobs start a new server instead of running stale code. A server that
cannot start (a read-only /tmp, no fork) makes the job run cold, in this process, with a line
saying why.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rethink.ledger import process_start  # standard library only

HERE = Path(__file__).resolve().parent
IDLE_S = 120
START_S = 120  # how long a job waits for a starting server (imports on a loaded machine)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
DEFAULT_THREADS = 0  # torch's intra-op threads in the server, as a cold interpreter would have them


def socket_path() -> str:
    h = hashlib.sha256(sys.executable.encode())
    for p in sorted(HERE.rglob("*.py")):
        h.update(f"{p}:{p.stat().st_mtime_ns}".encode())
    folder = os.environ.get("RETHINK_WARM_DIR") or "/tmp"  # not TMPDIR: Snakemake sets that per job
    return os.path.join(folder, f"rethink-warm-{os.getuid()}-{h.hexdigest()[:16]}.sock")


# ------------------------------------------------------------------------------------- client
def _connect(path: str):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return s
    except OSError:
        s.close()
        return None


def _start_server(path: str):
    """Connect to the server at `path`, starting it first if none answers."""
    s = _connect(path)
    if s:
        return s
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one job starts the server; the others wait here
        s = _connect(path)
        if s:
            return s
        if os.path.exists(path):
            os.unlink(path)  # a dead server's socket
        log = open(path + ".log", "ab")
        # the server's own thread settings are torch's defaults; each job sets its own (_child)
        env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", path],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            s = _connect(path)
            if s:
                return s
            if proc.poll() is not None:
                raise OSError(f"the warm interpreter exited ({proc.returncode}); see {path}.log")
            time.sleep(0.05)
        raise OSError(f"the warm interpreter did not answer in {START_S} s; see {path}.log")


def run(argv: list[str]) -> int:
    pending: list[int] = []

    def forward(signum, frame):
        pending.append(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    # the job started with this process, not with the fork that runs it (its ledger row: rethink.ledger)
    env = {**os.environ, "RETHINK_JOB_START": str(process_start() or time.time())}
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": env}).encode() + b"\n"
    for _ in range(3):  # a server that was ending as this job connected answers nothing: start another
        try:
            s = _start_server(socket_path())
        except OSError as e:
            print(f"warm: {e}; running cold", file=sys.stderr)
            for sig in FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
            return cold(argv)
        try:
            socket.send_fds(s, [request], [0, 1, 2])
        except OSError:
            continue
        status = _wait(s, pending)
        if status is not None:
            return status
    print("warm: the warm interpreter took no job after 3 tries", file=sys.stderr)
    return 1


def _wait(s, pending: list[int]) -> int | None:
    """The job's exit status; None if the server closed before it started the job."""
    buf, started = b"", False
    while True:
        while pending and started:
            s.sendall(json.dumps({"signal": pending.pop(0)}).encode() + b"\n")
        try:
            ready, _, _ = select.select([s], [], [], 0.2)
        except InterruptedError:
            continue
        if not ready:
            continue
        chunk = s.recv(4096)
        if not chunk:
            if not started:
                return None
            print("warm: the warm interpreter went away before the job ended", file=sys.stderr)
            return 1
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            msg = json.loads(line)
            if "status" in msg:
                return int(msg["status"])
            started = True  # {"started": pid}


def cold(argv: list[str]) -> int:
    import runpy

    sys.argv = list(argv)
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        return _exit_code(e)
    return 0


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


# ------------------------------------------------------------------------------------- server
def _preload() -> None:
    """What the scripts import, imported once (no CUDA initialised, no thread pool started)."""
    import pycocotools.cocoeval  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    from rethink import evaluate, loop, pretrain, segment  # noqa: F401
    from rethink.engines import get_engine

    get_engine("torchvision")
    global DEFAULT_THREADS
    DEFAULT_THREADS = torch.get_num_threads()


def _child(sockets: list, request: dict, fds: list[int]) -> None:
    """In the forked process: become the job and run its script; never returns."""
    code = 1
    try:
        for s in sockets:  # the server's: the listener and every job's connection
            s.close()
        for sig in FORWARDED + (signal.SIGCHLD,):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        for i, fd in enumerate(fds[:3]):
            os.dup2(fd, i)
            os.close(fd)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False, buffering=1)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import torch

        threads = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else DEFAULT_THREADS)
        code = cold(request["argv"])
    except BaseException:  # the job's own traceback, as a cold interpreter prints it
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(path: str) -> None:
    """The server at socket `path`: each job's request forks a job; the signals its command gets
    are passed on, its exit status sent back; ends once it takes no more jobs and none runs."""
    _preload()
    _Server(path).run()


class _Server:
    def __init__(self, path: str):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.jobs: dict = {}  # conn -> pid
        self.gone: set = set()  # conns whose command went away (its job was sent SIGTERM)
        self.idle_since = time.monotonic()

    def run(self) -> None:
        print(f"warm interpreter {os.getpid()} serving {self.path}", flush=True)
        while self.listener or self.jobs:
            watched = [c for c in self.jobs if c not in self.gone]
            ready, _, _ = select.select([self.listener, *watched] if self.listener else watched, [], [], 0.2)
            for r in ready:
                if r is self.listener:
                    self._accept()
                else:
                    self._relay(r)
            self._reap()
            if self.listener and not self.jobs and time.monotonic() - self.idle_since > IDLE_S:
                self._stop_listening()

    def _stop_listening(self) -> None:
        _close(self.listener, self.path)
        self.listener = None

    def _accept(self) -> None:
        """A new job's request: fork it (or, a stop request: no new jobs; those running finish)."""
        conn, _ = self.listener.accept()
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            while not msg.endswith(b"\n"):
                more = conn.recv(1 << 20)
                if not more:
                    break
                msg += more
            request = json.loads(msg)
        except (OSError, ValueError):  # a job that went away while it connected
            conn.close()
            return
        if request.get("stop"):
            conn.close()
            self._stop_listening()
            return
        pid = os.fork()
        if pid == 0:
            _child([conn, self.listener, *self.jobs], request, fds)
        for fd in fds:
            os.close(fd)
        self.jobs[conn] = pid
        try:
            conn.sendall(json.dumps({"started": pid}).encode() + b"\n")
        except OSError:
            _kill(pid)
            self.gone.add(conn)

    def _relay(self, conn) -> None:
        """The signals a job's command passes on; its command gone (killed): so is the job."""
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        pid = self.jobs[conn]
        for line in data.splitlines():
            try:
                os.kill(pid, int(json.loads(line)["signal"]))
            except (ProcessLookupError, ValueError, KeyError):
                pass
        if not data:
            _kill(pid)
            self.gone.add(conn)

    def _reap(self) -> None:
        """Jobs that ended: their exit status to their command (128 + n for signal n)."""
        for conn, pid in list(self.jobs.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                try:
                    conn.sendall(json.dumps({"status": 128 - code if code < 0 else code}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()
                del self.jobs[conn]
                self.gone.discard(conn)
                self.idle_since = time.monotonic()


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _close(listener, path: str) -> None:
    """Take no more jobs: a job that connects from now on starts a new server."""
    if os.path.exists(path):
        os.unlink(path)
    listener.close()


def stop() -> None:
    """Ask the server of this code, if one runs, to end (the workflow's onsuccess/onerror)."""
    s = _connect(socket_path())
    if s:
        socket.send_fds(s, [b'{"stop": true}\n'], [])
        s.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    elif sys.argv[1:2] == ["--stop"]:
        stop()
    elif len(sys.argv) < 2:
        sys.exit(__doc__)
    else:
        sys.exit(run(sys.argv[1:]))
