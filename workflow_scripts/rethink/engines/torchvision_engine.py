"""The torchvision engine: Mask R-CNN / Faster R-CNN / Keypoint R-CNN + FPN from
torchvision.models.detection with GN, SyncBN or BN, Cascade Mask R-CNN (torchvision's Mask R-CNN
with rethink.engines.torchvision_cascade's RoI heads, detectron2's CascadeROIHeads), and Faster R-CNN on VGG16 without
FPN (rethink.engines.torchvision_models), a COCO-format train stream and COCO-format predictions. Runs on CPU; the
embedded default and CI use it. The interface is documented in engines/__init__.py.

Recipe fields honoured: task (mask_rcnn, faster_rcnn, keypoint_rcnn, cascade_mask_rcnn; the switch
mask_rcnn -> cascade_mask_rcnn of recipe cascade_from_iter through load_converted), min_size_train
(+ scale_aug: a size drawn from [lo, hi] per batch), max_size_train, min_size_test, max_size_test,
tta, rpn_pre/post_nms_train/test, roi_batch_per_image, detections_per_image, batch, num_workers
(loader processes that prepare the batches ahead of the loop).

Keypoints: the number of keypoints is the length of the ``keypoints`` names of the manifest's
keypoint category; train targets carry ``keypoints`` [N, K, 3] (x, y, v; v = 0 not labelled), a
horizontal flip mirrors x and swaps left_*/right_* keypoints. Predicted keypoints are written as
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

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..checkpoint import load_backbone_weights, unwrap
from ..sampling import GroupedBatches, aspect_groups, iteration_loader
from ..validate_data import DatasetError
from .shared import test_aug_sizes
from .torchvision_models import detector

# Decoded images (uint8 tensors) kept in memory, all splits of a process together, up to this many
# bytes: the first images decoded stay, later ones are decoded each time. The tiny sets fit
# entirely; a loader worker is a process of its own with its own cache.
CACHE_BYTES = 512 * 2**20
_cache: dict[str, torch.Tensor] = {}
_cache_bytes = 0


def read_image(path) -> torch.Tensor:
    """uint8 [3, H, W] of an image file in its EXIF orientation (PIL.ImageOps.exif_transpose, as
    detectron2's read_image), any mode converted to RGB; cached (CACHE_BYTES)."""
    global _cache_bytes
    key = str(path)
    t = _cache.get(key)
    if t is None:
        try:
            with Image.open(path) as im:
                arr = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except (OSError, ValueError) as e:  # truncated, corrupt, gone since the dataset was prepared
            raise DatasetError(f"{path}: cannot be read as an image ({e})") from None
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        if _cache_bytes + t.nbytes <= CACHE_BYTES:
            _cache[key] = t
            _cache_bytes += t.nbytes
    return t


def keypoint_flip_indices(names: list[str]) -> list[int]:
    """Index of each keypoint's mirror image (left_* <-> right_*; others map to themselves)."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for n in names:
        if n.startswith("left_"):
            m = "right_" + n[5:]
        elif n.startswith("right_"):
            m = "left_" + n[6:]
        else:
            m = n
        out.append(index.get(m, index[n]))
    return out


def keypoint_names(manifest: dict) -> list[str]:
    """The keypoint names of the manifest's keypoint category ([] if it has none)."""
    for c in manifest.get("categories") or []:
        if c.get("keypoints"):
            return list(c["keypoints"])
    return []


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


class CocoSplit:
    """One split (train or val) of a COCO-format manifest: images, annotations, label mapping."""

    def __init__(self, manifest: dict, split: str):
        where = f"dataset {manifest.get('name')!r}"
        if manifest.get("kind") != "coco":
            raise ValueError(f"{where}: kind is {manifest.get('kind')!r}; the detection engines need a 'coco' manifest")
        try:
            entry = manifest[split]
            self.image_dir = Path(entry["images"])
            ann_path = Path(entry["annotations"])
        except KeyError as e:
            raise ValueError(f"{where}: field {split}.{e.args[0]} missing") from None
        try:
            with open(ann_path) as f:
                coco = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: {split}.annotations {ann_path}: no such file") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{ann_path}: not valid JSON: {e}") from None
        cats = manifest.get("categories") or coco.get("categories")
        if not cats:
            raise ValueError(f"{where}: no categories (neither in the manifest nor in {ann_path})")
        self.cat_ids = [int(c["id"]) for c in cats]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}  # 0 = background
        self.images = sorted(coco["images"], key=lambda im: im["id"])
        self.anns: dict[int, list] = {im["id"]: [] for im in self.images}
        for a in coco.get("annotations", []):
            if a["image_id"] in self.anns and a["category_id"] in self.label_of:
                self.anns[a["image_id"]].append(a)
        self.ann_path = ann_path
        self.keypoint_names = keypoint_names({"categories": cats})
        self.flip_indices = keypoint_flip_indices(self.keypoint_names)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, idx: int) -> torch.Tensor:
        """uint8 [3, H, W] in the image's EXIF orientation (the width and height of its record,
        which prepare_data checked): see read_image."""
        info = self.images[idx]
        path = self.image_dir / info["file_name"]
        try:
            return read_image(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.ann_path}: image {info['id']}: {path}: no such file") from None

    def target(self, idx: int, with_masks: bool, with_keypoints: bool = False) -> dict:
        from pycocotools import mask as mask_util

        info = self.images[idx]
        h, w = int(info["height"]), int(info["width"])
        k = len(self.keypoint_names)
        if with_keypoints and not k:
            raise ValueError(f"{self.ann_path}: task keypoint_rcnn needs a keypoint category (with 'keypoints' names)")
        boxes, labels, masks, kps = [], [], [], []
        for a in self.anns[info["id"]]:
            if a.get("iscrowd", 0):
                continue
            x, y, bw, bh = a["bbox"]
            if bw < 1 or bh < 1:
                continue
            boxes.append([x, y, x + bw, y + bh])
            labels.append(self.label_of[a["category_id"]])
            if with_keypoints:
                kp = a.get("keypoints") or [0.0] * (3 * k)
                if len(kp) != 3 * k:
                    raise ValueError(f"{self.ann_path}: annotation {a.get('id')}: {len(kp) // 3} keypoints, "
                                     f"the category has {k}")
                kps.append(kp)
            if with_masks:
                seg = a["segmentation"]
                if isinstance(seg, list):
                    rle = mask_util.merge(mask_util.frPyObjects(seg, h, w))
                elif isinstance(seg.get("counts"), list):
                    rle = mask_util.frPyObjects(seg, h, w)
                else:
                    rle = seg
                masks.append(mask_util.decode(rle))
        t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
             "labels": torch.tensor(labels, dtype=torch.int64)}
        if with_masks:
            t["masks"] = (torch.from_numpy(np.stack(masks)) if masks
                          else torch.zeros((0, h, w), dtype=torch.uint8))
        if with_keypoints:
            t["keypoints"] = torch.tensor(kps, dtype=torch.float32).reshape(-1, k, 3)
        return t


def flip_keypoints(kps: torch.Tensor, width: int, flip_indices: list[int]) -> torch.Tensor:
    """Keypoints [N, K, 3] of an image mirrored horizontally: x -> width - x, left/right swapped;
    unlabelled ones (v = 0) stay (0, 0, 0)."""
    out = kps[:, flip_indices].clone()
    out[..., 0] = width - out[..., 0]
    out[out[..., 2] <= 0] = 0
    return out


class TrainStream:
    """Batch i: the images rethink.sampling.GroupedBatches gives for (seed, i) (this process's share:
    wide or tall images only, as detectron2's aspect-ratio grouping, so a batch is padded little);
    flips and the scale-aug size are drawn from (seed, i) too."""

    def __init__(self, split: CocoSplit, run: dict, start_iter: int, rank: int, world: int):
        recipe = run["recipe"]
        self.split, self.seed, self.iteration = split, int(run["seed"]), int(start_iter)
        self.batch, self.rank, self.world = int(recipe["batch"]), rank, world
        if self.batch % world:
            raise ValueError(f"recipe.batch {self.batch} is not divisible by {world} processes")
        self.per_rank = self.batch // world
        self.sizes = list(recipe["min_size_train"])
        self.scale_aug = bool(recipe.get("scale_aug"))
        self.max_size = int(recipe["max_size_train"])
        self.masks = recipe["task"] in ("mask_rcnn", "cascade_mask_rcnn")
        self.keypoints = recipe["task"] == "keypoint_rcnn"
        # as detectron2's loader (DATALOADER.FILTER_EMPTY_ANNOTATIONS): training draws only images
        # with an annotation that is not crowd; both engines see the same images
        self.keep = [i for i, im in enumerate(split.images)
                     if any(not a.get("iscrowd") for a in split.anns[im["id"]])]
        if not self.keep:
            raise ValueError(f"{split.ann_path}: the train split has no image with a (non-crowd) annotation")
        self.dropped = len(split) - len(self.keep)
        self.sampler = GroupedBatches(self.seed, self.batch, aspect_groups(
            (split.images[i]["width"], split.images[i]["height"]) for i in self.keep))

    def indices(self, iteration: int) -> list[int]:
        """Train-split indices of this process's share of batch `iteration`."""
        return [self.keep[k] for k in self.sampler.indices(iteration, self.rank, self.world)]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        out = self[self.iteration]
        self.iteration += 1
        return out

    def __len__(self) -> int:  # iterations are indexed without bound (a Dataset for iteration_loader)
        return 2**62

    def __getitem__(self, i: int) -> dict:
        """Batch i (this process's share), a function of (seed, i) only."""
        rng = np.random.default_rng([self.seed, i, 1])
        flips = rng.random(self.batch) < 0.5
        if self.scale_aug:
            min_size = int(rng.integers(min(self.sizes), max(self.sizes) + 1))
        else:
            min_size = int(self.sizes[int(rng.integers(len(self.sizes)))])
        idxs = self.indices(i)
        images, targets = [], []
        for j, idx in enumerate(idxs):
            img = self.split.image(idx).float().div_(255.0)
            tgt = self.split.target(idx, self.masks, self.keypoints)
            if flips[self.rank * self.per_rank + j]:
                w = img.shape[-1]
                img = img.flip(-1)
                b = tgt["boxes"]
                tgt["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
                if "masks" in tgt:
                    tgt["masks"] = tgt["masks"].flip(-1)
                if "keypoints" in tgt:
                    tgt["keypoints"] = flip_keypoints(tgt["keypoints"], w, self.split.flip_indices)
            images.append(img)
            targets.append(tgt)
        return {"iteration": i, "images": images, "targets": targets, "min_size": min_size,
                "max_size": self.max_size}


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
            raise ValueError(f"run {run.get('run_id')}: build_model needs the dataset manifest (dataset=...) "
                             f"to know the number of categories")
        if run["recipe"]["task"] == "keypoint_rcnn" and not num_keypoints:
            where = f"dataset {dataset.get('name')!r}" if dataset is not None else f"run {run.get('run_id')}"
            raise ValueError(f"{where}: task keypoint_rcnn needs a keypoint dataset (a category with 'keypoints' "
                             f"names, e.g. datasets.<name>.keypoints: true)")
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
            print(f"train: {stream.dropped} of {len(stream.split)} images have no non-crowd annotation and are "
                  "not drawn (as detectron2's FILTER_EMPTY_ANNOTATIONS)", flush=True)
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
        return {"images": len(batch["images"]),
                "instances": int(sum(len(t["boxes"]) for t in batch["targets"])),
                "pixels": int(pixels)}

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
        det["rles"] = (list(mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))) if len(masks) else [])
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
        r = {"image_id": image_id, "category_id": split.cat_ids[labels[k] - 1],
             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[k])}
        if "rles" in det:
            rle = det["rles"][k]
            r["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        if "keypoints" in det:
            kp = det["keypoints"][k].clone()
            kp[:, 2] = 1.0  # COCO results: v is not read by COCOeval (OKS uses x, y)
            r["keypoints"] = [float(v) for v in kp.reshape(-1).tolist()]
        out.append(r)
    return out
