"""No config value and no checkout path reaches a shell unquoted. A real run of the shrunk tiny grid
(data, pre-training, training segments, kept models, evaluations, collect, report), then `grid` and
`figures`, from a checkout, a working directory, a config file, a workdir and a results folder whose
names hold spaces, quotes, `$`, backquotes and command substitutions: every job runs, the literal
folders hold the results, and no command in any of those names is executed."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import PY, ROOT, small_tiny_config, write_yaml

HOSTILE = "$(touch PWNED) `touch PWNED` 'q\" $HOME ;"


@pytest.fixture(scope="module")
def hostile(module_tmp):
    base = module_tmp("quoting")
    checkout = base / f"check out {HOSTILE}"
    checkout.mkdir()
    for name in ("Snakefile", "rules", "workflow_scripts", "schemas", "profiles", "envs", "report", "config.yaml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(
            src, checkout / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {})
        )
    shutil.copytree(ROOT / "results" / "paper", checkout / "results" / "paper")
    tree = base / f"tree {HOSTILE}"
    tree.mkdir()
    cfg = small_tiny_config()
    cfg["axes"]["schedule"] = {"2x": {"x": 2}}
    cfg["workdir"], cfg["results"] = f"w d {HOSTILE}", f"r s {HOSTILE}"
    cfg_file = write_yaml(tree / f"my config {HOSTILE}.yaml", cfg)

    def snake(*args):
        cmd = [
            "timeout",
            "-k",
            "10",
            "1800",
            PY,
            "-m",
            "snakemake",
            "--snakefile",
            str(checkout / "Snakefile"),
            "--directory",
            str(tree),
            "--cores",
            "2",
            *args,
            "--configfile",
            str(cfg_file),
        ]
        return subprocess.run(cmd, cwd=tree, capture_output=True, text=True)

    procs = {"run": snake(), "grid": snake("grid"), "figures": snake("figures")}
    return base, tree, cfg, procs


def test_every_job_runs(hostile):
    _, tree, cfg, procs = hostile
    for what, proc in procs.items():
        assert proc.returncode == 0, f"{what}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    out = procs["run"].stdout + procs["run"].stderr
    for rule in ("prepare_data", "pretrain", "train_segment", "train_final", "evaluate", "collect", "report"):
        assert f"rule {rule}:" in out or f"localrule {rule}:" in out, rule
    work, results = tree / cfg["workdir"], tree / cfg["results"]
    assert sorted(p.name for p in (work / "models").iterdir()) == [
        "R18-GN-imagenet-synthetic-2x-s0",
        "R18-GN-random-synthetic-2x-s0",
    ]
    assert len(list((results / "metrics").rglob("*.json"))) >= 4
    assert (results / "metrics.csv").stat().st_size > 0 and (results / "tables" / "table1.md").exists()
    assert (results / "grid.csv").exists()  # written by `snakemake grid`
    assert "2 runs" in procs["grid"].stdout + procs["grid"].stderr


def test_no_name_was_executed(hostile):
    base, *_ = hostile
    assert not list(base.rglob("PWNED")), "a command in a path or config value was executed"
    assert not (ROOT / "PWNED").exists()
