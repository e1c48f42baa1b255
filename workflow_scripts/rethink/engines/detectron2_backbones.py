"""What detectron2 lacks for the paper's backbones, and the pre-trained weights they load.

VGG16 (the paper's section 5.1; d2config.VGG16): a detectron2 backbone registered lazily in
BACKBONE_REGISTRY as "build_vgg16_backbone" when the engine first makes a config (see
register_vgg16_backbone): conv1_1 ... conv5_3 (3x3, bias, ReLU), max-pool after blocks 1-4
(pool5 dropped), one output "vgg_conv5" at stride 16 with 512 channels, no normalisation.
Every conv is MSRA-filled (detectron2's c2_msra_fill: what a random-init run keeps).
MODEL.BACKBONE.FREEZE_AT k freezes conv blocks 1..k (requires_grad False): 2 for pre-trained
runs (conv1_x and conv2_x, as Faster R-CNN and Detectron's VGG16 fine-tune from conv3_1 up),
0 for random init.

Weights: the caffe VGG16 in Caffe2 blob names (load_vgg16_pkl), read with the staging step's
restricted unpickler (rethink.stage.check_weights_pickle); the workflow's own pre-trained ResNet
(torchvision names) renamed into detectron2's ResNet (load_torchvision_resnet).
detectron2 is imported inside the functions, so this module imports without it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..checkpoint import CheckpointError
from ..stage import StageError, check_weights_pickle
from ..weights import first_problems, fit_problems, read_backbone_weights, torchvision_resnet_to_detectron2
from .detectron2_config import D2ConfigError
from .shared import VGG16_BLOCKS

VGG16_BACKBONE = "build_vgg16_backbone"
VGG16_FEATURE = "vgg_conv5"


def vgg16_conv_names() -> list[str]:
    return [f"conv{b}_{i}" for b, widths in enumerate(VGG16_BLOCKS, 1) for i in range(1, len(widths) + 1)]


def _vgg16_class():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import Backbone
    from fvcore.nn import weight_init

    class VGG16Backbone(Backbone):
        """VGG16 conv1_1 ... conv5_3 without pool5: {"vgg_conv5": stride 16, 512 channels}."""

        def __init__(self, in_channels: int = 3, freeze_at: int = 0):
            super().__init__()
            if not 0 <= freeze_at <= len(VGG16_BLOCKS):
                raise D2ConfigError(f"MODEL.BACKBONE.FREEZE_AT {freeze_at}: VGG16 has {len(VGG16_BLOCKS)} conv blocks")
            self.blocks: list[list[str]] = []
            for b, widths in enumerate(VGG16_BLOCKS, 1):
                names = []
                for i, width in enumerate(widths, 1):
                    conv = torch.nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
                    weight_init.c2_msra_fill(conv)  # MSRA (kaiming normal, fan_out) weights, zero bias
                    self.add_module(f"conv{b}_{i}", conv)
                    names.append(f"conv{b}_{i}")
                    in_channels = width
                self.blocks.append(names)
            self.freeze(freeze_at)

        def freeze(self, freeze_at: int):
            for names in self.blocks[:freeze_at]:
                for name in names:
                    for p in getattr(self, name).parameters():
                        p.requires_grad = False
            return self

        def forward(self, x):
            for b, names in enumerate(self.blocks, 1):
                for name in names:
                    x = torch.nn.functional.relu_(getattr(self, name)(x))
                if b < len(self.blocks):
                    x = torch.nn.functional.max_pool2d(x, kernel_size=2, stride=2)
            return {VGG16_FEATURE: x}

        def output_shape(self):
            return {VGG16_FEATURE: ShapeSpec(channels=VGG16_BLOCKS[-1][-1], stride=2 ** (len(VGG16_BLOCKS) - 1))}

    return VGG16Backbone


def register_vgg16_backbone() -> None:
    """Register "build_vgg16_backbone" in detectron2's BACKBONE_REGISTRY (once per process)."""
    from detectron2.modeling import BACKBONE_REGISTRY

    if VGG16_BACKBONE in BACKBONE_REGISTRY:
        return
    cls = _vgg16_class()

    def build_vgg16_backbone(cfg, input_shape):
        return cls(in_channels=input_shape.channels, freeze_at=int(cfg.MODEL.BACKBONE.FREEZE_AT))

    build_vgg16_backbone.__name__ = VGG16_BACKBONE
    BACKBONE_REGISTRY.register(build_vgg16_backbone)


def _vgg16_pkl_names() -> dict[str, str]:
    """Caffe2 blob name of the caffe VGG16 -> detectron2 parameter name."""
    out = {}
    for name in vgg16_conv_names():
        out[f"{name}_w"], out[f"{name}_b"] = f"backbone.{name}.weight", f"backbone.{name}.bias"
    for c2, d2 in (("fc6", "fc1"), ("fc7", "fc2")):
        out[f"{c2}_w"], out[f"{c2}_b"] = f"roi_heads.box_head.{d2}.weight", f"roi_heads.box_head.{d2}.bias"
    return out


def load_vgg16_pkl(model, path: str, run: dict) -> int:
    """Copy the caffe VGG16 blobs of the .pkl at `path` into a VGG16 Faster R-CNN; returns how
    many tensors were loaded. A shape that does not fit, or no conv at all, is an error."""
    try:
        data = check_weights_pickle(path)  # the staging step's restricted unpickler: arrays and containers only
    except StageError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("blobs"), dict):
        data = data["blobs"]
    elif isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise RuntimeError(f"{path}: not a dict of VGG16 blobs (got {type(data).__name__})")
    if not any(k in data for k in _vgg16_pkl_names() if k.startswith("conv")):
        raise RuntimeError(
            f"{path}: no backbone weight of run {run.get('run_id', '?')} was loaded from it "
            f"(not caffe VGG16 blobs conv1_1_w ... conv5_3_b?)"
        )
    state = model.state_dict()
    loaded = 0
    with torch.no_grad():
        for c2, d2 in _vgg16_pkl_names().items():
            if c2 not in data:
                continue
            value = torch.as_tensor(np.asarray(data[c2]))
            if tuple(value.shape) != tuple(state[d2].shape):
                raise RuntimeError(
                    f"{path}: {c2} has shape {tuple(value.shape)}, {d2} of run "
                    f"{run.get('run_id', '?')} needs {tuple(state[d2].shape)}"
                )
            state[d2].copy_(value.to(state[d2].dtype))
            loaded += 1
    return loaded


def load_torchvision_resnet(bottom_up, path: str, run: dict) -> int:
    """The workflow's own pre-trained ResNet body (rethink.pretrain, torchvision names) -> detectron2's
    ResNet `bottom_up`, renamed by rethink.weights.torchvision_resnet_to_detectron2 and loaded only
    if every tensor fits (errors name the file, the run and the first keys). Returns the tensors loaded."""
    who = f"{path} (run {run.get('run_id', '?')})"
    try:
        state = torchvision_resnet_to_detectron2(read_backbone_weights(path, run))
    except ValueError as e:
        raise CheckpointError(f"{who}: {e}") from None
    target = bottom_up.state_dict()
    problems = fit_problems(state, target)
    if problems:
        raise CheckpointError(
            f"{who}: weights do not fit detectron2's {run['backbone']}-{run['norm']}: {first_problems(problems)}"
        )
    bottom_up.load_state_dict(state, strict=False)  # fit_problems checked every key but the BN counters
    return sum(k in target for k in state)
