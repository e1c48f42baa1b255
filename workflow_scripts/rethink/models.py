"""Model builders of the torchvision engine and of the tiny pre-training.

One ResNet builder serves both: the pre-training trains ``resnet(backbone, norm, num_classes=K)``
(body + linear classifier) and saves the body; Mask R-CNN wraps the same body in an FPN
(``model.backbone.body``), so the saved weights load with strict key checking.

Initialisation is detectron2's for training from scratch: MSRA (kaiming normal, fan_out) fill of
every conv in the ResNet and the heads, Xavier-like fill (kaiming uniform, a=1) in the FPN, norm
weights 1 and biases 0, and nothing frozen (all 5 stages trainable).
"""
from __future__ import annotations

import math

from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import MultiScaleRoIAlign, initLevelMapper

from .norms import norm_layer

RESNETS = {"R18": tv_resnet.resnet18, "R50": tv_resnet.resnet50, "R101": tv_resnet.resnet101}
TASKS = ("mask_rcnn", "faster_rcnn")
FPN_CHANNELS = 256
FPN_STRIDES = (4, 8, 16, 32)  # feature maps '0'..'3' (ResNet stages 2-5) that the RoI poolers read


def resnet(backbone: str, norm: str, device_type: str = "cpu", num_classes: int = 1000) -> tv_resnet.ResNet:
    """A randomly initialised torchvision ResNet with the paper's norm in every block."""
    if backbone not in RESNETS:
        raise NotImplementedError(
            f"backbone {backbone!r} is not available in the torchvision engine (available: {', '.join(RESNETS)}); "
            f"use the detectron2 engine for it"
        )
    # torchvision's ResNet applies kaiming_normal_(fan_out, relu) to every conv and 1/0 to BN/GN
    model = RESNETS[backbone](weights=None, num_classes=num_classes, norm_layer=norm_layer(norm, device_type))
    for m in model.modules():  # NaiveSyncBatchNorm/SyncBatchNorm/GroupNorm: weight 1, bias 0
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _msra_fill(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def backbone_with_fpn(backbone: str, norm: str, device_type: str = "cpu") -> BackboneWithFPN:
    body = resnet(backbone, norm, device_type)
    in_stage2 = body.inplanes // 8  # 64 for BasicBlock ResNets, 256 for Bottleneck ones
    return BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[in_stage2, in_stage2 * 2, in_stage2 * 4, in_stage2 * 8],
        out_channels=FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=None if norm == "none" else norm_layer(norm, device_type),
    )


def detector(run: dict, num_classes: int, device_type: str = "cpu") -> nn.Module:
    """Mask R-CNN (or Faster R-CNN) + FPN of `run` (Run.to_dict()); `num_classes` without background.
    Heads as in the paper: box head 4conv1fc and mask head 4conv, both with the run's norm."""
    recipe = run["recipe"]
    task = recipe["task"]
    if task not in TASKS:
        raise NotImplementedError(
            f"run {run.get('run_id', '?')}: task {task!r} is not implemented in the torchvision engine "
            f"(available: {', '.join(TASKS)}); use the detectron2 engine for it"
        )
    norm = run["norm"]
    nl = None if norm == "none" else norm_layer(norm, device_type)
    backbone = backbone_with_fpn(run["backbone"], norm, device_type)
    box_head = FastRCNNConvFCHead((FPN_CHANNELS, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nl)
    _msra_fill(box_head)
    kwargs = dict(
        num_classes=num_classes + 1,
        min_size=tuple(recipe["min_size_train"]),
        max_size=recipe["max_size_train"],
        rpn_pre_nms_top_n_train=recipe["rpn_pre_nms_train"],
        rpn_post_nms_top_n_train=recipe["rpn_post_nms_train"],
        rpn_pre_nms_top_n_test=recipe["rpn_pre_nms_test"],
        rpn_post_nms_top_n_test=recipe["rpn_post_nms_test"],
        box_batch_size_per_image=recipe["roi_batch_per_image"],
        box_detections_per_img=recipe["detections_per_image"],
        box_head=box_head,
    )
    if task == "faster_rcnn":
        model = FasterRCNN(backbone, **kwargs)
    else:
        mask_head = MaskRCNNHeads(FPN_CHANNELS, [256, 256, 256, 256], 1, norm_layer=nl)
        _msra_fill(mask_head)
        model = MaskRCNN(backbone, mask_head=mask_head, **kwargs)
    for pooler in model.roi_heads.modules():
        if isinstance(pooler, MultiScaleRoIAlign):
            fix_pooler_scales(pooler)
    return model


def fix_pooler_scales(pooler: MultiScaleRoIAlign) -> None:
    """Give a RoI pooler the FPN's true strides. Left alone, torchvision infers them from the first
    batch it sees (feature size / unpadded image size, rounded to a power of 2) and caches them;
    on small images the padding to a multiple of 32 makes that guess wrong for some levels, and the
    result would depend on which batch came first (so a resumed run would differ from a straight one)."""
    scales = [1.0 / s for s in FPN_STRIDES[: len(pooler.featmap_names)]]
    pooler.scales = scales
    k_min, k_max = int(math.log2(FPN_STRIDES[0])), int(math.log2(FPN_STRIDES[len(scales) - 1]))
    pooler.map_levels = initLevelMapper(k_min, k_max, canonical_scale=pooler.canonical_scale,
                                        canonical_level=pooler.canonical_level)
