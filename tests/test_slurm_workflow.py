"""The workflow itself through `--profile profiles/slurm` on a real single-node SLURM cluster
(tests/lab/slurm_cluster.py): the tiny grid runs end to end, produces the same metrics as a local
run, asks SLURM for the resources its rules declare, and a training segment that SLURM signals
mid-way (as at its walltime) checkpoints, is resubmitted and resumes without losing or
repeating an iteration."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import switches

from conftest import ROOT, small_tiny_config, snakemake, write_yaml
from rethink import config, grid, metrics, plan
from rethink.paths import Paths
from rethink.resources import JobResources
from rethink_lab.slurm_cluster import FAST_POLL

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def slurm_config() -> dict:
    """One init, 2x and 3x sharing a trunk: 5 training jobs and 5 evaluations."""
    cfg = small_tiny_config()
    cfg["axes"]["init"] = ["random"]
    cfg["eval_period"], cfg["max_segment_iters"] = 8, 8
    cfg["recipe"]["eval_gpus"] = 1  # evaluations ask SLURM for a GPU (they fall back to the CPU here)
    return cfg


def _metrics(root: Path) -> dict[str, dict]:
    return {str(p.relative_to(root)): metrics.read(p) for p in sorted((root / "results" / "metrics").rglob("*.json"))}


def test_tiny_grid_through_slurm_matches_local_run(slurm_cluster, tmp_path):
    cluster = slurm_cluster
    cfg = slurm_config()
    local, remote = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    remote.mkdir()
    for d in (local, remote):
        write_yaml(d / "tiny.yaml", cfg)
    validated = config.validate(cfg, "tiny.yaml")
    p = plan.Plan(grid.build(validated, "tiny.yaml"))
    paths = Paths(validated, p)
    assert len(p.segments) == 5 and len(p.milestones) == 5

    proc = snakemake(["--cores", "2", "--configfile", "tiny.yaml"], cwd=local, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # the first trunk segment sleeps a little per iteration, so it can be caught mid-way
    target = p.segments_of_run(next(iter(p.grid.runs)))[0]
    resume_dir = remote / paths.resume_dir(target.family, target.line, target.end)
    env = cluster.job_env(**switches.environment(sleep=1.0))
    cmd = [
        "timeout",
        "-k",
        "10",
        "900",
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--profile",
        str(ROOT / "profiles" / "slurm"),
        "-j",
        "4",
        "--configfile",
        "tiny.yaml",
        *FAST_POLL,
    ]
    log = open(tmp_path / "snakemake.out", "w")
    sm = subprocess.Popen(cmd, cwd=remote, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    signalled = None
    deadline = time.time() + 300
    while time.time() < deadline and sm.poll() is None and signalled is None:
        if resume_dir.is_dir() and list(resume_dir.glob("*.pth")):
            jobs = cluster.run("squeue", "-h", "-o", "%i %k %T", check=False).stdout.split("\n")
            for line in jobs:
                parts = line.split()
                if len(parts) == 3 and "train_segment" in parts[1] and parts[2] == "RUNNING":
                    # what SLURM does at --signal=TERM@300 before the walltime
                    cluster.run("scancel", "--signal=TERM", "--full", parts[0])
                    signalled = parts[0]
                    break
        time.sleep(0.5)
    try:
        rc = sm.wait(timeout=900)
    finally:
        log.close()
    out = (tmp_path / "snakemake.out").read_text()
    assert signalled, f"never caught the training segment running with a resume checkpoint\n{out[-4000:]}"
    assert rc == 0, f"snakemake via SLURM failed ({rc})\n{out[-6000:]}\n{cluster.debug_info(tail=20)}"

    # the signalled job failed, was resubmitted, and resumed from its checkpoint
    train_log = (remote / paths.log("train", target.family, target.line, f"iter_{target.end:07d}")).read_text()
    assert "resum" in train_log.lower(), train_log[-3000:]

    # the same metrics files, the same numbers, and every iteration counted exactly once
    ours, theirs = _metrics(local), _metrics(remote)
    assert list(theirs) == list(ours)
    for name, rec in theirs.items():
        assert rec["samples_seen"] == ours[name]["samples_seen"], name
        assert rec["samples_seen"]["images"] == rec["iteration"] * cfg["recipe"]["batch"], name
        for iou_type, stats in rec["stats"].items():
            for k, v in stats.items():
                w = ours[name]["stats"][iou_type][k]
                assert (v != v and w != w) or abs(v - w) < 1e-6, (name, iou_type, k, v, w)

    # SLURM got the resources the rules declare: walltime for training, a GPU for evaluation
    ids = re.findall(r"submitted with SLURM jobid (\d+)", out)
    infos = [cluster.job_info(i) for i in ids]
    train = [i for i in infos if "train_segment" in i.get("Comment", "")]
    evals = [i for i in infos if "evaluate" in i.get("Comment", "")]
    assert train and evals, infos[:3]
    # a walltime the rule declares (rethink.resources: a segment's iterations x seconds_per_iter x
    # margin x attempt, + 10 min): attempt 1, or 2 for the job that was signalled and resubmitted
    validated = config.validate(cfg, "slurm.yaml")
    res = JobResources(validated, plan.Plan(grid.build(validated, "slurm.yaml")))
    declared = {
        f"{m // 60:02d}:{m % 60:02d}:00"
        for s in res.plan.segments.values()
        for m in (res.train_runtime_min(s, 1), res.train_runtime_min(s, 2))
    }
    assert all(i["TimeLimit"] in declared for i in train), ([i["TimeLimit"] for i in train], declared)
    assert any(i["TimeLimit"] == min(declared) for i in train)

    def tres(info):  # TresPerJob (--gpus), TresPerNode (--gres), ReqTRES/AllocTRES
        return " ".join(v for k, v in info.items() if "tres" in k.lower())

    assert all("gpu" in tres(i) for i in evals), {k: v for k, v in evals[0].items() if "tres" in k.lower()}
    assert all("gpu" not in tres(i) for i in train), [tres(i) for i in train]
