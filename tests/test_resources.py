"""How rules start their scripts and what they ask the scheduler for (rethink.resources)."""

from __future__ import annotations

import copy

import pytest

from conftest import ROOT, load_yaml
from rethink import config, grid, plan
from rethink.config import ConfigError
from rethink.resources import SIGNAL_GRACE_S, JobResources


class WC:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def val(resource, wc):
    """A resource as Snakemake sees it for a job: a plain value, or a callable of the wildcards."""
    return resource(wc) if callable(resource) else resource


def job_resources_for(**resources) -> JobResources:
    raw = copy.deepcopy(load_yaml(ROOT / "config.yaml"))
    raw["resources"] = resources
    cfg = config.validate(raw, "config.yaml")
    p = plan.Plan(grid.build(cfg, "config.yaml"))
    return JobResources(cfg, p)


def first_trunk_segment(job_resources: JobResources):
    return min((s for s in job_resources.plan.segments.values() if s.line == "trunk"), key=lambda s: (s.family, s.end))


def test_single_node_training_job():
    job_resources = job_resources_for()
    seg = first_trunk_segment(job_resources)
    wc = WC(family=seg.family, line=seg.line, iter=f"{seg.end:07d}")
    assert job_resources.launcher(seg, "python") == "python -m torch.distributed.run --standalone --nproc_per_node=8"
    res = job_resources.train_resources()
    assert val(res["gpu"], wc) == 8 and val(res["cpus_per_task"], wc) == 32 and val(res["mem_mb"], wc) == 128_000
    # iterations x seconds/iteration (config table) x margin 1.5 x attempt, in minutes, plus start-up
    spi = job_resources.plan.grid.seconds_per_iter(job_resources.plan.run(seg.owner))
    assert spi in (0.338, 0.44, 0.30, 0.40)
    assert res["runtime"](wc, 1) == int(seg.iterations * spi * 1.5 / 60) + 10
    assert res["runtime"](wc, 2) > res["runtime"](wc, 1)
    assert res["slurm_extra"] == f"--signal=TERM@{SIGNAL_GRACE_S}"
    ev = job_resources.eval_resources()
    ms = next(iter(job_resources.plan.milestones.values()))
    ewc = WC(family=ms.family, line=ms.line, iter=f"{ms.iteration:07d}")
    assert val(ev["gpu"], ewc) == 1 and val(ev["cpus_per_task"], ewc) == 4
    # the eval_seconds entry of the run's backbone on 1 GPU: start-up + 5,000 val2017 images x seconds
    # per image, x margin 1.5 x attempt, in minutes, plus 10
    run = job_resources.plan.run(job_resources.plan.lines[(ms.family, ms.line)].owner)
    e = next(e for e in job_resources.cfg["eval_seconds"] if e["backbone"] == run.backbone and e["gpus"] == 1)
    one = (e["setup_seconds"] + 5000 * e["seconds_per_image"]) * 1.5
    assert ev["runtime"](ewc, 1) == int(one / 60) + 10 and ev["runtime"](ewc, 2) == int(2 * one / 60) + 10
    # test-time augmentation: 18 passes over the val set at the paper's sizes (9 sizes, flipped and not)
    tta = job_resources.eval_resources(tta=True)
    one_tta = (e["setup_seconds"] + 18 * 5000 * e["seconds_per_image"]) * 1.5
    assert tta["runtime"](ewc, 1) == int(one_tta / 60) + 10 and val(tta["gpu"], ewc) == 1
    assert tta["runtime"](ewc, 1) > 5 * ev["runtime"](ewc, 1)


def test_evaluation_cost_follows_the_table_and_the_val_set():
    """rethink.evalcost: a measured entry changes the walltime and the grid's evaluation hours; a run
    without an entry is priced at the generous default; a synthetic set's val_size counts."""
    from rethink import evalcost, summary

    raw = copy.deepcopy(load_yaml(ROOT / "config.yaml"))
    cfg = config.validate(raw, "config.yaml")
    p = plan.Plan(grid.build(cfg, "config.yaml"))
    train_h = summary.planned_hours(p.grid, p)
    hours, fraction = evalcost.overhead(cfg, p, train_h)
    # by hand: every milestone's predicted seconds on its eval GPU
    by_hand = sum(
        evalcost.seconds(cfg, p.run(p.lines[(m.family, m.line)].owner), tta) / 3600
        for ms, tta in ((p.milestones, False), (p.tta_milestones, True))
        for m in ms.values()
    )
    assert hours == pytest.approx(by_hand) and fraction == pytest.approx(hours / train_h)
    assert 0 < fraction < 0.05  # the estimates: the periodic evaluations cost about 1% of training
    slower = copy.deepcopy(cfg)
    for e in slower["eval_seconds"]:
        e["seconds_per_image"] *= 10
    assert evalcost.overhead(slower, p, train_h)[0] > 5 * hours
    run = next(r for r in p.grid.runs.values() if r.backbone == "R50")
    assert evalcost.seconds({**cfg, "eval_seconds": []}, run) == 120 + 5000 * 1.0  # no entry: the default
    tiny = config.validate(load_yaml(ROOT / "configs" / "tiny.yaml"), "tiny.yaml")
    tiny_run = next(iter(grid.build(tiny, "tiny.yaml").runs.values()))
    assert evalcost.val_images(tiny, tiny_run.data) == tiny["datasets"]["synthetic"]["val_size"]


def test_multi_node_training_job():
    job_resources = job_resources_for(nodes=2)
    seg = first_trunk_segment(job_resources)
    wc = WC(family=seg.family, line=seg.line, iter=f"{seg.end:07d}")
    launcher = job_resources.launcher(seg, "python")
    assert launcher.startswith("srun --ntasks-per-node=1 ")
    assert "--nnodes=2 --nproc_per_node=4" in launcher and "--rdzv_backend=c10d" in launcher
    res = job_resources.train_resources()
    assert "gpu" not in res  # per node instead: --gres=gpu:4 on each of 2 nodes
    assert val(res["nodes"], wc) == 2 and val(res["tasks"], wc) == 2 and val(res["gres"], wc) == "gpu:4"
    assert val(res["cpus_per_task"], wc) == 16 and val(res["mem_mb"], wc) == 64_000
    # evaluations stay on one node
    ev = job_resources.eval_resources()
    assert "nodes" not in ev and "gpu" in ev


def test_nodes_must_share_gpus_evenly():
    with pytest.raises(ConfigError, match="resources.nodes: 3 nodes cannot share the 8 GPUs"):
        job_resources_for(nodes=3)


def test_resources_that_vary_per_run_stay_callables():
    raw = copy.deepcopy(load_yaml(ROOT / "config.yaml"))
    raw["experiments"]["fig7_35k"]["recipe"] = {"eval_gpus": 2}  # one experiment evaluates on 2 GPUs
    cfg = config.validate(raw, "config.yaml")
    job_resources = JobResources(cfg, plan.Plan(grid.build(cfg, "config.yaml")))
    ev = job_resources.eval_resources()
    assert callable(ev["gpu"]) and callable(ev["cpus_per_task"])
    counts = {
        val(ev["gpu"], WC(family=m.family, line=m.line, iter=f"{m.iteration:07d}"))
        for m in job_resources.plan.milestones.values()
    }
    assert counts == {1, 2}
    assert job_resources.train_resources()["gpu"] == 8  # one count for every training job: a plain number


def test_cpu_runs_use_the_plain_interpreter():
    raw = load_yaml(ROOT / "configs" / "tiny.yaml")
    cfg = config.validate(raw, "tiny.yaml")
    job_resources = JobResources(cfg, plan.Plan(grid.build(cfg, "tiny.yaml")))
    seg = first_trunk_segment(job_resources)
    # the tiny config forks its jobs from the warm interpreter; without it, the plain interpreter
    assert cfg["warm_interpreter"] is True
    assert job_resources.launcher(seg, "/x/python") == f"/x/python {ROOT / 'workflow_scripts' / 'warm.py'}"
    assert job_resources.single("/x/my python") == f"'/x/my python' {ROOT / 'workflow_scripts' / 'warm.py'}"
    cold = JobResources({**cfg, "warm_interpreter": False}, job_resources.plan)
    assert cold.launcher(seg, "/x/python") == "/x/python" == cold.single("/x/python")
