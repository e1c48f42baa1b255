"""SLURM tests on a real (private, single-node) cluster started by tests/lab/slurm_cluster.py.

Run:  .venv/bin/python -m pytest -m slurm tests/test_slurm.py -v
They are skipped, with the reason printed, where SLURM cannot be started (not root,
packages missing and not installable with .ci/slurm.sh).

Every snakemake call runs under `timeout -k 10 <s>`: snakemake ignores SIGTERM while
it waits for remote jobs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rethink_lab import slurm_cluster as cluster_module
from rethink_lab.slurm_cluster import FAST_POLL

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "profiles" / "slurm"
VENV_BIN = str(Path(sys.executable).parent)


def job_env(cluster, **extra) -> dict:
    """Environment for snakemake: the test cluster and this venv on PATH."""
    if cluster is not None:
        return cluster.job_env(**extra)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([VENV_BIN, env.get("PATH", "")])
    env.update(extra)
    return env


def run_snakemake(args, cwd, env, timeout=150) -> subprocess.CompletedProcess:
    cmd = ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def explain(proc, cluster=None) -> str:
    parts = [f"rc={proc.returncode}", "--- stdout", proc.stdout[-4000:], "--- stderr", proc.stderr[-8000:]]
    if cluster is not None:
        parts.append(cluster.debug_info(tail=20))
    return "\n".join(parts)


def slurm_ids(text: str) -> list[str]:
    return re.findall(r"submitted with SLURM jobid (\d+)", text)


def test_skip_reason_is_explicit(monkeypatch):
    """Where SLURM cannot run, the fixture skips with a reason, never silently."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in cluster_module.skip_reason()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(cluster_module, "_which", lambda name: None)
    monkeypatch.setenv("RETHINK_SLURM_NO_INSTALL", "1")
    reason = cluster_module.skip_reason()
    assert "slurmctld" in reason and ".ci/slurm.sh" in reason


# --------------------------------------------------------------------------- (a)
def test_cluster_schedules_gpus(slurm_cluster):
    c = slurm_cluster
    out = c.root / "gpu-job.out"
    jid = c.run(
        "sbatch",
        "--parsable",
        "--gres=gpu:1",
        "-t",
        "2",
        "-o",
        str(out),
        "--wrap",
        "echo GPUS=$SLURM_GPUS_ON_NODE CVD=$CUDA_VISIBLE_DEVICES",
    ).stdout.strip()
    assert c.wait_job(jid) == "COMPLETED", c.debug_info()
    info = c.job_info(jid)
    assert "gres:gpu:1" in info.get("TresPerNode", ""), info["_raw"]
    assert "gpu:1" in info.get("JOB_GRES", ""), info["_raw"]
    assert "GPUS=1" in out.read_text(), out.read_text()

    # GPUs are a real constraint: while a 2-GPU job runs, a 1-GPU job must wait
    # for Resources (CPUs are free: 2 cores, 1 per job).
    big = c.run(
        "sbatch", "--parsable", "--gres=gpu:2", "-t", "2", "-o", "/dev/null", "--wrap", "sleep 8"
    ).stdout.strip()
    deadline = time.monotonic() + 20
    while c.job_info(big)["JobState"] != "RUNNING":
        assert time.monotonic() < deadline, c.debug_info()
        time.sleep(0.2)
    small = c.run("sbatch", "--parsable", "--gres=gpu:1", "-t", "2", "-o", "/dev/null", "--wrap", "true").stdout.strip()
    deadline = time.monotonic() + 6  # a few scheduler passes (sched_interval=2)
    while True:
        waiting = c.job_info(small)
        if waiting["Reason"] == "Resources" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert waiting["JobState"] == "PENDING" and waiting["Reason"] == "Resources", waiting["_raw"]
    assert c.job_info(big)["JobState"] == "RUNNING"
    assert c.wait_job(big) == "COMPLETED"
    assert c.wait_job(small) == "COMPLETED"


# --------------------------------------------------------------------------- (b)
DRY_SNAKEFILE = """\
rule all:
    input: "a.txt"
rule a:
    output: "a.txt"
    shell: "echo a > {output}"
"""


def test_install_profile_then_profile_by_name(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = job_env(None, HOME=str(home))
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("SNAKEMAKE_PROFILE", None)
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "Snakefile").write_text(DRY_SNAKEFILE)

    before = run_snakemake(["--profile", "slurm", "-n"], wf, env, timeout=60)
    assert before.returncode != 0 and "profile" in before.stderr + before.stdout

    inst = [sys.executable, str(REPO / "workflow_scripts" / "install_profile.py")]
    p = subprocess.run(inst, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    dest = home / ".config" / "snakemake" / "slurm"
    assert dest.is_symlink() and dest.resolve() == PROFILE.resolve(), p.stdout
    assert str(dest) in p.stdout
    again = subprocess.run(inst, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "already installed" in again.stdout

    dry = run_snakemake(["--profile", "slurm", "-n"], wf, env, timeout=60)
    assert dry.returncode == 0, explain(dry)
    # the profile's default-resources reached the job: it really was read
    assert "runtime=60" in dry.stdout and "mem_mb=4000" in dry.stdout, dry.stdout

    # a different profile of the same name is not overwritten without --force
    dest.unlink()
    dest.mkdir()
    (dest / "profile.yaml").write_text("executor: local\n")
    refused = subprocess.run(inst, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert (dest / "profile.yaml").read_text() == "executor: local\n"
    forced = subprocess.run(inst + ["--force"], env=env, capture_output=True, text=True)
    assert forced.returncode == 0 and dest.is_symlink(), forced.stdout + forced.stderr
    backups = list(dest.parent.glob("slurm.bak-*"))
    assert len(backups) == 1 and (backups[0] / "profile.yaml").read_text() == "executor: local\n"


# --------------------------------------------------------------------------- (c)
TOY_SNAKEFILE = """\
rule all:
    input: expand("train_{i}.json", i=[1, 2])

rule prepare:
    output: "data.json"
    resources: runtime=2, mem_mb=300, cpus_per_task=1
    run:
        import json, runpy
        json.dump(runpy.run_path("probe.py")["ancestry"](), open(output[0], "w"))

rule train:
    input: "data.json"
    output: json="train_{i}.json", chain="chain_{i}.json"
    threads: 2
    resources: gpu=1, runtime=3, mem_mb=600, cpus_per_task=2
    shell:
        "python probe.py > {output.chain} && echo \\"$SLURM_JOB_ID\\" > {output.chain}.id && "
        "python -c 'import json, os, sys; json.dump(dict("
        "job=os.environ.get(\\"SLURM_JOB_ID\\"), gpus=os.environ.get(\\"SLURM_GPUS_ON_NODE\\"), "
        "cvd=os.environ.get(\\"CUDA_VISIBLE_DEVICES\\"), omp=os.environ.get(\\"OMP_NUM_THREADS\\"), "
        "prefix=sys.prefix), open(\\"{output.json}\\", \\"w\\"))'"
"""
# The command lines of a job's processes, from itself up to SLURM's slurmstepd.
PROBE = """\
import json, os, sys

def ancestry():
    chain, pid = [], os.getpid()
    while pid > 1:
        if open(f"/proc/{pid}/comm").read().strip() == "slurmstepd":
            break
        chain.append(open(f"/proc/{pid}/cmdline").read().replace("\\0", " ").strip())
        pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    return chain

if __name__ == "__main__":
    json.dump(ancestry(), sys.stdout)
"""


def test_toy_workflow_through_profile(slurm_cluster, tmp_path):
    c = slurm_cluster
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    (tmp_path / "probe.py").write_text(PROBE)
    proc = run_snakemake(["--profile", str(PROFILE), *FAST_POLL], tmp_path, job_env(c))
    assert proc.returncode == 0, explain(proc, c)
    ids = slurm_ids(proc.stderr + proc.stdout)
    assert len(ids) == 3, explain(proc)

    results = [json.loads((tmp_path / f"train_{i}.json").read_text()) for i in (1, 2)]
    for r in results:
        assert r["job"] in ids and r["gpus"] == "1", r
        assert r["omp"] == "2", r  # the job's threads, as Snakemake's shell() sets them
        assert Path(r["prefix"]).resolve() == Path(sys.prefix).resolve(), r  # same venv
    # profiles/slurm's executor (slurm-direct): a shell rule's batch job runs its command with no
    # Snakemake in between; a `run:` rule needs a Snakemake on the node, and has one
    for i in (1, 2):
        chain = json.loads((tmp_path / f"chain_{i}.json").read_text())
        assert chain and not any("snakemake" in cmd for cmd in chain), chain
        # `$` in a command reaches the batch job unexpanded (the login node has no SLURM_JOB_ID)
        assert (tmp_path / f"chain_{i}.json.id").read_text().strip() == results[i - 1]["job"]
    prepared = json.loads((tmp_path / "data.json").read_text())
    assert any("-m snakemake" in cmd and "--mode remote" in cmd for cmd in prepared), prepared
    for r in results:
        info = c.job_info(r["job"])
        assert info["JobState"] == "COMPLETED", info["_raw"]
        assert "gres:gpu:1" in info["_raw"], info["_raw"]  # TresPerJob (--gpus=1)
        assert info["TimeLimit"] == "00:03:00", info["_raw"]  # runtime=3
        assert info["MinMemoryNode"] == "600M", info["_raw"]  # mem_mb=600
        assert info["CPUs/Task"] == "2", info["_raw"]  # cpus_per_task=2
    prep = next(i for i in ids if i not in {r["job"] for r in results})
    assert c.job_info(prep)["TimeLimit"] == "00:02:00"
    assert "gpu" not in c.job_info(prep).get("TresPerJob", "")


# --------------------------------------------------------------------------- (d)
FAIL_SNAKEFILE = """\
rule all:
    input: "never.txt"
rule broken:
    output: "never.txt"
    resources: runtime=2, mem_mb=200
    shell: "echo about to fail; exit 7"
"""


def test_failing_rule_reports_slurm_log(slurm_cluster, tmp_path):
    c = slurm_cluster
    (tmp_path / "Snakefile").write_text(FAIL_SNAKEFILE)
    proc = run_snakemake(["--profile", str(PROFILE), "--retries", "0", *FAST_POLL], tmp_path, job_env(c), timeout=90)
    text = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 124, 137), explain(proc, c)
    (jid,) = slurm_ids(text)
    log = tmp_path / ".snakemake" / "slurm_logs" / "rule_broken" / f"{jid}.log"
    error = text[text.index("Error in rule broken") :]
    assert f"log: {log}" in error, error[:3000]  # the error block names the log
    assert "SLURM status is: 'FAILED'" in error, error[:3000]
    assert log.is_file() and "about to fail" in log.read_text()
    assert not (tmp_path / "never.txt").exists()


# --------------------------------------------------------------------------- (e)
# A training-like script: one step per `step_s`, a checkpoint (atomic rename) after
# every step in a folder that is NOT a declared output (snakemake deletes the outputs
# of failed jobs), SIGTERM/SIGUSR1 -> checkpoint and exit 3 so SLURM marks the job
# FAILED and snakemake's retry resubmits it.
RESUME_TOY = r"""
import json, os, signal, sys, time
ckpt_dir, out, n, step_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
os.makedirs(ckpt_dir, exist_ok=True)
path = os.path.join(ckpt_dir, "state.json")
state = json.load(open(path)) if os.path.exists(path) else {"steps": [], "jobs": []}
job = os.environ.get("SLURM_JOB_ID", "?")
state["jobs"].append(job)
stop = []
def on_signal(sig, frame):
    stop.append(sig)
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGUSR1, on_signal)
def save():
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)
save()
print(f"resume-toy: job {job} starts at step {len(state['steps'])}", flush=True)
while len(state["steps"]) < n:
    if stop:  # the resume checkpoint takes a while to write, as a real one does
        print(f"resume-toy: signal {stop[0]} at step {len(state['steps'])}", flush=True)
        time.sleep(1.0)
        save()
        print(f"resume-toy: checkpoint at step {len(state['steps'])}", flush=True)
        sys.exit(3)
    time.sleep(step_s)
    state["steps"].append([len(state["steps"]), job])
    if len(state["steps"]) % 5 == 0:  # periodic checkpoints
        save()
with open(out, "w") as f:
    json.dump(state, f)
"""

RESUME_SNAKEFILE = """\
rule all:
    input: "segment.json"
rule segment:
    output: "segment.json"
    params: ckpt="checkpoints/segment"
    resources:
        runtime=5, mem_mb=300, cpus_per_task=1, gpu=1,
        # SLURM sends SIGTERM 60 s before the time limit: checkpoint and exit
        slurm_extra="--signal=TERM@60"
    shell: "python resume_toy.py {params.ckpt} {output} %d %s >> segment.log 2>&1"
"""


def test_interrupted_job_resumes_from_checkpoint(slurm_cluster, tmp_path):
    c = slurm_cluster
    n_steps, step_s = 30, 0.3
    (tmp_path / "resume_toy.py").write_text(RESUME_TOY)
    (tmp_path / "Snakefile").write_text(RESUME_SNAKEFILE % (n_steps, step_s))
    state_file = tmp_path / "checkpoints" / "segment" / "state.json"
    cmd = [
        "timeout",
        "-k",
        "10",
        "150",
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        str(PROFILE),
        "--retries",
        "2",
        *FAST_POLL,
    ]
    sm = subprocess.Popen(
        cmd, cwd=tmp_path, env=job_env(c), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        # wait for a few steps of the first attempt, then deliver what SLURM delivers
        # at `--signal=TERM@60`: SIGTERM to the job's steps (not the batch shell)
        deadline = time.monotonic() + 90
        first_job = None
        while time.monotonic() < deadline and sm.poll() is None:
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                state = None
            if state and len(state["steps"]) >= 4:
                first_job = state["jobs"][0]
                break
            time.sleep(0.2)
        assert first_job, "first attempt never got going"
        c.run("scancel", "--signal=TERM", first_job)
        out, _ = sm.communicate(timeout=170)
    finally:
        if sm.poll() is None:
            sm.kill()
            sm.communicate()
    assert sm.returncode == 0, f"rc={sm.returncode}\n{out[-6000:]}\n{c.debug_info(20)}"
    assert "Trying to restart job" in out, out[-3000:]

    final = json.loads((tmp_path / "segment.json").read_text())
    steps = [s for s, _ in final["steps"]]
    assert steps == list(range(n_steps)), steps  # nothing repeated, nothing lost
    assert len(final["jobs"]) == 2 and final["jobs"][0] == first_job, final["jobs"]
    second_job = final["jobs"][1]
    by_job = {j: [s for s, jj in final["steps"] if jj == j] for j in final["jobs"]}
    assert 4 <= len(by_job[first_job]) < n_steps, by_job
    assert by_job[second_job][0] == len(by_job[first_job]), by_job  # resumed, not restarted
    # the resume checkpoint was written whole after SIGTERM (not only the periodic one before it):
    # the job's shell outlives its command, so SLURM does not end the step while it writes
    log = (tmp_path / "segment.log").read_text()
    stopped = re.search(r"signal 15 at step (\d+)", log)
    assert stopped and f"checkpoint at step {stopped.group(1)}" in log, log
    assert by_job[second_job][0] == int(stopped.group(1)), (log, by_job)
    first = c.job_info(first_job)
    # the batch job runs the command itself (profiles/slurm: slurm-direct), so SLURM records the
    # command's own exit status (the toy's 3 after SIGTERM), not a Snakemake's 1
    assert first["JobState"] == "FAILED" and first["ExitCode"].startswith("3:"), first["_raw"]
    assert c.job_info(second_job)["JobState"] == "COMPLETED"
    assert "gres:gpu:1" in first["_raw"]
