"""The synthetic data the embedded default trains on, made here from a seed: scenes of shapes (or
stick-figure persons with COCO's 17 keypoints) as COCO-format splits, and the classification set of
the tiny pre-training. What they look like: rethink.data's docstring (kind synthetic, classification).
Image i of a split depends only on (seed, split, i). rethink.data writes the manifests."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .atomic import write_json_atomic

SHAPES = ["circle", "rectangle", "triangle", "pentagon", "star", "hexagon", "ellipse", "diamond"]
PALETTE = [  # RGB, one per category id (1-based: PALETTE[k - 1]); categories beyond cycle hues
    (220, 40, 40),
    (40, 190, 60),
    (40, 80, 230),
    (230, 200, 30),
    (200, 50, 210),
    (30, 200, 210),
    (240, 130, 20),
    (140, 90, 40),
    (120, 120, 255),
    (255, 120, 170),
    (100, 100, 100),
    (170, 230, 120),
]

KEYPOINT_NAMES = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]
# COCO's person skeleton (1-based keypoint indices), as in person_keypoints_*.json
SKELETON = [
    [16, 14],
    [14, 12],
    [17, 15],
    [15, 13],
    [12, 13],
    [6, 12],
    [7, 13],
    [6, 7],
    [6, 8],
    [7, 9],
    [8, 10],
    [9, 11],
    [2, 3],
    [1, 2],
    [1, 3],
    [2, 4],
    [3, 5],
    [4, 6],
    [5, 7],
]
_SPLITS = {"train": 0, "val": 1}  # the split's part of an image's seed
PERSON_COLOR = (210, 150, 110)


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def category_name(cat_id: int) -> str:
    shape = SHAPES[(cat_id - 1) % len(SHAPES)]
    rnd = (cat_id - 1) // len(SHAPES)
    return shape if rnd == 0 else f"{shape}_{rnd + 1}"


def category_color(cat_id: int) -> tuple[int, int, int]:
    if cat_id - 1 < len(PALETTE):
        return PALETTE[cat_id - 1]
    import colorsys

    hue = ((cat_id - 1) * 0.618034) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def _shape_outline(shape: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (n x 2) of a shape centred at 0 whose larger extent is about `size`."""
    r = size / 2.0
    rot = rng.uniform(0, 2 * math.pi)

    def ngon(n, radius, start):
        t = start + np.arange(n) * 2 * math.pi / n
        return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)

    if shape == "circle":
        pts = ngon(32, r, 0.0)
    elif shape == "rectangle":
        w, h = size, size * rng.uniform(0.45, 0.9)
        pts = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
        rot = rng.uniform(-0.3, 0.3)
    elif shape == "triangle":
        pts = ngon(3, r, rot)
        rot = 0.0
    elif shape == "pentagon":
        pts = ngon(5, r, 0.0)
    elif shape == "hexagon":
        pts = ngon(6, r, 0.0)
    elif shape == "star":
        outer, inner = ngon(5, r, 0.0), ngon(5, r * 0.45, math.pi / 5)
        pts = np.stack([outer, inner], 1).reshape(-1, 2)
    elif shape == "ellipse":
        t = np.arange(32) * 2 * math.pi / 32
        pts = np.stack([r * np.cos(t), r * rng.uniform(0.4, 0.65) * np.sin(t)], 1)
    elif shape == "diamond":
        pts = np.array([[0, -r], [r * 0.6, 0], [0, r], [-r * 0.6, 0]])
        rot = rng.uniform(-0.3, 0.3)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    c, s = math.cos(rot), math.sin(rot)
    return pts @ np.array([[c, s], [-s, c]])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random colour field plus pixel noise (float32 H x W x 3)."""
    from PIL import Image

    coarse = rng.integers(70, 186, size=(h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.float32)
    return smooth + rng.normal(0.0, 10.0, size=(h, w, 3)).astype(np.float32)


def _rasterise(polys: list[list[float]], h: int, w: int):
    """Polygons -> (RLE of their union, H x W bool mask)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    return rle, mask_utils.decode(rle).astype(bool)


def _paint(img: np.ndarray, mask: np.ndarray, color, rng: np.random.Generator) -> None:
    jitter = rng.integers(-25, 26, size=3)
    base = np.clip(np.array(color, dtype=np.float32) + jitter, 0, 255)
    n = int(mask.sum())
    img[mask] = base + rng.normal(0.0, 12.0, size=(n, 3)).astype(np.float32)


def _overlaps(box, boxes, margin=2.0) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + margin and b[0] < x1 + margin and y0 < b[3] + margin and b[1] < y1 + margin for b in boxes)


def _place(rel: np.ndarray, h: int, w: int, rng, taken, tries=25):
    """Translate relative vertices to a spot inside the image not overlapping `taken` boxes."""
    lo, hi = rel.min(0), rel.max(0)
    ext = hi - lo
    if ext[0] > w - 2 or ext[1] > h - 2:
        return None
    for _ in range(tries):
        ox = rng.uniform(1 - lo[0], w - 1 - hi[0])
        oy = rng.uniform(1 - lo[1], h - 1 - hi[1])
        box = (ox + lo[0], oy + lo[1], ox + hi[0], oy + hi[1])
        if not _overlaps(box, taken):
            return np.array([ox, oy])
    return None


def _poly_list(pts: np.ndarray, h: int, w: int) -> list[float]:
    pts = np.clip(np.round(pts, 2), [0, 0], [w, h])
    return [float(v) for v in pts.reshape(-1)]


def _bbox_of(polys: list[list[float]]) -> list[float]:
    xy = np.concatenate([np.asarray(p).reshape(-1, 2) for p in polys])
    x0, y0 = xy.min(0)
    x1, y1 = xy.max(0)
    return [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]


# ----------------------------------------------------------------------------- synthetic instances
def _person(rng: np.random.Generator, height: float):
    """A stick figure: (relative polygons, relative keypoints 17 x 2), origin at the top centre."""
    hh = height
    kp = {}
    head = np.array([0.0, 0.09 * hh])
    kp["nose"] = head + [0, 0.015 * hh]
    kp["left_eye"], kp["right_eye"] = head + [0.025 * hh, -0.01 * hh], head + [-0.025 * hh, -0.01 * hh]
    kp["left_ear"], kp["right_ear"] = head + [0.06 * hh, 0.0], head + [-0.06 * hh, 0.0]
    sw, hw = 0.12 * hh, 0.08 * hh
    kp["left_shoulder"], kp["right_shoulder"] = np.array([sw, 0.22 * hh]), np.array([-sw, 0.22 * hh])
    kp["left_hip"], kp["right_hip"] = np.array([hw, 0.55 * hh]), np.array([-hw, 0.55 * hh])

    def limb(start, angle, length):
        return start + length * np.array([math.sin(angle), math.cos(angle)])

    for side, sgn in (("left", 1), ("right", -1)):
        a1 = sgn * rng.uniform(0.2, 1.6)
        kp[f"{side}_elbow"] = limb(kp[f"{side}_shoulder"], a1, 0.16 * hh)
        kp[f"{side}_wrist"] = limb(kp[f"{side}_elbow"], a1 + sgn * rng.uniform(-0.6, 0.9), 0.15 * hh)
        a2 = sgn * rng.uniform(0.0, 0.45)
        kp[f"{side}_knee"] = limb(kp[f"{side}_hip"], a2, 0.21 * hh)
        kp[f"{side}_ankle"] = limb(kp[f"{side}_knee"], a2 * rng.uniform(-0.5, 0.5), 0.21 * hh)

    def bar(p, q, width):
        d = q - p
        n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9) * width / 2
        return np.stack([p + n, q + n, q - n, p - n])

    t = np.arange(16) * 2 * math.pi / 16
    polys = [head + 0.07 * hh * np.stack([np.cos(t), np.sin(t)], 1)]
    polys.append(np.stack([kp["left_shoulder"], kp["right_shoulder"], kp["right_hip"], kp["left_hip"]]))
    polys.append(bar(head, (kp["left_shoulder"] + kp["right_shoulder"]) / 2, 0.05 * hh))
    lw = max(0.055 * hh, 2.5)
    for side in ("left", "right"):
        polys.append(bar(kp[f"{side}_shoulder"], kp[f"{side}_elbow"], lw))
        polys.append(bar(kp[f"{side}_elbow"], kp[f"{side}_wrist"], lw))
        polys.append(bar(kp[f"{side}_hip"], kp[f"{side}_knee"], lw * 1.2))
        polys.append(bar(kp[f"{side}_knee"], kp[f"{side}_ankle"], lw * 1.2))
    return polys, np.stack([kp[n] for n in KEYPOINT_NAMES])


def _synthetic_image(seed: int, split: str, index: int, spec: dict):
    """One image (H x W x 3 uint8) and its annotations (without ids), from (seed, split, index)."""
    rng = np.random.default_rng([int(seed), _SPLITS[split], int(index)])
    lo, hi = sorted(int(v) for v in spec["image_size"])
    w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    img = _background(rng, h, w)
    keypoints = bool(spec.get("keypoints", False))
    n_obj = int(rng.integers(1, int(spec["max_objects"]) + 1))
    short = min(h, w)
    taken, anns = [], []
    for _ in range(n_obj):
        if keypoints:
            rel_polys, rel_kp = _person(rng, rng.uniform(0.35, 0.9) * h)
            cat = 1
        else:
            cat = int(rng.integers(1, int(spec["categories"]) + 1))
            rel_polys = [_shape_outline(SHAPES[(cat - 1) % len(SHAPES)], rng.uniform(0.1, 0.6) * short, rng)]
        off = _place(np.concatenate(rel_polys), h, w, rng, taken)
        shrink = 0
        while off is None and not anns and shrink < 4:  # every image gets at least one object
            rel_polys = [p * 0.7 for p in rel_polys]
            if keypoints:
                rel_kp = rel_kp * 0.7
            off = _place(np.concatenate(rel_polys), h, w, rng, taken)
            shrink += 1
        if off is None:
            continue
        polys = [_poly_list(p + off, h, w) for p in rel_polys]
        rle, mask = _rasterise(polys, h, w)
        area = int(mask.sum())
        if area < 4:
            continue
        bbox = _bbox_of(polys)
        taken.append((bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]))
        _paint(img, mask, PERSON_COLOR if keypoints else category_color(cat), rng)
        ann = {"category_id": cat, "segmentation": polys, "area": float(area), "bbox": bbox, "iscrowd": 0}
        if keypoints:
            kps = np.clip(np.round(rel_kp + off, 2), [0, 0], [w - 0.01, h - 0.01])
            ann["keypoints"] = [v for x, y in kps for v in (float(x), float(y), 2)]
            ann["num_keypoints"] = len(KEYPOINT_NAMES)
        anns.append(ann)
    return np.clip(img, 0, 255).astype(np.uint8), anns


def instance_categories(spec: dict) -> list[dict]:
    if spec.get("keypoints"):
        return [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": list(KEYPOINT_NAMES),
                "skeleton": [list(s) for s in SKELETON],
            }
        ]
    return [
        {"id": k, "name": category_name(k), "supercategory": "shape"} for k in range(1, int(spec["categories"]) + 1)
    ]


def make_synthetic_split(spec: dict, split: str, out_dir: Path, version: str) -> tuple[Path, Path, int]:
    """Write <out_dir>/<split>/ (PNGs) and <out_dir>/<split>.json (`version`: its info.version);
    returns (images, json, n)."""
    from PIL import Image

    n = int(spec[f"{split}_size"])
    seed = int(spec.get("seed", 0))
    final = out_dir / split
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{split}."))
    images, anns = [], []
    for i in range(n):
        img, objs = _synthetic_image(seed, split, i, spec)
        name = f"{i:06d}.png"
        Image.fromarray(img).save(tmp / name, optimize=False, compress_level=6)
        image_id = i + 1
        images.append({"id": image_id, "file_name": name, "height": int(img.shape[0]), "width": int(img.shape[1])})
        for a in objs:
            anns.append({"id": len(anns) + 1, "image_id": image_id, **a})
    coco = {
        "info": {
            "description": f"rethink synthetic {'person keypoints' if spec.get('keypoints') else 'shapes'}, {split}",
            "seed": seed,
            "version": version,
        },
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": instance_categories(spec),
    }
    _replace_dir(tmp, final)
    ann_path = out_dir / f"{split}.json"
    write_json_atomic(ann_path, coco, sort_keys=True, separators=(",", ":"))
    return final, ann_path, n


def classification_image(seed: int, index: int, classes: int, size: int) -> tuple[np.ndarray, int]:
    """Image i of the pre-training set: (3 x S x S uint8, label), from (seed, i) only."""
    rng = np.random.default_rng([int(seed), 2, int(index)])
    label = index % classes
    cat = label + 1
    img = _background(rng, size, size)
    rel = _shape_outline(SHAPES[(cat - 1) % len(SHAPES)], rng.uniform(0.3, 0.8) * size, rng)
    off = _place(rel, size, size, rng, [])
    if off is None:  # too large after rotation: centre it, scaled down
        rel = rel * (0.8 * size / max(np.ptp(rel, 0).max(), 1e-6))
        off = np.array([size / 2, size / 2]) - (rel.min(0) + rel.max(0)) / 2
    _, mask = _rasterise([_poly_list(rel + off, size, size)], size, size)
    _paint(img, mask, category_color(cat), rng)
    return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1), label
