"""The paper's experiments beyond Tables 1/2 and Figure 4, as config.yaml declares them: less data
(Figures 7 and 8), PASCAL VOC, keypoints (Figure 6), VGG16 without normalisation (Sec. 5.1) and
Table 3 (X152, cascade, test-time augmentation). Each experiment's runs are checked as
rethink.grid.build makes them (ids, lengths, LR drop iterations, recipe), then planned by the real
`snakemake -n` and listed with GPU-hours by the real `snakemake grid`."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from conftest import ROOT, snakemake
from rethink import config, grid, plan
from rethink.job_specs import JobSpecs
from rethink.paths import Paths

PAPER = config.load(ROOT / "config.yaml")
GRID = grid.build(PAPER, "config.yaml")
PLAN = plan.Plan(GRID)

SMALL = {"base_lr": 0.04, "drop_factor": 0.02, "scale_aug": True, "min_size_train": [512, 800]}
TRAIN_AUG = {"scale_aug": True, "min_size_train": [640, 800]}
CASCADE = {**TRAIN_AUG, "task": "cascade_mask_rcnn", "cascade_from_iter": 540_000, "tta": False}
VOC = {**TRAIN_AUG, "task": "faster_rcnn", "lr_drops_from_end": [6000, 2000], "base_lr": 0.02, "batch": 16}
VGG = {**TRAIN_AUG, "task": "faster_rcnn", "base_lr": 0.02, "drop_factor": 0.1, "weight_decay": 0.0001}

# experiment -> {run id: (iterations, LR drop iterations, recipe fields)}
EXPECTED = {
    "fig7_35k": {
        f"R50-GN-{init}-coco_35k-6x-s0": (540_000, (480_000, 520_000), {**SMALL, "task": "mask_rcnn"})
        for init in ("random", "imagenet")
    },
    "fig7_10k_imagenet": {
        "R50-GN-imagenet-coco_10k-60k-s0": (60_000, (40_000, 53_000), SMALL),
    },
    "fig7_10k_random": {
        "R50-GN-random-coco_10k-220k-s0": (220_000, (200_000, 213_000), SMALL),
    },
    "fig8_small_imagenet": {
        f"R50-GN-imagenet-{d}-60k-s0": (60_000, (40_000, 53_000), SMALL) for d in ("coco_3_5k", "coco_1k")
    },
    "fig8_small_random": {
        f"R50-GN-random-{d}-220k-s0": (220_000, (200_000, 213_000), SMALL) for d in ("coco_3_5k", "coco_1k")
    },
    "voc_imagenet": {"R101-GN-imagenet-voc-18k-s0": (18_000, (12_000, 16_000), VOC)},
    "voc_random": {"R101-GN-random-voc-144k-s0": (144_000, (138_000, 142_000), VOC)},
    "fig6_keypoints": {
        f"R50-GN-{init}-coco_kp-{s}-s0": (n, (n - 60_000, n - 20_000), {"task": "keypoint_rcnn", "scale_aug": False})
        for init in ("random", "imagenet")
        for s, n in (("2x", 180_000), ("3x", 270_000))
    },
    "sec51_vgg16_imagenet": {"VGG16-none-imagenet-coco_full-9x-s0": (810_000, (750_000, 790_000), VGG)},
    "sec51_vgg16_random": {"VGG16-none-random-coco_full-11x-s0": (990_000, (930_000, 970_000), VGG)},
    "table3_train_aug": {
        f"{b}-GN-random-coco_full-9x-s0-train_aug": (810_000, (750_000, 790_000), {**TRAIN_AUG, "task": "mask_rcnn"})
        for b in ("R101", "X152")
    },
    "table3_cascade": {"X152-GN-random-coco_full-9x-s0-cascade": (810_000, (750_000, 790_000), CASCADE)},
    # the same run as table3_cascade: test-time augmentation is an evaluation, not a training
    "table3_cascade_tta": {"X152-GN-random-coco_full-9x-s0-cascade": (810_000, (750_000, 790_000), CASCADE)},
    "table3_pretrained": {
        "X152-GN-imagenet-coco_full-6x-s0-cascade": (
            540_000,
            (480_000, 520_000),
            {**TRAIN_AUG, "task": "cascade_mask_rcnn", "cascade_from_iter": None, "tta": False},
        ),
    },
}
NEW = sorted(EXPECTED)
NEW_RUNS = sorted(r for runs in EXPECTED.values() for r in runs)


@pytest.mark.parametrize("exp", NEW)
def test_experiment_runs_lengths_drops_and_recipe(exp):
    runs = {r.run_id: r for r in GRID.experiments_of(exp)}
    assert sorted(runs) == sorted(EXPECTED[exp]), exp
    for rid, (iterations, drops, fields) in EXPECTED[exp].items():
        run = runs[rid]
        assert run.iterations == iterations, rid
        assert run.schedule.lr_drops == drops, rid
        assert run.schedule.iterations == iterations
        for key, value in fields.items():
            assert run.recipe[key] == value, f"{rid}: recipe.{key} = {run.recipe[key]!r}, expected {value!r}"
        # the LR the plan's segments give each iteration is the stand-alone schedule's, drops included
        first, last = run.schedule.lr(drops[0] - 1), run.schedule.lr(iterations - 1)
        assert last == pytest.approx(first * run.recipe["drop_factor"] ** 2)


def test_small_data_recipe_is_the_35k_grid_search_result():
    # footnote 2: scale aug [512, 800], LR 0.04, decay factor 0.02 — the same for both inits
    for rid in EXPECTED["fig7_35k"]:
        sched = GRID.runs[rid].schedule
        assert sched.lr(100_000) == pytest.approx(0.04)
        assert sched.lr(500_000) == pytest.approx(0.04 * 0.02)
        assert sched.lr(530_000) == pytest.approx(0.04 * 0.02**2)
    for exp in ("fig7_10k_imagenet", "fig7_10k_random", "fig8_small_imagenet", "fig8_small_random"):
        assert {r.recipe_json for r in GRID.experiments_of(exp)} == {
            GRID.runs["R50-GN-imagenet-coco_10k-60k-s0"].recipe_json
        }, exp


def test_datasets_of_the_new_runs():
    ds = PAPER["datasets"]
    for name, n in (("coco_35k", 35000), ("coco_10k", 10000), ("coco_3_5k", 3500), ("coco_1k", 1000)):
        assert ds[name]["kind"] == "coco" and ds[name]["num_images"] == n and ds[name]["subset_seed"] == 0
        for key in ("root", "train_images", "train_annotations", "val_images", "val_annotations"):
            assert ds[name][key] == ds["coco_full"][key], (name, key)
    assert ds["coco_kp"]["keypoints"] is True
    assert ds["coco_kp"]["train_annotations"].endswith("person_keypoints_train2017.json")
    assert ds["voc"] == {
        **ds["voc"],
        "kind": "voc",
        "root": "datasets/VOCdevkit",
        "train_annotations": ["VOC2007/trainval", "VOC2012/train"],
        "val_annotations": "VOC2012/val",
    }


def test_every_run_has_speed_and_weights():
    weights = PAPER["inits"]["imagenet"]["weights"]
    for run in GRID.runs.values():
        assert GRID.seconds_per_iter(run) is not None, run.run_id
        if run.init == "imagenet":
            assert f"{run.backbone}-{run.norm}" in weights, run.run_id
    assert weights["X152-GN"] == "detectron2://ImageNetPretrained/FAIR/X-152-32x8d-IN5k.pkl"


def test_cascade_switches_for_the_final_270k():
    run = GRID.runs["X152-GN-random-coco_full-9x-s0-cascade"]
    assert run.iterations - run.recipe["cascade_from_iter"] == 270_000
    specs = JobSpecs(Paths(PAPER, PLAN))
    segs = PLAN.segments_of_run(run.run_id)
    switch = [s for s in segs if s.start == 540_000]
    assert len(switch) == 1  # a segment starts exactly at the switch
    tasks = {s.end: specs.train_spec(s)["run"]["recipe"]["task"] for s in segs}
    assert {t for end, t in tasks.items() if end <= 540_000} == {"mask_rcnn"}
    assert {t for end, t in tasks.items() if end > 540_000} == {"cascade_mask_rcnn"}
    starts = {s.start: specs.train_spec(s).get("start_task") for s in segs}
    assert starts[540_000] == "mask_rcnn" and [k for k, v in starts.items() if v] == [540_000]
    # evaluations: the checkpoint at 540k is still Mask R-CNN, the next one is cascade
    fam = run.family
    assert specs.eval_spec(PLAN.milestone(fam, "9x", 540_000))["run"]["recipe"]["task"] == "mask_rcnn"
    assert specs.eval_spec(PLAN.milestone(fam, "9x", 560_000))["run"]["recipe"]["task"] == "cascade_mask_rcnn"


def test_test_time_augmentation_is_one_more_evaluation_not_a_run():
    tta_runs = sorted(r.run_id for r in GRID.runs.values() if r.test_aug)
    assert tta_runs == ["X152-GN-imagenet-coco_full-6x-s0-cascade", "X152-GN-random-coco_full-9x-s0-cascade"]
    assert set(GRID.runs["X152-GN-random-coco_full-9x-s0-cascade"].experiments) == {
        "table3_cascade",
        "table3_cascade_tta",
    }
    specs = JobSpecs(Paths(PAPER, PLAN))
    for rid in tta_runs:
        ms = PLAN.final_milestone(rid)
        assert (ms.family, ms.line, ms.iteration) in PLAN.tta_milestones
        plain, tta = specs.eval_spec(ms), specs.eval_spec(ms, tta=True)
        assert "tta" not in plain and tta["tta"] is True
        assert tta["output"].endswith("-tta.json") and tta["checkpoint"] == plain["checkpoint"]
        assert {k: v for k, v in tta.items() if k not in ("tta", "output")} == {
            k: v for k, v in plain.items() if k != "output"
        }
    assert len(PLAN.tta_milestones) == 2


def _job_counts(stdout: str) -> dict[str, int]:
    table = stdout[stdout.index("Job stats:") :]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_dry_run_plans_the_new_experiments(tmp_path):
    proc = snakemake(["-n"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = _job_counts(proc.stdout)
    # every run's last segment is a train_final job (its output, the run's model, is kept)
    assert counts["train_final"] == len(GRID.runs)
    assert counts["train_segment"] + counts["train_final"] == counts["evaluate"] == len(PLAN.segments)
    assert counts["evaluate_tta"] == 2
    new_families = {GRID.runs[r].family for r in NEW_RUNS}
    new_segments = [s for s in PLAN.segments.values() if s.family in new_families]
    assert (
        counts["train_segment"] + counts["train_final"] - len(new_segments) == 344
    )  # Tables 1/2 and Figure 4 as before
    assert counts["prepare_data"] == len(PAPER["axes"]["data"]) == 7
    # imagenet weights staged once per backbone-norm pair in use
    assert counts["stage_weights"] == len({(r.backbone, r.norm) for r in GRID.runs.values() if r.init == "imagenet"})
    # every new run's last checkpoint, its kept model, is one of the planned jobs' outputs
    paths = Paths(PAPER, PLAN)
    for rid in NEW_RUNS:
        last = PLAN.segments_of_run(rid)[-1]
        assert last.end == GRID.runs[rid].iterations
        assert paths.model(rid) in proc.stdout, rid


def test_grid_summary_lists_gpu_hours_per_experiment(tmp_path):
    proc = snakemake(["grid"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "results" / "grid.csv").set_index("run_id")
    assert set(NEW_RUNS) <= set(df.index)
    listed = {
        m.group(1): (int(m.group(2)), float(m.group(3).replace(",", "")))
        for m in re.finditer(r"^\s+(\w+)\s+(\d+) runs\s+([\d,.]+) GPU-h planned", proc.stdout, re.M)
    }
    for exp in NEW:
        runs = list(EXPECTED[exp])
        assert listed[exp][0] == len(runs), exp
        assert listed[exp][1] == pytest.approx(df.loc[runs, "gpu_hours"].sum(), abs=0.06), exp
    # by hand: 35k, 6x, no sibling schedules to share with: 2 x 540k iterations at 0.338 s on 8 GPUs
    assert listed["fig7_35k"][1] == pytest.approx(2 * 540_000 * 0.338 * 8 / 3600, abs=0.06)
    # keypoints: 2x and 3x share a trunk to 210k, then a 60k tail each: 330k trained per init
    assert listed["fig6_keypoints"][1] == pytest.approx(2 * 330_000 * 0.338 * 8 / 3600, abs=0.06)


def test_the_seeds_experiment_is_off_and_grid_says_what_it_adds(tmp_path):
    """table2_seeds (3 seeds of the Table 2 comparison) is defined but not planned; `snakemake grid`
    names its cost, and turning it on from the command line plans exactly its new runs."""
    assert PAPER["experiments"]["table2_seeds"]["enabled"] is False
    assert not GRID.experiments_of("table2_seeds")
    proc = snakemake(["grid"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"^\s+table2_seeds\s+\(enabled: false\) would add (\d+) runs, ([\d,.]+) GPU-h", proc.stdout, re.M)
    assert m, proc.stdout[-3000:]
    # seed 0 is table2's run; seeds 1 and 2 of random and imagenet are new, each a lone 6x R50 GN run
    assert int(m.group(1)) == 4
    assert float(m.group(2).replace(",", "")) == pytest.approx(4 * 540_000 * 0.338 * 8 / 3600, abs=0.1)
    on = snakemake(["-n", "--config", 'experiments={"table2_seeds": {"enabled": true}}'], cwd=tmp_path, timeout=300)
    assert on.returncode == 0, on.stderr[-3000:]
    assert _job_counts(on.stdout)["train_final"] == len(GRID.runs) + 4
    for init in ("random", "imagenet"):
        for seed in (1, 2):
            assert f"models/R50-GN-{init}-coco_full-6x-s{seed}/model_final.pth" in on.stdout
