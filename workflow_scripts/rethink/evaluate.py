"""Evaluation of one milestone checkpoint: predictions from the engine, COCO metrics from
pycocotools (the project's own, the same for every engine), one metrics JSON (rethink.metrics).

:func:`coco_evaluate` is independent of engines: a COCO ground-truth JSON and a list of COCO
result dicts in, named stats (percent, NaN = undefined) out. Rules it follows (detectron2's
COCOEvaluator does the same):

* segm: the "bbox" field of each result is dropped before COCOeval, otherwise pycocotools'
  loadRes takes the box area as the detection's area and the small/medium/large split of
  unmatched detections differs from the mask area's.
* no detections at all: the stats COCOeval gives an empty detection set (pycocotools' loadRes
  cannot load an empty list, so the set is built directly): AP and AR are 0 wherever the
  ground truth has objects, undefined (NaN) only where it has none (e.g. no large objects).
  detectron2's COCOEvaluator reports NaN for everything instead; an early milestone of a model
  that detects nothing yet has AP 0, and curves and tables show it as such.
* keypoints: COCO's 17 keypoints and pycocotools' default OKS sigmas; other keypoint counts
  are refused (the synthetic keypoint sets use COCO's 17).
* VOC data (manifest source_kind "voc"): objects marked ``difficult`` are ignored (turned into
  iscrowd regions for COCOeval, skipped by the VOC AP), and ``stats["voc"]["AP50"]`` is the
  real PASCAL VOC AP at IoU > 0.5 (:func:`voc_ap50`, after detectron2's voc_eval): per class,
  detections by score, greedy matching, AP as the area under the interpolated precision/recall
  curve (VOC2010+), or VOC2007's 11-point AP when the val lists are VOC2007's; mean over the
  classes that have a non-difficult ground-truth object.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import ledger, live, metrics

IOU_TYPES = {
    "mask_rcnn": ["bbox", "segm"],
    "cascade_mask_rcnn": ["bbox", "segm"],
    "faster_rcnn": ["bbox"],
    "keypoint_rcnn": ["bbox", "keypoints"],
}
RESULT_FIELDS = {
    "bbox": ("image_id", "category_id", "score", "bbox"),
    "segm": ("image_id", "category_id", "score", "segmentation"),  # no bbox: see module doc
    "keypoints": ("image_id", "category_id", "score", "bbox", "keypoints"),
}
COCO_NUM_KEYPOINTS = 17


class EvaluationError(RuntimeError):
    pass


def iou_types_for(task: str) -> list[str]:
    try:
        return list(IOU_TYPES[task])
    except KeyError:
        raise EvaluationError(f"task {task!r} has no evaluation (known: {', '.join(IOU_TYPES)})") from None


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


# coco_eval (config): where COCO and COCOeval come from. faster_coco_eval is a C++ reimplementation
# of pycocotools' evaluation with the same API and, on the project's tests, the same stats
# (tests/test_workflow.py compares them on a trained model's predictions; bench/bench_cocoeval.py
# times both).
BACKENDS = {
    "pycocotools": ("pycocotools.coco", "COCO", "pycocotools.cocoeval", "COCOeval"),
    "faster_coco_eval": ("faster_coco_eval", "COCO", "faster_coco_eval", "COCOeval_faster"),
}


def backend_classes(backend: str):
    """(COCO, COCOeval) of a coco_eval backend."""
    import importlib

    try:
        coco_mod, coco_name, eval_mod, eval_name = BACKENDS[backend]
    except KeyError:
        raise EvaluationError(f"coco_eval {backend!r} is not one of {', '.join(BACKENDS)}") from None
    try:
        return getattr(importlib.import_module(coco_mod), coco_name), getattr(
            importlib.import_module(eval_mod), eval_name
        )
    except ImportError as e:
        raise EvaluationError(f"coco_eval {backend!r}: {e} (pip install {backend.replace('_', '-')})") from None


def load_gt(gt, ignore_difficult: bool = False, backend: str = "pycocotools"):
    """A COCO object (of the coco_eval backend) from a JSON path or a loaded dict (deep-copied). With
    `ignore_difficult`, annotations with difficult=1 become iscrowd regions (ignored by COCOeval)."""
    COCO, _ = backend_classes(backend)

    if isinstance(gt, (str, Path)):
        try:
            with open(gt) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise EvaluationError(f"{gt}: cannot read the ground truth ({e})") from None
    else:
        data = copy.deepcopy(gt)
    if ignore_difficult:
        for a in data.get("annotations", []):
            if a.get("difficult"):
                a["iscrowd"] = 1
    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    return coco


def _empty_results(coco_gt):
    """A result set with no detection (what loadRes([]) would be if it could), of coco_gt's class."""
    dt = type(coco_gt)()
    dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with _quiet():
        dt.createIndex()
    return dt


def coco_evaluate(
    gt, results: list[dict], iou_types, ignore_difficult: bool = False, log=sys.stdout, backend: str = "pycocotools"
) -> dict:
    """COCO evaluation of `results` (COCO result dicts) against the ground truth `gt` (a JSON
    path, a dict, or a COCO object of the backend). Returns {iou_type: {stat name: percent or NaN}}."""
    _, COCOeval = backend_classes(backend)

    coco_gt = gt if hasattr(gt, "loadRes") else load_gt(gt, ignore_difficult, backend)
    out = {}
    for iou_type in iou_types:
        if iou_type not in RESULT_FIELDS:
            raise EvaluationError(f"unknown iou type {iou_type!r} (known: {', '.join(RESULT_FIELDS)})")
        fields = RESULT_FIELDS[iou_type]
        missing = [f for f in fields if results and f not in results[0]]
        if missing:
            raise EvaluationError(f"{iou_type}: results lack {', '.join(missing)} (first result: {sorted(results[0])})")
        if iou_type == "segm" and not all("segmentation" in a for a in coco_gt.dataset["annotations"]):
            raise EvaluationError("segm: the ground truth has annotations without segmentation (a boxes-only set?)")
        if results:
            dts = [{k: r[k] for k in fields} for r in results]  # loadRes mutates its input
            with _quiet():
                coco_dt = coco_gt.loadRes(dts)
        else:
            print(f"{iou_type}: no detections (AP 0 where the ground truth has objects)", file=log)
            coco_dt = _empty_results(coco_gt)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if iou_type == "keypoints" and results:
            k = len(results[0]["keypoints"]) // 3
            if k != COCO_NUM_KEYPOINTS:
                raise EvaluationError(
                    f"keypoints: {k} keypoints per result; only COCO's {COCO_NUM_KEYPOINTS} have OKS sigmas"
                )
        with contextlib.redirect_stdout(log):
            print(f"--- {iou_type} ---")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        n = len(metrics.STAT_NAMES[iou_type])  # faster_coco_eval may append more (its extra_calc)
        out[iou_type] = metrics.stats_from_cocoeval(
            iou_type, list(ev.stats)[:n] if backend != "pycocotools" else ev.stats
        )
    return out


def _voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    if use_07_metric:
        return float(np.mean([np.max(prec[rec >= t]) if np.any(rec >= t) else 0.0 for t in np.arange(0.0, 1.1, 0.1)]))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_ap50(gt, results: list[dict], use_07_metric: bool = False) -> float:
    """PASCAL VOC mAP at IoU > 0.5 in percent (0 without detections, NaN without ground truth).
    Boxes are COCO [x, y, w, h] as the VOC converter writes them ([xmin-1, ymin-1, xmax, ymax]),
    so the continuous IoU here equals VOC's +1-pixel IoU on the original boxes."""
    data = (gt if hasattr(gt, "dataset") else load_gt(gt)).dataset
    gts: dict = {}
    for a in data["annotations"]:
        gts.setdefault(a["category_id"], {}).setdefault(a["image_id"], []).append(a)
    aps = []
    for cat in sorted(c["id"] for c in data["categories"]):
        by_img = gts.get(cat, {})
        npos = sum(1 for anns in by_img.values() for a in anns if not a.get("difficult"))
        if npos == 0:
            continue
        boxes = {i: np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4) for i, anns in by_img.items()}
        difficult = {i: np.array([bool(a.get("difficult")) for a in anns]) for i, anns in by_img.items()}
        used = {i: np.zeros(len(anns), bool) for i, anns in by_img.items()}
        dets = sorted((r for r in results if r["category_id"] == cat), key=lambda r: -r["score"])
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for d, r in enumerate(dets):
            g = boxes.get(r["image_id"])
            if g is None or len(g) == 0:
                fp[d] = 1
                continue
            x, y, w, h = r["bbox"]
            ix = np.clip(np.minimum(x + w, g[:, 0] + g[:, 2]) - np.maximum(x, g[:, 0]), 0, None)
            iy = np.clip(np.minimum(y + h, g[:, 1] + g[:, 3]) - np.maximum(y, g[:, 1]), 0, None)
            inter = ix * iy
            iou = inter / (w * h + g[:, 2] * g[:, 3] - inter)
            j = int(np.argmax(iou))
            if iou[j] > 0.5:
                if difficult[r["image_id"]][j]:
                    continue
                if not used[r["image_id"]][j]:
                    tp[d], used[r["image_id"]][j] = 1, True
                else:
                    fp[d] = 1
            else:
                fp[d] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / npos
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(_voc_ap(rec, prec, use_07_metric))
    return float(np.mean(aps) * 100.0) if aps else float("nan")


def _voc_07(gt_data: dict) -> bool:
    ids = [im.get("voc_id", "") for im in gt_data.get("images", [])]
    return bool(ids) and all(i.startswith("VOC2007/") for i in ids)


def evaluate_results(
    manifest: dict, results: list[dict], task: str, log=sys.stdout, backend: str = "pycocotools"
) -> dict:
    """Every stat of `task` on the val set of a dataset manifest (rethink.data)."""
    voc = manifest.get("source_kind") == "voc"
    gt = load_gt(manifest["val"]["annotations"], ignore_difficult=voc, backend=backend)
    stats = coco_evaluate(gt, results, iou_types_for(task), log=log, backend=backend)
    if voc:
        stats["voc"] = {"AP50": voc_ap50(gt, results, use_07_metric=_voc_07(gt.dataset))}
        print(
            f"VOC AP50 ({'11-point, VOC2007' if _voc_07(gt.dataset) else 'area, VOC2010+'}): "
            f"{stats['voc']['AP50']:.2f}",
            file=log,
        )
    return stats


# ----------------------------------------------------------------------------- the evaluate job
def _pretrain_samples(path):
    if not path:
        return None
    try:
        with open(path) as f:
            cost = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise EvaluationError(f"init_cost {path}: cannot read ({e})") from None
    return {k: cost.get(k) for k in ("iterations", "images", "instances", "pixels")}


def build_record(spec: dict, meta: dict, stats: dict, eval_seconds: float, diverged: bool = False) -> dict:
    """The metrics record (rethink.metrics) of an evaluated milestone; `meta` is the
    checkpoint's metadata (rethink.checkpoint.metadata)."""
    run = spec["run"]
    counters = meta.get("counters") or {}
    missing = [k for k in metrics.COUNTERS if k not in counters]
    if missing:
        raise EvaluationError(f"{spec['checkpoint']}: checkpoint counters lack {', '.join(missing)}")
    record = {
        "family": spec["family"],
        "line": spec["line"],
        "iteration": int(spec["iteration"]),
        "owner": run["run_id"],
        "task": run["recipe"]["task"],
        "backbone": run["backbone"],
        "norm": run["norm"],
        "init": run["init"],
        "data": run["data"],
        "seed": run["seed"],
        "variant": run.get("variant"),
        "lr": float(spec["lr"]),
        "samples_seen": {k: counters[k] for k in metrics.COUNTERS},
        "pretrain_samples": _pretrain_samples(spec.get("init_cost")),
        "wall_seconds": float(meta["wall_seconds"]),
        "device_seconds": float(meta["device_seconds"]),
        "gpus": int(meta.get("gpus", run["recipe"].get("gpus", 0))),
        "eval_seconds": float(eval_seconds),
        "diverged": bool(diverged),
        "stats": {} if diverged else stats,
        "engine": spec["engine"],
    }
    # optional in the schema (older files lack them): how the run trained and was tested
    record["train_aug"] = bool(run["recipe"].get("scale_aug", False))
    record["test_aug"] = bool(spec.get("tta", False))
    if spec.get("identity"):  # optional in the schema: the hash of the line's identity (rethink.identity)
        record["identity"] = spec["identity"]
    if spec.get("coco_eval", "pycocotools") != "pycocotools":  # optional in the schema
        record["coco_eval"] = spec["coco_eval"]
    if spec.get("runs"):  # optional in the schema: collect asks the plan which runs pass through
        record["runs"] = list(spec["runs"])
    return record


def evaluate(spec: dict, log=sys.stdout) -> dict:
    """The evaluate job: checkpoint -> engine predictions -> COCO stats -> metrics JSON.
    Reads the checkpoint only (rethink.checkpoint); returns the record written to spec["output"].
    A rehearsal's (spec `rehearsal`) predicts nothing: rethink.rehearsal.evaluation simulates it."""
    if spec.get("rehearsal"):
        return _rehearsal(spec, log)
    import torch

    from . import checkpoint
    from . import data as rdata
    from .engines import get_engine

    t0 = time.time()
    manifest = rdata.load_manifest(spec["dataset"])
    run = spec["run"]
    if spec.get("tta"):  # the engines read test-time augmentation from the recipe they predict with
        from .engines.shared import test_aug_sizes

        run = {**run, "recipe": {**run["recipe"], "tta": True}}
        sizes, cap = test_aug_sizes(run["recipe"])
        print(f"test-time augmentation: shorter sides {sizes}, longer side at most {cap}, each also flipped", file=log)
    state = checkpoint.load(spec["checkpoint"])
    meta = checkpoint.metadata(state)
    if meta.get("engine") == "rehearsal":  # (its weights would not fit anyway)
        raise EvaluationError(f"{spec['checkpoint']}: a rehearsal checkpoint; a real evaluation never reads one")
    if int(meta["iteration"]) != int(spec["iteration"]):
        raise EvaluationError(
            f"{spec['checkpoint']}: checkpoint is at iteration {meta['iteration']}, "
            f"the milestone is {spec['iteration']}"
        )
    diverged = bool(meta.get("diverged", False))  # a checkpoint that says so gets no model and no stats
    stats: dict = {}
    row = ledger.current()  # the job's ledger row: when inference began and ended
    if diverged:
        print(f"{spec['checkpoint']}: the run diverged ({meta['diverged']}); recorded as diverged, no stats", file=log)
    else:
        engine = get_engine(spec["engine"])
        use_gpu = torch.cuda.is_available() and int(run["recipe"].get("eval_gpus", 1)) > 0
        device = torch.device("cuda" if use_gpu else "cpu")
        model = engine.build_model(run, device, distributed=False, dataset=manifest)
        checkpoint.load_model_weights(model, spec["checkpoint"], state)
        del state
        if row is not None:
            row.update(first_iter=time.time())
        model.eval()
        with torch.no_grad():
            results = engine.predict(model, run, manifest, device)
        print(f"{len(results)} detections on {manifest['num_val_images']} val images ({device})", file=log)
        stats = evaluate_results(
            manifest, results, run["recipe"]["task"], log=log, backend=spec.get("coco_eval", "pycocotools")
        )
    if row is not None and not diverged:
        row.update(last_iter=time.time())
    record = build_record(spec, meta, stats, time.time() - t0, diverged)
    metrics.write(record, spec["output"])
    live.write_evaluation(spec, record)
    return record


def _rehearsal(spec: dict, log) -> dict:
    """The evaluate job of a rehearsal: the real record (rethink.metrics) of simulated stats,
    with "rehearsal": true and the compression."""
    from . import rehearsal

    row = ledger.current()  # the job's ledger row: the simulated evaluation is its compressed part
    if row is not None:
        row.update(first_iter=time.time())
    meta, stats, seconds = rehearsal.evaluation(spec, iou_types_for(spec["run"]["recipe"]["task"]), log)
    if row is not None:
        row.update(last_iter=time.time())
    record = build_record(spec, meta, stats, seconds, bool(meta.get("diverged", False)))
    record.update(rehearsal=True, compression=float(spec["rehearsal"]["compression"]))
    metrics.write(record, spec["output"])
    live.write_evaluation(spec, record)
    return record
