# over 400 lines: one realistic COCO set made here, then each of its bad variants, one test per property
"""COCO-format sets as people have them (rethink.validate_data, called by rethink.data.prepare):
a realistic set made here (PIL images of several modes, an EXIF-rotated JPEG, a subfolder,
non-contiguous category ids, crowd RLEs of both kinds, an annotation id 0) prepares and is
renumbered; each bad property is an error naming the file, the image and the field, or, under
on_bad_data: skip, is dropped with a count; the torchvision engine reads the rotated JPEG upright."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from rethink import data, evaluate, segment, validate_data
from rethink.engines import torchvision_data as tv
from rethink.validate_data import DatasetError
from rethink_lab.fuzz_data import _ann  # one COCO annotation, and its box as a polygon

CATS = [
    {"id": 1, "name": "cup", "supercategory": "x"},
    {"id": 5, "name": "dog", "supercategory": "x"},
    {"id": 90, "name": "toothbrush", "supercategory": "x"},
]
ROTATED_BOX = [40, 10, 20, 30]  # [x, y, w, h] of the red square in the upright 80x50 image


def _rotated_jpeg(path: Path) -> None:
    """An 80x50 upright picture with a red square at ROTATED_BOX, stored as its pixels turned 90
    degrees counter-clockwise (50x80) with EXIF orientation 6 (turn 90 clockwise to view), as a
    phone held upright writes it."""
    upright = Image.new("RGB", (80, 50), (0, 0, 200))
    x, y, w, h = ROTATED_BOX
    upright.paste((255, 0, 0), (x, y, x + w, y + h))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[validate_data.EXIF_ORIENTATION] = 6
    stored.save(path, exif=exif, quality=95)


def make_set(root: Path) -> dict:
    """The realistic set under `root`; returns its spec (without name/output)."""
    (root / "train" / "sub").mkdir(parents=True)
    (root / "val").mkdir()
    Image.new("RGB", (64, 48), (10, 200, 10)).save(root / "train" / "a.jpg")
    Image.new("L", (40, 30), 128).save(root / "train" / "gray.png")
    Image.new("CMYK", (50, 40), (0, 255, 255, 0)).save(root / "train" / "cmyk.jpg")
    Image.new("RGB", (30, 20)).save(root / "train" / "sub" / "x.jpg")
    _rotated_jpeg(root / "train" / "rot.jpg")
    Image.new("P", (32, 32)).save(root / "train" / "empty.png")
    Image.new("RGB", (64, 48)).save(root / "val" / "v.jpg")
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "gray.png", "width": 40, "height": 30},
        {"id": 3, "file_name": "cmyk.jpg", "width": 50, "height": 40},
        {"id": 4, "file_name": "sub/x.jpg", "width": 30, "height": 20},
        {"id": 5, "file_name": "rot.jpg", "width": 80, "height": 50},  # its upright size
        {"id": 6, "file_name": "empty.png", "width": 32, "height": 32},
    ]  # no annotations
    m = np.zeros((48, 64), dtype=np.uint8, order="F")
    m[5:20, 30:60] = 1
    compressed = mask_util.encode(m)
    compressed["counts"] = compressed["counts"].decode()
    runs = [20 * 40 + 10, 100, 50 * 40 - 20 * 40 - 10 - 100]  # uncompressed, column-major runs
    anns = [
        _ann(0, 1, 1, [2, 3, 20, 20]),  # id 0: pycocotools would mishandle it
        _ann(2, 1, 5, [30, 5, 30, 15], iscrowd=1, segmentation=compressed),
        _ann(3, 2, 90, [5, 5, 30, 20]),
        _ann(4, 3, 5, [0, 0, 50, 40]),
        _ann(5, 3, 1, [20, 10, 2, 10], iscrowd=1, segmentation={"counts": runs, "size": [40, 50]}),
        _ann(6, 4, 90, [1, 1, 28, 18]),
        _ann(7, 5, 1, ROTATED_BOX),
    ]
    train = {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": CATS}
    val = {
        "info": {},
        "licenses": [],
        "images": [{"id": 10, "file_name": "v.jpg", "width": 64, "height": 48}],
        "annotations": [_ann(1, 10, 90, [4, 4, 40, 30])],
        "categories": CATS,
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "train.json").write_text(json.dumps(train))
    (root / "annotations" / "val.json").write_text(json.dumps(val))
    return {
        "kind": "coco",
        "root": str(root),
        "train_images": "train",
        "train_annotations": "annotations/train.json",
        "val_images": "val",
        "val_annotations": "annotations/val.json",
        "num_images": None,
        "subset_seed": 0,
    }


def _prepare(tmp_path: Path, spec: dict, name: str = "real") -> dict:
    return data.prepare({**spec, "name": name, "output": str(tmp_path / "data" / name / "dataset.json")})


def _report(tmp_path: Path, name: str = "real") -> dict:
    return json.loads((tmp_path / "data" / name / validate_data.REPORT).read_text())


def _edit(spec: dict, fn) -> None:
    path = Path(spec["root"]) / spec["train_annotations"]
    coco = json.loads(path.read_text())
    fn(coco, Path(spec["root"]))
    path.write_text(json.dumps(coco))


def test_realistic_set_prepares_and_renumbers(tmp_path, capsys):
    spec = make_set(tmp_path / "coco")
    m = _prepare(tmp_path, spec)
    assert m["masks"] is True and m["num_train_images"] == 6 and m["num_val_images"] == 1
    assert [c["id"] for c in m["categories"]] == [1, 5, 90]
    # id 0 -> the prepared train JSON (in the dataset's folder) has ids 1..N in file order
    assert m["train"]["annotations"] == str((tmp_path / "data" / "real" / "train.json").resolve())
    train = json.loads(Path(m["train"]["annotations"]).read_text())
    source = json.loads((tmp_path / "coco" / "annotations" / "train.json").read_text())
    assert [a["id"] for a in train["annotations"]] == list(range(1, 8))
    assert [{**a, "id": 0} for a in train["annotations"]] == [{**a, "id": 0} for a in source["annotations"]]
    assert train["images"] == source["images"]
    # the clean val split is read where it is
    assert m["val"]["annotations"] == str((tmp_path / "coco" / "annotations" / "val.json").resolve())
    r = _report(tmp_path)
    assert r["splits"]["train"]["problems"] == {} and r["splits"]["val"]["problems"] == {}
    assert (
        r["splits"]["train"]["renumbered_annotation_ids"] == 7 and r["splits"]["val"]["renumbered_annotation_ids"] == 0
    )
    assert r["splits"]["train"]["exif_rotated_images"] == 1 and r["masks"] is True
    assert "train 6 images, 7 annotations: no problems, annotation ids renumbered 1..7" in capsys.readouterr().out


BAD = {  # name: (edit of the train JSON/files, problem kind, image id, file, field)
    "missing image file": (
        lambda c, r: (r / "train" / "sub" / "x.jpg").unlink(),
        "image_missing",
        4,
        "sub/x.jpg",
        "file_name",
    ),
    "not an image": (
        lambda c, r: (r / "train" / "a.jpg").write_bytes(b"<html>moved</html>"),
        "image_unreadable",
        1,
        "a.jpg",
        "file_name",
    ),
    "size mismatch": (
        lambda c, r: c["images"][1].update(width=41),
        "image_size_mismatch",
        2,
        "gray.png",
        "width/height",
    ),
    "rotated size as stored": (
        lambda c, r: c["images"][4].update(width=50, height=80),
        "image_size_mismatch",
        5,
        "rot.jpg",
        "width/height",
    ),
    "unknown category": (
        lambda c, r: c["annotations"][3].update(category_id=7),
        "category_unknown",
        3,
        "cmyk.jpg",
        "annotation 4: category_id",
    ),
    "bbox outside": (
        lambda c, r: c["annotations"][2].update(bbox=[5, 5, 60, 20]),
        "bbox_outside",
        2,
        "gray.png",
        "annotation 3: bbox",
    ),
    "bbox negative": (
        lambda c, r: c["annotations"][2].update(bbox=[5, 5, -1, 20]),
        "bbox_malformed",
        2,
        "gray.png",
        "annotation 3: bbox",
    ),
    "malformed polygon": (
        lambda c, r: c["annotations"][5].update(segmentation=[[1, 1, 5, 1, 5]]),
        "polygon_malformed",
        4,
        "sub/x.jpg",
        "annotation 6: segmentation[0]",
    ),
    "missing segmentation": (
        lambda c, r: c["annotations"][6].pop("segmentation"),
        "segmentation_missing",
        5,
        "rot.jpg",
        "annotation 7: segmentation",
    ),
    "RLE of another size": (
        lambda c, r: c["annotations"][4]["segmentation"].update(size=[50, 40]),
        "rle_malformed",
        3,
        "cmyk.jpg",
        "annotation 5: segmentation.size",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_an_error_naming_file_image_and_field(tmp_path, case):
    edit, kind, image_id, file_name, field = BAD[case]
    spec = make_set(tmp_path / "coco")
    _edit(spec, edit)
    ann_file = tmp_path / "coco" / "annotations" / "train.json"
    with pytest.raises(data.DatasetError) as e:
        _prepare(tmp_path, spec)
    msg = str(e.value)
    assert msg.startswith(f"{ann_file.resolve()}: image {image_id} ({file_name}): {field}: "), msg
    assert f"1 {kind}" in msg and "on_bad_data: skip" in msg
    assert not (tmp_path / "data" / "real" / "dataset.json").exists()
    r = _report(tmp_path)["splits"]["train"]  # written before the error, for the user to read
    assert {k: p["count"] for k, p in r["problems"].items()} == {kind: 1}
    assert r["problems"][kind]["examples"][0]["image_id"] == image_id
    assert r["problems"][kind]["examples"][0]["file_name"] == file_name


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_dropped_with_a_count_under_skip(tmp_path, case, capsys):
    edit, kind, image_id, file_name, _ = BAD[case]
    spec = make_set(tmp_path / "coco")
    _edit(spec, edit)
    source = json.loads((tmp_path / "coco" / "annotations" / "train.json").read_text())
    n_anns = sum(a["image_id"] == image_id for a in source["annotations"])
    m = _prepare(tmp_path, {**spec, "on_bad_data": "skip"})
    train = json.loads(Path(m["train"]["annotations"]).read_text())
    assert image_id not in {im["id"] for im in train["images"]} and m["num_train_images"] == 5
    assert all(a["image_id"] != image_id for a in train["annotations"])
    assert [a["id"] for a in train["annotations"]] == list(range(1, len(source["annotations"]) - n_anns + 1))
    r = _report(tmp_path)["splits"]["train"]
    assert r["problems"][kind]["count"] == 1 and r["dropped"] == {"images": 1, "annotations": n_anns}
    assert f"1 problems (1 {kind}), dropped 1 images and {n_anns} annotations" in capsys.readouterr().out
    assert m["masks"] is True  # what lacked a segmentation is gone


def test_unknown_image_and_duplicate_ids(tmp_path):
    spec = make_set(tmp_path / "coco")

    def edit(c, r):
        c["annotations"].append(_ann(8, 99, 1, [0, 0, 5, 5]))
        c["images"].append({"id": 1, "file_name": "a.jpg", "width": 64, "height": 48})

    _edit(spec, edit)
    with pytest.raises(
        data.DatasetError,
        match=r"train\.json: image 1 \(a\.jpg\): id: id 1 is also the id of a\.jpg "
        r"\(train: 1 image_id_duplicate, 1 image_unknown;",
    ):
        _prepare(tmp_path, spec)
    unknown = _report(tmp_path)["splits"]["train"]["problems"]["image_unknown"]["examples"]
    assert unknown == [
        {"image_id": None, "file_name": None, "field": "annotation 8: image_id", "message": "99 names no image"}
    ]
    m = _prepare(tmp_path, {**spec, "on_bad_data": "skip"})
    train = json.loads(Path(m["train"]["annotations"]).read_text())
    assert 1 not in {im["id"] for im in train["images"]} and len(train["images"]) == 5  # both records of id 1
    assert {a["image_id"] for a in train["annotations"]} == {2, 3, 4, 5}
    assert _report(tmp_path)["splits"]["train"]["dropped"] == {"images": 2, "annotations": 3}


def test_boxes_only_set_refuses_a_mask_task(tmp_path):
    spec = make_set(tmp_path / "coco")

    def strip(c, r):
        for a in c["annotations"]:
            if not a["iscrowd"]:
                del a["segmentation"]

    _edit(spec, strip)
    val = Path(spec["root"]) / spec["val_annotations"]
    v = json.loads(val.read_text())
    del v["annotations"][0]["segmentation"]
    val.write_text(json.dumps(v))
    m = _prepare(tmp_path, spec, "boxes")
    assert m["masks"] is False and _report(tmp_path, "boxes")["splits"]["train"]["problems"] == {}
    data.check_task(m, "faster_rcnn")
    for task in ("mask_rcnn", "cascade_mask_rcnn"):
        with pytest.raises(data.DatasetError, match=rf"dataset 'boxes' \(coco\) has no masks .*task {task} needs them"):
            data.check_task(m, task)
    # where a training job reads the manifest, before any model is built
    spec = {
        "engine": "torchvision",
        "run": {"recipe": {"task": "mask_rcnn"}},
        "dataset": str(tmp_path / "data" / "boxes" / "dataset.json"),
    }
    with pytest.raises(data.DatasetError, match=r"dataset 'boxes' \(coco\) has no masks .*task mask_rcnn"):
        segment.train_segment(spec)


def test_keypoints_of_a_keypoint_category_are_checked(tmp_path):
    spec = make_set(tmp_path / "coco")

    def edit(c, r):
        c["categories"][0]["keypoints"] = ["nose", "left_eye"]
        c["annotations"][0]["keypoints"] = [3, 4, 2, 5, 6, 2]
        c["annotations"][6]["keypoints"] = [3, 4, 2]

    _edit(spec, edit)
    with pytest.raises(data.DatasetError, match=r"image 5 \(rot\.jpg\): annotation 7: keypoints: 3 values, not 3 x 2"):
        _prepare(tmp_path, spec)


def test_categories_need_unique_integer_ids(tmp_path):
    spec = make_set(tmp_path / "coco")
    _edit(spec, lambda c, r: c["categories"].append({"id": 5, "name": "again"}))
    with pytest.raises(data.DatasetError, match=r"train\.json: categories: ids \[5\] are given twice"):
        _prepare(tmp_path, spec)
    _edit(spec, lambda c, r: c["categories"].__setitem__(3, {"name": "no id"}))
    with pytest.raises(data.DatasetError, match=r"train\.json: categories\[3\]: .* has no integer id"):
        _prepare(tmp_path, spec)


def test_on_bad_data_value_is_checked(tmp_path):
    spec = make_set(tmp_path / "coco")
    with pytest.raises(data.DatasetError, match=r"datasets\.real\.on_bad_data: 'drop' is not one of error, skip"):
        _prepare(tmp_path, {**spec, "on_bad_data": "drop"})


def test_rotated_jpeg_is_read_upright_and_its_box_stays_on_the_object(tmp_path):
    spec = make_set(tmp_path / "coco")
    m = _prepare(tmp_path, spec)
    split = tv.CocoSplit(m, "train")
    idx = [im["file_name"] for im in split.images].index("rot.jpg")
    img = split.image(idx)
    assert tuple(img.shape) == (3, 50, 80)  # height, width of the record
    x0, y0, x1, y1 = split.target(idx, with_masks=True)["boxes"][0].round().int().tolist()
    assert [x0, y0, x1 - x0, y1 - y0] == ROTATED_BOX
    red = (img[0] > 200) & (img[2] < 60)
    inside = red[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
    assert inside.float().mean() > 0.95 and red.sum() < 1.2 * ROTATED_BOX[2] * ROTATED_BOX[3]
    # every mode decodes to RGB at its record's size (grayscale, CMYK, palette PNG, subfolder)
    for i, im in enumerate(split.images):
        assert tuple(split.image(i).shape) == (3, im["height"], im["width"]), im["file_name"]


def test_ground_truth_against_itself_is_ap_100(tmp_path):
    spec = make_set(tmp_path / "coco")
    m = _prepare(tmp_path, spec)
    gt = json.loads(Path(m["train"]["annotations"]).read_text())
    hw = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    results = []
    for a in gt["annotations"]:
        if a["iscrowd"]:
            continue  # crowd regions are ignored by COCOeval, never matched
        rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], *hw[a["image_id"]]))
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": a["bbox"],
                "score": 1.0,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            }
        )
    stats = evaluate.coco_evaluate(copy.deepcopy(gt), results, ["bbox", "segm"])
    assert stats["bbox"]["AP"] == pytest.approx(100.0) and stats["segm"]["AP"] == pytest.approx(100.0)


def test_image_cache_is_bounded_in_bytes(tmp_path):
    spec = make_set(tmp_path / "coco")
    m = _prepare(tmp_path, spec)
    split = tv.CocoSplit(m, "train")
    before = tv._cache_bytes
    first = split.image(0)
    assert tv._cache_bytes - before in (0, first.nbytes)  # 0: cached by an earlier test of this process
    assert tv._cache_bytes <= tv.CACHE_BYTES
    assert sum(t.nbytes for t in tv._cache.values()) == tv._cache_bytes
    assert torch.equal(split.image(0), first)


def test_a_subset_checks_only_its_images_and_val_is_checked_too(tmp_path):
    spec = make_set(tmp_path / "coco")
    sub = {**spec, "num_images": 3, "subset_seed": 1}
    kept = data.subset_image_ids(range(1, 7), 3, 1)
    outside = next(i for i in range(1, 7) if i not in kept)
    _edit(spec, lambda c, r: c["images"][outside - 1].update(width=999))
    m = _prepare(tmp_path, sub, "sub")
    assert sorted(im["id"] for im in json.loads(Path(m["train"]["annotations"]).read_text())["images"]) == kept
    _edit(spec, lambda c, r: c["images"][kept[0] - 1].update(width=999))
    with pytest.raises(data.DatasetError, match=rf"image {kept[0]} \(.*\): width/height: the file is"):
        _prepare(tmp_path, sub, "sub")
    val = Path(spec["root"]) / spec["val_annotations"]
    v = json.loads(val.read_text())
    v["annotations"][0]["category_id"] = 2
    val.write_text(json.dumps(v))
    with pytest.raises(data.DatasetError) as e:
        _prepare(tmp_path, {**spec, "on_bad_data": "error"}, "v")
    assert "val: 1 category_unknown" in str(e.value)
    with pytest.raises(data.DatasetError, match=r"val\.json: on_bad_data skip dropped every one of its 1 images"):
        _prepare(tmp_path, {**spec, "on_bad_data": "skip"}, "v")  # an empty split is no split
    assert _report(tmp_path, "v")["splits"]["val"]["dropped"] == {"images": 1, "annotations": 1}


def test_prepare_data_cli_logs_the_summary_and_names_the_problem(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "workflow_scripts" / "prepare_data.py"
    spec = {**make_set(tmp_path / "coco"), "name": "real", "output": str(tmp_path / "d" / "dataset.json")}
    ok = subprocess.run([sys.executable, str(script), "--spec", json.dumps(spec)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "prepare_data: real: validation: train 6 images, 7 annotations: no problems" in ok.stdout
    _edit(spec, lambda c, r: c["annotations"][2].update(category_id=2))
    bad = subprocess.run([sys.executable, str(script), "--spec", json.dumps(spec)], capture_output=True, text=True)
    assert bad.returncode != 0 and "1 problems (1 category_unknown)" in bad.stdout
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"prepare_data: error: {(tmp_path / 'coco' / 'annotations' / 'train.json').resolve()}: image 2 (gray.png): "
            f"annotation 3: category_id: 2 is not among the category ids"
        )
    )


def test_training_draws_only_annotated_images_and_a_broken_file_is_named(tmp_path):
    """As detectron2's loader: images without a non-crowd annotation are not drawn for training
    (the same images in both engines); an image file broken after prepare is named when read."""
    spec = make_set(tmp_path / "coco")
    m = _prepare(tmp_path, spec)
    split = tv.CocoSplit(m, "train")
    run = {"seed": 0, "recipe": {"batch": 2, "min_size_train": [32], "max_size_train": 64, "task": "mask_rcnn"}}
    stream = tv.TrainStream(split, run, 0, 0, 1)
    empty = {i for i, im in enumerate(split.images) if not any(not a.get("iscrowd") for a in split.anns[im["id"]])}
    assert empty and stream.dropped == len(empty)
    drawn = {i for it in range(60) for i in stream.indices(it)}
    assert drawn == set(range(len(split))) - empty
    victim = next(i for i in drawn if split.images[i]["file_name"].endswith(".png"))
    path = split.image_dir / split.images[victim]["file_name"]
    path.write_bytes(path.read_bytes()[:40])
    tv._cache.clear()
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        split.image(victim)
