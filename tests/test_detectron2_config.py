# over 400 lines: the detectron2 config checked field by field against detectron2's own paper configs
"""The run -> detectron2 config translation (rethink.engines.detectron2_config), checked field by field against
detectron2's own configs for the paper (paper/detectron2_configs.json: get_cfg + merge_from_file
at detectron2 commit 02b5c4e). Needs no detectron2: it checks the flat dict d2config.resolved(),
which tests/test_detectron2_engine.py (with detectron2) checks against the real CfgNode.

Every difference from detectron2's config is named here with the value the paper asks for."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rethink import config as rconfig
from rethink import grid as rgrid
from rethink.engines import detectron2_config as d2config
from rethink.job_specs import JobSpecs
from rethink.paths import Paths
from rethink.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "paper" / "detectron2_configs.json"


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def paper():
    cfg = rconfig.load(ROOT / "config.yaml")
    plan = Plan(rgrid.build(cfg, "config.yaml"))
    return cfg, plan, JobSpecs(Paths(cfg, plan))


def final_segment_spec(paper, run_id: str) -> dict:
    """The train spec of the last segment of a run: what the training job hands the engine."""
    _, plan, specs = paper
    return specs.train_spec(plan.segments_of_run(run_id)[-1])


def staged(paper, run_id: str) -> str:
    """The local path the stage rule puts the run's ImageNet .pkl at."""
    _, plan, specs = paper
    run = plan.run(run_id)
    return specs.paths.init_weights(run.init, run.backbone, run.norm)


def diff(got: dict, want: dict) -> dict:
    return {k: (got.get(k, "<missing>"), v) for k, v in want.items() if got.get(k, "<missing>") != v}


# the project's differences from detectron2's configs: the paper's single train scale, its own
# dataset names, and no PreciseBN pass (detectron2's SyncBN configs enable one; d2config says none runs)
PAPER = {
    "INPUT.MIN_SIZE_TRAIN": [800],
    "TEST.PRECISE_BN.ENABLED": False,
    "DATASETS.TRAIN": ["rethink_coco_full_train"],
    "DATASETS.TEST": ["rethink_coco_full_val"],
}


def test_transcribed_base_table_is_detectron2s(reference):
    # the paper's Misc configs are in the reference; the VGG16 runs' C4 base is not (it is checked
    # against the installed detectron2 in test_detectron2_engine.py::test_c4_base_table_is_detectron2s)
    checked = []
    for base, fields in d2config.BASE_CONFIGS.items():
        name = base.removeprefix("Misc/").removesuffix(".yaml")
        if base == d2config.C4_DETECTION:
            continue
        table = {**d2config.DEFAULTS, **fields}
        assert diff(table, reference[name]) == {}, name
        checked.append(base)
    assert set(d2config.BASE_CONFIGS) - set(checked) == {d2config.C4_DETECTION}


@pytest.mark.parametrize(
    "run_id, base, ref_name",
    [
        ("R50-GN-random-coco_full-3x-s0", d2config.GN_SCRATCH, "scratch_mask_rcnn_R_50_FPN_3x_gn"),
        ("R50-GN-imagenet-coco_full-3x-s0", d2config.GN_PRETRAINED, "mask_rcnn_R_50_FPN_3x_gn"),
        ("R50-SyncBN-imagenet-coco_full-3x-s0", d2config.SYNCBN, "mask_rcnn_R_50_FPN_3x_syncbn"),
    ],
)
def test_3x_runs_match_detectron2_configs(paper, reference, run_id, base, ref_name):
    spec = final_segment_spec(paper, run_id)
    run = spec["run"]
    assert d2config.base_config_name(run) == base
    weights = staged(paper, run_id) if run["init"] != "random" else None
    got = d2config.resolved(run, spec["schedule"], weights)
    exceptions = {**PAPER, "MODEL.WEIGHTS": weights or ""}
    want = {**reference[ref_name], **exceptions}
    assert diff(got, want) == {}
    # the exceptions are real differences, the rest (schedule included: 3x = 270k, drops 60k/20k
    # from the end = detectron2's 3x steps) is detectron2's
    assert got["SOLVER.STEPS"] == [210000, 250000] == reference[ref_name]["SOLVER.STEPS"]
    assert got["SOLVER.MAX_ITER"] == 270000
    assert reference[ref_name]["INPUT.MIN_SIZE_TRAIN"] != [800]
    if weights:
        assert got["MODEL.WEIGHTS"].endswith(f"{run['backbone']}-{run['norm']}.pkl")


def test_random_syncbn_mirrors_scratch_9x_syncbn(paper, reference):
    run_id = "R50-SyncBN-random-coco_full-3x-s0"
    spec = final_segment_spec(paper, run_id)
    run = spec["run"]
    assert d2config.base_config_name(run) == d2config.SYNCBN
    got = d2config.resolved(run, spec["schedule"], None)
    # detectron2's scratch SyncBN config is a 9x schedule at 4x the batch; the paper's is batch 16, LR 0.02
    paper_schedule = {
        "SOLVER.IMS_PER_BATCH": 16,
        "SOLVER.BASE_LR": 0.02,
        "SOLVER.STEPS": [210000, 250000],
        "SOLVER.MAX_ITER": 270000,
        "TEST.EVAL_PERIOD": 0,
    }
    assert diff(got, {**reference["scratch_mask_rcnn_R_50_FPN_9x_syncbn"], **PAPER, **paper_schedule}) == {}
    # ... and it is the 3x SyncBN config changed exactly as the scratch config changes it
    scratch = {
        "MODEL.WEIGHTS": "",
        "MODEL.BACKBONE.FREEZE_AT": 0,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "MODEL.PIXEL_STD": [57.375, 57.12, 58.395],
    }
    assert diff(got, {**reference["mask_rcnn_R_50_FPN_3x_syncbn"], **PAPER, **scratch}) == {}


@pytest.mark.parametrize(
    "schedule, steps, max_iter",
    [("2x", [120000, 160000], 180000), ("4x", [300000, 340000], 360000), ("6x", [480000, 520000], 540000)],
)
def test_schedule_steps(paper, schedule, steps, max_iter):
    spec = final_segment_spec(paper, f"R50-GN-random-coco_full-{schedule}-s0")
    got = d2config.resolved(spec["run"], spec["schedule"], None)
    assert got["SOLVER.STEPS"] == steps
    assert got["SOLVER.MAX_ITER"] == max_iter
    assert got["SOLVER.GAMMA"] == 0.1 and got["SOLVER.WARMUP_ITERS"] == 1000


def test_trunk_segment_has_no_drops(paper):
    _, plan, specs = paper
    trunk = [s for s in plan.segments_of_run("R50-GN-random-coco_full-6x-s0") if s.line == "trunk"]
    spec = specs.train_spec(trunk[-1])
    got = d2config.resolved(spec["run"], spec["schedule"], None)
    assert got["SOLVER.STEPS"] == []
    assert got["SOLVER.MAX_ITER"] == 480000  # the family's latest first drop (6x)


def test_r101_differs_from_r50_only_in_depth(paper):
    r50 = final_segment_spec(paper, "R50-GN-imagenet-coco_full-3x-s0")
    r101 = final_segment_spec(paper, "R101-GN-imagenet-coco_full-3x-s0")
    a = d2config.resolved(r50["run"], r50["schedule"], "w.pkl")
    b = d2config.resolved(r101["run"], r101["schedule"], "w.pkl")
    assert diff(b, a) == {"MODEL.RESNETS.DEPTH": (101, 50)}


def _variant(paper, run_id: str, **changes) -> dict:
    run = copy.deepcopy(final_segment_spec(paper, run_id)["run"])
    for k, v in changes.items():
        if k in run["recipe"]:
            run["recipe"][k] = v
        else:
            run[k] = v
    return run


def test_x152_is_resnext_152_32x8d(paper):
    for init in ("random", "imagenet"):
        run = _variant(paper, f"R50-GN-{init}-coco_full-3x-s0", backbone="X152")
        got = d2config.resolved(run, None, None if init == "random" else "x152.pkl")
        assert (
            got["MODEL.RESNETS.DEPTH"],
            got["MODEL.RESNETS.NUM_GROUPS"],
            got["MODEL.RESNETS.WIDTH_PER_GROUP"],
            got["MODEL.RESNETS.STRIDE_IN_1X1"],
        ) == (152, 32, 8, False)
        assert got["MODEL.RESNETS.NORM"] == "GN"


def test_recipe_options(paper):
    run = _variant(
        paper,
        "R50-GN-random-coco_full-3x-s0",
        scale_aug=True,
        min_size_train=[640, 800],
        tta=True,
        rpn_post_nms_train=100,
        roi_batch_per_image=64,
        detections_per_image=50,
        batch=8,
        seed=3,
    )
    got = d2config.resolved(run, None, None)
    assert got["INPUT.MIN_SIZE_TRAIN"] == [640, 800]
    assert got["INPUT.MIN_SIZE_TRAIN_SAMPLING"] == "range"
    assert got["TEST.AUG.ENABLED"] is True
    assert got["MODEL.RPN.POST_NMS_TOPK_TRAIN"] == 100
    assert got["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"] == 64
    assert got["TEST.DETECTIONS_PER_IMAGE"] == 50
    assert got["SOLVER.IMS_PER_BATCH"] == 8
    assert got["SEED"] == 3
    plain = d2config.resolved(_variant(paper, "R50-GN-random-coco_full-3x-s0"), None, None)
    assert plain["INPUT.MIN_SIZE_TRAIN_SAMPLING"] == "choice" and plain["TEST.AUG.ENABLED"] is False


WIDTHS = ("MODEL.FPN.OUT_CHANNELS", "MODEL.ROI_BOX_HEAD.CONV_DIM", "MODEL.ROI_MASK_HEAD.CONV_DIM")


def test_head_channels_set_the_fpn_and_head_widths(paper, vgg):
    """recipe.head_channels (the tiny default narrows it): detectron2's FPN width and the box and
    mask heads' conv width, 256 (detectron2's defaults) for every paper run."""
    cfg, plan, _ = paper
    assert {
        d2config.resolved(r.to_dict(), None, None)[k]
        for r in plan.grid.runs.values()
        if r.backbone != "VGG16"
        for k in WIDTHS
    } == {256}
    narrow = d2config.resolved(_variant(paper, "R50-GN-random-coco_full-3x-s0", head_channels=64), None, None)
    assert [narrow[k] for k in WIDTHS] == [64, 64, 64]
    # VGG16 has no FPN: a width for it is refused when the grid is built, naming the field
    loaded, _, _ = vgg
    bad = copy.deepcopy(loaded)
    bad["recipe"]["head_channels"] = 128
    with pytest.raises(rconfig.ConfigError, match=r"experiments.sec5_1_imagenet.recipe.head_channels: 128.*VGG16"):
        rgrid.build(bad, "vgg.yaml")


def test_tasks_and_classes(paper):
    dataset = {"name": "voc", "categories": [{"id": i + 1, "name": str(i)} for i in range(20)]}
    box = d2config.resolved(_variant(paper, "R50-GN-random-coco_full-3x-s0", task="faster_rcnn"), None, None, dataset)
    assert box["MODEL.MASK_ON"] is False and box["MODEL.ROI_HEADS.NUM_CLASSES"] == 20
    assert box["DATASETS.TRAIN"] == ["rethink_voc_train"]
    kp = d2config.resolved(_variant(paper, "R50-GN-random-coco_full-3x-s0", task="keypoint_rcnn"), None, None)
    assert kp["MODEL.KEYPOINT_ON"] is True and kp["MODEL.MASK_ON"] is False and kp["MODEL.ROI_HEADS.NUM_CLASSES"] == 1
    cas = d2config.resolved(_variant(paper, "R50-GN-random-coco_full-3x-s0", task="cascade_mask_rcnn"), None, None)
    assert cas["MODEL.ROI_HEADS.NAME"] == "CascadeROIHeads" and cas["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"]
    assert (
        cas["MODEL.ROI_BOX_CASCADE_HEAD.IOUS"] == [0.5, 0.6, 0.7]
        and len(cas["MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS"]) == 3
    )


def test_test_aug_sizes_are_detectron2s_scaled_and_shared_with_torchvision(paper):
    from rethink.engines.torchvision_engine import inference_passes

    run = _variant(paper, "R50-GN-random-coco_full-3x-s0", tta=True)
    full = d2config.resolved(run, None, None)
    assert full["TEST.AUG.ENABLED"] is True
    assert full["TEST.AUG.MIN_SIZES"] == list(range(400, 1201, 100)) and full["TEST.AUG.MAX_SIZE"] == 4000
    small = {**run["recipe"], "min_size_test": 128, "max_size_test": 192}
    sizes, cap = d2config.test_aug_sizes(small)
    assert sizes == [64, 80, 96, 112, 128, 144, 160, 176, 192] and cap == 576
    assert sorted({(s, m) for s, m, _ in inference_passes(small)}) == [(s, cap) for s in sizes]


def test_unsupported_backbone_is_a_clear_error(paper):
    run = _variant(paper, "R50-GN-random-coco_full-3x-s0", backbone="R34")
    with pytest.raises(d2config.D2ConfigError, match=r"R50-GN-random-coco_full-3x-s0.*R34.*VGG16.*torchvision"):
        d2config.overrides(run)


# ---------------------------------------------------------------- VGG16 (the paper's section 5.1)


@pytest.fixture(scope="module")
def vgg(module_tmp):
    """The paper's section 5.1 as a config: Faster R-CNN VGG16 without normalisation, 9x from
    ImageNet and 11x from random init (config.yaml's datasets; staged caffe VGG16 weights)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["axes"].update(
        init=["random", "imagenet"], norm=["none"], backbone=["VGG16"], schedule={"9x": {"x": 9}, "11x": {"x": 11}}
    )
    cfg["inits"]["imagenet"]["weights"] = {"VGG16-none": "/somewhere/VGG16.pkl"}
    cfg["recipe"]["task"] = "faster_rcnn"
    cfg["axes"]["data"] = ["coco_full"]
    cfg["experiments"] = {
        "sec5_1_imagenet": {"init": ["imagenet"], "schedule": ["9x"], "data": ["coco_full"]},
        "sec5_1_random": {"init": ["random"], "schedule": ["11x"], "data": ["coco_full"]},
    }
    cfg["seconds_per_iter"] = []
    path = module_tmp("vggcfg") / "vgg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = rconfig.load(path)
    plan = Plan(rgrid.build(loaded, str(path)))
    return loaded, plan, JobSpecs(Paths(loaded, plan))


# every field in which a VGG16 run differs from the C4 base (faster_rcnn_R_50_C4_1x), with its value;
# the rest of the C4 base's table stays detectron2's
VGG_FROM_C4 = {
    "MODEL.BACKBONE.NAME": "build_vgg16_backbone",
    "MODEL.RPN.IN_FEATURES": ["vgg_conv5"],
    "MODEL.ROI_HEADS.IN_FEATURES": ["vgg_conv5"],
    "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 4096,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
    "MODEL.PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
    # the recipe's (the paper's) sizes, as for every run
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000,
    "INPUT.MIN_SIZE_TRAIN": [800],
    "DATASETS.TRAIN": ["rethink_coco_full_train"],
    "DATASETS.TEST": ["rethink_coco_full_val"],
}


@pytest.mark.parametrize(
    "run_id, iters, steps, init_fields",
    [
        (
            "VGG16-none-imagenet-coco_full-9x-s0",
            810000,
            [750000, 790000],
            {"MODEL.BACKBONE.FREEZE_AT": 2, "MODEL.PIXEL_STD": [1.0, 1.0, 1.0]},
        ),
        (
            "VGG16-none-random-coco_full-11x-s0",
            990000,
            [930000, 970000],
            {"MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.PIXEL_STD": [57.375, 57.12, 58.395], "MODEL.WEIGHTS": ""},
        ),
    ],
)
def test_vgg16_faster_rcnn(vgg, run_id, iters, steps, init_fields):
    _, plan, specs = vgg
    assert set(plan.grid.runs) == {"VGG16-none-imagenet-coco_full-9x-s0", "VGG16-none-random-coco_full-11x-s0"}
    spec = specs.train_spec(plan.segments_of_run(run_id)[-1])
    run = spec["run"]
    assert d2config.base_config_name(run) == d2config.C4_DETECTION
    weights = specs.paths.init_weights(run["init"], run["backbone"], run["norm"])
    got = d2config.resolved(run, spec["schedule"], weights)
    base = {**d2config.DEFAULTS, **d2config.BASE_CONFIGS[d2config.C4_DETECTION]}
    want_changes = {**VGG_FROM_C4, **init_fields, "SOLVER.STEPS": steps, "SOLVER.MAX_ITER": iters, "SEED": 0}
    if weights:
        assert weights.endswith("/VGG16-none.pkl")
        want_changes["MODEL.WEIGHTS"] = weights
    # every VGG field has its value ...
    assert diff(got, want_changes) == {}
    # ... and nothing else differs from the C4 base
    changed = {k for k in base if got[k] != base[k]}
    assert changed == {k for k in want_changes if want_changes[k] != base.get(k)}
    assert got["MODEL.MASK_ON"] is False and got["MODEL.KEYPOINT_ON"] is False
    assert got["MODEL.ROI_BOX_HEAD.NORM"] == "" and got["MODEL.ROI_BOX_HEAD.NUM_CONV"] == 0
    assert got["MODEL.ANCHOR_GENERATOR.SIZES"] == [[32, 64, 128, 256, 512]]
    assert got["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"] == [[0.5, 1.0, 2.0]]
    assert "MODEL.RESNETS.STRIDE_IN_1X1" not in got and "MODEL.RESNETS.DEPTH" not in got
    # the paper's drops: 60k and 20k iterations before the end
    assert [iters - s for s in got["SOLVER.STEPS"]] == [60000, 20000]
    assert d2config.weights_style(run) == (None if run["init"] == "random" else "vgg-caffe")


def test_vgg16_needs_no_norm_and_faster_rcnn(vgg, paper):
    _, plan, _ = vgg
    run = copy.deepcopy(plan.run("VGG16-none-random-coco_full-11x-s0").to_dict())
    gn = {**run, "norm": "GN"}
    with pytest.raises(d2config.D2ConfigError, match=r"VGG16-none-random-coco_full-11x-s0.*norm 'none'.*'GN'"):
        d2config.overrides(gn)
    mask = {**run, "recipe": {**run["recipe"], "task": "mask_rcnn"}}
    with pytest.raises(d2config.D2ConfigError, match=r"faster_rcnn.*'mask_rcnn'"):
        d2config.resolved(mask)
    # and the ResNet runs are untouched by the VGG16 fields
    r50 = final_segment_spec(paper, "R50-GN-imagenet-coco_full-3x-s0")["run"]
    got = d2config.resolved(r50, None, "w.pkl")
    same = {k for k, v in d2config.VGG16.items() if got.get(k) == v}
    assert same == {"MODEL.ROI_HEADS.NAME", "MODEL.ROI_BOX_HEAD.NAME"}  # the FPN configs' too
    assert got["MODEL.PIXEL_MEAN"] == d2config.CAFFE_MEAN and got["MODEL.BACKBONE.FREEZE_AT"] == 2


def test_random_init_with_weights_is_an_error(paper):
    run = final_segment_spec(paper, "R50-GN-random-coco_full-3x-s0")["run"]
    with pytest.raises(d2config.D2ConfigError, match="random"):
        d2config.overrides(run, None, "some.pkl")


def test_imports_without_detectron2():
    """d2config and the engine module import without detectron2; using the engine without it
    says how to install it."""
    code = (
        "import sys\n"
        "import rethink.engines.detectron2_config, rethink.engines.detectron2_engine as e\n"
        "assert 'detectron2' not in sys.modules, 'detectron2 imported at module level'\n"
        "try:\n"
        "    import detectron2\n"
        "except ImportError:\n"
        "    try:\n"
        "        e.Detectron2Engine().config({})\n"
        "    except RuntimeError as err:\n"
        "        assert 'pip install --no-build-isolation' in str(err) and 'detectron2.git@' in str(err), err\n"
        "        print('hint ok')\n"
        "    else:\n"
        "        raise AssertionError('no error without detectron2')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
