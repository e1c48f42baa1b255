"""The torchvision engine (Mask R-CNN + FPN with GN / SyncBN / BN) on a tiny synthetic COCO set."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_loop import first_segment, tiny_specs
from torch import nn

from rethink import data
from rethink.engines import get_engine
from rethink.engines.torchvision_norms import NaiveSyncBatchNorm, gn_groups


@pytest.fixture(scope="module")
def setup(module_tmp):
    p = tiny_specs(module_tmp("engine"))
    spec = p.train_spec(first_segment(p))
    return get_engine("torchvision"), spec["run"], data.load_manifest(spec["dataset"])


def test_gn_groups():
    assert gn_groups(256) == 32 and gn_groups(64) == 32 and gn_groups(48) == 24 and gn_groups(7) == 7
    assert gn_groups(20, 32) == 20 and gn_groups(40) == 20


def test_gn_model_has_group_norm_everywhere_and_nothing_frozen(setup):
    engine, run, manifest = setup
    model = engine.build_model(run, torch.device("cpu"), dataset=manifest)
    assert model.roi_heads.box_predictor.cls_score.out_features == len(manifest["categories"]) + 1
    for part in (model.backbone.body, model.backbone.fpn, model.roi_heads.box_head, model.roi_heads.mask_head):
        gns = [m for m in part.modules() if isinstance(m, nn.GroupNorm)]
        assert gns, f"no GroupNorm in {type(part).__name__}"
        assert all(m.num_groups == 32 for m in gns)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    box_head = list(model.roi_heads.box_head.modules())  # 4conv1fc
    assert sum(isinstance(m, nn.Conv2d) for m in box_head) == 4 and sum(isinstance(m, nn.Linear) for m in box_head) == 1
    assert model.roi_heads.box_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert model.rpn._pre_nms_top_n["training"] == run["recipe"]["rpn_pre_nms_train"]
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == run["recipe"]["roi_batch_per_image"]
    # MSRA fill: conv weights have std ~ sqrt(2 / fan_out)
    w = model.backbone.body.layer3[0].conv1.weight
    assert abs(float(w.std()) / (2 / (w.shape[0] * 9)) ** 0.5 - 1) < 0.1


@pytest.mark.parametrize("width", [256, 96])
def test_head_channels_set_the_fpn_and_head_widths_and_the_model_trains(setup, width):
    """recipe.head_channels: the FPN's outputs, the RPN conv, the box and mask heads' convs and the
    mask predictor's deconv (the paper's 256, or the tiny default's narrower heads); fc stays 1024."""
    engine, run, manifest = setup
    run = {**run, "recipe": {**run["recipe"], "head_channels": width}}
    model = engine.build_model(run, torch.device("cpu"), dataset=manifest)

    def convs(part):
        return [m.out_channels for m in part.modules() if isinstance(m, nn.Conv2d)]

    assert model.backbone.out_channels == width and set(convs(model.backbone.fpn)) == {width}
    assert convs(model.rpn.head.conv) == [width]
    assert convs(model.roi_heads.box_head) == [width] * 4
    fc = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in fc] == [(width * 7 * 7, 1024)]
    assert convs(model.roi_heads.mask_head) == [width] * 4
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == width
    model.train()
    losses = engine.losses(model, next(engine.train_stream(run, manifest, 0)))
    assert {"loss_mask", "loss_classifier"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.parametrize("norm,kind", [("SyncBN", NaiveSyncBatchNorm), ("BN", nn.BatchNorm2d)])
def test_bn_norms(setup, norm, kind):
    engine, run, manifest = setup
    model = engine.build_model({**run, "norm": norm}, torch.device("cpu"), dataset=manifest)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert bns and all(type(m) is kind for m in bns)
    assert any(isinstance(m, kind) for m in model.roi_heads.mask_head.modules())


def test_unsupported_task_and_backbone_are_clear_errors(setup):
    engine, run, manifest = setup
    bad = copy.deepcopy(run)
    bad["recipe"]["task"] = "retinanet"
    with pytest.raises(NotImplementedError, match="retinanet.*detectron2"):
        engine.build_model(bad, "cpu", dataset=manifest)
    with pytest.raises(NotImplementedError, match="X152"):
        engine.build_model({**run, "backbone": "X152"}, "cpu", dataset=manifest)


def test_stream_is_a_function_of_seed_and_iteration(setup):
    engine, run, manifest = setup
    s0 = engine.train_stream(run, manifest, 0)
    batches = [next(s0) for _ in range(5)]
    late = next(engine.train_stream(run, manifest, 3))
    assert late["iteration"] == 3
    for a, b in zip(late["images"], batches[3]["images"]):
        assert torch.equal(a, b)
    r2 = {**run, "recipe": {**run["recipe"], "batch": 4}}
    joint = next(engine.train_stream(r2, manifest, 2, 0, 1))
    halves = [next(engine.train_stream(r2, manifest, 2, r, 2)) for r in range(2)]
    got = halves[0]["images"] + halves[1]["images"]
    assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(got, joint["images"]))
    for b in batches:
        for img, t in zip(b["images"], b["targets"]):
            h, w = img.shape[-2:]
            assert img.dtype == torch.float32 and 0 <= float(img.min()) and float(img.max()) <= 1
            assert (t["boxes"][:, 2] > t["boxes"][:, 0]).all() and (t["boxes"][:, 2] <= w + 1e-3).all()
            assert t["masks"].shape[-2:] == (h, w) and len(t["masks"]) == len(t["boxes"])
            # the flipped or not mask lies inside its box
            for m, bx in zip(t["masks"], t["boxes"]):
                ys, xs = torch.nonzero(m, as_tuple=True)
                assert xs.min() >= bx[0] - 1 and xs.max() <= bx[2] + 1


def test_count_matches_the_model_transform(setup):
    engine, run, manifest = setup
    model = engine.build_model(run, "cpu", dataset=manifest)
    batch = next(engine.train_stream(run, manifest, 0))
    c = engine.count(batch)
    model.transform.min_size, model.transform.max_size = (batch["min_size"],), batch["max_size"]
    model.train()
    images, targets = model.transform(batch["images"], [dict(t) for t in batch["targets"]])
    assert c["images"] == len(batch["images"]) == 2
    assert c["instances"] == sum(len(t["boxes"]) for t in batch["targets"]) > 0
    assert c["pixels"] == sum(h * w for h, w in images.image_sizes)


def test_training_steps_lower_the_loss_and_predict_gives_coco_results(setup):
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    engine, run, manifest = setup
    torch.manual_seed(0)
    model = engine.build_model(run, "cpu", dataset=manifest)
    model.train()
    batch = next(engine.train_stream(run, manifest, 0))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def loss_on_batch():
        torch.manual_seed(123)  # the same proposal sampling each time
        with torch.no_grad():
            return float(sum(engine.losses(model, batch).values()))

    before = loss_on_batch()
    for _ in range(6):
        loss = sum(engine.losses(model, batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_on_batch()
    assert after < 0.8 * before, (before, after)

    model.roi_heads.score_thresh = 0.0  # an untrained model scores low; keep every detection
    results = engine.predict(model, run, manifest, "cpu")
    assert model.training  # predict restores the mode
    gt = COCO(manifest["val"]["annotations"])
    cat_ids = {c["id"] for c in manifest["categories"]}
    per_image: dict[int, int] = {}
    assert results
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"}
        assert r["image_id"] in gt.imgs and r["category_id"] in cat_ids and 0 <= r["score"] <= 1
        x, y, w, h = r["bbox"]
        img = gt.imgs[r["image_id"]]
        assert w >= 0 and h >= 0 and x >= -1e-3 and x + w <= img["width"] + 1e-3
        assert isinstance(r["segmentation"]["counts"], str)
        assert tuple(mask_util.decode(r["segmentation"]).shape) == (img["height"], img["width"])
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) <= run["recipe"]["detections_per_image"]
    for iou_type in ("bbox", "segm"):  # pycocotools accepts them
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert len(ev.stats) == 12 and np.all(np.isfinite(ev.stats))


def test_loader_processes_give_the_same_batches(setup):
    """recipe num_workers: batches prepared by loader processes, identical to the in-process
    stream, each of one aspect (wide or tall images only) where the set allows."""
    engine, run, manifest = setup
    plain = engine.train_stream(run, manifest, 2)
    loaded = engine.train_stream({**run, "recipe": {**run["recipe"], "num_workers": 2}}, manifest, 2)
    assert not isinstance(loaded, type(plain))
    for _ in range(4):
        a, b = next(plain), next(loaded)
        assert a["iteration"] == b["iteration"] and a["min_size"] == b["min_size"]
        assert all(torch.equal(x, y) for x, y in zip(a["images"], b["images"]))
        assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(a["targets"], b["targets"]))
    epoch = engine.train_stream(run, manifest, 0)  # the first epoch's batches
    shapes = [[im.shape[-1] > im.shape[-2] for im in next(epoch)["images"]] for _ in range(epoch.sampler.per_epoch)]
    assert sum(len(set(s)) > 1 for s in shapes) <= 1  # one mixed batch of leftovers per epoch at most
