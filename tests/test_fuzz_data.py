"""COCO sets nobody wrote by hand (tests/lab/fuzz_data.py): mutations of a small set's JSON and image files
through prepare_data, with on_bad_data error and skip. Each is accepted, skipped with the counts in
validation.json, or refused naming the annotation file (and the image and field); never a traceback,
and an accepted set is then read by the loaders (every image decoded, every target built with its
masks and keypoints) and evaluated without error; a sample trains a step and predicts. The long
campaign: bench/fuzz.py (README). Below, the failures the fuzzer found, each kept as a plain test."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings

from rethink_lab import fuzz_data as fd

QUICK = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def ws():
    with fd.Workspace() as w:
        yield w


@seed(20261206)
@settings(QUICK, max_examples=400)
@given(example=fd.examples())
def test_prepare_accepts_skips_or_refuses_clearly(ws, example):
    for stage, got in ws.run(example):
        assert not got.failed, f"{stage}: {got.kind}: {example}\n{got.message}"


def test_accepted_sets_train_a_step_and_predict(tmp_path):
    """The set as made, and one whose bad image skip drops: a training step of the tiny recipe and
    the model's predictions on each (the mask task; the keypoint category's keypoints are read too)."""
    ok = fd.check(fd.DataExample(copy.deepcopy(fd.BASE)), tmp_path / "ok", "error", train=True)
    assert ok.kind == "accepted", ok.message
    coco = copy.deepcopy(fd.BASE)
    coco["train"]["annotations"][0]["segmentation"] = [[1, 2, 3, 4, 5]]
    skipped = fd.check(fd.DataExample(coco, files={"c.jpg": "truncate_header"}), tmp_path / "skip", "skip", train=True)
    assert skipped.kind == "skipped", skipped.message
    report = json.loads((tmp_path / "skip" / "data" / "fz" / "validation.json").read_text())["splits"]["train"]
    assert set(report["problems"]) == {"polygon_malformed", "image_unreadable"} and report["dropped"]["images"] == 2


# ------------------------------------------------------------------ regressions (found by the fuzzer)
def _poly_far(coco):
    coco["train"]["annotations"][0]["segmentation"] = [[1e10, 4, 44, 4, 44, 34, 4, 34]]


def _rle_garbage(coco):
    coco["train"]["annotations"][2]["segmentation"]["counts"] = "garbage!"


def _rle_short(coco):
    coco["train"]["annotations"][2]["segmentation"]["counts"] = "0"  # decodes, to the wrong number of pixels


def _iscrowd_big(coco):
    coco["val"]["annotations"][0]["iscrowd"] = 5011


def _category_list(coco):
    coco["train"]["annotations"][1]["category_id"] = [7]


def _keypoints_elsewhere(coco):
    coco["val"]["annotations"][0]["keypoints"] = 5


REGRESSIONS = [
    # (what, mutation, problem kind in validation.json, field in the message)
    (
        "a polygon point 1e10 px away (pycocotools' rasteriser used all memory)",
        _poly_far,
        "polygon_outside",
        "segmentation[0]",
    ),
    (
        "a compressed RLE that is not one (decoding failed in evaluation)",
        _rle_garbage,
        "rle_malformed",
        "segmentation.counts",
    ),
    ("a compressed RLE of the wrong pixel count (a wrong mask)", _rle_short, "rle_malformed", "segmentation.counts"),
    ("iscrowd 5011 (COCOeval's IoU overflowed)", _iscrowd_big, "iscrowd_malformed", "iscrowd"),
    ("a category id that is a list (a TypeError in validation)", _category_list, "category_unknown", "category_id"),
    (
        "keypoints on a category without keypoint names (the loader's len() failed)",
        _keypoints_elsewhere,
        "keypoints_malformed",
        "keypoints",
    ),
]


@pytest.mark.parametrize("what, fn, kind, field", REGRESSIONS, ids=[r[2] + "-" + r[1].__name__ for r in REGRESSIONS])
def test_found_by_the_fuzzer(tmp_path, what, fn, kind, field):
    coco = copy.deepcopy(fd.BASE)
    fn(coco)
    ex = fd.DataExample(coco, mutations=[what])
    refused = fd.check(ex, tmp_path / "error", "error", train=False)
    assert refused.kind == "refused" and f": {field}: " in refused.message and "image " in refused.message, (
        refused.message
    )
    skipped = fd.check(ex, tmp_path / "skip", "skip", train=False)
    assert skipped.kind == "skipped", skipped.message
    splits = json.loads((tmp_path / "skip" / "data" / "fz" / "validation.json").read_text())["splits"]
    assert any(kind in s["problems"] for s in splits.values()), splits


@pytest.mark.parametrize(
    "where, value, said",
    [
        ("val", [{"id": [1], "name": "x"}], "categories[0]"),  # COCOeval's index failed on it
        ("val", [{"id": 99, "name": "x"}], "ids [99] are not among the categories of"),
        ("train", [{"id": 1, "name": "p", "keypoints": 1.5}], "categories[0].keypoints"),
    ],
)
def test_categories_of_either_split_are_checked(tmp_path, where, value, said):
    coco = copy.deepcopy(fd.BASE)
    coco[where]["categories"] = value
    got = fd.check(fd.DataExample(coco), tmp_path, "skip", train=False)
    assert got.kind == "refused" and said in got.message and f"annotations/{where}.json" in got.message, got.message


def test_a_missing_iscrowd_is_written_as_zero(tmp_path):
    """COCOeval reads every ground truth's iscrowd: a set without it is repaired in the prepared
    JSON (counted in validation.json), not refused."""
    coco = copy.deepcopy(fd.BASE)
    for a in coco["val"]["annotations"]:
        del a["iscrowd"]
    got = fd.check(fd.DataExample(coco), tmp_path, "error", train=False)
    assert got.kind == "accepted", got.message
    report = json.loads((tmp_path / "data" / "fz" / "validation.json").read_text())
    assert report["splits"]["val"]["iscrowd_filled"] == 2
    prepared = json.loads(Path(tmp_path / "data" / "fz" / "val.json").read_text())
    assert [a["iscrowd"] for a in prepared["annotations"]] == [0, 0]
