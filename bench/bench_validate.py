"""Benchmark: prepare-time validation (rethink.validate_data) of a COCO-train-sized split vs
json.load of the same annotation file, measured in the same run.

    .venv/bin/python bench/bench_validate.py [--images 118000] [--files 2000] [--anns-per-image 7.3]

The JSON is synthetic but shaped like instances_train2017.json: --images image records (COCO
train2017 has 118,287), --anns-per-image annotations each (COCO: 7.3) with polygons of 8-40
points rounded to 2 decimals, 1% crowd annotations with uncompressed RLE. Writing 118k image
files is out of reach here, so --files small JPEGs (640x480) are written and the records point at
them cyclically: every record's header is read (118k opens and header parses), but from --files
distinct files that sit in the page cache, so a cold disk or a network file system (the case on a
cluster) is slower than this. What is printed says which part is which.

Goal (issue 14): validation of a COCO-sized train split costs no more than a few times its json.load.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from rethink import validate_data

ROOT = Path(__file__).resolve().parents[1]

W, H = 640, 480


def make_set(tmp: Path, n_images: int, n_files: int, anns_per_image: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (tmp / "images").mkdir()
    for f in range(n_files):
        Image.new("RGB", (W, H), tuple(int(v) for v in rng.integers(0, 255, 3))).save(
            tmp / "images" / f"{f:012d}.jpg", quality=30
        )
    images = [
        {
            "id": i + 1,
            "file_name": f"{i % n_files:012d}.jpg",
            "width": W,
            "height": H,
            "license": 1,
            "coco_url": "",
            "date_captured": "",
        }
        for i in range(n_images)
    ]
    n_anns = int(round(n_images * anns_per_image))
    owner = np.sort(rng.integers(1, n_images + 1, n_anns))
    anns = []
    for k in range(n_anns):
        x, y = float(rng.uniform(0, W - 60)), float(rng.uniform(0, H - 60))
        w, h = float(rng.uniform(2, 60)), float(rng.uniform(2, 60))
        ann = {
            "id": k + 1,
            "image_id": int(owner[k]),
            "category_id": int(rng.integers(1, 81)),
            "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
            "area": round(w * h * 0.7, 2),
            "iscrowd": 0,
        }
        if rng.random() < 0.01:
            ann["iscrowd"] = 1
            ann["segmentation"] = {"counts": [int(v) for v in rng.integers(1, 50, 40)] + [0], "size": [H, W]}
            ann["segmentation"]["counts"][-1] = W * H - sum(ann["segmentation"]["counts"])
        else:
            n = int(rng.integers(8, 41))
            t = np.linspace(0, 2 * np.pi, n, endpoint=False)
            poly = np.stack([x + w / 2 * (1 + np.cos(t)), y + h / 2 * (1 + np.sin(t))], 1).round(2)
            ann["segmentation"] = [poly.reshape(-1).tolist()]
        anns.append(ann)
    cats = [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in range(1, 81)]
    path = tmp / "instances_train.json"
    path.write_text(
        json.dumps(
            {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats},
            separators=(",", ":"),
        )
    )
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=118000)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--anns-per-image", type=float, default=7.3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        t = time.perf_counter()
        path = make_set(tmp, args.images, args.files, args.anns_per_image)
        print(
            f"made {path.stat().st_size / 2**20:.0f} MiB of JSON and {args.files} JPEG files in "
            f"{time.perf_counter() - t:.0f} s (not timed below)"
        )
        t = time.perf_counter()
        with open(path) as f:
            coco = json.load(f)
        t_load = time.perf_counter() - t
        n_polys = sum(1 for a in coco["annotations"] if isinstance(a["segmentation"], list))

        # header checks alone: the same image records, no annotations
        headers_only = {**coco, "annotations": []}
        s = validate_data.Split("train", headers_only, tmp / "images", path)
        t = time.perf_counter()
        s.check(coco["categories"], masks=True)
        t_headers = time.perf_counter() - t
        assert not s.counts, s.counts

        out = tmp / "out"
        out.mkdir()
        t = time.perf_counter()
        checked, masks = validate_data.validate(
            "bench", {"train": (coco, tmp / "images", path)}, coco["categories"], "error", out
        )
        t_all = time.perf_counter() - t
        assert masks and not checked["train"][1]
    print(
        f"{len(coco['images'])} image records ({args.files} distinct files, page-cached), "
        f"{len(coco['annotations'])} annotations ({n_polys} with polygons), {os.cpu_count()} CPUs, "
        f"{validate_data.HEADER_THREADS} header threads"
    )
    print(f"json.load of the annotation file (reference): {t_load:6.2f} s")
    print(f"header checks of every image record:         {t_headers:6.2f} s")
    print(
        f"whole validation (records + headers + annotations + report): {t_all:6.2f} s "
        f"= {t_all / t_load:.2f} x json.load"
    )


if __name__ == "__main__":
    main()
