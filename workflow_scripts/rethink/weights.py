"""Weights that are not training checkpoints (those are rethink.checkpoint's): the backbone weights
of the workflow's own pre-training (``BACKBONE_FORMAT``, torchvision names; :func:`read_backbone_weights`,
renamed for detectron2 by :func:`torchvision_resnet_to_detectron2`), a Mask R-CNN's weights mapped
into a cascade (:func:`map_into_cascade`), and what keeps a state dict from loading into a model
(:func:`fit_problems`). Errors name the file or the tensor.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .checkpoint import DAMAGED_HINT, CheckpointError, verify

BACKBONE_FORMAT = "rethink-backbone/1"  # rethink.pretrain's output: {"format", "backbone", "norm", "model", ...}


# ------------------------------------------------------------------ architecture switch
# Mask R-CNN's single box branch, named alike in detectron2 (StandardROIHeads) and torchvision
STANDARD_BOX_HEAD = "roi_heads.box_head."
STANDARD_CLS_SCORE = "roi_heads.box_predictor.cls_score."
STANDARD_BBOX_PRED = "roi_heads.box_predictor.bbox_pred."


def map_into_cascade(
    source: dict, target: dict, stages: int, box_head: str, cls_score: str, bbox_pred: str
) -> tuple[dict[str, str], list[str], list[str], list[str]]:
    """How a Mask R-CNN state dict (`source`) fills a cascade model's (`target`, `stages` stages),
    for both engines' switch of architecture (engine.load_converted). `box_head`, `cls_score` and
    `bbox_pred` say where the cascade model keeps stage k's parts, with "{k}" for the stage (e.g.
    detectron2's "roi_heads.box_head.{k}.", rethink.engines.torchvision_cascade's "roi_heads.box_heads.{k}.").

    Same name and shape: copied (backbone, FPN, RPN, mask head, buffers); Mask R-CNN's box head
    and classifier go into every stage's; its class-specific box regressor has no counterpart in
    the class-agnostic cascade regressors, which keep their fresh init. Anything else (a tensor of
    neither model, a shape that differs, a target tensor nothing fills, a source that is no Mask
    R-CNN) is a problem. Returns (target name -> source name, target names left at their init,
    source names dropped, problems)."""
    if not any(k.startswith(STANDARD_BOX_HEAD) for k in source) or not any(
        k.startswith(STANDARD_CLS_SCORE) for k in source
    ):
        return (
            {},
            list(target),
            [],
            [f"the state dict is not a Mask R-CNN's: no {STANDARD_BOX_HEAD}* / {STANDARD_CLS_SCORE}* tensors"],
        )
    plan: dict[str, str] = {}
    dropped: list[str] = []
    problems: list[str] = []
    tried: set[str] = set()

    def take(t: str, s: str) -> None:
        tried.add(t)
        if t not in target:
            problems.append(f"{s} (-> {t}): not in the cascade model")
        elif tuple(target[t].shape) != tuple(source[s].shape):
            problems.append(f"{s} (-> {t}): shape {tuple(source[s].shape)}, the model has {tuple(target[t].shape)}")
        else:
            plan[t] = s

    for key in source:
        if key in target:
            take(key, key)
        elif key.startswith(STANDARD_BOX_HEAD):
            for k in range(stages):
                take(box_head.format(k=k) + key[len(STANDARD_BOX_HEAD) :], key)
        elif key.startswith(STANDARD_CLS_SCORE):
            for k in range(stages):
                take(cls_score.format(k=k) + key[len(STANDARD_CLS_SCORE) :], key)
        elif key.startswith(STANDARD_BBOX_PRED):
            dropped.append(key)
        else:
            problems.append(f"{key}: not in the cascade model")
    fresh = [k for k in target if k not in plan]
    agnostic = tuple(bbox_pred.format(k=k) for k in range(stages))
    problems += [f"{k}: not in the checkpoint" for k in fresh if not k.startswith(agnostic) and k not in tried]
    return plan, fresh, dropped, problems


# ---------------------------------------------------------------------------- backbone weights
def read_backbone_weights(path: str | Path, run: dict) -> dict:
    """The body state dict of pre-trained backbone weights (written by rethink.pretrain), checked
    to be for the run's backbone and norm. Errors name the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such backbone weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: unreadable backbone weights (truncated or corrupt?): {type(e).__name__}; {DAMAGED_HINT}"
        ) from None
    verify(state, path)
    if not isinstance(state, dict) or state.get("format") != BACKBONE_FORMAT:
        raise CheckpointError(f"{path}: not rethink backbone weights (format {BACKBONE_FORMAT!r})")
    for key in ("backbone", "norm"):
        if state[key] != run[key]:
            raise CheckpointError(
                f"{path}: weights are for {key} {state[key]!r}, run {run.get('run_id')} has {key} {run[key]!r}"
            )
    return state["model"]


def load_backbone_weights(body: torch.nn.Module, path: str | Path, run: dict) -> None:
    """Pre-trained backbone weights -> `body` (a torchvision ResNet or VGG16 body; strict)."""
    state = read_backbone_weights(path, run)
    try:
        body.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the backbone: {str(e).splitlines()[0]}") from None


_TV_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)")


def torchvision_resnet_to_detectron2(state: dict) -> dict:
    """A torchvision ResNet body's state dict (conv1, bn1, layer1-4, no fc) under the names of
    detectron2's ResNet (the FPN backbone's bottom_up), renamed as detectron2's
    tools/convert-torchvision-to-d2.py renames them: conv1 / bn1 -> stem.conv1 / stem.conv1.norm,
    layerN.b -> res(N+1).b, bnK -> convK.norm, downsample.0 / .1 -> shortcut / shortcut.norm.
    Tensors are unchanged; the run's detectron2 config takes torchvision's input (RGB, its mean
    and std, stride in the 3x3 conv: rethink.engines.detectron2_config.weights_style "torchvision"). A key of
    another shape raises ValueError naming it."""
    out = {}
    for key, value in state.items():
        if key == "conv1.weight":
            out["stem.conv1.weight"] = value
        elif key.startswith("bn1."):
            out["stem.conv1.norm." + key[4:]] = value
        elif m := _TV_BLOCK.fullmatch(key):
            stage, block, part, leaf = m.groups()
            part = {"downsample.0": "shortcut", "downsample.1": "shortcut.norm"}.get(part) or (
                f"conv{part[2:]}.norm" if part.startswith("bn") else part
            )
            out[f"res{int(stage) + 1}.{block}.{part}.{leaf}"] = value
        else:
            raise ValueError(f"{key}: not a key of a torchvision ResNet body")
    return out


def first_problems(problems: list[str], n: int = 5) -> str:
    """The first `n` of a list of problems (fit_problems, map_into_cascade) for an error message."""
    more = f" (and {len(problems) - n} more)" if len(problems) > n else ""
    return "; ".join(problems[:n]) + more


def fit_problems(source: dict, target: dict) -> list[str]:
    """What keeps `source` (a state dict) from loading strictly into a model whose state dict is
    `target`: keys missing from either side and shapes that differ. BatchNorm's
    num_batches_tracked counts nothing a model computes with and is not required on either side."""
    skip = lambda k: k.endswith("num_batches_tracked")  # noqa: E731
    problems = [f"{k}: not in the weights" for k in target if k not in source and not skip(k)]
    problems += [f"{k}: not in the model" for k in source if k not in target and not skip(k)]
    problems += [
        f"{k}: shape {tuple(source[k].shape)} in the weights, {tuple(target[k].shape)} in the model"
        for k in source
        if k in target and tuple(source[k].shape) != tuple(target[k].shape)
    ]
    return problems
