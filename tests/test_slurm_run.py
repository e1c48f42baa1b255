"""The supervisor's watchdog (workflow_scripts/slurm_run.py) without a cluster: what counts as a local
rule running under Snakemake, which keeps it from restarting a Snakemake that looks idle."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import psutil

from conftest import script_module

slurm_run = script_module("slurm_run")


def _parent_of(tmp_path, argv: list[str]) -> subprocess.Popen:
    """A Python process standing in for Snakemake, with `argv` as its one child."""
    code = f"import subprocess, time; subprocess.Popen({argv!r}); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return parent


def test_snakemakes_own_tools_are_not_a_local_rule(tmp_path):
    # the ILP scheduler's solver (pulp runs `cbc`) ran often enough in a 1,470-job campaign that a
    # Snakemake which had lost its jobs never looked idle, and was never restarted
    cbc = tmp_path / "cbc"
    shutil.copy(shutil.which("sleep"), cbc)
    for child, busy in (([str(cbc), "30"], False), (["bash", "-c", "sleep 30; true"], True)):
        parent = _parent_of(tmp_path, child)
        try:
            assert slurm_run._busy_children(parent.pid) is busy, child
        finally:
            for p in psutil.Process(parent.pid).children(recursive=True):
                p.kill()
            parent.kill()
            parent.wait()
