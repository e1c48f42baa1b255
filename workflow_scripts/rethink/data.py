# over 400 lines: its docstring is the dataset manifest's specification; the code alone is well under 400 lines
"""Datasets: what the prepare_data and prepare_pretrain_data rules make, and how others read it.

Every instance dataset (the detection/segmentation sets that runs train and evaluate on) ends
as COCO-format JSON plus a *manifest*, ``<workdir>/data/<name>/dataset.json``::

    {"schema": "rethink-dataset/1",
     "name": "synthetic", "kind": "coco", "source_kind": "synthetic" | "coco" | "voc",
     "train": {"images": "train", "annotations": "train.json"},   # see below: paths
     "val":   {"images": "val", "annotations": "val.json"},
     "categories": [{"id": 1, "name": "circle"}, ...],   # + "keypoints", "skeleton" for person
     "num_train_images": 64, "num_val_images": 16,
     "keypoints": false,      # annotations carry 17 COCO keypoints (person only)
     "masks": true}           # annotations carry segmentation polygons/RLE (false: VOC, boxes-only coco)

A path in the manifest that lies inside the manifest's own folder is written relative to that
folder (so a copied or moved work tree reads its own copy of the data, never the original's);
any other path (a COCO set on disk) is absolute. :func:`load_manifest` returns every path
absolute. An image's file is ``<split.images>/<image.file_name>``. The manifest is written last and
atomically, so a dataset
whose manifest exists is complete.

Kinds (config ``datasets.<name>.kind``):

synthetic
    Made here, seeded by ``seed``: ``train_size``/``val_size`` PNG images whose sides are drawn
    from ``image_size`` [min, max], each with 1..``max_objects`` non-overlapping objects. Category
    k has one shape and one colour (SHAPES, PALETTE: 1 circle/red, 2 rectangle/green,
    3 triangle/blue, 4 pentagon, 5 star, 6 hexagon, 7 ellipse, 8 diamond; more categories
    reuse shapes with further colours), drawn with per-object colour jitter and pixel noise on a
    smooth noisy background. Objects span 10%-60% of the shorter image side (COCO "small" and
    "medium", a few "large"). Segmentation is polygons; ``area`` is the pixel area of the
    rasterised polygon (COCO's convention) and the image pixels are painted from exactly that
    mask; ``bbox`` is the polygon's extent. Image i of a split depends only on (seed, split, i).
    With ``keypoints: true`` the set is a person-keypoint set instead: one category "person" with
    COCO's 17 keypoints and skeleton (rethink.synthetic.KEYPOINT_NAMES, SKELETON); each person is a stick figure
    (head disc, torso, two-segment limbs) whose keypoints are the joints, all visible (v=2), and
    ``categories`` is ignored. This is the format of COCO's person_keypoints_*.json, so keypoint
    models and pycocotools' default OKS sigmas apply unchanged.

coco
    COCO on disk: ``root`` + ``train_images``, ``train_annotations``, ``val_images``,
    ``val_annotations`` (relative to root, or absolute). ``num_images`` takes a seeded subset of
    the train images (``subset_seed``): the train image ids, sorted, are permuted by
    ``numpy.random.default_rng(subset_seed)`` and the first ``num_images`` are kept, with their
    annotations; categories and val are unchanged. Because the permutation depends only on the
    seed and the id list, subsets of one seed are nested (the 1k subset lies inside the 3.5k
    one). Images without annotations can be drawn (as in the full set; training loaders drop
    them). Without ``num_images`` the manifest points at the original JSON, unless validation
    changed a split (then ``train.json`` / ``val.json`` in the dataset's folder).

Kinds coco and voc are checked when prepared (rethink.validate_data: image files and sizes,
ids, categories, boxes, segmentations; ``on_bad_data`` error | skip; ``validation.json`` beside
the manifest). A coco set's ``masks`` is true when its non-crowd annotations have segmentations,
false for a boxes-only set; a mask task on a set without masks is refused when training starts
(:func:`check_task`). With ``num_images`` only the subset's images are checked.

voc
    PASCAL VOC XML converted to COCO JSON by rethink.voc (boxes only, the 20 VOC classes in VOC_CLASSES order,
    ids 1..20). ``train_annotations`` / ``val_annotations`` name image-set lists as
    ``"<year dir>/<list>"`` (a string or a list of them), e.g. ``["VOC2007/trainval",
    "VOC2012/train"]`` reads ``root/VOC2007/ImageSets/Main/trainval.txt``; ``train_images`` /
    ``val_images`` are not used (images are ``<year dir>/JPEGImages/<id>.jpg`` under root, which
    is the manifest's image dir). Boxes follow detectron2's VOC loader: [xmin - 1, ymin - 1,
    xmax, ymax] as [x, y, w, h]. Image ids are 1..N in list order; the VOC id is kept as
    ``voc_id``. Difficult objects are kept for training (as detectron2 does) with
    ``iscrowd: 0`` and ``difficult: 1``; the evaluation (rethink.evaluate) ignores them, as the
    VOC protocol does.

classification (pre-training set, prepare_pretrain_data)
    ``train_size`` square RGB images of side ``image_size``, one object each from the same
    vocabulary (class c = category c + 1's shape and colour, on the same background), label
    ``i % classes``. Stored as one ``images.npz`` (``images`` uint8 N x 3 x H x W, ``labels``
    int64) beside the manifest ``{"schema", "name", "kind": "classification", "images_file",
    "num_images", "classes", "class_names", "image_size", "seed"}``; read it with
    :func:`load_classification`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import validate_data
from .atomic import atomic_file, write_json_atomic
from .synthetic import (
    category_name,
    classification_image,
    instance_categories,
    make_synthetic_split,
)
from .validate_data import DatasetError  # defined there, below this module (one import direction)
from .voc import VOC_CLASSES, image_set_entry, voc_as_coco

SCHEMA = "rethink-dataset/1"


def prepare_synthetic(spec: dict, out_dir: Path) -> dict:
    lo_hi = spec.get("image_size", [128, 192])
    if len(lo_hi) != 2 or min(lo_hi) < 16:
        raise DatasetError(f"datasets.{spec['name']}.image_size: {lo_hi!r} must be [min, max], each >= 16 pixels")
    spec = {"train_size": 64, "val_size": 16, "categories": 3, "max_objects": 4, "seed": 0, **spec, "image_size": lo_hi}
    splits = {}
    for split in ("train", "val"):
        images, ann, n = make_synthetic_split(spec, split, out_dir, SCHEMA)
        splits[split] = {"images": str(images.resolve()), "annotations": str(ann.resolve()), "n": n}
    return _manifest(spec, splits, instance_categories(spec), "synthetic", masks=True)


def _manifest(spec, splits, categories, source_kind, masks) -> dict:
    return {
        "schema": SCHEMA,
        "name": spec["name"],
        "kind": "coco",
        "source_kind": source_kind,
        "train": {"images": splits["train"]["images"], "annotations": splits["train"]["annotations"]},
        "val": {"images": splits["val"]["images"], "annotations": splits["val"]["annotations"]},
        "categories": [{k: c[k] for k in ("id", "name", "keypoints", "skeleton") if k in c} for c in categories],
        "num_train_images": int(splits["train"]["n"]),
        "num_val_images": int(splits["val"]["n"]),
        "keypoints": bool(spec.get("keypoints", False)),
        "masks": bool(masks),
    }


# ----------------------------------------------------------------------------- classification
def prepare_classification(spec: dict, out_dir: Path) -> dict:
    n, classes, size = int(spec.get("train_size", 1000)), int(spec.get("classes", 10)), int(spec.get("image_size", 64))
    seed = int(spec.get("seed", 0))
    if size < 16:
        raise DatasetError(f"inits.{spec['name'].removeprefix('pretrain-')}.image_size: {size} is below 16 pixels")
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    for i in range(n):
        images[i], labels[i] = classification_image(seed, i, classes, size)
    path = out_dir / "images.npz"
    with atomic_file(path, "wb") as f:
        np.savez(f, images=images, labels=labels)
    return {
        "schema": SCHEMA,
        "name": spec["name"],
        "kind": "classification",
        "images_file": str(path.resolve()),
        "num_images": n,
        "classes": classes,
        "class_names": [category_name(k) for k in range(1, classes + 1)],
        "image_size": size,
        "seed": seed,
    }


def load_classification(manifest):
    """(images uint8 tensor N x 3 x H x W, labels int64 tensor N) of a classification manifest
    (a dict, or the path of its dataset.json)."""
    import torch

    if not isinstance(manifest, dict):
        manifest = load_manifest(manifest)
    if manifest.get("kind") != "classification":
        raise DatasetError(f"dataset {manifest.get('name')!r}: kind is {manifest.get('kind')!r}, not classification")
    path = manifest["images_file"]
    try:
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read the classification images ({e})") from None
    if len(images) != manifest["num_images"]:
        raise DatasetError(f"{path}: holds {len(images)} images, the manifest says num_images {manifest['num_images']}")
    return torch.from_numpy(images), torch.from_numpy(labels)


# ----------------------------------------------------------------------------- COCO
def _resolve(root: str | None, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() or root is None else Path(root) / p


def check_dataset_paths(name: str, spec: dict) -> list[str]:
    """Problems with the on-disk inputs of dataset `name` (config entry `spec`), one line each,
    naming the config field and the path; [] when it can be prepared (synthetic: always)."""
    kind = spec.get("kind")
    field = f"datasets.{name}"
    problems: list[str] = []
    if kind == "synthetic":
        return problems
    root = spec.get("root")
    if not root:
        return [f"{field}.root: required for kind {kind}"]
    if not Path(root).is_dir():
        return [f"{field}.root: folder {root} does not exist (cwd {os.getcwd()})"]
    if kind == "coco":
        for key, want_dir in (
            ("train_images", True),
            ("train_annotations", False),
            ("val_images", True),
            ("val_annotations", False),
        ):
            rel = spec.get(key)
            if not rel:
                problems.append(f"{field}.{key}: required for kind coco")
                continue
            if not isinstance(rel, str):
                problems.append(f"{field}.{key}: must be one path for kind coco, got {rel!r}")
                continue
            p = _resolve(root, rel)
            if want_dir and not p.is_dir():
                problems.append(f"{field}.{key}: folder {p} does not exist")
            elif not want_dir and not p.is_file():
                problems.append(f"{field}.{key}: file {p} does not exist")
    elif kind == "voc":
        for key in ("train_annotations", "val_annotations"):
            lists = spec.get(key)
            if not lists:
                problems.append(f"{field}.{key}: required for kind voc (e.g. VOC2007/trainval)")
                continue
            for entry in [lists] if isinstance(lists, str) else lists:
                try:
                    year, lst = image_set_entry(entry)
                except DatasetError as e:
                    problems.append(f"{field}.{key}: {e}")
                    continue
                p = Path(root) / year / "ImageSets" / "Main" / f"{lst}.txt"
                if not p.is_file():
                    problems.append(f"{field}.{key}: image-set list {p} (from {entry!r}) does not exist")
    else:
        problems.append(f"{field}.kind: unknown kind {kind!r}")
    return problems


def subset_image_ids(image_ids, num_images: int, seed: int) -> list[int]:
    """The seeded subset: sorted ids permuted by default_rng(seed), first `num_images`, sorted."""
    ids = np.array(sorted(int(i) for i in image_ids), dtype=np.int64)
    perm = np.random.default_rng(int(seed)).permutation(len(ids))
    return sorted(int(i) for i in ids[perm[:num_images]])


def _load_json(path: Path, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{what}: {path} is not valid JSON ({e})") from None


def _load_coco(path: Path, field: str) -> dict:
    data = _load_json(path, field)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise DatasetError(f"{field}: {path} lacks the COCO field {key!r}")
    return data


def prepare_coco(spec: dict, out_dir: Path) -> dict:
    name = spec["name"]
    problems = check_dataset_paths(name, spec)
    if problems:
        raise DatasetError("; ".join(problems))
    root = spec["root"]
    paths = {s: _resolve(root, spec[f"{s}_annotations"]).resolve() for s in ("train", "val")}
    data = _load_coco(paths["train"], f"datasets.{name}.train_annotations")
    num = spec.get("num_images")
    if num is not None:
        n_train = len(data["images"])
        if num > n_train:
            raise DatasetError(
                f"datasets.{name}.num_images: {num} is more than the {n_train} images of {paths['train']}"
            )
        keep = set(subset_image_ids([im["id"] for im in data["images"]], num, spec.get("subset_seed", 0)))
        sub = {
            **{k: v for k, v in data.items() if k not in ("images", "annotations")},
            "images": [im for im in data["images"] if im["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        }
        sub.setdefault("info", {})
        sub["info"] = {
            **sub["info"],
            "rethink_subset": {
                "source": str(paths["train"]),
                "num_images": num,
                "subset_seed": spec.get("subset_seed", 0),
            },
        }
        data = sub
    val = _load_coco(paths["val"], f"datasets.{name}.val_annotations")
    images = {s: _resolve(root, spec[f"{s}_images"]).resolve() for s in ("train", "val")}
    checked, masks = validate_data.validate(
        name,
        {"train": (data, images["train"], paths["train"]), "val": (val, images["val"], paths["val"])},
        data["categories"],
        spec.get("on_bad_data", "error"),
        out_dir,
    )
    # the prepared JSON: a subset, or a split with something dropped or renumbered; else the original
    written = {
        "train": out_dir / (f"train_n{num}_s{spec.get('subset_seed', 0)}.json" if num is not None else "train.json"),
        "val": out_dir / "val.json",
    }
    splits = {}
    for s in ("train", "val"):
        coco, changed = checked[s]
        ann = paths[s]
        if changed or (s == "train" and num is not None):
            ann = written[s]
            write_json_atomic(ann, coco, separators=(",", ":"))
        splits[s] = {"images": str(images[s]), "annotations": str(ann.resolve()), "n": len(coco["images"])}
    return _manifest(spec, splits, data["categories"], "coco", masks=masks)


def check_task(manifest: dict, task: str) -> None:
    """Refuse a task the dataset cannot train: a mask task on a set without masks (a boxes-only
    COCO set, VOC). Raises DatasetError naming the dataset and the task."""
    if task in ("mask_rcnn", "cascade_mask_rcnn") and not manifest.get("masks", True):
        raise DatasetError(
            f"dataset {manifest.get('name')!r} ({manifest.get('source_kind')}) has no masks (not every non-crowd "
            f"annotation has a segmentation; see validation.json beside its manifest): task {task} needs them; "
            f"use task faster_rcnn, or a dataset with masks"
        )


# ----------------------------------------------------------------------------- VOC
def prepare_voc(spec: dict, out_dir: Path) -> dict:
    name = spec["name"]
    problems = check_dataset_paths(name, spec)
    if problems:
        raise DatasetError("; ".join(problems))
    root = Path(spec["root"]).resolve()
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(VOC_CLASSES)]
    # problems are named by the image-set lists the split was converted from
    converted = {
        s: (
            voc_as_coco(root, spec[f"{s}_annotations"], f"datasets.{name}.{s}_annotations", SCHEMA),
            root,
            f"{root} {spec[f'{s}_annotations']}",
        )
        for s in ("train", "val")
    }
    checked, _ = validate_data.validate(name, converted, cats, spec.get("on_bad_data", "error"), out_dir, masks=False)
    splits = {}
    for split, (coco, _) in checked.items():
        path = out_dir / f"{split}.json"
        write_json_atomic(path, coco, sort_keys=True, separators=(",", ":"))
        splits[split] = {"images": str(root), "annotations": str(path.resolve()), "n": len(coco["images"])}
    return _manifest(spec, splits, cats, "voc", masks=False)


# ----------------------------------------------------------------------------- entry points
def prepare(spec: dict) -> dict:
    """Make the dataset of a prepare_data / prepare_pretrain_data spec; write its manifest
    (spec["output"]) last, atomically. Returns the manifest. A rehearsal's reads no data (rethink.rehearsal)."""
    if spec.get("rehearsal"):
        from .rehearsal import prepare_data

        return prepare_data(spec)
    out = Path(spec["output"])
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = spec.get("kind")
    if kind == "synthetic":
        manifest = prepare_synthetic(spec, out_dir)
    elif kind in ("classification", "pretrain"):
        manifest = prepare_classification(spec, out_dir)
    elif kind == "coco":
        manifest = prepare_coco(spec, out_dir)
    elif kind == "voc":
        manifest = prepare_voc(spec, out_dir)
    else:
        raise DatasetError(f"datasets.{spec.get('name')}.kind: unknown kind {kind!r}")
    write_json_atomic(out, _paths(manifest, lambda p: _inside(p, out_dir.resolve())), indent=1, sort_keys=True)
    return manifest


_PATH_FIELDS = (
    ("images_file",),
    ("train", "images"),
    ("train", "annotations"),
    ("val", "images"),
    ("val", "annotations"),
)


def _paths(manifest: dict, fn) -> dict:
    """A copy of `manifest` with `fn` applied to each of its path fields."""
    m = json.loads(json.dumps(manifest))
    for keys in _PATH_FIELDS:
        node = m
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            node[keys[-1]] = fn(node[keys[-1]])
    return m


def _inside(path: str, folder: Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p)


def load_manifest(path) -> dict:
    """Read a dataset.json written by :func:`prepare`; errors name the file and the field."""
    path = Path(path)
    try:
        with open(path) as f:
            m = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no dataset manifest (run the prepare_data rule)") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or "kind" not in m:
        raise DatasetError(f"{path}: not a dataset manifest (no 'kind')")
    need = (
        ["images_file", "num_images", "classes"]
        if m["kind"] == "classification"
        else ["train", "val", "categories", "source_kind"]
    )
    missing = [k for k in need if k not in m]
    if missing:
        raise DatasetError(f"{path}: manifest lacks {', '.join(missing)}")
    here = path.parent.resolve()
    return _paths(m, lambda p: str(here / p) if not os.path.isabs(p) else p)
