"""The warm interpreter (workflow_scripts/warm.py): a job forked from a process with torch imported
behaves as the same job started cold (output, exit status, folder, environment, signals)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, script_module

WARM = ROOT / "workflow_scripts" / "warm.py"

JOB = r"""
import os, signal, sys, time
print("preloaded", "torch" in sys.modules, "cwd", os.getcwd(), "var", os.environ.get("RETHINK_TEST_VAR"))
print("stdin", sys.stdin.read().strip())
print("an error line", file=sys.stderr)
Path = __import__("pathlib").Path
Path("pid").write_text(str(os.getpid()))
if sys.argv[1] == "wait":
    signal.signal(signal.SIGTERM, lambda s, f: (print("stopping on SIGTERM", flush=True), sys.exit(143)))
    for _ in range(600):
        time.sleep(0.1)
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def warm_dir():
    """A folder of its own for the servers a test starts (a short path: a socket's is limited);
    afterwards every server that logged there is ended by its PID."""
    folder = Path(tempfile.mkdtemp(prefix="rw", dir="/tmp"))
    yield folder
    for pid in started_in(folder):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    shutil.rmtree(folder, ignore_errors=True)


def started_in(folder: Path) -> list[int]:
    """The servers a test started: those whose command line names its folder."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(folder) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def job(tmp_path: Path, warm_dir: Path, *args, warm=True, **kw) -> subprocess.Popen:
    (tmp_path / "job.py").write_text(JOB)
    cmd = [sys.executable, *([str(WARM)] if warm else []), "job.py", *args]
    env = {**os.environ, "RETHINK_WARM_DIR": str(warm_dir), "RETHINK_TEST_VAR": "seen"}
    return subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def servers(warm_dir: Path) -> list[int]:
    return [
        int(p) for log in warm_dir.glob("*.log") for p in re.findall(r"warm interpreter (\d+) serving", log.read_text())
    ]


def test_a_warm_job_is_the_cold_job(tmp_path, warm_dir):
    cold = job(tmp_path, warm_dir, "exit", "7", warm=False)
    c_out, c_err = cold.communicate("hello", timeout=300)
    runs = []
    for _ in range(2):
        p = job(tmp_path, warm_dir, "exit", "7")
        runs.append((p.communicate("hello", timeout=300), p.returncode))
    assert cold.returncode == 7 and all(rc == 7 for _, rc in runs)
    assert c_out.startswith("preloaded False")  # a cold interpreter imports torch itself
    for (out, err), _ in runs:
        assert out == c_out.replace("preloaded False", "preloaded True")  # the same folder, variable, stdin
        assert err == c_err == "an error line\n"
    assert len(servers(warm_dir)) == 1  # the second job used the server the first one started


def test_signals_reach_the_job_and_a_killed_command_ends_it(tmp_path, warm_dir):
    p = job(tmp_path, warm_dir, "wait", "0")
    p.stdin.close()
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 300
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    assert p.returncode == 143 and "stopping on SIGTERM" in p.stdout.read()
    pid_file.unlink()
    p = job(tmp_path, warm_dir, "wait", "0")
    p.stdin.close()
    while not pid_file.exists():
        time.sleep(0.1)
    forked = int(pid_file.read_text())
    p.kill()  # SIGKILL: the command cannot forward it; the server ends the job when its socket closes
    p.wait(timeout=60)
    deadline = time.monotonic() + 60
    while (
        Path(f"/proc/{forked}").exists()
        and Path(f"/proc/{forked}/status").read_text().find("zombie") < 0
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not Path(f"/proc/{forked}").exists() or "zombie" in Path(f"/proc/{forked}/status").read_text()


def test_stop_lets_a_running_job_finish_and_the_next_job_starts_a_new_server(tmp_path, warm_dir):
    p = job(tmp_path, warm_dir, "exit", "0")
    p.communicate("", timeout=300)
    first = servers(warm_dir)
    assert len(first) == 1
    env = {**os.environ, "RETHINK_WARM_DIR": str(warm_dir)}
    subprocess.run([sys.executable, str(WARM), "--stop"], env=env, check=True, timeout=60)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{first[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{first[0]}").exists()
    p = job(tmp_path, warm_dir, "exit", "0")
    p.communicate("", timeout=300)
    assert p.returncode == 0 and len(servers(warm_dir)) == 2


def test_an_edit_of_the_code_names_another_server(tmp_path, monkeypatch):
    """The socket's name holds every module's mtime: edited code never runs in a server that
    imported the old one."""
    copy = tmp_path / "workflow_scripts"
    shutil.copytree(ROOT / "workflow_scripts", copy, ignore=shutil.ignore_patterns("__pycache__"))
    warm = script_module("warm", copy)
    monkeypatch.setattr(warm, "HERE", copy)
    before = warm.socket_path()
    module = copy / "rethink" / "loop.py"
    os.utime(module, ns=(module.stat().st_atime_ns, module.stat().st_mtime_ns + 10**9))
    assert warm.socket_path() != before
