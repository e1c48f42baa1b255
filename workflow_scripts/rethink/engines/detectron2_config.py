"""A run -> the detectron2 config that trains it (no detectron2 needed to import this module).

detectron2's own configs for the paper (configs/Misc/*_gn.yaml, *_syncbn.yaml, scratch_*.yaml)
are the starting point; a run changes only what the paper or the run's recipe says:

* INPUT.MIN_SIZE_TRAIN: the recipe's ``min_size_train`` ((800,) in the paper: no scale
  augmentation; detectron2's configs use (640..800)). With ``scale_aug`` the two values are a
  range (MIN_SIZE_TRAIN_SAMPLING "range").
* SOLVER.STEPS / MAX_ITER: the run's schedule (absolute LR drops: 60k and 20k iterations before
  the end; a trunk segment has no drops). SOLVER.* else from the recipe.
* MODEL.WEIGHTS: the run's init (a staged local .pkl, or "" for random init).
* TEST.EVAL_PERIOD 0: the plan decides when to evaluate (milestones), not detectron2.
* The recipe's RPN / RoI / detections-per-image / test sizes (the paper's values by default,
  which are detectron2's defaults too) and the dataset names registered for the run's data.

Random init mirrors detectron2's scratch configs: weights "", FREEZE_AT 0; GN as in
scratch_mask_rcnn_R_50_FPN_3x_gn (PIXEL_STD 1), SyncBN/BN as in scratch_mask_rcnn_R_50_FPN_9x_syncbn
(STRIDE_IN_1X1 False, PIXEL_STD of torchvision). Pre-trained runs follow detectron2's ImageNet
models (see weights_style): MSRA .pkl (ResNet with BN) = caffe BGR mean, std 1, STRIDE_IN_1X1
True; FAIR .pkl (GN ResNets, ResNeXt) = same mean and std, STRIDE_IN_1X1 False; the workflow's
own pre-training (torchvision-named weights) = RGB input with torchvision's mean and std,
STRIDE_IN_1X1 False, as detectron2's tools/convert-torchvision-to-d2.py says.

VGG16 (the paper's section 5.1: Faster R-CNN as originally published, no FPN, no BN/GN) starts
from COCO-Detection/faster_rcnn_R_50_C4_1x.yaml, detectron2's single-feature (stride 16) Faster
R-CNN, and replaces its ResNet with the project's VGG16 backbone (registered by the engine as
"build_vgg16_backbone": conv1_1..conv5_3, 4 max-pools, feature "vgg_conv5", stride 16, 512
channels) and its Res5 RoI head with the original two-fc head (StandardROIHeads +
FastRCNNConvFCHead, 2 x fc 4096 on 7x7 RoI features, the shape of VGG16's fc6/fc7, which a
pre-trained run loads from the ImageNet .pkl). Only norm "none" and task faster_rcnn. See VGG16.

The project's loop, not detectron2's trainer, trains: it reads the model, data and test fields;
of SOLVER it follows the same recipe values through rethink.schedule. TEST.PRECISE_BN.ENABLED is
set False for every run: detectron2's SyncBN configs enable it, but no PreciseBN pass runs here (an
evaluation uses the checkpoint's BN statistics), and the generated config says what runs.

:func:`resolved` gives the values of the key fields as a flat dict (the base values transcribed
from detectron2 commit 02b5c4e in rethink.engines.detectron2_base_configs, updated by
:func:`overrides`), so the translation is checkable without detectron2; the detectron2 engine builds
the real CfgNode from the same overrides.
"""

from __future__ import annotations

import copy

from .detectron2_base_configs import (
    BASE_CONFIGS,
    C4_DETECTION,
    CAFFE_MEAN,
    DEFAULTS,
    GN_PRETRAINED,
    GN_SCRATCH,
    SYNCBN,
    TORCHVISION_STD,
    UNIT_STD,
    VGG_CAFFE_MEAN,
    norm_fields,
)
from .shared import test_aug_sizes

# The VGG16 Faster R-CNN over C4_DETECTION: the project's choices, not detectron2 config values
# (detectron2 has no VGG model). Anchors (5 sizes x 3 ratios), ROIAlignV2 pooling, the RPN
# and everything else stay C4_DETECTION's / the recipe's.
VGG16 = {
    "MODEL.BACKBONE.NAME": "build_vgg16_backbone",  # registered by engines/detectron2_backbones.py
    "MODEL.RPN.IN_FEATURES": ["vgg_conv5"],  # conv5_3, stride 16, as the original Faster R-CNN
    "MODEL.ROI_HEADS.IN_FEATURES": ["vgg_conv5"],
    "MODEL.ROI_HEADS.NAME": "StandardROIHeads",  # a separate box head (not the ResNet's res5)
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 0,
    "MODEL.ROI_BOX_HEAD.NUM_FC": 2,  # VGG16's fc6, fc7
    "MODEL.ROI_BOX_HEAD.FC_DIM": 4096,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,  # 512 x 7 x 7 = fc6's 25088 inputs
}
# the first conv blocks a pre-trained VGG16 run freezes (conv1_x, conv2_x: as Faster R-CNN and
# Detectron's VGG16 body, which stops the gradient at conv2_2); random init freezes nothing
VGG16_FREEZE_AT_PRETRAINED = 2


# the paper's backbones in detectron2's ResNet(-Xt) terms
BACKBONES = {
    "R18": {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64},
    "R50": {"MODEL.RESNETS.DEPTH": 50},
    "R101": {"MODEL.RESNETS.DEPTH": 101},
    # ResNeXt-152 32x8d (a C2 model: stride in the 3x3 conv)
    "X152": {
        "MODEL.RESNETS.DEPTH": 152,
        "MODEL.RESNETS.NUM_GROUPS": 32,
        "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
    },
}

# the project's norm names -> detectron2's get_norm() names
NORMS = {"GN": "GN", "SyncBN": "SyncBN", "BN": "BN", "none": ""}


class D2ConfigError(ValueError):
    """A run that detectron2 cannot train as asked."""


def is_vgg(run: dict) -> bool:
    return run["backbone"] == "VGG16"


def _check(run: dict) -> None:
    where = f"run {run.get('run_id', '?')}"
    if run["backbone"] not in BACKBONES and not is_vgg(run):
        raise D2ConfigError(
            f"{where}: backbone {run['backbone']!r} has no detectron2 model (detectron2 backbones here: "
            f"{', '.join([*BACKBONES, 'VGG16'])}); use engine: torchvision for it"
        )
    if run["norm"] not in NORMS:
        raise D2ConfigError(f"{where}: norm {run['norm']!r} is not one of {', '.join(NORMS)}")
    if is_vgg(run):
        task = run["recipe"].get("task", "mask_rcnn")
        if run["norm"] != "none" or task != "faster_rcnn":
            raise D2ConfigError(
                f"{where}: VGG16 in detectron2 is the paper's section 5.1 model, Faster R-CNN without "
                f"normalisation: it needs norm 'none' and recipe.task 'faster_rcnn' (got norm {run['norm']!r}, "
                f"task {task!r})"
            )


def is_random_init(run: dict) -> bool:
    """Random init: the run's "init_kind" if it carries one (a train spec's init_kind), else
    the init's name ("random", as in config.yaml)."""
    kind = run.get("init_kind")
    return kind == "random" if kind else run["init"] == "random"


def base_config_name(run: dict) -> str:
    """Which model-zoo yaml under detectron2's configs/ a run starts from."""
    _check(run)
    if is_vgg(run):
        return C4_DETECTION
    if run["norm"] == "GN":
        return GN_SCRATCH if is_random_init(run) else GN_PRETRAINED
    # SyncBN, BN, none: the SyncBN config (for random init changed as scratch_..._9x_syncbn does)
    return SYNCBN


def weights_style(run: dict) -> str | None:
    """Which ImageNet models a pre-trained run starts from, as detectron2's catalogue has them:
    "fair" (the GN ResNets and the ResNeXts: STRIDE_IN_1X1 False) or "msra" (the BN ResNets:
    STRIDE_IN_1X1 True), both caffe BGR mean and std 1; or "vgg-caffe" for VGG16; None for random
    init. A run whose init is the workflow's own pre-training (init_kind "pretrain": the tiny
    default's "imagenet") starts from torchvision-named weights trained on torchvision's input
    normalisation: "torchvision", with the config detectron2's tools/convert-torchvision-to-d2.py
    prescribes for such weights (RGB input, torchvision's mean and std, STRIDE_IN_1X1 False); the
    engine renames the keys (rethink.weights.torchvision_resnet_to_detectron2). Decided by
    the run (not by the weights' file name), so the model that build_model makes before the
    weights are loaded is the one they fit."""
    if is_random_init(run):
        return None
    if is_vgg(run):
        return "vgg-caffe"  # the caffe VGG16 (conv1_1_w ... fc7_b): BGR 0-255 minus VGG_CAFFE_MEAN
    if run.get("init_kind") == "pretrain":
        return "torchvision"
    return "fair" if run["norm"] == "GN" or run["backbone"].startswith("X") else "msra"


def _schedule_fields(schedule) -> dict:
    if schedule is None:
        return {}
    if not isinstance(schedule, dict):  # rethink.schedule.Schedule
        schedule = {
            k: getattr(schedule, k)
            for k in ("iterations", "base_lr", "lr_drops", "drop_factor", "warmup_iters", "warmup_factor")
        }
    return {
        "SOLVER.BASE_LR": float(schedule["base_lr"]),
        "SOLVER.STEPS": [int(s) for s in schedule["lr_drops"]],
        "SOLVER.MAX_ITER": int(schedule["iterations"]),
        "SOLVER.GAMMA": float(schedule["drop_factor"]),
        "SOLVER.WARMUP_ITERS": int(schedule["warmup_iters"]),
        "SOLVER.WARMUP_FACTOR": float(schedule["warmup_factor"]),
    }


def dataset_names(run: dict, dataset: dict | None = None) -> tuple[str, str]:
    """The names the engine registers the run's train and val sets under in detectron2's catalogs."""
    name = (dataset or {}).get("name") or run["data"]
    return f"rethink_{name}_train", f"rethink_{name}_val"


def num_classes(dataset: dict | None) -> int | None:
    """Number of categories of a dataset manifest ("categories": list or count, or "num_classes")."""
    if not dataset:
        return None
    for key in ("num_classes", "categories"):
        v = dataset.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, list):
            return len(v)
    return None


def overrides(run: dict, schedule=None, weights: str | None = None, dataset: dict | None = None) -> dict:
    """Dotted detectron2 config keys -> values that turn the base config into this run's.

    `schedule`: the segment's schedule (a train spec's "schedule" dict or a Schedule; None
    leaves SOLVER's schedule fields at the recipe's/base's). `weights`: path of the init
    weights (MODEL.WEIGHTS; None = not known here: the architecture still follows the run's
    init). `dataset`: the run's dataset manifest (for the number of classes).

    One step per part of the config, in this order (a later step overrides an earlier one's key):
    norm, init, backbone (VGG16 or ResNet), task, solver, schedule, input, proposal and RoI
    sizes, test / data / seed."""
    _check(run)
    recipe = run["recipe"]
    if is_random_init(run) and weights:
        raise D2ConfigError(
            f"run {run.get('run_id', '?')}: init {run['init']!r} is random, but weights {weights!r} were given"
        )
    out: dict = {}
    out.update(norm_fields(NORMS[run["norm"]]))
    out.update(_init_fields(run, weights))
    if is_vgg(run):
        del out["MODEL.RESNETS.STRIDE_IN_1X1"]  # no ResNet in the model
        out.update(_vgg16_fields(run))
    else:
        out.update(_resnet_fields(run))  # after the init: ResNeXt fixes its own stride placement
    out.update(_task_fields(run, dataset))
    out.update(_solver_fields(recipe))
    out.update(_schedule_fields(schedule))
    out.update(_input_fields(recipe))
    out.update(_proposal_fields(recipe))
    out.update(_test_data_fields(run, dataset))
    return out


def _init_fields(run: dict, weights: str | None) -> dict:
    """MODEL.WEIGHTS and what the init decides: freezing, stride placement, input normalisation."""
    out = {"MODEL.WEIGHTS": weights or "", "MODEL.PIXEL_MEAN": list(CAFFE_MEAN)}
    if is_random_init(run):
        out["MODEL.BACKBONE.FREEZE_AT"] = 0
        out["MODEL.RESNETS.STRIDE_IN_1X1"] = False
        # GN: as scratch_mask_rcnn_R_50_FPN_3x_gn; the others as scratch_mask_rcnn_R_50_FPN_9x_syncbn
        out["MODEL.PIXEL_STD"] = list(UNIT_STD if base_config_name(run) == GN_SCRATCH else TORCHVISION_STD)
    elif weights_style(run) == "torchvision":
        out["MODEL.RESNETS.STRIDE_IN_1X1"] = False
        out["MODEL.PIXEL_MEAN"] = list(reversed(CAFFE_MEAN))  # torchvision's mean x 255, RGB
        out["MODEL.PIXEL_STD"] = list(reversed(TORCHVISION_STD))
        out["INPUT.FORMAT"] = "RGB"
    else:
        out["MODEL.RESNETS.STRIDE_IN_1X1"] = weights_style(run) == "msra"
        out["MODEL.PIXEL_STD"] = list(UNIT_STD)
    return out


def _vgg16_fields(run: dict) -> dict:
    """The VGG16 Faster R-CNN's fields (the VGG16 table), the blocks it freezes and its input mean."""
    out = copy.deepcopy(VGG16)
    out["MODEL.BACKBONE.FREEZE_AT"] = 0 if is_random_init(run) else VGG16_FREEZE_AT_PRETRAINED
    # pre-trained: the caffe VGG16's input; random init: that mean and torchvision's std (unit
    # variance into an MSRA-initialised net without normalisation, as the scratch SyncBN config)
    out["MODEL.PIXEL_MEAN"] = list(VGG_CAFFE_MEAN)
    return out


def _resnet_fields(run: dict) -> dict:
    """The ResNet(-Xt) of the run's backbone and the FPN width, which the RPN and the RoI heads'
    convs share (recipe.head_channels; 256: detectron2's defaults)."""
    width = int(run["recipe"]["head_channels"])
    return {
        **BACKBONES[run["backbone"]],
        "MODEL.FPN.OUT_CHANNELS": width,
        "MODEL.ROI_BOX_HEAD.CONV_DIM": width,
        "MODEL.ROI_MASK_HEAD.CONV_DIM": width,
    }


def _task_fields(run: dict, dataset: dict | None) -> dict:
    """The heads of the recipe's task and the number of classes (the dataset's; 1 for keypoints)."""
    task = run["recipe"].get("task", "mask_rcnn")
    out: dict = {
        "MODEL.MASK_ON": task in ("mask_rcnn", "cascade_mask_rcnn"),
        "MODEL.KEYPOINT_ON": task == "keypoint_rcnn",
    }
    if task == "cascade_mask_rcnn":
        out["MODEL.ROI_HEADS.NAME"] = "CascadeROIHeads"
        out["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"] = True
    n = num_classes(dataset)
    if task == "keypoint_rcnn":
        out["MODEL.ROI_HEADS.NUM_CLASSES"] = 1
    elif n is not None:
        out["MODEL.ROI_HEADS.NUM_CLASSES"] = n
    return out


def _solver_fields(recipe: dict) -> dict:
    return {
        "SOLVER.IMS_PER_BATCH": int(recipe["batch"]),
        "SOLVER.BASE_LR": float(recipe["base_lr"]),
        "SOLVER.MOMENTUM": float(recipe["momentum"]),
        "SOLVER.WEIGHT_DECAY": float(recipe["weight_decay"]),
        "SOLVER.GAMMA": float(recipe["drop_factor"]),
        "SOLVER.WARMUP_ITERS": int(recipe["warmup_iters"]),
        "SOLVER.WARMUP_FACTOR": float(recipe["warmup_factor"]),
        "SOLVER.WARMUP_METHOD": "linear",
        "SOLVER.CHECKPOINT_PERIOD": int(recipe["checkpoint_period"]),
    }


def _input_fields(recipe: dict) -> dict:
    return {
        "INPUT.MIN_SIZE_TRAIN": [int(s) for s in recipe["min_size_train"]],
        "INPUT.MIN_SIZE_TRAIN_SAMPLING": "range" if recipe.get("scale_aug") else "choice",
        "INPUT.MAX_SIZE_TRAIN": int(recipe["max_size_train"]),
        "INPUT.MIN_SIZE_TEST": int(recipe["min_size_test"]),
        "INPUT.MAX_SIZE_TEST": int(recipe["max_size_test"]),
    }


def _proposal_fields(recipe: dict) -> dict:
    """The model's sizes: RPN proposals kept before and after NMS, RoIs per image, detections."""
    return {
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN": int(recipe["rpn_pre_nms_train"]),
        "MODEL.RPN.POST_NMS_TOPK_TRAIN": int(recipe["rpn_post_nms_train"]),
        "MODEL.RPN.PRE_NMS_TOPK_TEST": int(recipe["rpn_pre_nms_test"]),
        "MODEL.RPN.POST_NMS_TOPK_TEST": int(recipe["rpn_post_nms_test"]),
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": int(recipe["roi_batch_per_image"]),
        "TEST.DETECTIONS_PER_IMAGE": int(recipe["detections_per_image"]),
    }


def _test_data_fields(run: dict, dataset: dict | None) -> dict:
    """Test-time augmentation, no evaluation or PreciseBN by detectron2, the registered dataset
    names, loader workers and the seed."""
    recipe = run["recipe"]
    aug_sizes, aug_max = test_aug_sizes(recipe)
    train_name, val_name = dataset_names(run, dataset)
    return {
        "TEST.AUG.ENABLED": bool(recipe.get("tta", False)),
        "TEST.AUG.MIN_SIZES": aug_sizes,
        "TEST.AUG.MAX_SIZE": aug_max,
        "TEST.EVAL_PERIOD": 0,
        # detectron2's SyncBN configs enable PreciseBN (BN statistics re-estimated on 200 train batches
        # before each of its evaluations); the project's evaluation takes the checkpoint's running
        # statistics as they are, for every norm, so the generated config says so
        "TEST.PRECISE_BN.ENABLED": False,
        "DATASETS.TRAIN": [train_name],
        "DATASETS.TEST": [val_name],
        "DATALOADER.NUM_WORKERS": int(recipe["num_workers"]),
        "SEED": int(run["seed"]),
    }


def resolved(run: dict, schedule=None, weights: str | None = None, dataset: dict | None = None) -> dict:
    """The key fields of the run's detectron2 config: base values (BASE_CONFIGS, DEFAULTS)
    updated by overrides(). Lists stay lists (detectron2 keeps some as tuples)."""
    out = copy.deepcopy({**DEFAULTS, **BASE_CONFIGS[base_config_name(run)]})
    out.update(copy.deepcopy(overrides(run, schedule, weights, dataset)))
    return out
