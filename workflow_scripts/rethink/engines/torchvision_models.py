"""Model builders of the torchvision engine and of the tiny pre-training.

One ResNet builder serves both: the pre-training trains ``resnet(backbone, norm, num_classes=K)``
(body + linear classifier) and saves the body; Mask R-CNN wraps the same body in an FPN
(``model.backbone.body``), so the saved weights load with strict key checking.
:func:`classifier` is the pre-training's builder for every backbone (ResNets and VGG16).

Tasks: mask_rcnn, faster_rcnn, keypoint_rcnn on a ResNet + FPN of recipe.head_channels channels
(256, as the paper; heads with the run's norm: box head 4conv1fc and mask head 4conv of that width,
keypoint head 8 x conv3x3-512 as detectron2's KRCNNConvDeconvUpsampleHead, with the run's norm
after every conv, which detectron2's head does not have); cascade_mask_rcnn = that Mask R-CNN with
rethink.engines.torchvision_cascade's 3-stage RoI heads; and faster_rcnn on VGG16 (section 5.1 of the paper): no FPN,
conv5_3 (stride 16, 512 channels), one anchor level (sizes 32-512, ratios 0.5/1/2), RoIAlign 7x7,
box head fc6 + fc7 of VGG_FC_DIM (4096, as VGG16's), no normalisation (norm "none"; another norm
goes after every conv). VGG16's body has the layer indices of torchvision's
``vgg16().features[:30]``, so its conv weights load by the same keys.

Initialisation is detectron2's for training from scratch: MSRA (kaiming normal, fan_out) fill of
every conv in the ResNet and the heads, Xavier-like fill (kaiming uniform, a=1) in the FPN, norm
weights 1 and biases 0, and nothing frozen (all 5 stages trainable).
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import MultiScaleRoIAlign, initLevelMapper

from .shared import VGG16_BLOCKS
from .torchvision_norms import norm_layer

RESNETS = {"R18": tv_resnet.resnet18, "R50": tv_resnet.resnet50, "R101": tv_resnet.resnet101}
TASKS = ("mask_rcnn", "faster_rcnn", "keypoint_rcnn", "cascade_mask_rcnn")
BACKBONES = (*RESNETS, "VGG16")
FPN_STRIDES = (4, 8, 16, 32)  # feature maps '0'..'3' (ResNet stages 2-5) that the RoI poolers read
KEYPOINT_HEAD = [512] * 8  # detectron2's ROI_KEYPOINT_HEAD.CONV_DIMS
# VGG16 up to conv5_3 (rethink.engines.shared.VGG16_BLOCKS) as torchvision's layer list: "M" a max-pool
VGG16_LAYERS = [
    layer for b, widths in enumerate(VGG16_BLOCKS, 1) for layer in (*widths, *(["M"] if b < len(VGG16_BLOCKS) else []))
]
VGG_STRIDE = 16
VGG_FC_DIM = 4096  # fc6 and fc7 of the box head, as VGG16's classifier
VGG_ANCHOR_SIZES = (32, 64, 128, 256, 512)
VGG_ANCHOR_RATIOS = (0.5, 1.0, 2.0)


def resnet(backbone: str, norm: str, device_type: str = "cpu", num_classes: int = 1000) -> tv_resnet.ResNet:
    """A randomly initialised torchvision ResNet with the paper's norm in every block."""
    if backbone not in RESNETS:
        raise NotImplementedError(
            f"backbone {backbone!r} is not available in the torchvision engine (available: {', '.join(BACKBONES)}); "
            f"use the detectron2 engine for it"
        )
    # torchvision's ResNet applies kaiming_normal_(fan_out, relu) to every conv and 1/0 to BN/GN
    model = RESNETS[backbone](weights=None, num_classes=num_classes, norm_layer=norm_layer(norm, device_type))
    _norm_affine_fill(model)
    return model


def _msra_fill(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _xavier_fill_linear(module: nn.Module) -> None:
    """detectron2's c2_xavier_fill of fully connected layers (kaiming uniform, a=1; bias 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)


def _norm_affine_fill(module: nn.Module) -> None:
    for m in module.modules():  # NaiveSyncBatchNorm/SyncBatchNorm/GroupNorm: weight 1, bias 0
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv_stack(in_channels: int, widths, nl) -> list[nn.Module]:
    """conv3x3 (+ norm) + ReLU per width; "M" is a 2x2 max pool."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in widths:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(c, v, kernel_size=3, padding=1))
        if nl is not None:
            layers.append(nl(v))
        layers.append(nn.ReLU(inplace=True))
        c = v
    return layers


class VGG16Body(nn.Module):
    """VGG16 conv1_1 ... conv5_3 (+ ReLU), no pool5: stride 16, 512 channels. MSRA fill."""

    out_channels = 512

    def __init__(self, norm: str = "none", device_type: str = "cpu"):
        super().__init__()
        nl = None if norm == "none" else norm_layer(norm, device_type)
        self.features = nn.Sequential(*_conv_stack(3, VGG16_LAYERS, nl))
        _msra_fill(self.features)
        _norm_affine_fill(self.features)

    def forward(self, x):
        return self.features(x)


class VGG16Classifier(nn.Module):
    """The pre-training's VGG16: the detector's body (``features.*``, same keys as VGG16Body) + pool5,
    global average pooling and a linear classifier (``fc.*``, dropped when the body is saved)."""

    def __init__(self, norm: str = "none", device_type: str = "cpu", num_classes: int = 1000):
        super().__init__()
        self.features = VGG16Body(norm, device_type).features
        self.fc = nn.Sequential(
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(VGG16Body.out_channels, num_classes),
        )

    def forward(self, x):
        return self.fc(self.features(x))


class SingleMapBackbone(nn.Module):
    """A body with one output map, as torchvision's detectors expect a backbone: ``body`` (where
    load_init_weights puts the pre-trained weights), ``out_channels``, forward -> {"0": map}."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.out_channels = body.out_channels

    def forward(self, x):
        return OrderedDict([("0", self.body(x))])


def classifier(backbone: str, norm: str, device_type: str = "cpu", num_classes: int = 1000) -> nn.Module:
    """The pre-training's model: the detector's backbone body + a classifier under ``fc``."""
    if backbone == "VGG16":
        return VGG16Classifier(norm, device_type, num_classes)
    return resnet(backbone, norm, device_type, num_classes)


def keypoint_head(in_channels: int, norm: str, device_type: str = "cpu") -> nn.Sequential:
    """8 x (conv3x3 512 + the run's norm + ReLU), MSRA fill; torchvision's KeypointRCNNPredictor
    (deconv 4x4 stride 2, then bilinear x2: 56x56 heatmaps) follows it."""
    nl = None if norm == "none" else norm_layer(norm, device_type)
    head = nn.Sequential(*_conv_stack(in_channels, KEYPOINT_HEAD, nl))
    _msra_fill(head)
    _norm_affine_fill(head)
    return head


def backbone_with_fpn(backbone: str, norm: str, device_type: str = "cpu", channels: int = 256) -> BackboneWithFPN:
    """The ResNet body under an FPN of `channels` outputs per level (recipe.head_channels)."""
    body = resnet(backbone, norm, device_type)
    in_stage2 = body.inplanes // 8  # 64 for BasicBlock ResNets, 256 for Bottleneck ones
    return BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[in_stage2, in_stage2 * 2, in_stage2 * 4, in_stage2 * 8],
        out_channels=channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=None if norm == "none" else norm_layer(norm, device_type),
    )


def detector(run: dict, num_classes: int, device_type: str = "cpu", num_keypoints: int | None = None) -> nn.Module:
    """The detector of `run` (Run.to_dict()); `num_classes` without background; `num_keypoints` for
    keypoint_rcnn. ResNets: Mask R-CNN / Faster R-CNN / Keypoint R-CNN + FPN, heads as in the paper
    (box head 4conv1fc, mask head 4conv, keypoint head 8conv, all with the run's norm); Cascade Mask
    R-CNN: Mask R-CNN with rethink.engines.torchvision_cascade's RoI heads (3 stages, each its own
    4conv1fc box head). VGG16: Faster R-CNN on conv5_3 without FPN (see the module doc)."""
    recipe = run["recipe"]
    task = recipe["task"]
    where = f"run {run.get('run_id', '?')}"
    if task not in TASKS:
        raise NotImplementedError(
            f"{where}: task {task!r} is not implemented in the torchvision engine "
            f"(available: {', '.join(TASKS)}); use the detectron2 engine for it"
        )
    kwargs = _detector_kwargs(recipe, num_classes)
    if run["backbone"] == "VGG16":
        if task != "faster_rcnn":
            raise NotImplementedError(
                f"{where}: backbone VGG16 has task faster_rcnn only in the torchvision engine "
                f"(the paper's section 5.1), not {task!r}"
            )
        return vgg16_faster_rcnn(run["norm"], device_type, **kwargs)
    model = _fpn_detector(run, device_type, num_keypoints, kwargs)
    for pooler in model.roi_heads.modules():
        if isinstance(pooler, MultiScaleRoIAlign):
            fix_pooler_scales(pooler)
    return model


def _detector_kwargs(recipe: dict, num_classes: int) -> dict:
    """torchvision's detector arguments from the recipe (sizes, proposals, RoIs, detections)."""
    return dict(
        num_classes=num_classes + 1,
        min_size=tuple(recipe["min_size_train"]),
        max_size=recipe["max_size_train"],
        rpn_pre_nms_top_n_train=recipe["rpn_pre_nms_train"],
        rpn_post_nms_top_n_train=recipe["rpn_post_nms_train"],
        rpn_pre_nms_top_n_test=recipe["rpn_pre_nms_test"],
        rpn_post_nms_top_n_test=recipe["rpn_post_nms_test"],
        box_batch_size_per_image=recipe["roi_batch_per_image"],
        box_detections_per_img=recipe["detections_per_image"],
    )


def _fpn_detector(run: dict, device_type: str, num_keypoints: int | None, kwargs: dict) -> nn.Module:
    """The ResNet + FPN detector of the recipe's task, built in this order (the random init draws in
    it): the backbone, the box head, then the task's model and its other heads."""
    task, norm = run["recipe"]["task"], run["norm"]
    nl = None if norm == "none" else norm_layer(norm, device_type)
    width = int(run["recipe"]["head_channels"])  # FPN outputs, RPN conv, box and mask head convs
    backbone = backbone_with_fpn(run["backbone"], norm, device_type, width)
    kwargs = {**kwargs, "box_head": _conv_fc_head(width, nl)}
    if task == "faster_rcnn":
        return FasterRCNN(backbone, **kwargs)
    if task == "keypoint_rcnn":
        if not num_keypoints:
            raise ValueError(
                f"run {run.get('run_id', '?')}: task keypoint_rcnn needs the number of keypoints (a keypoint dataset)"
            )
        return KeypointRCNN(
            backbone, num_keypoints=int(num_keypoints), keypoint_head=keypoint_head(width, norm, device_type), **kwargs
        )
    mask_head = MaskRCNNHeads(width, [width] * 4, 1, norm_layer=nl)
    _msra_fill(mask_head)
    model = MaskRCNN(backbone, mask_head=mask_head, **kwargs)
    if width != 256:  # torchvision builds the predictor (deconv) for 256 channels; detectron2's reads CONV_DIM
        model.roi_heads.mask_predictor = MaskRCNNPredictor(width, width, kwargs["num_classes"])
    if task == "cascade_mask_rcnn":
        from .torchvision_cascade import STAGE_IOUS, CascadeRoIHeads

        stage_heads = [_conv_fc_head(width, nl) for _ in STAGE_IOUS]
        model.roi_heads = CascadeRoIHeads.from_roi_heads(model.roi_heads, stage_heads)
    return model


def _conv_fc_head(width: int, nl) -> FastRCNNConvFCHead:
    """The paper's box head: 4 conv3x3 of `width` (+ norm) and one fc 1024, MSRA fill."""
    head = FastRCNNConvFCHead((width, 7, 7), [width] * 4, [1024], norm_layer=nl)
    _msra_fill(head)
    return head


def vgg16_faster_rcnn(norm: str, device_type: str = "cpu", **kwargs) -> FasterRCNN:
    """Faster R-CNN on VGG16 conv5_3 (stride 16) without FPN; `kwargs` as FasterRCNN's."""
    backbone = SingleMapBackbone(VGG16Body(norm, device_type))
    anchors = AnchorGenerator(sizes=(VGG_ANCHOR_SIZES,), aspect_ratios=(VGG_ANCHOR_RATIOS,))
    pooler = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(VGG16Body.out_channels * 7 * 7, VGG_FC_DIM)
    _xavier_fill_linear(box_head)
    predictor = FastRCNNPredictor(VGG_FC_DIM, kwargs.pop("num_classes"))
    model = FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_roi_pool=pooler,
        box_head=box_head,
        box_predictor=predictor,
        **kwargs,
    )
    fix_pooler_scales(model.roi_heads.box_roi_pool, (VGG_STRIDE,))
    return model


def fix_pooler_scales(pooler: MultiScaleRoIAlign, strides=FPN_STRIDES) -> None:
    """Give a RoI pooler the true strides of its maps (the FPN's, or `strides`). Left alone, torchvision
    infers them from the first
    batch it sees (feature size / unpadded image size, rounded to a power of 2) and caches them;
    on small images the padding to a multiple of 32 makes that guess wrong for some levels, and the
    result would depend on which batch came first (so a resumed run would differ from a straight one)."""
    scales = [1.0 / s for s in strides[: len(pooler.featmap_names)]]
    pooler.scales = scales
    k_min, k_max = int(math.log2(strides[0])), int(math.log2(strides[len(scales) - 1]))
    pooler.map_levels = initLevelMapper(
        k_min, k_max, canonical_scale=pooler.canonical_scale, canonical_level=pooler.canonical_level
    )
