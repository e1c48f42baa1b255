"""Aspect-ratio grouping: pixels a GPU processes per batch (padded to the batch's largest image,
then to a multiple of 32, as detectron2's ImageList does) over the pixels of the images themselves,
with rethink.sampling.GroupedBatches against the ungrouped rethink.sampling.batch_indices, in the same run.

Image sizes: "coco-like" = 2/3 landscape 640x480 and 1/3 portrait 480x640 with +-15% jitter
(COCO train2017 is mostly 640 on its long side, about a third portrait); "synthetic" = sides drawn
independently from [128, 192], as the workflow's synthetic sets. Each image is resized as in
training (shorter side 800, longer at most 1333), 2 images per GPU (the paper's 16 over 8 GPUs).

    python bench/bench_batches.py [--batches 4000] [--per-gpu 2] [--gpus 8]
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from rethink.sampling import GroupedBatches, aspect_groups, batch_indices


def resized(w: int, h: int, short: int = 800, cap: int = 1333) -> tuple[int, int]:
    s = short / min(w, h)
    if max(w, h) * s > cap:
        s = cap / max(w, h)
    return round(w * s), round(h * s)


def padded(sizes) -> int:
    w = math.ceil(max(s[0] for s in sizes) / 32) * 32
    h = math.ceil(max(s[1] for s in sizes) / 32) * 32
    return w * h * len(sizes)


def sizes_of(kind: str, n: int, rng) -> list[tuple[int, int]]:
    if kind == "coco-like":
        out = []
        for _ in range(n):
            w, h = (640, 480) if rng.random() < 2 / 3 else (480, 640)
            out.append((int(w * rng.uniform(0.85, 1.15)), int(h * rng.uniform(0.85, 1.15))))
        return out
    return [(int(rng.integers(128, 193)), int(rng.integers(128, 193))) for _ in range(n)]


def overhead(sizes, batches: int, per_gpu: int, gpus: int, grouped: bool) -> float:
    batch = per_gpu * gpus
    sampler = GroupedBatches(0, batch, aspect_groups(sizes)) if grouped else None
    real = pad = 0
    for i in range(batches):
        for rank in range(gpus):
            idx = sampler.indices(i, rank, gpus) if grouped else batch_indices(0, i, batch, len(sizes), rank, gpus)
            r = [resized(*sizes[j]) for j in idx]
            real += sum(w * h for w, h in r)
            pad += padded(r)
    return pad / real


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=4000)
    ap.add_argument("--per-gpu", type=int, default=2)
    ap.add_argument("--gpus", type=int, default=8)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    for kind in ("coco-like", "synthetic"):
        sizes = sizes_of(kind, 20000, rng)
        plain = overhead(sizes, a.batches, a.per_gpu, a.gpus, grouped=False)
        grouped = overhead(sizes, a.batches, a.per_gpu, a.gpus, grouped=True)
        print(
            f"{kind:>10}: pixels processed / image pixels: ungrouped {plain:.3f}, grouped {grouped:.3f}; "
            f"ratio grouped / ungrouped {grouped / plain:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
