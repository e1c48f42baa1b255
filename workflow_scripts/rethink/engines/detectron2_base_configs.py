"""detectron2's configs that the runs start from, as get_cfg() + merge_from_file() resolve them at
DETECTRON2_COMMIT (BASE_CONFIGS: the key fields of each model-zoo yaml; DEFAULTS: detectron2's defaults
of the other fields the translation sets), and the input normalisations of the ImageNet models.
Transcribed data (and norm_fields, the four norm keys): rethink.engines.detectron2_config translates a
run against them; tests/test_detectron2_config.py (tests/test_detectron2_engine.py with detectron2)
checks them.
"""

from __future__ import annotations

from .shared import TEST_AUG_MAX_SIZE, TEST_AUG_MIN_SIZES

# the detectron2 commit whose configs BASE_CONFIGS transcribes (and that the engine was checked with)
DETECTRON2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"

GN_PRETRAINED = "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml"
GN_SCRATCH = "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml"
SYNCBN = "Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml"

C4_DETECTION = "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"  # the VGG16 runs' base (single feature map)

CAFFE_MEAN = [103.53, 116.28, 123.675]  # BGR
# BGR mean of the caffe VGG16 ImageNet model as py-faster-rcnn and Detectron subtract it
# (their PIXEL_MEANS); the caffe model takes 0-255 BGR pixels, std 1
VGG_CAFFE_MEAN = [102.9801, 115.9465, 122.7717]
UNIT_STD = [1.0, 1.0, 1.0]
TORCHVISION_STD = [57.375, 57.12, 58.395]  # BGR order, x255

_COMMON = {
    "MODEL.BACKBONE.FREEZE_AT": 2,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 4,
    "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.STEPS": [210000, 250000],
    "SOLVER.MAX_ITER": 270000,
    "SOLVER.GAMMA": 0.1,
    "SOLVER.WARMUP_ITERS": 1000,
    "SOLVER.WARMUP_FACTOR": 0.001,
    "SOLVER.WARMUP_METHOD": "linear",
    "INPUT.MIN_SIZE_TRAIN": [640, 672, 704, 736, 768, 800],
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.RANDOM_FLIP": "horizontal",
    "TEST.EVAL_PERIOD": 0,
    "DATASETS.TRAIN": ["coco_2017_train"],
    "DATASETS.TEST": ["coco_2017_val"],
    "MODEL.PIXEL_MEAN": CAFFE_MEAN,
    "MODEL.PIXEL_STD": UNIT_STD,
}


def norm_fields(norm: str) -> dict:
    return {
        "MODEL.RESNETS.NORM": norm,
        "MODEL.FPN.NORM": norm,
        "MODEL.ROI_BOX_HEAD.NORM": norm,
        "MODEL.ROI_MASK_HEAD.NORM": norm,
    }


# Key fields of the base configs, as get_cfg() + merge_from_file() resolves them at DETECTRON2_COMMIT
# (transcribed from paper/detectron2_configs.json; tests/test_detectron2_config.py compares them).
# Fields the translation sets beyond these keep detectron2's defaults (listed in DEFAULTS).
BASE_CONFIGS: dict[str, dict] = {
    GN_PRETRAINED: {
        **_COMMON,
        **norm_fields("GN"),
        "MODEL.WEIGHTS": "catalog://ImageNetPretrained/FAIR/R-50-GN",
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "TEST.PRECISE_BN.ENABLED": False,
    },
    GN_SCRATCH: {
        **_COMMON,
        **norm_fields("GN"),
        "MODEL.WEIGHTS": "",
        "MODEL.BACKBONE.FREEZE_AT": 0,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "TEST.PRECISE_BN.ENABLED": False,
    },
    SYNCBN: {
        **_COMMON,
        **norm_fields("SyncBN"),
        "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        "MODEL.RESNETS.STRIDE_IN_1X1": True,
        "TEST.PRECISE_BN.ENABLED": True,
    },
    # Base-RCNN-C4.yaml + faster_rcnn_R_50_C4_1x.yaml (get_cfg + merge_from_file at DETECTRON2_COMMIT;
    # not in paper/detectron2_configs.json: tests/test_detectron2_engine.py checks this table
    # against the installed detectron2). Only the fields the VGG16 runs read or change.
    C4_DETECTION: {
        "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        "MODEL.MASK_ON": False,
        "MODEL.BACKBONE.NAME": "build_resnet_backbone",
        "MODEL.BACKBONE.FREEZE_AT": 2,
        "MODEL.RPN.IN_FEATURES": ["res4"],
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 12000,
        "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN": 2000,
        "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
        "MODEL.ANCHOR_GENERATOR.SIZES": [[32, 64, 128, 256, 512]],
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
        "MODEL.ROI_HEADS.NAME": "Res5ROIHeads",
        "MODEL.ROI_HEADS.IN_FEATURES": ["res4"],
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512,
        "MODEL.ROI_BOX_HEAD.NAME": "",
        "MODEL.ROI_BOX_HEAD.NUM_CONV": 0,
        "MODEL.ROI_BOX_HEAD.NUM_FC": 0,
        "MODEL.ROI_BOX_HEAD.FC_DIM": 1024,
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
        "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
        "MODEL.ROI_BOX_HEAD.NORM": "",
        "MODEL.PIXEL_MEAN": CAFFE_MEAN,
        "MODEL.PIXEL_STD": UNIT_STD,
        "SOLVER.IMS_PER_BATCH": 16,
        "SOLVER.BASE_LR": 0.02,
        "SOLVER.MOMENTUM": 0.9,
        "SOLVER.WEIGHT_DECAY": 0.0001,
        "SOLVER.STEPS": [60000, 80000],
        "SOLVER.MAX_ITER": 90000,
        "SOLVER.GAMMA": 0.1,
        "SOLVER.WARMUP_ITERS": 1000,
        "SOLVER.WARMUP_FACTOR": 0.001,
        "SOLVER.WARMUP_METHOD": "linear",
        "INPUT.MIN_SIZE_TRAIN": [640, 672, 704, 736, 768, 800],
        "INPUT.MAX_SIZE_TRAIN": 1333,
        "INPUT.MIN_SIZE_TEST": 800,
        "INPUT.RANDOM_FLIP": "horizontal",
        "TEST.EVAL_PERIOD": 0,
        "TEST.PRECISE_BN.ENABLED": False,
        "DATASETS.TRAIN": ["coco_2017_train"],
        "DATASETS.TEST": ["coco_2017_val"],
    },
}


# detectron2 defaults (config/defaults.py at DETECTRON2_COMMIT) of the other fields overrides() sets
DEFAULTS = {
    "MODEL.MASK_ON": True,  # all three base configs set it
    "MODEL.KEYPOINT_ON": False,
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": [0.5],
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": False,
    # CascadeROIHeads (task cascade_mask_rcnn; detectron2's cascade configs keep these defaults):
    # 3 stages matching at IoU 0.5 / 0.6 / 0.7 (the first must equal IOU_THRESHOLDS[0]), each
    # stage's box deltas scaled by its weights (Cai & Vasconcelos)
    "MODEL.ROI_BOX_CASCADE_HEAD.IOUS": [0.5, 0.6, 0.7],
    "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS": [
        [10.0, 10.0, 5.0, 5.0],
        [20.0, 20.0, 10.0, 10.0],
        [30.0, 30.0, 15.0, 15.0],
    ],
    "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS": 17,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.FORMAT": "BGR",
    "INPUT.MAX_SIZE_TEST": 1333,
    "TEST.AUG.ENABLED": False,
    # batches of wide or of tall images only (the project's GroupedBatches, seeded by iteration)
    "DATALOADER.ASPECT_RATIO_GROUPING": True,
    # test-time augmentation (recipe tta, GeneralizedRCNNWithTTA): every image at these shorter
    # sides (longer side at most MAX_SIZE), flipped and not; Detectron's X152 TTA used the same
    # scales with MAX_SIZE 2000
    "TEST.AUG.MIN_SIZES": list(TEST_AUG_MIN_SIZES),
    "TEST.AUG.MAX_SIZE": TEST_AUG_MAX_SIZE,
    "TEST.AUG.FLIP": True,
    "TEST.DETECTIONS_PER_IMAGE": 100,
    "SOLVER.CHECKPOINT_PERIOD": 5000,
    "DATALOADER.NUM_WORKERS": 4,
    "SEED": -1,
}
