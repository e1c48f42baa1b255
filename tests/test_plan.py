"""Properties of the training plan (pure Python, no training)."""

from __future__ import annotations

import copy
import random

import pytest

from conftest import ROOT, load_yaml
from rethink import config, grid, plan
from rethink.schedule import Schedule

PAPER = config.load(ROOT / "config.yaml")


def build(cfg):
    g = grid.build(config.validate(cfg, "test"), "test")
    return plan.Plan(g)


def lr_sequence_through_plan(p: plan.Plan, run_id: str) -> list[float]:
    """The LR of every iteration of a run, as its segments' jobs would use it (from the spec
    each segment gets), concatenated; with a check that the segments chain checkpoint to checkpoint."""
    from rethink.job_specs import JobSpecs
    from rethink.paths import Paths

    paths = Paths(p.grid.config, p)
    specs = JobSpecs(paths)
    segs = p.segments_of_run(run_id)
    lrs: list[float] = []
    expected_start = 0
    prev_output = None
    for seg in segs:
        assert seg.start == expected_start, f"{run_id}: gap or overlap at {seg}"
        spec = specs.train_spec(seg)
        if prev_output is not None:
            assert spec["start_checkpoint"] == prev_output, (
                f"{run_id}: {seg} does not start from the previous checkpoint"
            )
        sched = Schedule(**spec["schedule"])
        lrs += [sched.lr(i) for i in range(seg.start, seg.end)]
        expected_start = seg.end
        # the checkpoint at its end: the temporary one, or the run's kept model (a run that ends here)
        prev_output = paths.checkpoint_file(seg.family, seg.line, seg.end)
        assert prev_output in (spec["output"], paths.model(p.finals.get((seg.family, seg.line, seg.end), "")))
    return lrs


def test_paper_family_saves_iterations():
    p = plan.Plan(grid.build(PAPER, "config.yaml"))
    fam = "R50-GN-random-coco_full-s0"
    members = p.grid.families[fam]
    assert [r.schedule_name for r in members] == ["2x", "3x", "4x", "5x", "6x"]
    trained = sum(s.iterations for s in p.segments.values() if s.family == fam)
    assert trained == 780_000
    assert sum(r.iterations for r in members) == 1_800_000
    assert sum(p.trained_iterations[r.run_id] for r in members) == trained
    assert p.total_iterations == sum(p.trained_iterations.values())


def test_every_run_matches_its_standalone_schedule():
    p = plan.Plan(grid.build(PAPER, "config.yaml"))
    for run_id, run in p.grid.runs.items():
        lrs = lr_sequence_through_plan(p, run_id)
        assert len(lrs) == run.iterations, run_id
        standalone = Schedule.from_recipe(run.recipe, run.iterations)
        assert lrs == [standalone.lr(i) for i in range(run.iterations)], run_id
        assert p.final_milestone(run_id).iteration == run.iterations


def test_segments_respect_limits_and_cut_points():
    p = plan.Plan(grid.build(PAPER, "config.yaml"))
    for seg in p.segments.values():
        assert 0 < seg.iterations <= PAPER["max_segment_iters"]
    fam = "R50-GN-random-coco_full-s0"
    trunk_ends = {s.end for s in p.segments.values() if s.family == fam and s.line == "trunk"}
    for r in p.grid.families[fam]:
        assert r.schedule.first_drop in trunk_ends  # branch points are segment ends
    assert {m.iteration for m in p.milestones.values() if m.family == fam and m.line == "trunk"} >= {
        120_000,
        210_000,
        300_000,
        390_000,
        480_000,
    }


def test_trunk_milestones_belong_to_runs_before_their_branch():
    p = plan.Plan(grid.build(PAPER, "config.yaml"))
    ms = p.milestone("R50-GN-random-coco_full-s0", "trunk", 200_000)
    assert ms.runs == tuple(sorted(f"R50-GN-random-coco_full-{s}-s0" for s in ["3x", "4x", "5x", "6x"]))
    tail = p.milestone("R50-GN-random-coco_full-s0", "2x", 180_000)
    assert tail.runs == ("R50-GN-random-coco_full-2x-s0",)


def test_single_schedule_family_is_a_plain_run():
    cfg = copy.deepcopy(load_yaml(ROOT / "config.yaml"))
    cfg["experiments"] = {
        "one": {"backbone": ["R50"], "norm": ["GN"], "init": ["random"], "data": ["coco_full"], "schedule": ["3x"]}
    }
    p = build(cfg)
    (run,) = p.grid.runs.values()
    assert list(p.lines) == [(run.family, "3x")]
    assert sum(s.iterations for s in p.segments.values()) == 270_000
    assert all(s.line == "3x" for s in p.segments.values())


def test_sharing_can_be_switched_off():
    cfg = copy.deepcopy(load_yaml(ROOT / "config.yaml"))
    cfg["experiments"] = {
        "unshared": {
            "backbone": ["R50"],
            "norm": ["GN"],
            "init": ["random"],
            "data": ["coco_full"],
            "schedule": ["2x", "3x", "4x", "5x", "6x"],
            "share_trunk": False,
        }
    }
    p = build(cfg)
    assert len(p.grid.families) == 5
    assert p.total_iterations == p.standalone_iterations == 1_800_000
    assert all(line == r.schedule_name for (fam, line) in p.lines for r in p.grid.families[fam])


def test_random_configs_keep_the_properties():
    rng = random.Random(0)
    base = load_yaml(ROOT / "configs" / "tiny.yaml")
    del base["experiments"]["seeds_tiny"]  # its 3x may not be among the drawn schedules
    for trial in range(60):
        cfg = copy.deepcopy(base)
        cfg["eval_period"] = rng.randint(1, 40)
        cfg["max_segment_iters"] = rng.randint(1, 50)
        cfg["recipe"]["iters_per_x"] = rng.randint(20, 60)
        cfg["recipe"]["warmup_iters"] = rng.randint(0, 10)
        drops = sorted(rng.sample(range(1, 19), rng.randint(0, 3)), reverse=True)
        cfg["recipe"]["lr_drops_from_end"] = drops
        n = rng.randint(1, 4)
        cfg["axes"]["schedule"] = {f"{k}x": {"x": k} for k in rng.sample(range(1, 7), n)}
        cfg["experiments"]["table1_tiny"]["share_trunk"] = rng.random() < 0.8
        p = build(cfg)
        for run_id, run in p.grid.runs.items():
            lrs = lr_sequence_through_plan(p, run_id)
            standalone = Schedule.from_recipe(run.recipe, run.iterations)
            assert lrs == [standalone.lr(i) for i in range(run.iterations)], (trial, run_id)
        for seg in p.segments.values():
            assert 0 < seg.iterations <= cfg["max_segment_iters"]
        assert p.total_iterations == sum(p.trained_iterations.values()) <= p.standalone_iterations


@pytest.mark.parametrize("rid", ["R50-GN-random-coco_full-6x-s0", "X152-GN-imagenet-coco_35k-9x-s3-cascade"])
def test_run_id_round_trip(rid):
    d = grid.parse_run_id(rid)
    assert grid.make_run_id(**d) == rid


@pytest.mark.parametrize(
    "bad",
    [
        "R50-GN-random-coco_full-6x",
        "R50 GN",
        "R50-GN-random-coco_full-6x-s0;rm",
        "../x-GN-a-b-2x-s0",
        "R50-GN-Random-coco_full-6x-s0",
    ],
)
def test_run_id_pattern_is_strict(bad):
    with pytest.raises(ValueError):
        grid.parse_run_id(bad)
