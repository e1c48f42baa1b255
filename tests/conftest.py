"""Shared test set-up: the repo root, the workflow's scripts as modules (`script_module`), and a
helper that runs the real Snakemake on a config in a scratch copy of the workflow. The package
`rethink` and the tests' laboratory `rethink_lab` (tests/lab) are installed (pyproject.toml)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rethink_lab.slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture of the SLURM tests)

ROOT = Path(__file__).resolve().parents[1]

PY = sys.executable


def script_module(name: str, folder: Path | None = None):
    """workflow_scripts/<name>.py (or `folder`/<name>.py) imported as a module, without running its
    main: the scripts are programs, not part of the package."""
    import importlib.util

    path = (folder or ROOT / "workflow_scripts") / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SNAKEMAKE = [PY, "-m", "snakemake"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs a real SLURM controller (started by the test)")
    config.addinivalue_line("markers", "slow: end-to-end runs of the workflow")


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """mktemp(name) for a module's shared fixtures. What they made is removed when the module ends
    with no failed test, as pytest removes a passed test's tmp_path (pyproject.toml:
    tmp_path_retention_policy "failed"). A tiny Mask R-CNN checkpoint with its optimizer state is
    about 120 MB (250 MB with the former 256-channel heads), and the suite writes some sixty: kept
    to the end, they filled a disk (15 GB a run); so the suite's disk use peaks at a module's
    (3.8 GB measured over a whole run)."""
    made, failed = [], request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def load_yaml(path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def write_yaml(path, data) -> Path:
    path = Path(path)
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def snakemake(args, cwd=ROOT, timeout=600, check=False, env=None) -> subprocess.CompletedProcess:
    """Run the real Snakemake on the project's Snakefile; returns the completed process."""
    cmd = [
        "timeout",
        "-k",
        "10",
        str(timeout),
        *SNAKEMAKE,
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(cwd),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def small_tiny_config() -> dict:
    """configs/tiny.yaml with fewer images and iterations and one seed: the same DAG shape (2 inits
    x 2 schedules sharing a trunk, pre-training, several segments per line) in about a minute.
    (Seed spread is tested on metrics the tests write: tests/test_results.py.)"""
    cfg = copy.deepcopy(load_yaml(ROOT / "configs" / "tiny.yaml"))
    del cfg["experiments"]["seeds_tiny"]
    cfg["workdir"], cfg["results"] = "work", "results"
    cfg["eval_period"], cfg["max_segment_iters"] = 6, 4
    cfg["datasets"]["synthetic"].update(train_size=12, val_size=6, image_size=[96, 128])
    cfg["inits"]["imagenet"].update(iterations=12, train_size=96, batch=8)
    cfg["recipe"].update(
        iters_per_x=6,
        lr_drops_from_end=[4, 2],
        warmup_iters=2,
        min_size_train=[96],
        max_size_train=128,
        min_size_test=96,
        max_size_test=128,
        checkpoint_period=2,
    )
    return cfg
