"""The rest of the paper through the real workflow, at tiny scale: one real `snakemake` run of a
config whose experiments mirror the paper's beyond Tables 1/2 — a seeded COCO subset read from a
COCO tree on disk (Figures 7, 8), PASCAL VOC converted from XML on disk (Figure 8), keypoints
(Figure 6), VGG16 Faster R-CNN without normalisation (Sec. 5.1), and Table 3's cascade model with
train-time scale augmentation, the switch from Mask R-CNN to cascade inside the run, and its
final checkpoint evaluated a second time with test-time augmentation. The COCO and VOC trees
are written from the workflow's own synthetic images, so no download is needed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import small_tiny_config, snakemake, write_yaml
from rethink import data, synthetic

pytestmark = pytest.mark.slow

SYN = {
    "name": "src",
    "kind": "synthetic",
    "train_size": 16,
    "val_size": 6,
    "image_size": [96, 128],
    "categories": 3,
    "max_objects": 3,
    "seed": 5,
}


def write_coco_tree(root: Path) -> dict:
    """A COCO-layout tree (images + instances JSONs) of a synthetic set; returns its config fields."""
    root.mkdir(parents=True)
    for split in ("train", "val"):
        synthetic.make_synthetic_split(SYN, split, root, data.SCHEMA)
    return {
        "kind": "coco",
        "root": str(root),
        "train_images": "train",
        "train_annotations": "train.json",
        "val_images": "val",
        "val_annotations": "val.json",
    }


def write_voc_tree(root: Path) -> dict:
    """A VOCdevkit tree (JPEGImages, Annotations XML, ImageSets/Main lists) of a synthetic set, its
    categories named as VOC classes: VOC2007 trainval = the train split, VOC2012 val = val."""
    from PIL import Image

    tmp = root.parent / "voc-src"
    tmp.mkdir(parents=True)
    for split, year, lst in (("train", "VOC2007", "trainval"), ("val", "VOC2012", "val")):
        images, ann_path, _ = synthetic.make_synthetic_split(SYN, split, tmp, data.SCHEMA)
        coco = json.loads(Path(ann_path).read_text())
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (root / year / sub).mkdir(parents=True, exist_ok=True)
        ids = []
        for im in coco["images"]:
            vid = f"{split}_{im['id']:04d}"
            ids.append(vid)
            Image.open(images / im["file_name"]).convert("RGB").save(
                root / year / "JPEGImages" / f"{vid}.jpg", quality=95
            )
            objs = ""
            for a in (a for a in coco["annotations"] if a["image_id"] == im["id"]):
                x, y, w, h = a["bbox"]
                objs += (
                    f"<object><name>{data.VOC_CLASSES[a['category_id'] - 1]}</name><difficult>0</difficult>"
                    f"<bndbox><xmin>{int(x) + 1}</xmin><ymin>{int(y) + 1}</ymin>"
                    f"<xmax>{int(math.ceil(x + w))}</xmax><ymax>{int(math.ceil(y + h))}</ymax></bndbox></object>"
                )
            (root / year / "Annotations" / f"{vid}.xml").write_text(
                f"<annotation><filename>{vid}.jpg</filename><size><width>{im['width']}</width>"
                f"<height>{im['height']}</height><depth>3</depth></size>{objs}</annotation>"
            )
        (root / year / "ImageSets" / "Main" / f"{lst}.txt").write_text("\n".join(ids) + "\n")
    return {
        "kind": "voc",
        "root": str(root),
        "train_annotations": ["VOC2007/trainval"],
        "val_annotations": "VOC2012/val",
    }


def paper_tiny_config(tmp_path: Path) -> dict:
    cfg = small_tiny_config()
    cfg["eval_period"], cfg["max_segment_iters"] = 6, 6
    cfg["axes"].update(
        norm=["GN", "none"],
        backbone=["R18", "VGG16"],
        data=["synthetic", "synthetic_kp", "coco_sub", "voc"],
        schedule={"2x": {"x": 2}},
    )
    cfg["seconds_per_iter"].append({"backbone": "VGG16", "norm": "none", "gpus": 0, "seconds": 2.0})
    syn = cfg["datasets"]["synthetic"]
    cfg["datasets"].update(
        synthetic_kp={**syn, "keypoints": True, "train_size": 10},
        coco_sub={**write_coco_tree(tmp_path / "coco"), "num_images": 10, "subset_seed": 3},
        voc=write_voc_tree(tmp_path / "VOCdevkit"),
    )
    one = {"init": ["random"], "schedule": ["2x"]}
    cfg["experiments"] = {
        "fig7_less_data": {**one, "backbone": ["R18"], "norm": ["GN"], "data": ["coco_sub"]},
        "fig8_voc": {**one, "backbone": ["R18"], "norm": ["GN"], "data": ["voc"], "recipe": {"task": "faster_rcnn"}},
        "fig6_keypoints": {
            **one,
            "backbone": ["R18"],
            "norm": ["GN"],
            "data": ["synthetic_kp"],
            "recipe": {"task": "keypoint_rcnn"},
        },
        "sec51_vgg16": {
            **one,
            "backbone": ["VGG16"],
            "norm": ["none"],
            "data": ["synthetic"],
            "recipe": {"task": "faster_rcnn", "head_channels": 256},
        },  # no FPN: the tiny 64 is refused
        "table3_cascade": {
            **one,
            "backbone": ["R18"],
            "norm": ["GN"],
            "data": ["synthetic"],
            "variant": "cascade",
            "recipe": {
                "task": "cascade_mask_rcnn",
                "cascade_from_iter": 6,
                "scale_aug": True,
                "min_size_train": [80, 112],
            },
            "test_aug": True,
        },
    }
    return cfg


RUNS = {
    "less_data": "R18-GN-random-coco_sub-2x-s0",
    "voc": "R18-GN-random-voc-2x-s0",
    "keypoints": "R18-GN-random-synthetic_kp-2x-s0",
    "vgg16": "VGG16-none-random-synthetic-2x-s0",
    "cascade": "R18-GN-random-synthetic-2x-s0-cascade",
}


@pytest.fixture(scope="module")
def paper_tiny(module_tmp):
    tmp = module_tmp("paper_tiny")
    write_yaml(tmp / "config.yaml", paper_tiny_config(tmp))
    proc = snakemake(["--cores", "2", "--configfile", "config.yaml"], cwd=tmp, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return tmp, proc


def test_every_experiment_runs_to_its_final_evaluation(paper_tiny):
    tmp, proc = paper_tiny
    df = pd.read_csv(tmp / "results" / "metrics.csv")
    fin = df[df.final.astype(str).str.lower() == "true"]
    assert set(fin.run_id) == set(RUNS.values())
    plain = fin[fin.test_aug.astype(str).str.lower() == "false"].set_index("run_id")
    for rid in RUNS.values():
        assert math.isfinite(plain.loc[rid, "bbox_AP"]), rid
    assert math.isfinite(plain.loc[RUNS["voc"], "voc_AP50"])
    assert math.isfinite(plain.loc[RUNS["keypoints"], "keypoints_AP"])
    assert math.isfinite(plain.loc[RUNS["cascade"], "segm_AP"]) and math.isnan(plain.loc[RUNS["vgg16"], "segm_AP"])
    # nothing left to do: a second run plans no job
    again = snakemake(["-n", "--cores", "2", "--configfile", "config.yaml"], cwd=tmp, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_coco_subset_and_voc_come_from_trees_on_disk(paper_tiny):
    tmp, _ = paper_tiny
    sub = data.load_manifest(tmp / "work" / "data" / "coco_sub" / "dataset.json")
    assert sub["num_train_images"] == 10 and sub["source_kind"] == "coco"
    full = json.loads((tmp / "coco" / "train.json").read_text())
    kept = sorted(im["id"] for im in json.loads(Path(sub["train"]["annotations"]).read_text())["images"])
    assert kept == data.subset_image_ids([im["id"] for im in full["images"]], 10, 3)
    voc = data.load_manifest(tmp / "work" / "data" / "voc" / "dataset.json")
    assert voc["source_kind"] == "voc" and voc["num_train_images"] == SYN["train_size"]
    assert [c["name"] for c in voc["categories"]] == data.VOC_CLASSES


def test_cascade_switches_inside_the_run_and_tta_is_a_second_evaluation(paper_tiny):
    tmp, _ = paper_tiny
    fam = "R18-GN-random-synthetic-s0-cascade"
    before = json.loads((tmp / "results" / "metrics" / fam / "2x" / "iter_0000006.json").read_text())
    after = json.loads((tmp / "results" / "metrics" / fam / "2x" / "iter_0000012.json").read_text())
    tta = json.loads((tmp / "results" / "metrics" / fam / "2x" / "iter_0000012-tta.json").read_text())
    assert before["task"] == "mask_rcnn" and after["task"] == tta["task"] == "cascade_mask_rcnn"
    assert tta["test_aug"] is True and after["test_aug"] is False and after["train_aug"] is True
    logs = tmp / "work" / "logs" / "evaluate" / fam / "2x"
    # the tiny recipe tests at 96 px: detectron2's 400..1200 scaled by 96 / 800
    sides = "test-time augmentation: shorter sides [48, 60, 72, 84, 96, 108, 120, 132, 144]"
    assert sides in (logs / "iter_0000012-tta.log").read_text()
    assert "test-time augmentation" not in (logs / "iter_0000012.log").read_text()
    # the run's last segment (rule train_final) writes its kept model
    log = (tmp / "work" / "logs" / "train" / "R18-GN-random-synthetic-2x-s0-cascade" / "model_final.log").read_text()
    assert "architecture switch mask_rcnn -> cascade_mask_rcnn" in log
    # both evaluations read the same checkpoint's counters: one training, two tests
    assert tta["samples_seen"] == after["samples_seen"] and tta["wall_seconds"] == after["wall_seconds"]


def test_tables_show_every_experiment(paper_tiny):
    tmp, _ = paper_tiny
    tables = tmp / "results" / "tables"
    t3 = pd.read_csv(tables / "table3.csv")
    ours = t3[t3.ours.notna()]
    assert {"yes"} == set(ours["train aug"]) and set(ours["test aug"]) == {"yes", "no"}
    assert (tables / "less_data.md").read_text().count("coco_sub") == 1
    voc = pd.read_csv(tables / "voc.csv")
    assert np.isfinite(voc[voc.setting.str.contains("R18")].ours).all()
    assert "synthetic_kp" in (tables / "keypoints.md").read_text()
    assert "VGG16 none synthetic" in (tables / "table1.md").read_text()
