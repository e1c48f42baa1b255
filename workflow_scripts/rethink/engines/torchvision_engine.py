"""The torchvision engine: Mask R-CNN / Faster R-CNN + FPN from torchvision.models.detection with
GN, SyncBN or BN (rethink.models), a COCO-format train stream and COCO-format predictions.
Runs on CPU; the embedded default and CI use it. The interface is documented in engines/__init__.py.

Recipe fields honoured: task (mask_rcnn, faster_rcnn), min_size_train (+ scale_aug: a size drawn
from [lo, hi] per batch), max_size_train, min_size_test, max_size_test, rpn_pre/post_nms_train/test,
roi_batch_per_image, detections_per_image, batch.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import models
from ..loop import batch_indices

_CACHE_LIMIT = 4096  # decoded images kept in memory per split (the tiny sets fit entirely)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


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
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.images)

    def image(self, idx: int) -> torch.Tensor:
        """uint8 [3, H, W]."""
        t = self._cache.get(idx)
        if t is None:
            info = self.images[idx]
            path = self.image_dir / info["file_name"]
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("RGB"))
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.ann_path}: image {info['id']}: {path}: no such file") from None
            t = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[idx] = t
        return t

    def target(self, idx: int, with_masks: bool) -> dict:
        from pycocotools import mask as mask_util

        info = self.images[idx]
        h, w = int(info["height"]), int(info["width"])
        boxes, labels, masks = [], [], []
        for a in self.anns[info["id"]]:
            if a.get("iscrowd", 0):
                continue
            x, y, bw, bh = a["bbox"]
            if bw < 1 or bh < 1:
                continue
            boxes.append([x, y, x + bw, y + bh])
            labels.append(self.label_of[a["category_id"]])
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
        return t


class TrainStream:
    """Batch i: the images rethink.loop.batch_indices gives for (seed, i) (this process's share);
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
        if len(split) == 0:
            raise ValueError(f"{split.ann_path}: the train split has no images")

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        i = self.iteration
        rng = np.random.default_rng([self.seed, i, 1])
        flips = rng.random(self.batch) < 0.5
        if self.scale_aug:
            min_size = int(rng.integers(min(self.sizes), max(self.sizes) + 1))
        else:
            min_size = int(self.sizes[int(rng.integers(len(self.sizes)))])
        idxs = batch_indices(self.seed, i, self.batch, len(self.split), self.rank, self.world)
        images, targets = [], []
        for j, idx in enumerate(idxs):
            img = self.split.image(idx).float().div_(255.0)
            tgt = self.split.target(idx, self.masks)
            if flips[self.rank * self.per_rank + j]:
                w = img.shape[-1]
                img = img.flip(-1)
                b = tgt["boxes"]
                tgt["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
                if "masks" in tgt:
                    tgt["masks"] = tgt["masks"].flip(-1)
            images.append(img)
            targets.append(tgt)
        self.iteration += 1
        return {"iteration": i, "images": images, "targets": targets, "min_size": min_size,
                "max_size": self.max_size}


class TorchvisionEngine:
    name = "torchvision"

    def build_model(self, run: dict, device, distributed: bool = False, dataset: dict | None = None):
        """`dataset` (the manifest) gives the number of categories; without it run["num_classes"]."""
        if dataset is not None:
            num_classes = len(dataset.get("categories") or CocoSplit(dataset, "train").cat_ids)
        elif "num_classes" in run:
            num_classes = int(run["num_classes"])
        else:
            raise ValueError(f"run {run.get('run_id')}: build_model needs the dataset manifest (dataset=...) "
                             f"to know the number of categories")
        device = torch.device(device)
        return models.detector(run, num_classes, device.type).to(device)

    def load_init_weights(self, model, path: str, run: dict) -> None:
        """Backbone weights written by the pretrain rule (rethink.pretrain) -> model.backbone.body."""
        from ..pretrain import load_backbone_weights

        load_backbone_weights(_unwrap(model).backbone.body, path, run)

    def train_stream(self, run: dict, dataset: dict, start_iter: int, rank: int = 0, world: int = 1):
        return TrainStream(CocoSplit(dataset, "train"), run, start_iter, rank, world)

    def losses(self, model, batch: dict) -> dict:
        m = _unwrap(model)
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
        from pycocotools import mask as mask_util

        recipe = run["recipe"]
        split = CocoSplit(dataset, "val")
        m = _unwrap(model)
        was_training = m.training
        m.eval()
        m.transform.min_size = (int(recipe["min_size_test"]),)
        m.transform.max_size = int(recipe["max_size_test"])
        m.roi_heads.detections_per_img = int(recipe["detections_per_image"])
        device = torch.device(device)
        results = []
        try:
            for lo in range(0, len(split), batch_size):
                idxs = list(range(lo, min(lo + batch_size, len(split))))
                outs = m([split.image(i).float().div_(255.0).to(device) for i in idxs])
                for i, out in zip(idxs, outs):
                    image_id = split.images[i]["id"]
                    boxes = out["boxes"].cpu()
                    scores = out["scores"].cpu().tolist()
                    labels = out["labels"].cpu().tolist()
                    rles = None
                    if "masks" in out:
                        masks = (out["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
                        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
                    for k in range(min(len(scores), int(recipe["detections_per_image"]))):
                        x1, y1, x2, y2 = boxes[k].tolist()
                        r = {"image_id": image_id, "category_id": split.cat_ids[labels[k] - 1],
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[k])}
                        if rles is not None:
                            rle = rles[k]
                            r["segmentation"] = {"size": [int(s) for s in rle["size"]],
                                                 "counts": rle["counts"].decode("ascii")}
                        results.append(r)
        finally:
            m.train(was_training)
        return results
