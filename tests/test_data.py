# over 400 lines: every dataset kind's preparation and the weight staging, over shared builders of fake sets
"""Datasets (rethink.data) and weight staging (rethink.stage): synthetic sets, COCO subsets,
VOC conversion, the classification set, path checks, and the prepare_data CLI."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rethink import data, stage
from rethink import synthetic as syn

ROOT = Path(__file__).resolve().parents[1]

SYN = {
    "name": "syn",
    "kind": "synthetic",
    "train_size": 6,
    "val_size": 6,
    "image_size": [64, 96],
    "categories": 3,
    "max_objects": 3,
    "seed": 3,
}


def _make(tmp: Path, spec: dict, name: str | None = None) -> dict:
    name = name or spec["name"]
    return data.prepare({**spec, "name": name, "output": str(tmp / "data" / name / "dataset.json")})


@pytest.fixture(scope="module")
def synthetic(module_tmp):
    tmp = module_tmp("syn")
    return tmp, _make(tmp, SYN)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic(synthetic, tmp_path):
    tmp, m1 = synthetic
    m2 = _make(tmp_path, SYN)
    for split in ("train", "val"):
        assert Path(m1[split]["annotations"]).read_bytes() == Path(m2[split]["annotations"]).read_bytes()
        a, b = Path(m1[split]["images"]), Path(m2[split]["images"])
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        for p in a.iterdir():
            assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    m3 = _make(tmp_path, {**SYN, "seed": 4}, "other")
    assert Path(m3["train"]["annotations"]).read_bytes() != Path(m1["train"]["annotations"]).read_bytes()


def test_synthetic_manifest(synthetic):
    tmp, m = synthetic
    man = Path(tmp / "data" / "syn" / "dataset.json")
    on_disk = json.loads(man.read_text())
    assert on_disk["train"] == {"images": "train", "annotations": "train.json"}, on_disk["train"]
    assert data.load_manifest(man) == m
    assert m["kind"] == "coco" and m["source_kind"] == "synthetic" and m["masks"] and not m["keypoints"]
    assert m["num_train_images"] == 6 and m["num_val_images"] == 6
    assert [c["id"] for c in m["categories"]] == [1, 2, 3]
    assert [c["name"] for c in m["categories"]] == ["circle", "rectangle", "triangle"]
    for split in ("train", "val"):
        assert os.path.isabs(m[split]["images"]) and os.path.isabs(m[split]["annotations"])
    leftovers = [p.name for p in man.parent.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_copied_data_folder_reads_its_own_copy(synthetic, tmp_path):
    """Paths inside the dataset's folder are relative to its manifest: a copied work tree trains on
    the copy, and a copy whose original is gone still works."""
    import shutil

    tmp, m = synthetic
    shutil.copytree(tmp / "data" / "syn", tmp_path / "copy")
    c = data.load_manifest(tmp_path / "copy" / "dataset.json")
    for split in ("train", "val"):
        for field in ("images", "annotations"):
            assert Path(c[split][field]) == (tmp_path / "copy" / Path(m[split][field]).name).resolve()
            assert Path(c[split][field]).exists()
    cls = data.prepare(
        {
            "name": "pretrain-x",
            "kind": "classification",
            "train_size": 4,
            "classes": 2,
            "image_size": 16,
            "output": str(tmp_path / "cls" / "dataset.json"),
        }
    )
    shutil.move(tmp_path / "cls", tmp_path / "moved")
    assert (
        Path(data.load_manifest(tmp_path / "moved" / "dataset.json")["images_file"])
        == (tmp_path / "moved" / Path(cls["images_file"]).name).resolve()
    )


def test_synthetic_is_valid_coco(synthetic):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    _, m = synthetic
    for split in ("train", "val"):
        coco = COCO(m[split]["annotations"])
        assert len(coco.getImgIds()) == 6
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            w, h = info["width"], info["height"]
            assert 64 <= w <= 96 and 64 <= h <= 96
            pixels = np.asarray(Image.open(Path(m[split]["images"]) / info["file_name"]).convert("RGB"))
            assert pixels.shape == (h, w, 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert 1 <= len(anns) <= 3
            for a in anns:
                assert a["iscrowd"] == 0 and a["category_id"] in (1, 2, 3)
                for poly in a["segmentation"]:
                    xy = np.asarray(poly).reshape(-1, 2)
                    assert len(xy) >= 3
                    assert (xy >= 0).all() and (xy[:, 0] <= w).all() and (xy[:, 1] <= h).all()
                x, y, bw, bh = a["bbox"]
                assert bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w + 1e-6 and y + bh <= h + 1e-6
                mask = coco.annToMask(a).astype(bool)
                assert a["area"] > 16 and a["area"] == float(mask_utils.area(coco.annToRLE(a)))
                # the image is painted from exactly this mask, in the category's colour
                mean = pixels[mask].astype(float).mean(0)
                assert np.abs(mean - np.array(syn.category_color(a["category_id"]))).max() < 40


def test_synthetic_sizes_span_coco_area_ranges(tmp_path):
    m = _make(tmp_path, {**SYN, "train_size": 20, "val_size": 1, "image_size": [128, 160]})
    areas = [a["area"] for a in json.load(open(m["train"]["annotations"]))["annotations"]]
    assert min(areas) < 32**2 < max(areas)  # small and medium objects


def test_synthetic_keypoints(tmp_path):
    from pycocotools.coco import COCO

    m = _make(tmp_path, {**SYN, "keypoints": True, "image_size": [96, 128]}, "kp")
    assert m["keypoints"] and m["categories"][0]["name"] == "person"
    assert m["categories"][0]["keypoints"] == syn.KEYPOINT_NAMES
    coco = COCO(m["val"]["annotations"])
    for a in coco.loadAnns(coco.getAnnIds()):
        info = coco.loadImgs(a["image_id"])[0]
        kp = np.asarray(a["keypoints"]).reshape(-1, 3)
        assert kp.shape == (17, 3) and a["num_keypoints"] == 17 and (kp[:, 2] == 2).all()
        assert (kp[:, 0] >= 0).all() and (kp[:, 0] < info["width"]).all() and (kp[:, 1] < info["height"]).all()
        x, y, w, h = a["bbox"]
        assert (kp[:, 0] >= x - 1).all() and (kp[:, 0] <= x + w + 1).all()
        assert (kp[:, 1] >= y - 1).all() and (kp[:, 1] <= y + h + 1).all()


def test_synthetic_every_image_has_an_object(tmp_path):
    # tall and narrow images leave little room: large objects shrink rather than vanish
    for kp in (False, True):
        spec = {**SYN, "keypoints": kp, "image_size": [48, 160], "max_objects": 5}
        counts = [len(syn._synthetic_image(9, "train", i, spec)[1]) for i in range(60)]
        assert min(counts) >= 1 and max(counts) <= 5 and len(set(counts)) > 1


def test_synthetic_bad_image_size(tmp_path):
    with pytest.raises(data.DatasetError, match=r"datasets\.syn\.image_size"):
        _make(tmp_path, {**SYN, "image_size": [8, 12]})


# ----------------------------------------------------------------------------- classification
def test_classification_set(tmp_path):
    spec = {
        "name": "pretrain-imagenet",
        "kind": "classification",
        "train_size": 30,
        "classes": 3,
        "image_size": 32,
        "seed": 1,
        "iterations": 5,
        "batch": 4,
        "base_lr": 0.1,
    }
    m = _make(tmp_path, spec)
    assert m["kind"] == "classification" and m["num_images"] == 30 and m["classes"] == 3
    images, labels = data.load_classification(m)
    assert tuple(images.shape) == (30, 3, 32, 32) and str(images.dtype) == "torch.uint8"
    assert labels.tolist() == [i % 3 for i in range(30)]
    images2, _ = data.load_classification(str(tmp_path / "data" / "pretrain-imagenet" / "dataset.json"))
    assert (images == images2).all()
    # same vocabulary as the instance set: class 0 images are red-dominated (circle colour)
    red = images[labels == 0].float().mean((0, 2, 3))
    blue = images[labels == 2].float().mean((0, 2, 3))
    assert red[0] > blue[0] and blue[2] > red[2]
    other = _make(tmp_path, {**spec, "seed": 2}, "pretrain-other")
    assert not (data.load_classification(other)[0] == images).all()


# ----------------------------------------------------------------------------- COCO on disk
def _fake_coco(root: Path, n_images=50, with_val=True) -> dict:
    (root / "train2017").mkdir(parents=True)
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images = [
        {"id": int(i), "file_name": f"{i:012d}.jpg", "width": 640, "height": 480}
        for i in sorted(rng.choice(10**6, n_images, replace=False))
    ]
    anns = []
    for im in images:
        for _ in range(int(rng.integers(0, 4))):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": im["id"],
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [10, 10, 50, 40],
                    "area": 2000.0,
                    "iscrowd": 0,
                    "segmentation": [[10, 10, 60, 10, 60, 50, 10, 50]],
                }
            )
    cats = [{"id": i, "name": f"c{i}", "supercategory": "x"} for i in (1, 2, 3)]
    coco = {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}
    for i, im in enumerate(images):  # the files prepare checks (headers only: any pixels do)
        for folder in ("train2017", "val2017") if i < 5 else ("train2017",):
            Image.new("RGB", (640, 480), (i, 0, 0)).save(root / folder / im["file_name"], quality=50)
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(coco))
    if with_val:
        (root / "annotations" / "instances_val2017.json").write_text(
            json.dumps(
                {
                    **coco,
                    "images": images[:5],
                    "annotations": [a for a in anns if a["image_id"] in {im["id"] for im in images[:5]}],
                }
            )
        )
    return coco


def _coco_spec(root, **kw):
    return {
        "name": "coco_sub",
        "kind": "coco",
        "root": str(root),
        "train_images": "train2017",
        "train_annotations": "annotations/instances_train2017.json",
        "val_images": "val2017",
        "val_annotations": "annotations/instances_val2017.json",
        "num_images": None,
        "subset_seed": 0,
        "keypoints": False,
        **kw,
    }


def test_coco_subset(tmp_path):
    full = _fake_coco(tmp_path / "coco")
    m = _make(tmp_path, _coco_spec(tmp_path / "coco", num_images=10, subset_seed=7))
    sub = json.load(open(m["train"]["annotations"]))
    kept = {im["id"] for im in sub["images"]}
    assert len(kept) == 10 == m["num_train_images"]
    assert kept <= {im["id"] for im in full["images"]}
    assert sub["categories"] == full["categories"]
    assert sub["annotations"] == [a for a in full["annotations"] if a["image_id"] in kept]
    assert m["train"]["images"] == str((tmp_path / "coco" / "train2017").resolve())
    assert m["val"]["annotations"] == str((tmp_path / "coco" / "annotations" / "instances_val2017.json").resolve())
    assert m["num_val_images"] == 5 and m["source_kind"] == "coco"
    # seeded: same seed same subset, another seed another; subsets of one seed are nested
    ids = [im["id"] for im in full["images"]]
    assert data.subset_image_ids(ids, 10, 7) == sorted(kept)
    assert data.subset_image_ids(ids, 10, 8) != sorted(kept)
    assert set(data.subset_image_ids(ids, 4, 7)) <= kept
    # no subset: the manifest points at the original file
    m_all = _make(tmp_path, _coco_spec(tmp_path / "coco"), "coco_all")
    assert m_all["train"]["annotations"] == str(
        (tmp_path / "coco" / "annotations" / "instances_train2017.json").resolve()
    )
    assert m_all["num_train_images"] == 50


def test_coco_subset_too_large(tmp_path):
    _fake_coco(tmp_path / "coco", n_images=5)
    with pytest.raises(data.DatasetError, match=r"datasets\.coco_sub\.num_images: 6 is more than the 5"):
        _make(tmp_path, _coco_spec(tmp_path / "coco", num_images=6))


def test_coco_missing_paths_name_field_and_path(tmp_path):
    missing_root = tmp_path / "nowhere" / "coco"
    spec = _coco_spec(missing_root)
    problems = data.check_dataset_paths("coco_sub", spec)
    assert len(problems) == 1 and "datasets.coco_sub.root" in problems[0] and str(missing_root) in problems[0]
    with pytest.raises(data.DatasetError, match=r"datasets\.coco_sub\.root: .*nowhere/coco"):
        _make(tmp_path, spec)
    _fake_coco(tmp_path / "coco", with_val=False)
    problems = data.check_dataset_paths("coco_sub", _coco_spec(tmp_path / "coco"))
    assert problems == [
        f"datasets.coco_sub.val_annotations: file "
        f"{tmp_path / 'coco' / 'annotations' / 'instances_val2017.json'} does not exist"
    ]
    assert data.check_dataset_paths("syn", SYN) == []
    assert data.check_dataset_paths("x", {"kind": "coco"}) == ["datasets.x.root: required for kind coco"]
    # nothing was written for the failed dataset
    assert not (tmp_path / "data" / "coco_sub" / "dataset.json").exists()


# ----------------------------------------------------------------------------- VOC
VOC_XML = """<annotation><folder>{year}</folder><filename>{vid}.jpg</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJ = """<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>
<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def write_voc_tree(root: Path) -> dict:
    """A tiny VOC2007 + VOC2012 tree; returns {(year, id): [(name, difficult, box)]}."""
    content = {
        ("VOC2007", "000005"): [("chair", 0, (263, 211, 324, 339)), ("chair", 1, (5, 244, 67, 374))],
        ("VOC2007", "000007"): [("car", 0, (141, 50, 500, 330))],
        ("VOC2012", "2008_000008"): [("horse", 0, (53, 87, 471, 420)), ("person", 0, (158, 44, 289, 167))],
        ("VOC2012", "2008_000015"): [("bottle", 0, (270, 1, 378, 176)), ("bottle", 1, (57, 1, 164, 150))],
    }
    lists = {
        ("VOC2007", "trainval"): ["000005", "000007"],
        ("VOC2012", "train"): ["2008_000008"],
        ("VOC2012", "val"): ["2008_000015"],
    }
    for (year, vid), objs in content.items():
        d = root / year / "Annotations"
        d.mkdir(parents=True, exist_ok=True)
        objects = "".join(VOC_OBJ.format(name=n, d=dif, x0=b[0], y0=b[1], x1=b[2], y1=b[3]) for n, dif, b in objs)
        w, h = (500, 442) if vid == "2008_000008" else (500, 375)  # the horse reaches y 420
        (d / f"{vid}.xml").write_text(VOC_XML.format(year=year, vid=vid, w=w, h=h, objects=objects))
        (root / year / "JPEGImages").mkdir(exist_ok=True)
        Image.new("RGB", (w, h)).save(root / year / "JPEGImages" / f"{vid}.jpg", quality=50)
    for (year, lst), ids in lists.items():
        d = root / year / "ImageSets" / "Main"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{lst}.txt").write_text("\n".join(ids) + "\n")
    return content


VOC_SPEC = {
    "name": "voc",
    "kind": "voc",
    "train_annotations": ["VOC2007/trainval", "VOC2012/train"],
    "val_annotations": "VOC2012/val",
    "num_images": None,
    "subset_seed": 0,
    "keypoints": False,
}


def test_voc_conversion(tmp_path):
    from pycocotools.coco import COCO

    content = write_voc_tree(tmp_path / "VOCdevkit")
    m = _make(tmp_path, {**VOC_SPEC, "root": str(tmp_path / "VOCdevkit")})
    assert m["source_kind"] == "voc" and m["kind"] == "coco" and not m["masks"]
    assert [c["name"] for c in m["categories"]] == data.VOC_CLASSES and m["categories"][0]["id"] == 1
    assert m["num_train_images"] == 3 and m["num_val_images"] == 1
    assert m["train"]["images"] == str((tmp_path / "VOCdevkit").resolve())
    train = COCO(m["train"]["annotations"])
    names = [train.imgs[i]["file_name"] for i in sorted(train.imgs)]
    assert names == [
        "VOC2007/JPEGImages/000005.jpg",
        "VOC2007/JPEGImages/000007.jpg",
        "VOC2012/JPEGImages/2008_000008.jpg",
    ]
    first = train.loadAnns(train.getAnnIds(imgIds=1))
    assert [a["category_id"] for a in first] == [data.VOC_CLASSES.index("chair") + 1] * 2
    assert first[0]["bbox"] == [262.0, 210.0, 62.0, 129.0]  # [xmin-1, ymin-1, xmax-xmin+1, ymax-ymin+1]
    assert first[0]["area"] == 62.0 * 129.0
    assert [a["difficult"] for a in first] == [0, 1] and all(a["iscrowd"] == 0 for a in first)
    n_objs = sum(len(v) for k, v in content.items() if k[1] != "2008_000015")
    assert len(train.getAnnIds()) == n_objs
    val = COCO(m["val"]["annotations"])
    assert val.imgs[1]["voc_id"] == "VOC2012/2008_000015" and len(val.getAnnIds()) == 2


def test_voc_errors(tmp_path):
    write_voc_tree(tmp_path / "VOCdevkit")
    spec = {**VOC_SPEC, "root": str(tmp_path / "VOCdevkit"), "val_annotations": "VOC2012/test"}
    problems = data.check_dataset_paths("voc", spec)
    assert len(problems) == 1 and problems[0].startswith("datasets.voc.val_annotations: image-set list")
    assert "VOC2012/ImageSets/Main/test.txt" in problems[0]
    bad = tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "000007.xml"
    bad.write_text(bad.read_text().replace("<name>car</name>", "<name>spaceship</name>"))
    with pytest.raises(
        data.DatasetError, match=r"datasets\.voc\.train_annotations: .*000007\.xml: unknown VOC class 'spaceship'"
    ):
        _make(tmp_path, {**VOC_SPEC, "root": str(tmp_path / "VOCdevkit")})


# ----------------------------------------------------------------------------- CLI
def test_prepare_data_cli(tmp_path):
    spec = {**SYN, "train_size": 2, "val_size": 1, "output": str(tmp_path / "d" / "dataset.json")}
    ok = subprocess.run(
        [sys.executable, str(ROOT / "workflow_scripts" / "prepare_data.py"), "--spec", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert data.load_manifest(spec["output"])["num_train_images"] == 2
    bad = _coco_spec(tmp_path / "missing", output=str(tmp_path / "c" / "dataset.json"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "workflow_scripts" / "prepare_data.py"), "--spec", json.dumps(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("prepare_data: error: datasets.coco_sub.root: folder")
    assert not Path(bad["output"]).exists()


# ----------------------------------------------------------------------------- staging weights
def _stage_spec(tmp_path, source, **kw):
    return {
        "init": "imagenet",
        "backbone": "R50",
        "norm": "GN",
        "source": source,
        "cost_record": {"iterations": 450000, "images": 128116500},
        "output": str(tmp_path / "init" / "imagenet" / "R50-GN.pkl"),
        "cost": str(tmp_path / "results" / "init" / "imagenet" / "R50-GN.json"),
        **kw,
    }


def _weights_pkl(path: Path) -> bytes:
    obj = {
        "blobs": {"conv1_w": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "fc1000_b": np.zeros(3)},
        "__author__": "test",
    }
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path.read_bytes()


@pytest.mark.parametrize("as_url", [False, True])
def test_stage_local_and_file_url(tmp_path, as_url):
    src = tmp_path / "src" / "R-50-GN.pkl"
    src.parent.mkdir()
    raw = _weights_pkl(src)
    spec = _stage_spec(tmp_path, src.as_uri() if as_url else str(src))
    cost = stage.stage(spec)
    assert Path(spec["output"]).read_bytes() == raw
    on_disk = json.loads(Path(spec["cost"]).read_text())
    assert (
        on_disk
        == cost
        == {"iterations": 450000, "images": 128116500, "instances": None, "pixels": None, "source": spec["source"]}
    )
    assert [p.name for p in Path(spec["output"]).parent.iterdir()] == ["R50-GN.pkl"]  # no temp left


def test_stage_errors(tmp_path):
    missing = tmp_path / "nope.pkl"
    with pytest.raises(
        stage.StageError, match=rf"inits\.imagenet\.weights\.R50-GN: weights file {missing} does not exist"
    ):
        stage.stage(_stage_spec(tmp_path, str(missing)))
    notpkl = tmp_path / "x.pkl"
    notpkl.write_text("<html>404</html>")
    with pytest.raises(stage.StageError, match=r"inits\.imagenet\.weights\.R50-GN: .*not a readable weights pickle"):
        stage.stage(_stage_spec(tmp_path, str(notpkl)))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that would run a command
    with pytest.raises(stage.StageError, match=r"refusing to load os\.system"):
        stage.stage(_stage_spec(tmp_path, str(evil)))
    assert not Path(_stage_spec(tmp_path, "")["output"]).exists()
    assert list(Path(_stage_spec(tmp_path, "")["output"]).parent.iterdir()) == []  # temp files removed
    with pytest.raises(stage.StageError, match="unsupported URL scheme 'ftp'"):
        stage.stage(_stage_spec(tmp_path, "ftp://host/x.pkl"))


def test_stage_resolves_detectron2_urls():
    assert stage.resolve_source("detectron2://ImageNetPretrained/FAIR/R-50-GN.pkl") == (
        "url",
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/FAIR/R-50-GN.pkl",
    )
    assert stage.resolve_source("https://x/y.pkl") == ("url", "https://x/y.pkl")
    assert stage.resolve_source("file:///a/b.pkl") == ("file", "/a/b.pkl")
    assert stage.resolve_source("weights/b.pkl") == ("file", "weights/b.pkl")
