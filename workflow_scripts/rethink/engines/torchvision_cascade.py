"""Cascade R-CNN (Cai & Vasconcelos, CVPR 2018) as torchvision RoI heads, the way detectron2's
``CascadeROIHeads`` (detectron2/modeling/roi_heads/cascade_rcnn.py) does it; the paper's Table 3
("+cascade") in the torchvision engine.

* 3 stages with IoU thresholds (0.5, 0.6, 0.7) and box-coder weights (10, 10, 5, 5),
  (20, 20, 10, 10), (30, 30, 15, 15) (detectron2's ROI_BOX_CASCADE_HEAD.IOUS / BBOX_REG_WEIGHTS).
  Each stage has its own box head (the engine's, built by rethink.engines.torchvision_models: 4conv1fc with the run's
  norm) and its own predictor: a classifier ``cls_score`` (K + 1 classes) and a class-agnostic box
  regressor ``bbox_pred`` (4 outputs), initialised as detectron2's FastRCNNOutputLayers (normal,
  std 0.01 and 0.001, bias 0).
* Training: stage 0 takes torchvision's sampled proposals (RPN proposals + the ground-truth boxes,
  matched at IoU 0.5, ``roi_batch_per_image`` sampled with 25 % positives: RoIHeads'
  select_training_samples). Stage t > 0 takes the boxes that stage t - 1 regressed from its
  proposals (detached, clipped to the image, empty ones dropped), matched to the ground truth at
  its own IoU threshold without sampling; as in detectron2 the ground-truth boxes are appended
  once, before stage 0 (their refined versions travel through the later stages). Each stage's
  loss is torchvision's fastrcnn_loss (cross entropy + smooth L1, beta 1/9, normalised by the
  number of sampled RoIs, as the engine's Mask R-CNN) on its own regression targets (encoded with
  its own weights): ``loss_classifier_stage{t}``, ``loss_box_reg_stage{t}``. The pooled features
  enter every stage's head through a gradient scale of 1 / 3 (detectron2's _ScaleGradient): the
  summed stage losses train the heads at full strength while the features below (FPN, backbone)
  get the average of the stages' gradients.
* Inference: the RPN proposals go through the three stages (no filtering, so the stages' rows stay
  aligned); the class probabilities are averaged over the stages, the boxes are the last stage's
  regression of its proposals, and torchvision's postprocess_detections (score threshold, per-class
  NMS, detections_per_img) picks the detections.
* Mask head (torchvision's MaskRCNNHeads + predictor, as in Mask R-CNN): at inference on the final
  detections; in training on the positive samples of stage 0, as detectron2's CascadeROIHeads
  (its ``_forward_mask`` gets the proposals of ``label_and_sample_proposals``, i.e. stage 0's).
  That keeps the mask head's training distribution (IoU >= 0.5 RoIs, 25 % of 512 per image) the
  one of Mask R-CNN, which is also what lets the switch from Mask R-CNN to cascade carry the mask
  head over unchanged.

:func:`convert_mask_rcnn_state` maps a Mask R-CNN state dict onto a cascade model (the switch of
architecture inside a run, engines.load_converted).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops

from ..weights import STANDARD_BBOX_PRED, first_problems, map_into_cascade

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
BOX_HEADS = "roi_heads.box_heads."  # the stages' box heads: roi_heads.box_heads.{t}.*
BOX_PREDICTORS = "roi_heads.box_predictors."  # roi_heads.box_predictors.{t}.cls_score / .bbox_pred


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `scale` (detectron2's)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _ScaleGradient.apply(x, scale)


def cascade_predictor(in_features: int, num_classes: int) -> FastRCNNPredictor:
    """A stage's predictor: cls_score (num_classes, background included) and a class-agnostic
    bbox_pred (4); detectron2's FastRCNNOutputLayers init (normal std 0.01 / 0.001, bias 0)."""
    p = FastRCNNPredictor(in_features, num_classes)
    p.bbox_pred = nn.Linear(in_features, 4)
    nn.init.normal_(p.cls_score.weight, std=0.01)
    nn.init.normal_(p.bbox_pred.weight, std=0.001)
    for layer in (p.cls_score, p.bbox_pred):
        nn.init.zeros_(layer.bias)
    return p


class CascadeRoIHeads(RoIHeads):
    """torchvision RoIHeads with Cascade R-CNN's box branch (see the module doc). Stage t's modules
    are ``box_heads[t]`` and ``box_predictors[t]``; ``box_coder`` and ``proposal_matcher`` are stage
    0's (torchvision's select_training_samples uses them)."""

    def __init__(
        self,
        box_roi_pool,
        box_heads,
        box_predictors,
        *,
        batch_size_per_image: int,
        positive_fraction: float,
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
        mask_roi_pool=None,
        mask_head=None,
        mask_predictor=None,
        stage_ious=STAGE_IOUS,
        stage_weights=STAGE_BOX_WEIGHTS,
    ):
        if not len(box_heads) == len(box_predictors) == len(stage_ious) == len(stage_weights):
            raise ValueError(
                f"cascade: {len(box_heads)} box heads, {len(box_predictors)} predictors, "
                f"{len(stage_ious)} IoU thresholds and {len(stage_weights)} box weights; "
                f"one of each per stage"
            )
        super().__init__(
            box_roi_pool,
            None,
            None,
            stage_ious[0],
            stage_ious[0],
            batch_size_per_image,
            positive_fraction,
            stage_weights[0],
            score_thresh,
            nms_thresh,
            detections_per_img,
            mask_roi_pool=mask_roi_pool,
            mask_head=mask_head,
            mask_predictor=mask_predictor,
        )
        del self.box_head, self.box_predictor  # one per stage instead
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        self.stage_ious = tuple(float(t) for t in stage_ious)
        self.proposal_matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in self.stage_ious]
        self.box_coders = [det_utils.BoxCoder(tuple(float(v) for v in w)) for w in stage_weights]
        self.proposal_matcher, self.box_coder = self.proposal_matchers[0], self.box_coders[0]

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    @classmethod
    def from_roi_heads(cls, standard: RoIHeads, box_heads) -> CascadeRoIHeads:
        """The cascade version of a built (Mask R-CNN) RoIHeads: its pooler, sampler settings,
        test thresholds and mask branch, `box_heads` (one per stage, each ending in as many
        features as the standard head) and fresh cascade predictors."""
        cls_score = standard.box_predictor.cls_score
        predictors = [cascade_predictor(cls_score.in_features, cls_score.out_features) for _ in box_heads]
        return cls(
            standard.box_roi_pool,
            list(box_heads),
            predictors,
            batch_size_per_image=standard.fg_bg_sampler.batch_size_per_image,
            positive_fraction=standard.fg_bg_sampler.positive_fraction,
            score_thresh=standard.score_thresh,
            nms_thresh=standard.nms_thresh,
            detections_per_img=standard.detections_per_img,
            mask_roi_pool=standard.mask_roi_pool,
            mask_head=standard.mask_head,
            mask_predictor=standard.mask_predictor,
        )

    @contextlib.contextmanager
    def _stage(self, t: int):
        """torchvision's methods (assign_targets_to_proposals, postprocess_detections) with stage
        t's matcher and box coder."""
        saved = self.proposal_matcher, self.box_coder
        self.proposal_matcher, self.box_coder = self.proposal_matchers[t], self.box_coders[t]
        try:
            yield
        finally:
            self.proposal_matcher, self.box_coder = saved

    def _run_stage(self, t: int, features, proposals, image_shapes):
        x = self.box_roi_pool(features, proposals, image_shapes)
        if self.training:
            x = scale_gradient(x, 1.0 / self.num_stages)
        return self.box_predictors[t](self.box_heads[t](x))

    def _refine(self, t: int, deltas: torch.Tensor, proposals, image_shapes) -> list[torch.Tensor]:
        """Stage t's regressed boxes: the next stage's proposals (detached, clipped; in training
        without empty boxes, at inference all of them so that the stages' scores stay aligned)."""
        boxes = self.box_coders[t].decode(deltas.detach(), proposals).reshape(-1, 4)
        out = []
        for b, shape in zip(boxes.split([len(p) for p in proposals]), image_shapes):
            b = box_ops.clip_boxes_to_image(b, shape)
            if self.training:
                b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
            out.append(b)
        return out

    def _label(self, t: int, proposals, targets):
        """Stage t's labels and regression targets for proposals (no sampling: every box counts)."""
        gt_boxes = [tg["boxes"].to(proposals[0].dtype) for tg in targets]
        gt_labels = [tg["labels"] for tg in targets]
        labels, matched = [], []
        for p, g, gl in zip(proposals, gt_boxes, gt_labels):
            if len(p) == 0:  # every box of this image came out empty (torchvision's Matcher refuses none)
                labels.append(torch.zeros(0, dtype=torch.int64, device=p.device))
                matched.append(p)
                continue
            with self._stage(t):
                (idx,), (lb,) = self.assign_targets_to_proposals([p], [g], [gl])
            labels.append(lb)
            matched.append(g[idx] if g.numel() else torch.zeros_like(p))
        return labels, self.box_coders[t].encode(matched, proposals)

    def _stage_losses(self, t: int, class_logits, box_regression, proposals, labels, regression_targets) -> dict:
        """Stage t's classification and box regression losses (zero, with a gradient, when no proposal is left)."""
        if sum(len(p) for p in proposals) == 0:  # nothing left to train this stage on
            loss_cls = loss_box = class_logits.sum() * 0.0 + box_regression.sum() * 0.0
        else:
            # class-agnostic deltas, repeated per class: fastrcnn_loss picks the same 4 for any label
            loss_cls, loss_box = fastrcnn_loss(
                class_logits, box_regression.repeat(1, class_logits.shape[-1]), labels, regression_targets
            )
        return {f"loss_classifier_stage{t}": loss_cls, f"loss_box_reg_stage{t}": loss_box}

    def _detections(self, probs: list, deltas: torch.Tensor, proposals, image_shapes) -> list[dict]:
        """The boxes, labels and scores of the stages' averaged class probabilities `probs` and the last
        stage's deltas (per class)."""
        mean = torch.stack(probs).mean(0)
        # torchvision's postprocess takes logits and per-class deltas: log of the averaged
        # probabilities (its softmax gives them back) and the last stage's agnostic deltas per class
        with self._stage(self.num_stages - 1):
            boxes, scores, labels = self.postprocess_detections(
                mean.clamp_min(torch.finfo(mean.dtype).tiny).log(), deltas, proposals, image_shapes
            )
        return [{"boxes": b, "labels": lb, "scores": s} for b, s, lb in zip(boxes, scores, labels)]

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
            stage0 = (proposals, matched_idxs, labels)
        losses: dict[str, torch.Tensor] = {}
        probs = []
        box_regression = None  # stage t > 0 refines the boxes of stage t - 1
        for t in range(self.num_stages):
            if t > 0:
                proposals = self._refine(t - 1, box_regression, proposals, image_shapes)
                if self.training:
                    labels, regression_targets = self._label(t, proposals, targets)
            class_logits, box_regression = self._run_stage(t, features, proposals, image_shapes)
            num_classes = class_logits.shape[-1]
            if self.training:
                losses.update(
                    self._stage_losses(t, class_logits, box_regression, proposals, labels, regression_targets)
                )
            else:
                probs.append(F.softmax(class_logits, -1))

        result: list[dict[str, torch.Tensor]] = []
        if not self.training:
            result = self._detections(probs, box_regression.repeat(1, num_classes), proposals, image_shapes)

        if self.has_mask():
            if self.training:
                props0, matched0, labels0 = stage0
                pos = [torch.where(lb > 0)[0] for lb in labels0]
                mask_proposals = [p[i] for p, i in zip(props0, pos)]
                pos_matched_idxs = [m[i] for m, i in zip(matched0, pos)]
            else:
                mask_proposals = [r["boxes"] for r in result]
            mask_logits = self.mask_predictor(
                self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes))
            )
            if self.training:
                losses["loss_mask"] = maskrcnn_loss(
                    mask_logits,
                    mask_proposals,
                    [tg["masks"] for tg in targets],
                    [tg["labels"] for tg in targets],
                    pos_matched_idxs,
                )
            else:
                for mask_prob, r in zip(maskrcnn_inference(mask_logits, [r["labels"] for r in result]), result):
                    r["masks"] = mask_prob
        return result, losses


def convert_mask_rcnn_state(target: dict, source: dict) -> tuple[dict, str]:
    """A Mask R-CNN state dict `source` mapped onto a cascade model's state dict `target` by
    rethink.weights.map_into_cascade (the stages' parts under BOX_HEADS / BOX_PREDICTORS).
    Returns the state dict to load (strict) and a one-line report; raises ValueError listing what
    does not fit."""
    stages = len({k[len(BOX_HEADS) :].split(".")[0] for k in target if k.startswith(BOX_HEADS)})
    if not stages:
        raise ValueError("the model has no cascade box heads (roi_heads.box_heads.*)")
    plan, fresh, dropped, problems = map_into_cascade(
        source,
        target,
        stages,
        box_head=BOX_HEADS + "{k}.",
        cls_score=BOX_PREDICTORS + "{k}.cls_score.",
        bbox_pred=BOX_PREDICTORS + "{k}.bbox_pred.",
    )
    if problems:
        raise ValueError(f"{len(problems)} tensor(s) do not fit: {first_problems(problems)}")
    by_name = sum(1 for t, s in plan.items() if t == s)
    into_stages = len({s for t, s in plan.items() if t != s})
    report = (
        f"{by_name} tensors copied by name, {into_stages} of the box head and classifier copied into each of "
        f"{stages} stages, {len(fresh)} tensors of the class-agnostic box regressors freshly initialised, "
        f"{len(dropped)} tensors of the class-specific {STANDARD_BBOX_PRED[:-1]} dropped"
    )
    return {**target, **{t: source[s] for t, s in plan.items()}}, report
