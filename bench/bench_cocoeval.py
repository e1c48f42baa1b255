"""COCOeval's cost at COCO val2017's size: faster_coco_eval against pycocotools, same detections.

    .venv/bin/python bench/bench_cocoeval.py [--images 5000] [--objects 7] [--detections 100]

A made-up val set (--images images of 640 x 480, --objects objects each, 80 categories, polygons)
and --detections results per image: every object found again, shifted by up to 30% of its size,
plus random boxes, all with random scores; masks as RLEs, as the engines write them. Both backends
score bbox and segm through rethink.evaluate.coco_evaluate (loadRes, evaluate, accumulate,
summarize); it prints the seconds of each, the ratio pycocotools / faster_coco_eval, and whether
the 12 stats of each type agree (to 1e-9).
"""

from __future__ import annotations

import argparse
import io
import math
import time

import numpy as np
from common import ROOT  # noqa: F401  (puts workflow_scripts on the path)
from pycocotools import mask as mask_util

from rethink import evaluate


def made_up(images: int, objects: int, detections: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w, h = 640, 480
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": str(c)} for c in range(1, 81)]}
    results = []
    for i in range(1, images + 1):
        gt["images"].append({"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"})
        boxes = []
        for _ in range(objects):
            bw, bh = rng.uniform(8, 200), rng.uniform(8, 200)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            cat = int(rng.integers(1, 81))
            boxes.append((x, y, bw, bh, cat))
            poly = [x, y, x + bw, y, x + bw * 0.8, y + bh, x, y + bh * 0.7]
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh * 0.875,
                    "iscrowd": 0,
                    "segmentation": [poly],
                }
            )
        dets = []
        for x, y, bw, bh, cat in boxes:
            dx, dy = rng.uniform(-0.3, 0.3) * bw, rng.uniform(-0.3, 0.3) * bh
            dets.append((max(x + dx, 0), max(y + dy, 0), bw, bh, cat))
        while len(dets) < detections:
            bw, bh = rng.uniform(8, 200), rng.uniform(8, 200)
            dets.append((rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh, int(rng.integers(1, 81))))
        for x, y, bw, bh, cat in dets:
            rle = mask_util.frPyObjects([[x, y, x + bw, y, x + bw, y + bh, x, y + bh]], h, w)[0]
            rle["counts"] = rle["counts"].decode()
            results.append(
                {
                    "image_id": i,
                    "category_id": cat,
                    "score": float(rng.uniform()),
                    "bbox": [x, y, bw, bh],
                    "segmentation": rle,
                }
            )
    return gt, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--objects", type=int, default=7)
    ap.add_argument("--detections", type=int, default=100)
    args = ap.parse_args()
    gt, results = made_up(args.images, args.objects, args.detections)
    print(f"{args.images} images, {len(gt['annotations'])} objects, {len(results)} detections")
    seconds, stats = {}, {}
    for backend in ("pycocotools", "faster_coco_eval"):
        t = time.perf_counter()
        stats[backend] = evaluate.coco_evaluate(gt, results, ["bbox", "segm"], log=io.StringIO(), backend=backend)
        seconds[backend] = time.perf_counter() - t
        print(f"{backend}: {seconds[backend]:.1f} s (bbox + segm)", flush=True)
    a, b = stats["pycocotools"], stats["faster_coco_eval"]
    same = all((math.isnan(a[t][n]) and math.isnan(b[t][n])) or abs(a[t][n] - b[t][n]) < 1e-9 for t in a for n in a[t])
    print(
        f"ratio pycocotools / faster_coco_eval: {seconds['pycocotools'] / seconds['faster_coco_eval']:.2f}; "
        f"the 12 stats of bbox and segm {'agree' if same else 'DIFFER'} (bbox AP {a['bbox']['AP']:.3f} vs "
        f"{b['bbox']['AP']:.3f})"
    )


if __name__ == "__main__":
    main()
