"""The checks of one COCO annotation against its image record (rethink.validate_data runs them on
every annotation of a split when its dataset is prepared; its docstring says what each checks, and
PROBLEMS there names each kind): category, keypoints, bbox, iscrowd, area, and the segmentation's
polygons or RLE (rle_string_runs decodes pycocotools' compressed RLE strings)."""

from __future__ import annotations

import math

BOX_TOLERANCE_PX = 2.0
BOX_TOLERANCE_FRAC = 0.01


def is_number(v) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def are_numbers(values: list) -> bool:
    """All finite int/float (no bool); the sum is finite iff every value is (short of ~1e308)."""
    return all(type(v) in (int, float) for v in values) and math.isfinite(sum(values))


def is_int(v) -> bool:
    """An int (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def annotation_problems(a: dict, im: dict, cat_ids: dict, masks: bool):
    """(kind, field, message) of each problem of one annotation of image record `im` (`cat_ids`:
    category id -> number of keypoints of that category)."""
    W, H = im["width"], im["height"]
    if not (is_int(a.get("category_id")) and a["category_id"] in cat_ids):
        yield "category_unknown", "category_id", f"{a.get('category_id')!r} is not among the category ids"
    elif a.get("keypoints"):  # a category without keypoint names takes none (k = 0)
        kp, k = a["keypoints"], cat_ids[a["category_id"]]
        if not (isinstance(kp, list) and len(kp) == 3 * k and are_numbers(kp)):
            n = len(kp) if isinstance(kp, list) else type(kp).__name__
            yield "keypoints_malformed", "keypoints", f"{n} values, not 3 x {k} finite numbers (x, y, v per keypoint)"
    tx, ty = max(BOX_TOLERANCE_PX, BOX_TOLERANCE_FRAC * W), max(BOX_TOLERANCE_PX, BOX_TOLERANCE_FRAC * H)
    box = a.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and are_numbers(box)) or box[2] < 0 or box[3] < 0:
        yield "bbox_malformed", "bbox", f"{box!r} is not [x, y, w, h] of 4 finite numbers with w, h >= 0"
    else:
        x, y, w, h = box
        if x < -tx or y < -ty or x + w > W + tx or y + h > H + ty:
            yield "bbox_outside", "bbox", f"{box!r} extends past the {W}x{H} image"
    if a.get("iscrowd", 0) not in (0, 1) or isinstance(a.get("iscrowd"), (bool, float)):
        yield "iscrowd_malformed", "iscrowd", f"{a.get('iscrowd')!r} is not 0 or 1"
    if not (is_number(a.get("area")) and a["area"] >= 0):
        yield "area_malformed", "area", f"{a.get('area')!r} is not a finite number >= 0"
    seg = a.get("segmentation")
    if not seg:
        if masks and not a.get("iscrowd", 0):
            yield (
                "segmentation_missing",
                "segmentation",
                (f"{seg!r}: none, while this is a mask set (other non-crowd annotations have one)"),
            )
    elif isinstance(seg, list):
        yield from polygon_problems(seg, W, H, tx, ty)
    elif isinstance(seg, dict):
        yield from rle_problems(seg, W, H)
    else:
        yield (
            "polygon_malformed",
            "segmentation",
            f"a {type(seg).__name__}, neither polygons (a list) nor an RLE (a dict)",
        )


def polygon_problems(seg: list, W: int, H: int, tx: float, ty: float):
    """The first problem of a segmentation's polygons (image W x H, tolerance tx, ty px), if any."""
    for k, poly in enumerate(seg):
        if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 and are_numbers(poly)):
            n = len(poly) if isinstance(poly, list) else type(poly).__name__
            yield (
                "polygon_malformed",
                f"segmentation[{k}]",
                (f"polygon of {n} values: not an even number >= 6 of finite numbers"),
            )
            break
        # pycocotools rasterises a polygon along its edges: a point far outside the image costs
        # memory in proportion to its distance (1e10 px exhausts any machine)
        xs, ys = poly[0::2], poly[1::2]
        if min(xs) < -tx or min(ys) < -ty or max(xs) > W + tx or max(ys) > H + ty:
            yield (
                "polygon_outside",
                f"segmentation[{k}]",
                (f"a point of x {min(xs)}..{max(xs)}, y {min(ys)}..{max(ys)} lies past the {W}x{H} image"),
            )
            break


def rle_problems(seg: dict, W: int, H: int):
    """The problems of an RLE segmentation: its counts, and its size against the W x H image."""
    counts, size = seg.get("counts"), seg.get("size")
    if not (isinstance(counts, str) or (isinstance(counts, list) and all(is_int(c) and c >= 0 for c in counts))):
        yield "rle_malformed", "segmentation.counts", "not an RLE string or a list of non-negative integers"
    else:
        runs = counts if isinstance(counts, list) else rle_string_runs(counts)
        if runs is None:
            yield "rle_malformed", "segmentation.counts", "not a compressed RLE string (pycocotools' encoding)"
        elif sum(runs) != H * W:
            yield (
                "rle_malformed",
                "segmentation.counts",
                f"the runs sum to {sum(runs)}, not {H}x{W} = {H * W} pixels",
            )
    if size != [H, W]:
        yield "rle_malformed", "segmentation.size", f"{size!r} is not the image's [height, width] [{H}, {W}]"


def rle_string_runs(s: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' maskApi.c rleFrString: 5 bits
    per character from '0', a continuation bit, runs after the second stored as differences), or
    None if it is not one (a character out of range, a number cut off, a negative run)."""
    runs: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return runs
