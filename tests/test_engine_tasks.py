"""The rest of the paper in the torchvision engine, at tiny scale: Keypoint R-CNN (paper Figure 6),
Faster R-CNN on VGG16 without normalisation (section 5.1) and multi-scale test-time augmentation
(Table 3). Each trains a few iterations through the one loop (rethink.loop.train) on a synthetic
set and evaluates predict()'s output with pycocotools (rethink.evaluate)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from test_loop import first_segment, tiny_specs
from torch import nn

from rethink import checkpoint, data, loop, metrics, synthetic
from rethink.engines import get_engine
from rethink.engines import torchvision_models as models
from rethink.engines.torchvision_data import CocoSplit, flip_keypoints, keypoint_flip_indices
from rethink.engines.torchvision_engine import _merge, inference_passes
from rethink.evaluate import evaluate_results
from rethink.weights import BACKBONE_FORMAT


def short_spec(p, iterations: int = 2, **extra) -> dict:
    """The first segment of the tiny plan, cut to `iterations` (no resume checkpoints)."""
    spec = p.train_spec(first_segment(p))
    return {**spec, "end": iterations, "resume_dir": None, "log_period": 1, "deterministic": True, **extra}


def train_and_load(spec: dict):
    """Train the segment through the loop, then a fresh model with the output checkpoint's weights."""
    engine = get_engine("torchvision")
    manifest = data.load_manifest(spec["dataset"])
    loop.train(engine, spec, manifest)
    model = engine.build_model(spec["run"], "cpu", dataset=manifest)
    meta = checkpoint.load_model_weights(model, spec["output"])
    assert int(meta["iteration"]) == spec["end"]
    return engine, model, manifest


def check_results(results: list[dict], manifest: dict, limit: int) -> dict[int, list[dict]]:
    """Every result is a valid COCO result of the val set; at most `limit` per image."""
    split = CocoSplit(manifest, "val")
    sizes = {im["id"]: (im["width"], im["height"]) for im in split.images}
    cat_ids = set(split.cat_ids)
    per_image: dict[int, list[dict]] = {}
    assert results, "no detections"
    for r in results:
        assert r["image_id"] in sizes and r["category_id"] in cat_ids and 0 <= r["score"] <= 1
        x, y, w, h = r["bbox"]
        W, H = sizes[r["image_id"]]
        assert w >= 0 and h >= 0 and x >= -1e-3 and y >= -1e-3 and x + w <= W + 1e-3 and y + h <= H + 1e-3
        per_image.setdefault(r["image_id"], []).append(r)
    assert max(len(v) for v in per_image.values()) <= limit
    return per_image


# ------------------------------------------------------------------------------ Keypoint R-CNN
KEYPOINT_DATA = {
    "synthetic": {
        "kind": "synthetic",
        "keypoints": True,
        "train_size": 8,
        "val_size": 4,
        "image_size": [64, 80],
        "max_objects": 2,
        "seed": 0,
    }
}


@pytest.fixture(scope="module")
def keypoint_specs(module_tmp):
    return tiny_specs(module_tmp("kp"), recipe={"task": "keypoint_rcnn"}, datasets=KEYPOINT_DATA)


def test_keypoint_flip_indices_and_stream_targets(keypoint_specs):
    names = list(synthetic.KEYPOINT_NAMES)
    flip = keypoint_flip_indices(names)
    assert flip[names.index("nose")] == names.index("nose")
    assert flip[names.index("left_eye")] == names.index("right_eye")
    assert flip[names.index("right_ankle")] == names.index("left_ankle")
    assert sorted(flip) == list(range(17)) and [flip[i] for i in flip] == list(range(17))

    spec = short_spec(keypoint_specs)
    engine, manifest = get_engine("torchvision"), data.load_manifest(spec["dataset"])
    split = CocoSplit(manifest, "train")
    flipped_seen = 0
    for it in range(4):
        stream = engine.train_stream(spec["run"], manifest, it)
        batch = next(stream)
        for j, (img, t) in enumerate(zip(batch["images"], batch["targets"])):
            idx = stream.indices(it)[j]
            raw = split.target(idx, False, True)
            assert t["keypoints"].shape == (len(t["boxes"]), 17, 3) and "masks" not in t
            w = img.shape[-1]
            if torch.equal(img, split.image(idx).float().div(255).flip(-1)):
                flipped_seen += 1
                assert torch.allclose(t["keypoints"], flip_keypoints(raw["keypoints"], w, split.flip_indices))
            else:
                assert torch.equal(t["keypoints"], raw["keypoints"])
            for kp, b in zip(t["keypoints"], t["boxes"]):  # every labelled joint lies in its person's box
                vis = kp[:, 2] > 0
                assert vis.any()
                assert (kp[vis, 0] >= b[0] - 1).all() and (kp[vis, 0] <= b[2] + 1).all()
                assert (kp[vis, 1] >= b[1] - 1).all() and (kp[vis, 1] <= b[3] + 1).all()
    assert flipped_seen > 0


def test_keypoint_rcnn_trains_and_evaluates(keypoint_specs):
    spec = short_spec(keypoint_specs, iterations=3)
    fresh = get_engine("torchvision").build_model(spec["run"], "cpu", dataset=data.load_manifest(spec["dataset"]))
    kp_head = fresh.roi_heads.keypoint_head
    assert sum(isinstance(m, nn.Conv2d) for m in kp_head.modules()) == 8
    assert all(m.num_groups == 32 for m in kp_head.modules() if isinstance(m, nn.GroupNorm))
    assert sum(isinstance(m, nn.GroupNorm) for m in kp_head.modules()) == 8
    assert fresh.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 17
    assert fresh.roi_heads.keypoint_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    del fresh

    engine, model, manifest = train_and_load(spec)
    model.roi_heads.score_thresh = 0.0  # a 3-iteration model scores low; keep every detection
    results = engine.predict(model, spec["run"], manifest, "cpu")
    per_image = check_results(results, manifest, spec["run"]["recipe"]["detections_per_image"])
    for r in results:
        assert len(r["keypoints"]) == 3 * 17 and all(math.isfinite(v) for v in r["keypoints"])
        assert set(r["keypoints"][2::3]) == {1.0}
    assert per_image
    stats = evaluate_results(manifest, results, "keypoint_rcnn", log=io.StringIO())
    assert set(stats) == {"bbox", "keypoints"}
    assert list(stats["keypoints"]) == metrics.KEYPOINT_STATS
    for name in ("AP", "AP50", "AP75", "AR", "AR50", "AR75"):  # area "all": defined once there are detections
        assert math.isfinite(stats["keypoints"][name]) and 0 <= stats["keypoints"][name] <= 100
    assert math.isfinite(stats["bbox"]["AP"])


def test_keypoint_rcnn_needs_a_keypoint_dataset(tmp_path):
    p = tiny_specs(tmp_path, recipe={"task": "keypoint_rcnn"})
    spec = p.train_spec(first_segment(p))
    with pytest.raises(ValueError, match="keypoint_rcnn needs a keypoint dataset"):
        get_engine("torchvision").build_model(spec["run"], "cpu", dataset=data.load_manifest(spec["dataset"]))


# ------------------------------------------------------------------------------ VGG16 Faster R-CNN
VGG_AXES = {
    "init": ["random"],
    "norm": ["none"],
    "backbone": ["VGG16"],
    "data": ["synthetic"],
    "schedule": {"2x": {"x": 2}},
    "seed": [0],
}


@pytest.fixture(scope="module")
def vgg_specs(module_tmp):
    return tiny_specs(
        module_tmp("vgg"),
        recipe={"task": "faster_rcnn", "head_channels": 256},
        axes=VGG_AXES,
        seconds_per_iter=[{"backbone": "VGG16", "norm": "none", "gpus": 0, "seconds": 1.0}],
    )


def test_vgg16_faster_rcnn_structure(vgg_specs):
    spec = short_spec(vgg_specs)
    run, manifest = spec["run"], data.load_manifest(spec["dataset"])
    model = get_engine("torchvision").build_model(run, "cpu", dataset=manifest)
    assert run["backbone"] == "VGG16" and run["norm"] == "none"
    assert not any(isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) for m in model.modules())
    assert not hasattr(model.backbone, "fpn")
    convs = [m for m in model.backbone.body.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and convs[-1].out_channels == 512
    feats = model.backbone(torch.zeros(1, 3, 64, 96))
    assert list(feats) == ["0"] and feats["0"].shape == (1, 512, 4, 6)  # stride 16
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15]
    assert model.roi_heads.box_roi_pool.scales == [1 / 16] and model.roi_heads.box_roi_pool.output_size == (7, 7)
    fcs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(512 * 49, models.VGG_FC_DIM), (models.VGG_FC_DIM,) * 2]
    w = convs[8].weight.detach()  # MSRA fill
    assert abs(float(w.std()) / (2 / (w.shape[0] * 9)) ** 0.5 - 1) < 0.1
    for bad_task in ("mask_rcnn", "keypoint_rcnn"):
        bad = copy.deepcopy(run)
        bad["recipe"]["task"] = bad_task
        with pytest.raises(NotImplementedError, match="VGG16.*faster_rcnn"):
            get_engine("torchvision").build_model(
                bad,
                "cpu",
                dataset={
                    **manifest,
                    "categories": [{**c, "keypoints": list(synthetic.KEYPOINT_NAMES)} for c in manifest["categories"]],
                },
            )


def test_vgg16_pretrained_body_loads_and_trains(vgg_specs, tmp_path):
    """Weights in the pretrain rule's format (the classifier's state_dict without fc.*) load into the
    detector's body by key; the loop starts from them and trains; predictions evaluate."""
    spec = short_spec(vgg_specs)
    run = spec["run"]
    torch.manual_seed(1)
    clf = models.classifier("VGG16", "none", num_classes=3)
    body = {k: v for k, v in clf.state_dict().items() if not k.startswith("fc.")}
    assert body and all(k.startswith("features.") for k in body)
    weights = tmp_path / "vgg16-none.pth"
    checkpoint.atomic_torch_save(
        {
            "format": BACKBONE_FORMAT,
            "backbone": "VGG16",
            "norm": "none",
            "model": body,
            "iterations": 0,
            "train_accuracy": 0.0,
        },
        weights,
    )
    engine, manifest = get_engine("torchvision"), data.load_manifest(spec["dataset"])
    model = engine.build_model(run, "cpu", dataset=manifest)
    engine.load_init_weights(model, str(weights), run)
    for k, v in model.backbone.body.state_dict().items():
        assert torch.equal(v, body[k]), k
    with pytest.raises(checkpoint.CheckpointError, match="norm"):
        engine.load_init_weights(model, str(weights), {**run, "norm": "GN"})

    engine, model, manifest = train_and_load({**spec, "init_weights": str(weights), "init_kind": "pretrain"})
    model.roi_heads.score_thresh = 0.0
    results = engine.predict(model, run, manifest, "cpu")
    check_results(results, manifest, run["recipe"]["detections_per_image"])
    assert all("segmentation" not in r and "keypoints" not in r for r in results)
    stats = evaluate_results(manifest, results, "faster_rcnn", log=io.StringIO())
    assert set(stats) == {"bbox"} and list(stats["bbox"]) == metrics.BOX_STATS
    assert math.isfinite(stats["bbox"]["AP"]) and math.isfinite(stats["bbox"]["AP50"])


# ------------------------------------------------------------------------------ test-time augmentation
def test_inference_passes_are_detectron2s_test_aug():
    assert inference_passes({"min_size_test": 800, "max_size_test": 1333}) == [(800, 1333, False)]
    passes = inference_passes({"min_size_test": 800, "max_size_test": 1333, "tta": True})
    assert sorted({s for s, _, _ in passes}) == list(range(400, 1201, 100))
    assert {m for _, m, _ in passes} == {4000} and len(passes) == 18
    assert sum(f for _, _, f in passes) == 9
    small = inference_passes({"min_size_test": 64, "max_size_test": 96, "tta": True})
    assert (64, 288, False) in small and (64, 288, True) in small and min(s for s, _, _ in small) == 32


def test_merge_keeps_the_best_box_per_class_and_caps():
    a = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
        "scores": torch.tensor([0.9, 0.3]),
        "labels": torch.tensor([1, 1]),
        "rles": ["a0", "a1"],
    }
    b = {
        "boxes": torch.tensor([[1.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]),
        "scores": torch.tensor([0.95, 0.8, 0.1]),
        "labels": torch.tensor([1, 2, 1]),
        "rles": ["b0", "b1", "b2"],
    }
    m = _merge([a, b], 0.5, 10)
    assert m["scores"].tolist() == pytest.approx([0.95, 0.8, 0.3, 0.1])  # a0 lost to b0; b1 is another class
    assert m["rles"] == ["b0", "b1", "a1", "b2"]
    assert _merge([a, b], 0.5, 2)["rles"] == ["b0", "b1"]


@pytest.fixture(scope="module")
def trained_mask_rcnn(module_tmp):
    p = tiny_specs(module_tmp("tta"))
    spec = short_spec(p, iterations=3)
    return (*train_and_load(spec), spec["run"])


def test_tta_predict_gives_valid_coco_results(trained_mask_rcnn):
    from pycocotools import mask as mask_util

    engine, model, manifest, run = trained_mask_rcnn
    model.roi_heads.score_thresh = 0.0
    plain = engine.predict(model, run, manifest, "cpu")
    tta_run = {**run, "recipe": {**run["recipe"], "tta": True}}
    limit = run["recipe"]["detections_per_image"]
    tta = engine.predict(model, tta_run, manifest, "cpu")
    per_image = check_results(tta, manifest, limit)
    sizes = {im["id"]: (im["height"], im["width"]) for im in CocoSplit(manifest, "val").images}
    for image_id, rs in per_image.items():
        scores = [r["score"] for r in rs]
        assert scores == sorted(scores, reverse=True)
        for r in rs:
            assert tuple(mask_util.decode(r["segmentation"]).shape) == sizes[image_id]
        # the plain pass (min_size_test, unflipped) is one of the passes: its best detection survives NMS
        best_plain = max((r["score"] for r in plain if r["image_id"] == image_id), default=0.0)
        assert scores[0] >= best_plain - 1e-6
    # more passes, more candidates: TTA fills the per-image budget at least as well as one pass
    assert sum(len(v) for v in per_image.values()) >= len(plain)
    stats = evaluate_results(manifest, tta, "mask_rcnn", log=io.StringIO())
    assert set(stats) == {"bbox", "segm"}
    assert all(math.isfinite(stats[t]["AP"]) for t in stats)
    assert model.transform.min_size == tuple(run["recipe"]["min_size_train"])  # predict leaves training sizes
