"""COCO evaluation (rethink.evaluate) with real pycocotools on the project's own datasets, and the
metrics record the evaluate job writes."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from test_data import VOC_SPEC, write_voc_tree

from rethink import data, evaluate, metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(module_tmp):
    tmp = module_tmp("ev")
    spec = {
        "name": "syn",
        "kind": "synthetic",
        "train_size": 1,
        "val_size": 8,
        "image_size": [96, 128],
        "categories": 3,
        "max_objects": 4,
        "seed": 5,
        "output": str(tmp / "syn" / "dataset.json"),
    }
    return data.prepare(spec)


def gt_as_results(gt_path, segm=True, keypoints=False, score=1.0):
    """Every ground-truth object as a detection: bbox, RLE mask (counts str) from its polygons."""
    from pycocotools.coco import COCO

    coco = COCO(gt_path)
    out = []
    for a in coco.loadAnns(coco.getAnnIds()):
        r = {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
        if segm:
            rle = coco.annToRLE(a)
            r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        if keypoints:
            r["keypoints"] = list(a["keypoints"])
        out.append(r)
    return out


def test_perfect_predictions_give_ap_100(synthetic):
    gt = synthetic["val"]["annotations"]
    results = gt_as_results(gt)
    before = copy.deepcopy(results)
    stats = evaluate.coco_evaluate(gt, results, ["bbox", "segm"])
    assert results == before  # the caller's results are not modified
    for t in ("bbox", "segm"):
        assert set(stats[t]) == set(metrics.BOX_STATS)
        assert stats[t]["AP"] == pytest.approx(100.0) and stats[t]["AP50"] == pytest.approx(100.0)
        assert stats[t]["AR100"] == pytest.approx(100.0)
    # some area range has objects and is at 100; ranges without objects are undefined, not 0
    defined = [stats["bbox"][k] for k in ("APs", "APm", "APl") if not math.isnan(stats["bbox"][k])]
    assert defined and all(v == pytest.approx(100.0) for v in defined)


def test_shifted_boxes_lower_ap(synthetic):
    gt = synthetic["val"]["annotations"]
    perfect = evaluate.coco_evaluate(gt, gt_as_results(gt, segm=False), ["bbox"])["bbox"]
    shifted = gt_as_results(gt, segm=False)
    for r in shifted:
        r["bbox"][0] += 0.3 * r["bbox"][2]
    worse = evaluate.coco_evaluate(gt, shifted, ["bbox"])["bbox"]
    assert worse["AP"] < perfect["AP"] - 20
    assert worse["AP75"] < worse["AP50"] <= 100.0  # a 30% shift still passes IoU 0.5 more often than 0.75


def test_wrong_category_scores_zero(synthetic):
    gt = synthetic["val"]["annotations"]
    res = gt_as_results(gt)
    for r in res:
        r["category_id"] = r["category_id"] % 3 + 1
    stats = evaluate.coco_evaluate(gt, res, ["bbox", "segm"])
    assert stats["bbox"]["AP"] == pytest.approx(0.0) and stats["segm"]["AP"] == pytest.approx(0.0)


def test_empty_results_score_zero_where_there_are_objects(synthetic):
    """No detections is AP 0, not a crash and not a hole in the curve; a stat stays undefined
    (NaN) only where the ground truth has no object of that size."""
    from pycocotools.coco import COCO

    ann = synthetic["val"]["annotations"]
    stats = evaluate.coco_evaluate(ann, [], ["bbox", "segm"])
    assert set(stats) == {"bbox", "segm"} and set(stats["segm"]) == set(metrics.BOX_STATS)
    gt = COCO(ann)
    areas = {"s": 0, "m": 0, "l": 0}
    for a in gt.dataset["annotations"]:
        areas["s" if a["area"] < 32**2 else "m" if a["area"] < 96**2 else "l"] += 1
    for t in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
            assert stats[t][k] == 0.0, (t, k)
        for size, n in areas.items():
            assert (stats[t][f"AP{size}"] == 0.0) if n else math.isnan(stats[t][f"AP{size}"]), (t, size, n)


def test_the_coco_eval_backends_are_named_alike_everywhere():
    """The names a metrics record may give (rethink.metrics), the modules behind them
    (rethink.evaluate) and the config's choice (the schema's enum) are one list."""
    from rethink import config

    assert (
        tuple(evaluate.BACKENDS) == metrics.COCO_EVAL == tuple(config.load_schema()["properties"]["coco_eval"]["enum"])
    )


def test_iou_types_follow_the_task():
    assert evaluate.iou_types_for("mask_rcnn") == ["bbox", "segm"]
    assert evaluate.iou_types_for("cascade_mask_rcnn") == ["bbox", "segm"]
    assert evaluate.iou_types_for("faster_rcnn") == ["bbox"]
    assert evaluate.iou_types_for("keypoint_rcnn") == ["bbox", "keypoints"]
    with pytest.raises(evaluate.EvaluationError, match="retinanet"):
        evaluate.iou_types_for("retinanet")


def _square(x, y, s):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def test_segm_uses_mask_area_not_box_area():
    """A false positive whose mask is small (a thin diagonal) but whose box is medium: with the
    mask area it is a small detection and costs APs; pycocotools with the bbox kept would call
    it medium and ignore it for APs."""
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    h = w = 200
    gt = {
        "images": [{"id": 1, "width": w, "height": h, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "circle"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": _square(10, 10, 10),
                "area": 100.0,
                "bbox": [10, 10, 10, 10],
                "iscrowd": 0,
            }
        ],
    }

    def rle_of(polys):
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}

    diagonal = [[100, 100, 102, 100, 190, 188, 190, 190, 188, 190, 100, 102]]
    fp_rle = rle_of(diagonal)
    assert mask_utils.area(fp_rle) < 32**2 < 90 * 90  # small mask, medium box
    results = [
        {
            "image_id": 1,
            "category_id": 1,
            "score": 0.9,
            "bbox": [10, 10, 10, 10],
            "segmentation": rle_of(_square(10, 10, 10)),
        },
        {"image_id": 1, "category_id": 1, "score": 0.95, "bbox": [100, 100, 90, 90], "segmentation": fp_rle},
    ]
    ours = evaluate.coco_evaluate(gt, results, ["segm"])["segm"]
    assert ours["APs"] == pytest.approx(50.0, abs=1.0)  # the FP ranks first among small detections
    assert ours["AP"] == pytest.approx(50.0, abs=1.0)

    # what pycocotools does when the bbox is kept: the FP counts as medium and APs is 100
    coco_gt = evaluate.load_gt(gt)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "segm")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[3] * 100 == pytest.approx(100.0)
    assert ours["APs"] < ev.stats[3] * 100 - 40


def test_keypoints_perfect(tmp_path):
    m = data.prepare(
        {
            "name": "kp",
            "kind": "synthetic",
            "keypoints": True,
            "train_size": 1,
            "val_size": 4,
            "image_size": [96, 128],
            "categories": 1,
            "max_objects": 3,
            "seed": 0,
            "output": str(tmp_path / "kp" / "dataset.json"),
        }
    )
    gt = m["val"]["annotations"]
    res = gt_as_results(gt, segm=False, keypoints=True)
    stats = evaluate.coco_evaluate(gt, res, ["bbox", "keypoints"])
    assert set(stats["keypoints"]) == set(metrics.KEYPOINT_STATS)
    assert stats["keypoints"]["AP"] == pytest.approx(100.0) and stats["bbox"]["AP"] == pytest.approx(100.0)
    for r in res:  # move every keypoint by a fifth of the person's height
        r["keypoints"] = [v + (0.2 * r["bbox"][3] if i % 3 == 1 else 0) for i, v in enumerate(r["keypoints"])]
    assert evaluate.coco_evaluate(gt, res, ["keypoints"])["keypoints"]["AP"] < 50


def test_voc_ap50_and_difficult(tmp_path):
    write_voc_tree(tmp_path / "VOCdevkit")
    m = data.prepare(
        {
            **VOC_SPEC,
            "root": str(tmp_path / "VOCdevkit"),
            "val_annotations": "VOC2007/trainval",
            "output": str(tmp_path / "voc" / "dataset.json"),
        }
    )
    gt_path = m["val"]["annotations"]
    gt = json.load(open(gt_path))
    easy = [a for a in gt["annotations"] if not a["difficult"]]
    hard = [a for a in gt["annotations"] if a["difficult"]]
    assert hard, "the tree has a difficult object"
    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in easy]
    stats = evaluate.evaluate_results(m, res, "faster_rcnn")
    assert set(stats) == {"bbox", "voc"}
    assert stats["voc"]["AP50"] == pytest.approx(100.0) and stats["bbox"]["AP"] == pytest.approx(100.0)
    # a detection of the difficult object is neither right nor wrong
    res_h = res + [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.99} for a in hard
    ]
    assert evaluate.evaluate_results(m, res_h, "faster_rcnn")["voc"]["AP50"] == pytest.approx(100.0)
    # without the difficult rule that detection would be counted
    assert evaluate.voc_ap50({**gt, "annotations": [{**a, "difficult": 0} for a in gt["annotations"]]}, res) < 100
    # a false positive with the top score halves the precision of its class (chair: 1 GT)
    fp = {
        "image_id": easy[0]["image_id"],
        "category_id": easy[0]["category_id"],
        "bbox": [400, 300, 20, 20],
        "score": 1.0,
    }
    per_class = {
        c: evaluate.voc_ap50(gt_path, res + [fp], use_07_metric=m7) for c, m7 in (("area", False), ("07", True))
    }
    n_classes = len({a["category_id"] for a in easy})
    assert per_class["area"] == pytest.approx(100.0 - 50.0 / n_classes)
    assert per_class["07"] == pytest.approx(100.0 - 50.0 / n_classes, abs=1e-6)
    # a 2007 val set uses the 11-point metric
    assert evaluate._voc_07(gt) and evaluate.voc_ap50(gt_path, []) == 0.0


# ----------------------------------------------------------------------------- the metrics record
def _spec_from_tiny_config(tmp_path):
    """A real eval spec: configs/tiny.yaml's plan and paths, workdir/results under tmp_path."""
    from rethink import config, grid
    from rethink.job_specs import JobSpecs
    from rethink.paths import Paths
    from rethink.plan import Plan

    cfg = config.load(ROOT / "configs" / "tiny.yaml")
    cfg["workdir"], cfg["results"] = str(tmp_path / "work"), str(tmp_path / "results")
    plan = Plan(grid.build(cfg, "tiny.yaml"))
    P = JobSpecs(Paths(cfg, plan))
    ms = max(plan.milestones.values(), key=lambda m: (len(m.runs), m.iteration))
    return cfg, P, P.eval_spec(ms)


def _fake_meta(iteration):
    return {
        "iteration": iteration,
        "counters": {"images": 2 * iteration, "instances": 5 * iteration, "pixels": 7e4 * iteration},
        "wall_seconds": 12.5,
        "device_seconds": 20.0,
        "gpus": 0,
    }


def test_record_passes_metrics_read(tmp_path, synthetic):
    _, _, spec = _spec_from_tiny_config(tmp_path)
    gt = synthetic["val"]["annotations"]
    stats = evaluate.coco_evaluate(gt, gt_as_results(gt), ["bbox", "segm"])
    cost = tmp_path / "cost.json"
    cost.write_text(json.dumps({"iterations": 60, "images": 960, "instances": 960, "pixels": 3.9e6}))
    spec = {**spec, "init_cost": str(cost)}
    record = evaluate.build_record(spec, _fake_meta(spec["iteration"]), stats, 1.5)
    metrics.write(record, spec["output"])
    back = metrics.read(spec["output"])
    assert back["owner"] == spec["run"]["run_id"] and back["family"] == spec["family"]
    assert back["line"] == spec["line"] and back["iteration"] == spec["iteration"]
    assert ("runs" in back) == ("runs" in spec)
    assert back["samples_seen"] == {
        "images": 2 * spec["iteration"],
        "instances": 5 * spec["iteration"],
        "pixels": 7e4 * spec["iteration"],
    }
    assert back["pretrain_samples"] == {"iterations": 60, "images": 960, "instances": 960, "pixels": 3.9e6}
    assert back["stats"]["segm"]["AP"] == pytest.approx(100.0) and back["task"] == "mask_rcnn"
    assert back["lr"] == spec["lr"] and back["engine"] == "torchvision" and back["diverged"] is False
    # undefined stats survive the round trip as NaN
    undefined = {t: {k: float("nan") for k in metrics.BOX_STATS} for t in ("bbox", "segm")}
    empty = evaluate.build_record({**spec, "init_cost": None}, _fake_meta(spec["iteration"]), undefined, 0.1)
    metrics.write(empty, tmp_path / "empty.json")
    again = metrics.read(tmp_path / "empty.json")
    assert again["pretrain_samples"] is None and math.isnan(again["stats"]["bbox"]["AP"])
    assert again["train_aug"] is False and again["test_aug"] is False


def test_evaluate_job_with_torchvision_engine(tmp_path):
    """The whole evaluate job (CLI): real engine, real checkpoint, real pycocotools."""
    try:
        from rethink.engines import get_engine

        engine = get_engine("torchvision")
    except ImportError as e:
        pytest.skip(f"torchvision engine not available yet: {e}")
    import torch

    from rethink import checkpoint

    cfg, P, spec = _spec_from_tiny_config(tmp_path)
    dspec = {**P.data_spec(spec["run"]["data"]), "train_size": 1, "val_size": 2}
    data.prepare(dspec)
    model = engine.build_model(
        spec["run"], torch.device("cpu"), distributed=False, dataset=data.load_manifest(spec["dataset"])
    )
    state = {
        "format": checkpoint.FORMAT,
        "model": model.state_dict(),
        "optimizer": {},
        **_fake_meta(spec["iteration"]),
        "run_id": spec["run"]["run_id"],
        "family": spec["family"],
        "line": spec["line"],
        "rng": checkpoint.rng_state(),
    }
    checkpoint.save(spec["checkpoint"], state)
    before = Path(spec["checkpoint"]).read_bytes()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "workflow_scripts" / "evaluate.py"),
            "--spec",
            json.dumps({**spec, "init_cost": None}),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    record = metrics.read(spec["output"])
    assert set(record["stats"]) == {"bbox", "segm"} and record["iteration"] == spec["iteration"]
    assert Path(spec["checkpoint"]).read_bytes() == before  # the job never modifies the checkpoint
    # a checkpoint of another iteration is refused, naming the file
    bad = {**spec, "iteration": spec["iteration"] + 1, "output": str(tmp_path / "bad.json"), "init_cost": None}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "workflow_scripts" / "evaluate.py"), "--spec", json.dumps(bad)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and spec["checkpoint"] in proc.stderr and "iteration" in proc.stderr
    assert not Path(bad["output"]).exists()
