"""The torchvision engine: Mask R-CNN / Faster R-CNN / Keypoint R-CNN + FPN from
torchvision.models.detection with GN, SyncBN or BN, Cascade Mask R-CNN (torchvision's Mask R-CNN
with rethink.engines.torchvision_cascade's RoI heads, detectron2's CascadeROIHeads), and Faster R-CNN
on VGG16 without FPN (rethink.engines.torchvision_models), a COCO-format train stream (rethink.engines.torchvision_data)
and COCO-format predictions. Runs on CPU; the embedded default and CI use it. The interface is
documented in engines/__init__.py.

Recipe fields honoured: task (mask_rcnn, faster_rcnn, keypoint_rcnn, cascade_mask_rcnn; the switch
mask_rcnn -> cascade_mask_rcnn of recipe cascade_from_iter through load_converted), min_size_train
(+ scale_aug: a size drawn from [lo, hi] per batch), max_size_train, min_size_test, max_size_test,
tta, rpn_pre/post_nms_train/test, roi_batch_per_image, detections_per_image, batch, num_workers
(loader processes that prepare the batches ahead of the loop).

Keypoints (train targets: rethink.engines.torchvision_data): predicted keypoints are written as
COCO results [x1, y1, v1, ...] with v = 1 (torchvision's output; COCOeval reads only x and y).

Test-time augmentation (recipe tta: true): detectron2's TEST.AUG (shorter sides 400..1200 step 100,
longer side at most 4000, and the horizontal flip of each) scaled by min_size_test / 800, so
min_size_test 800 gives detectron2's sizes exactly. Every pass gives detections in the original
image's coordinates (flipped ones mirrored back); they are merged per class by NMS at the box head's
threshold (torchvision.ops.batched_nms) and the best detections_per_image kept. A surviving detection
keeps its own mask (and keypoints) from the pass that produced it; detectron2 instead re-runs the
mask head on the merged boxes at every augmentation and averages.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..checkpoint import unwrap
from ..sampling import iteration_loader
from ..weights import load_backbone_weights
from .shared import test_aug_sizes
from .torchvision_data import CocoSplit, TrainStream, keypoint_names
from .torchvision_models import detector


def inference_passes(recipe: dict) -> list[tuple[int, int, bool]]:
    """(min_size, max_size, flip) of every test pass: one without tta, detectron2's TEST.AUG with
    it (rethink.engines.shared.test_aug_sizes: the same sizes the detectron2 engine uses)."""
    lo, hi = int(recipe["min_size_test"]), int(recipe["max_size_test"])
    if not recipe.get("tta"):
        return [(lo, hi, False)]
    sizes, max_size = test_aug_sizes(recipe)
    return [(s, max_size, flip) for s in sizes for flip in (False, True)]


def resized_hw(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The image size after GeneralizedRCNNTransform's resize (before padding)."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return int(math.floor(h * scale)), int(math.floor(w * scale))


class TorchvisionEngine:
    name = "torchvision"

    def build_model(self, run: dict, device, distributed: bool = False, dataset: dict | None = None):
        """`dataset` (the manifest) gives the number of categories (and keypoints); without it
        run["num_classes"] (and run["num_keypoints"])."""
        num_keypoints = run.get("num_keypoints")
        if dataset is not None:
            cats = dataset.get("categories") or None
            num_classes = len(cats) if cats else len(CocoSplit(dataset, "train").cat_ids)
            num_keypoints = len(keypoint_names(dataset)) or None
        elif "num_classes" in run:
            num_classes = int(run["num_classes"])
        else:
            raise ValueError(
                f"run {run.get('run_id')}: build_model needs the dataset manifest (dataset=...) "
                f"to know the number of categories"
            )
        if run["recipe"]["task"] == "keypoint_rcnn" and not num_keypoints:
            where = f"dataset {dataset.get('name')!r}" if dataset is not None else f"run {run.get('run_id')}"
            raise ValueError(
                f"{where}: task keypoint_rcnn needs a keypoint dataset (a category with 'keypoints' "
                f"names, e.g. datasets.<name>.keypoints: true)"
            )
        device = torch.device(device)
        return detector(run, num_classes, device.type, num_keypoints=num_keypoints).to(device)

    def load_init_weights(self, model, path: str, run: dict) -> None:
        """Backbone weights written by the pretrain rule (rethink.pretrain) -> model.backbone.body."""
        load_backbone_weights(unwrap(model).backbone.body, path, run)

    def load_converted(self, model, state_dict: dict, from_task: str, run: dict) -> str:
        """A Mask R-CNN state dict into the cascade_mask_rcnn model of `run` (the switch of
        recipe cascade_from_iter): rethink.engines.torchvision_cascade.convert_mask_rcnn_state, loaded strictly."""
        from .torchvision_cascade import convert_mask_rcnn_state

        to_task = run["recipe"]["task"]
        where = f"run {run.get('run_id', '?')}: architecture switch {from_task} -> {to_task}"
        if (from_task, to_task) != ("mask_rcnn", "cascade_mask_rcnn"):
            raise ValueError(f"{where}: the torchvision engine converts mask_rcnn -> cascade_mask_rcnn only")
        m = unwrap(model)
        try:
            state, report = convert_mask_rcnn_state(m.state_dict(), state_dict)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        m.load_state_dict(state)
        return report

    def train_stream(self, run: dict, dataset: dict, start_iter: int, rank: int = 0, world: int = 1):
        """The TrainStream itself (recipe num_workers 0), or its batches prepared by that many
        loader processes (the same batches: each is a function of seed and iteration)."""
        stream = TrainStream(CocoSplit(dataset, "train"), run, start_iter, rank, world)
        if stream.dropped and rank == 0:
            print(
                f"train: {stream.dropped} of {len(stream.split)} images have no non-crowd annotation and are "
                "not drawn (as detectron2's FILTER_EMPTY_ANNOTATIONS)",
                flush=True,
            )
        workers = int(run["recipe"].get("num_workers", 0))
        return stream if workers == 0 else iteration_loader(stream, start_iter, workers, run["seed"], rank)

    def losses(self, model, batch: dict) -> dict:
        m = unwrap(model)
        m.transform.min_size = (int(batch["min_size"]),)
        m.transform.max_size = int(batch["max_size"])
        device = next(m.parameters()).device
        images = [im.to(device, non_blocking=True) for im in batch["images"]]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch["targets"]]
        return model(images, targets)

    def count(self, batch: dict) -> dict:
        pixels = 0
        for im in batch["images"]:
            h, w = resized_hw(im.shape[-2], im.shape[-1], batch["min_size"], batch["max_size"])
            pixels += h * w
        return {
            "images": len(batch["images"]),
            "instances": int(sum(len(t["boxes"]) for t in batch["targets"])),
            "pixels": int(pixels),
        }

    @torch.no_grad()
    def predict(self, model, run: dict, dataset: dict, device, batch_size: int = 2) -> list[dict]:
        """COCO results of the val set; with recipe tta, merged over inference_passes(recipe)."""
        recipe = run["recipe"]
        split = CocoSplit(dataset, "val")
        m = unwrap(model)
        was_training = m.training
        m.eval()
        limit = int(recipe["detections_per_image"])
        m.roi_heads.detections_per_img = limit
        passes = inference_passes(recipe)
        device = torch.device(device)
        results = []
        try:
            for lo in range(0, len(split), batch_size):
                idxs = list(range(lo, min(lo + batch_size, len(split))))
                images = [split.image(i).float().div_(255.0).to(device) for i in idxs]
                per_image: list[list[dict]] = [[] for _ in idxs]
                for min_size, max_size, flip in passes:
                    m.transform.min_size = (int(min_size),)
                    m.transform.max_size = int(max_size)
                    outs = m([im.flip(-1) if flip else im for im in images])
                    for j, out in enumerate(outs):
                        per_image[j].append(_detections(out, images[j].shape[-1], flip, split.flip_indices))
                for i, dets in zip(idxs, per_image):
                    merged = dets[0] if len(dets) == 1 else _merge(dets, float(m.roi_heads.nms_thresh), limit)
                    results.extend(_coco_results(split, split.images[i]["id"], merged, limit))
        finally:
            m.transform.min_size = tuple(int(s) for s in recipe["min_size_train"])
            m.transform.max_size = int(recipe["max_size_train"])
            m.train(was_training)
        return results


def _detections(out: dict, width: int, flip: bool, flip_indices: list[int]) -> dict:
    """One pass's output for one image -> CPU tensors in the original image's coordinates
    (mirrored back if the pass saw the flipped image); masks as RLEs (compact across many passes)."""
    from pycocotools import mask as mask_util

    boxes = out["boxes"].detach().float().cpu()
    if flip:
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    det = {"boxes": boxes, "scores": out["scores"].detach().float().cpu(), "labels": out["labels"].detach().cpu()}
    if "masks" in out:
        masks = out["masks"][:, 0] > 0.5
        if flip:
            masks = masks.flip(-1)
        masks = masks.cpu().numpy().astype(np.uint8)
        det["rles"] = list(mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))) if len(masks) else []
    if "keypoints" in out:
        kps = out["keypoints"].detach().float().cpu()
        if flip:
            kps = kps[:, flip_indices].clone()
            kps[..., 0] = width - kps[..., 0]
        det["keypoints"] = kps
    return det


def _merge(dets: list[dict], nms_thresh: float, limit: int) -> dict:
    """The detections of several passes merged per class by NMS; the best `limit` by score."""
    from torchvision.ops import batched_nms

    boxes = torch.cat([d["boxes"] for d in dets])
    scores = torch.cat([d["scores"] for d in dets])
    labels = torch.cat([d["labels"] for d in dets])
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:limit]  # sorted by decreasing score
    out = {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    if "rles" in dets[0]:
        rles = [r for d in dets for r in d["rles"]]
        out["rles"] = [rles[k] for k in keep.tolist()]
    if "keypoints" in dets[0]:
        out["keypoints"] = torch.cat([d["keypoints"] for d in dets])[keep]
    return out


def _coco_results(split: CocoSplit, image_id: int, det: dict, limit: int) -> list[dict]:
    out = []
    scores = det["scores"].tolist()
    labels = det["labels"].tolist()
    for k in range(min(len(scores), limit)):
        x1, y1, x2, y2 = det["boxes"][k].tolist()
        r = {
            "image_id": image_id,
            "category_id": split.cat_ids[labels[k] - 1],
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(scores[k]),
        }
        if "rles" in det:
            rle = det["rles"][k]
            r["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        if "keypoints" in det:
            kp = det["keypoints"][k].clone()
            kp[:, 2] = 1.0  # COCO results: v is not read by COCOeval (OKS uses x, y)
            r["keypoints"] = [float(v) for v in kp.reshape(-1).tolist()]
        out.append(r)
    return out
