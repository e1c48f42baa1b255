"""The embedded default with the cluster engine, as the README types it: configs/tiny.yaml updated
by configs/tiny_detectron2.yaml, through the real Snakemake: data, the tiny pre-training (its
torchvision-named weights renamed into detectron2's ResNet), training and COCO evaluation with
detectron2, tables and figures; then nothing left to do.

detectron2 is on no package index: without it this module is skipped with the reason printed
(about 7 minutes on 2 cores where it is installed)."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, snakemake

try:
    import detectron2  # noqa: F401
    from detectron2 import _C  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(
        f"detectron2 is not importable ({e}); see rethink.engines.detectron2_engine.INSTALL_HINT",
        allow_module_level=True,
    )

ARGS = [
    "--profile",
    str(ROOT / "profiles" / "tiny"),
    "--configfile",
    str(ROOT / "configs" / "tiny.yaml"),
    str(ROOT / "configs" / "tiny_detectron2.yaml"),
]


@pytest.fixture(scope="module")
def tiny_d2(module_tmp):
    tmp = module_tmp("tiny_d2")
    proc = snakemake(ARGS, cwd=tmp, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return tmp, proc


def test_every_job_ran_with_detectron2(tiny_d2):
    tmp, proc = tiny_d2
    assert "34 of 34 steps (100%) done" in proc.stderr + proc.stdout
    records = [json.loads(f.read_text()) for f in sorted((tmp / "results" / "tiny_d2" / "metrics").rglob("*.json"))]
    assert {r["init"] for r in records} == {"random", "imagenet"}
    assert {r["engine"] for r in records} == {"detectron2"}
    assert len(records) == 14  # per init: trunk 20, 40, 60, 70; 2x 60; 3x 80, 90
    # the pre-trained line started from the pre-training's weights (a file that does not fit is an error)
    logs = "".join(f.read_text() for f in (tmp / "work" / "tiny_d2" / "logs" / "train").rglob("*.log"))
    assert "pre-trained backbone from work/tiny_d2/init/imagenet/R18-GN.pth" in logs


def test_tables_and_figures(tiny_d2):
    tmp, _ = tiny_d2
    res = tmp / "results" / "tiny_d2"
    table = (res / "tables" / "table1.md").read_text()
    rows = [line for line in table.splitlines() if "R18 GN synthetic" in line]
    assert len(rows) == 2 and all(line.count("—") == 3 for line in rows), table  # 2x and 3x have numbers
    for fig in ("convergence", "samples_seen"):
        assert (res / "figures" / f"{fig}.png").stat().st_size > 1000


def test_nothing_left_to_do(tiny_d2):
    tmp, _ = tiny_d2
    proc = snakemake([*ARGS, "-n"], cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_kept_model_loads_with_detectron2s_checkpointer(tiny_d2):
    """A run's kept model_final.pth is what detectron2's DetectionCheckpointer reads: every tensor lands."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer

    from rethink import config as rconfig
    from rethink import grid as rgrid
    from rethink.engines import get_engine
    from rethink.job_specs import JobSpecs
    from rethink.paths import Paths
    from rethink.plan import Plan

    tmp, _ = tiny_d2
    from snakemake.utils import update_config

    cfg = rconfig.read_yaml(ROOT / "configs" / "tiny.yaml")  # updated by the overlay as Snakemake does (deeply)
    update_config(cfg, rconfig.read_yaml(ROOT / "configs" / "tiny_detectron2.yaml"))
    cfg = rconfig.validate({**cfg, "workdir": str(tmp / cfg["workdir"]), "results": str(tmp / cfg["results"])}, "tiny")
    paths = Paths(cfg, Plan(rgrid.build(cfg, "tiny")))
    for run_id in ("R18-GN-imagenet-synthetic-3x-s0", "R18-GN-random-synthetic-3x-s0"):
        spec = JobSpecs(paths).train_spec(paths.plan.final_segment(run_id))
        state = torch.load(paths.model(run_id), weights_only=True)
        model = get_engine("detectron2").build_model(
            spec["run"], "cpu", dataset=json.loads(open(spec["dataset"]).read())
        )
        DetectionCheckpointer(model).load(paths.model(run_id))
        got = model.state_dict()
        assert all(torch.equal(got[k], v) for k, v in state["model"].items()), run_id
