"""The torchvision engine's data: a COCO-format split of a dataset manifest (images in their EXIF
orientation, cached; targets with boxes, masks and keypoints) and the train stream whose batch i
is a function of (seed, i) only (rethink.sampling). The engine (rethink.engines.torchvision_engine)
trains on the stream and predicts over the val split.

Keypoints: the number of keypoints is the length of the ``keypoints`` names of the manifest's
keypoint category; train targets carry ``keypoints`` [N, K, 3] (x, y, v; v = 0 not labelled), a
horizontal flip mirrors x and swaps left_*/right_* keypoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..sampling import GroupedBatches, aspect_groups
from ..validate_data import DatasetError

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
                    raise ValueError(
                        f"{self.ann_path}: annotation {a.get('id')}: {len(kp) // 3} keypoints, the category has {k}"
                    )
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
        t = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
        if with_masks:
            t["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
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
        self.keep = [i for i, im in enumerate(split.images) if any(not a.get("iscrowd") for a in split.anns[im["id"]])]
        if not self.keep:
            raise ValueError(f"{split.ann_path}: the train split has no image with a (non-crowd) annotation")
        self.dropped = len(split) - len(self.keep)
        self.sampler = GroupedBatches(
            self.seed,
            self.batch,
            aspect_groups((split.images[i]["width"], split.images[i]["height"]) for i in self.keep),
        )

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
        return {"iteration": i, "images": images, "targets": targets, "min_size": min_size, "max_size": self.max_size}
