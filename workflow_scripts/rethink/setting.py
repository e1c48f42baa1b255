"""A setting: (task, backbone, norm, data, variant), the key of a table's row group and of a
figure's panel (rethink.seeds.GROUP); its label, its place in the paper's order, and the inits in
the paper's order (random first). Shared by rethink.tables, rethink.figures and rethink.claims."""

from __future__ import annotations

import re

RANDOM = "random"


def setting_label(task, backbone, norm, data, variant) -> str:
    """The setting's name in tables and figures, e.g. R50 GN coco_full: the task first unless it is
    Mask R-CNN, the variant last."""
    parts = [backbone, norm, data]
    if task not in ("mask_rcnn",):
        parts.insert(0, task)
    if variant:
        parts.append(variant)
    return " ".join(parts)


def _natural(s: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s)))


def group_order(key: tuple) -> tuple:
    """(task, backbone, norm, data, variant) in the paper's order: Mask R-CNN first, then by data,
    norm (GN before SyncBN), backbone (R50 before R101), variant."""
    task, backbone, norm, data, variant = key
    return (task != "mask_rcnn", task, _data_order(data), _natural(norm), _natural(backbone), variant)


def _data_order(data: str) -> tuple:
    """coco_full first, then COCO subsets from the largest (coco_35k, coco_10k, coco_3_5k, coco_1k)."""
    if data == "coco_full":
        return (0, 0.0, "")
    m = re.fullmatch(r"coco_(\d+)(?:_(\d+))?k", data)
    if m:
        return (1, -float(f"{m.group(1)}.{m.group(2) or 0}"), data)
    return (2, 0.0, _natural(data))


def inits_in_order(names) -> list[str]:
    """Random init first, then the pre-trained inits by name."""
    names = set(names)
    return ([RANDOM] if RANDOM in names else []) + sorted(names - {RANDOM})
