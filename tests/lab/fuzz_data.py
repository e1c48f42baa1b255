# over 400 lines: the data fuzzer in one piece: its strategies and its check of one example
"""The data fuzzer's parts, shared by tests/test_fuzz_data.py (a bounded, seeded run in CI) and
bench/fuzz.py (the long campaign): Hypothesis strategies that mutate a small COCO set (its JSON: ids,
bbox, polygons, RLEs, keypoints, categories, sizes; its image files: truncated, not images, EXIF
orientation, another size, gone) and the check of one example through prepare_data (rethink.data,
whose validation is rethink.validate_data), with on_bad_data error and skip.

Outcomes per mode: "accepted" (nothing wrong), "skipped" (skip dropped what validation.json counts),
"refused" (a DatasetError naming the annotation file, or the dataset's field; for a problem of an
image, the image and the field), "named-late" (accepted, then an image whose pixels are damaged after
a readable header is named when a loader reads it: prepare reads headers only, README), or a failure:
"traceback" (any other exception), "unclear" (a refusal that names no file or field), "late" (an
accepted set that a loader, a training step or an evaluation then fails on), "uncounted" (skip dropped
something that validation.json does not count), "memory" (MemoryError under bench/fuzz.py's limit)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image

FAILURES = ("traceback", "unclear", "late", "uncounted", "memory")
CATS = [
    {"id": 1, "name": "cup", "supercategory": "x"},
    {"id": 7, "name": "dog", "supercategory": "x"},
    {"id": 3, "name": "person", "supercategory": "x", "keypoints": ["left_hand", "right_hand"], "skeleton": []},
]
SIZES = {"a.jpg": (64, 48), "b.png": (40, 56), "c.jpg": (48, 48), "v.jpg": (64, 48), "w.png": (32, 40)}


def _poly(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _ann(aid, image_id, cat, box, **kw):
    x, y, w, h = box
    return {
        "id": aid,
        "image_id": image_id,
        "category_id": cat,
        "bbox": [x, y, w, h],
        "area": float(w * h),
        "iscrowd": 0,
        "segmentation": _poly(*box),
        **kw,
    }


def _rle(h, w):
    from pycocotools import mask as mask_util

    m = np.zeros((h, w), dtype=np.uint8, order="F")
    m[2:12, 3:20] = 1
    r = mask_util.encode(m)
    return {"size": [h, w], "counts": r["counts"].decode()}


def base_set() -> dict:
    """{"train": COCO dict, "val": COCO dict}: polygons, a compressed and an uncompressed crowd RLE,
    keypoints of a keypoint category, non-contiguous category ids."""

    def imgs(names, first):
        return [
            {"id": first + i, "file_name": n, "width": SIZES[n][0], "height": SIZES[n][1]} for i, n in enumerate(names)
        ]

    train = {
        "info": {},
        "images": imgs(["a.jpg", "b.png", "c.jpg"], 1),
        "categories": copy.deepcopy(CATS),
        "annotations": [
            _ann(1, 1, 1, [2, 3, 20, 20]),
            _ann(2, 1, 7, [30, 5, 30, 15]),
            _ann(3, 1, 7, [0, 0, 20, 12], iscrowd=1, segmentation=_rle(48, 64)),
            _ann(4, 2, 3, [5, 5, 20, 30], keypoints=[8, 10, 2, 20, 30, 1]),
            _ann(
                5, 3, 1, [1, 1, 40, 40], iscrowd=1, segmentation={"size": [48, 48], "counts": [100, 300, 48 * 48 - 400]}
            ),
            _ann(6, 3, 7, [10, 10, 20, 20]),
        ],
    }
    val = {
        "info": {},
        "images": imgs(["v.jpg", "w.png"], 10),
        "categories": copy.deepcopy(CATS),
        "annotations": [_ann(1, 10, 1, [4, 4, 40, 30]), _ann(2, 11, 7, [2, 2, 20, 30])],
    }
    return {"train": train, "val": val}


BASE = base_set()
NASTY = st.one_of(
    st.sampled_from(
        [
            0,
            -1,
            1,
            2**31,
            2**63,
            -(2**63),
            10**30,
            1.5,
            -0.0,
            float("nan"),
            float("inf"),
            float("-inf"),
            True,
            False,
            None,
            "",
            "1",
            "a.jpg",
            "../a.jpg",
            "/etc/passwd",
            "a b.jpg",
            "名前.png",
            "x\x00y",
            [],
            {},
            [1, 2],
            [0, 0, 0, 0],
            [1, 1, 1e308, 1e308],
            [-5, -5, 2, 2],
            [1, 2, 3],
            ["1", 2, 3, 4],
            [[1, 2, 3]],
            [[1, 2, 3, 4, 5, 6, 7]],
            [[0, 0, 1e300, 0, 1e300, 1e300]],
            [[]],
            [[float("nan")] * 6],
            {"counts": "garbage!", "size": [48, 64]},
            {"counts": "", "size": [48, 64]},
            {"counts": [1, 2], "size": [48, 64]},
            {"counts": [-1, 3073], "size": [48, 64]},
            {"counts": "PPP1", "size": [2**31, 2]},
            {"counts": [3072], "size": [48, 64]},
            {"size": [48, 64]},
            {"counts": None},
        ]
    ),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.floats(-1e4, 1e4), max_size=8),
)
FILE_EDITS = ["truncate_header", "truncate_pixels", "text", "empty", "gone", "exif6", "resize", "directory", "swap"]


@dataclass
class DataExample:
    coco: dict
    files: dict = field(default_factory=dict)  # file name -> edit
    mutations: list = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(self.mutations)


def _paths(node, prefix=()):
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out += _paths(v, prefix + (k,))
    return out


# the fields a targeted edit picks from, per section of a COCO split
TARGETED_FIELDS = {
    "annotations": ["id", "image_id", "category_id", "bbox", "area", "segmentation", "keypoints", "iscrowd"],
    "images": ["id", "file_name", "width", "height"],
    "categories": ["id", "keypoints", "name"],
}


@st.composite
def examples(draw):
    coco = copy.deepcopy(BASE)
    ex = DataExample(coco)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["json", "json", "json", "file", "targeted"]))
        if kind == "file":
            name = draw(st.sampled_from(sorted(SIZES)))
            ex.files[name] = draw(st.sampled_from(FILE_EDITS))
            ex.mutations.append(f"file {name}: {ex.files[name]}")
            continue
        split = draw(st.sampled_from(["train", "val"]))
        edit = _targeted_edit if kind == "targeted" else _json_edit
        done = edit(draw, coco, split)
        if done is not None:
            ex.mutations.append(done)
    return ex


def _targeted_edit(draw, coco: dict, split: str) -> str | None:
    """A field the checks are about, given a value of the wrong shape, deleted or copied from another
    record; returns what was done (None: nothing to edit)."""
    section = draw(st.sampled_from(["annotations", "images", "categories"]))
    items = coco[split].get(section)
    if not isinstance(items, list) or not items:
        return None
    item = draw(st.sampled_from(items))
    if not isinstance(item, dict):
        return None
    key = draw(st.sampled_from(TARGETED_FIELDS[section]))
    how = draw(st.sampled_from(["set", "delete", "copy"]))
    if how == "delete":
        item.pop(key, None)
    elif how == "copy":  # another record's value: duplicate ids, a box of another image
        other = draw(st.sampled_from(items))
        if isinstance(other, dict) and key in other:
            item[key] = copy.deepcopy(other[key])
    else:
        item[key] = copy.deepcopy(draw(NASTY))  # sampled_from gives one object: a copy per use
    return f"{split}.{section}[].{key}: {how}"


def _json_edit(draw, coco: dict, split: str) -> str | None:
    """Any node of the split's JSON set to a nasty value, deleted, duplicated or emptied; returns what
    was done (None: nothing to edit)."""
    paths = _paths(coco[split])
    if not paths:
        return None
    path = draw(st.sampled_from(paths))
    node = coco[split]
    for p in path[:-1]:
        node = node[p]
    op = draw(st.sampled_from(["set", "delete", "duplicate", "empty"]))
    if op == "delete":
        del node[path[-1]]
    elif op == "duplicate" and isinstance(node, list):
        node.append(copy.deepcopy(node[path[-1]]))
    elif op == "empty" and isinstance(node[path[-1]], (list, dict)):
        node[path[-1]] = type(node[path[-1]])()
    else:
        node[path[-1]] = copy.deepcopy(draw(NASTY))
    return f"{split}.{'.'.join(map(str, path))}: {op}"


def _write_images(folder: Path, edits: dict) -> None:
    for name, (w, h) in SIZES.items():
        path = folder / name
        im = Image.new("RGB", (w, h), (20, 120, 200))
        edit = edits.get(name)
        if edit == "resize":
            im = im.resize((w + 8, h))
        if edit == "exif6":
            exif = Image.Exif()
            exif[0x0112] = 6
            im.save(path, exif=exif) if name.endswith(".jpg") else im.save(path)
        elif edit == "swap":
            im.transpose(Image.Transpose.ROTATE_90).save(path)
        else:
            im.save(path)
        if edit in ("truncate_header", "truncate_pixels"):
            data = path.read_bytes()
            path.write_bytes(data[:12] if edit == "truncate_header" else data[: max(len(data) // 2, 100)])
        elif edit == "text":
            path.write_text("not an image\n")
        elif edit == "empty":
            path.write_bytes(b"")
        elif edit == "gone":
            path.unlink()
        elif edit == "directory":
            path.unlink()
            path.mkdir()


@dataclass
class Outcome:
    kind: str
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.kind in FAILURES


class Workspace:
    """A scratch folder for data examples; `run` checks one example with on_bad_data error and skip."""

    def __enter__(self):
        self.root = Path(tempfile.mkdtemp(prefix="fuzzdata-"))
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.root, ignore_errors=True)

    def run(self, ex: DataExample, train: bool = False):
        for mode in ("error", "skip"):
            folder = self.root / mode
            shutil.rmtree(folder, ignore_errors=True)
            yield f"prepare ({mode})", check(ex, folder, mode, train and mode == "skip")


def check(ex: DataExample, folder: Path, mode: str, train: bool) -> Outcome:
    from rethink import data
    from rethink.validate_data import REPORT, DatasetError

    root = folder / "coco"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    _write_images(root / "train", {n: e for n, e in ex.files.items() if n in ("a.jpg", "b.png", "c.jpg")})
    _write_images(root / "val", {n: e for n, e in ex.files.items() if n in ("v.jpg", "w.png")})
    for n in ("v.jpg", "w.png"):
        (root / "train" / n).unlink(missing_ok=True)
    for n in ("a.jpg", "b.png", "c.jpg"):
        p = root / "val" / n
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    ann = {s: root / "annotations" / f"{s}.json" for s in ("train", "val")}
    for s in ("train", "val"):
        ann[s].write_text(json.dumps(ex.coco[s], allow_nan=True))
    spec = {
        "kind": "coco",
        "root": str(root),
        "train_images": "train",
        "train_annotations": "annotations/train.json",
        "val_images": "val",
        "val_annotations": "annotations/val.json",
        "num_images": None,
        "subset_seed": 0,
        "on_bad_data": mode,
        "name": "fz",
        "output": str(folder / "data" / "fz" / "dataset.json"),
    }
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its summary line (the job log's)
            manifest = data.prepare(spec)
    except DatasetError as e:
        msg = str(e)
        named = str(ann["train"].resolve()) in msg or str(ann["val"].resolve()) in msg or "datasets.fz." in msg
        return Outcome("refused" if named and "Traceback" not in msg else "unclear", msg)
    except Exception as e:  # noqa: BLE001
        return Outcome(
            "memory" if isinstance(e, MemoryError) else "traceback", "".join(traceback.format_exception(e))[-3000:]
        )
    report = json.loads((folder / "data" / "fz" / REPORT).read_text())
    problems = sum(p["count"] for r in report["splits"].values() for p in r["problems"].values())
    dropped = sum(r["dropped"]["images"] + r["dropped"]["annotations"] for r in report["splits"].values())
    if dropped and not problems:
        return Outcome("uncounted", json.dumps(report["splits"])[:2000])
    kind = "skipped" if problems else "accepted"
    late = later(manifest, train)
    return late if late is not None else Outcome(kind)


def later(manifest: dict, train: bool) -> Outcome | None:
    """What training and evaluation do with an accepted set: every image decoded and every target
    built by the torchvision engine's loader (masks, keypoints), the ground truth evaluated against
    itself with pycocotools; with `train`, one training step of the tiny model and its evaluation."""
    from rethink import evaluate
    from rethink.data import DatasetError
    from rethink.engines import torchvision_data as tv

    try:
        keypoints = any(c.get("keypoints") for c in manifest["categories"])
        for split in ("train", "val"):
            s = tv.CocoSplit(manifest, split)
            for i in range(len(s)):
                try:
                    img = s.image(i)
                except DatasetError as e:
                    return Outcome("named-late", str(e))
                im = s.images[i]
                assert tuple(img.shape) == (3, im["height"], im["width"]), (img.shape, im)
                t = s.target(i, with_masks=manifest.get("masks", True), with_keypoints=keypoints)
                if "masks" in t:
                    assert tuple(t["masks"].shape[1:]) == (im["height"], im["width"]), (t["masks"].shape, im)
        gt = json.loads(Path(manifest["val"]["annotations"]).read_text())
        results = [
            {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"]
            if not a.get("iscrowd")
        ]
        evaluate.coco_evaluate(gt, results, ["bbox"], log=open("/dev/null", "w"))
        if train:
            _train_step(manifest)
    except Exception as e:  # noqa: BLE001
        return Outcome(
            "memory" if isinstance(e, MemoryError) else "late", "".join(traceback.format_exception(e))[-3000:]
        )
    return None


def _train_step(manifest: dict) -> None:
    """One training step of the tiny recipe on the set, and the model's predictions on its val split."""
    import torch

    from rethink import config
    from rethink.engines import torchvision_engine as tv

    cfg = config.load(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    recipe = {
        **cfg["recipe"],
        "task": "mask_rcnn" if manifest.get("masks", True) else "faster_rcnn",
        "batch": 1,
        "min_size_train": [48],
        "max_size_train": 64,
        "min_size_test": 48,
        "max_size_test": 64,
    }
    run = {"seed": 0, "backbone": "R18", "norm": "GN", "recipe": recipe, "num_classes": len(manifest["categories"])}
    eng = tv.TorchvisionEngine()
    model = eng.build_model(run, torch.device("cpu"), dataset=manifest)
    batch = next(iter(eng.train_stream(run, manifest, 0)))
    loss = sum(eng.losses(model, batch).values())
    loss.backward()
    model.eval()
    with torch.no_grad():
        eng.predict(model, run, manifest, torch.device("cpu"))
