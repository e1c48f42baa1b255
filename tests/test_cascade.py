"""Cascade Mask R-CNN in the torchvision engine (rethink.engines.torchvision_cascade; the paper's Table 3
"+cascade") and the switch from Mask R-CNN to cascade inside a run (recipe cascade_from_iter): training through the
one loop (rethink.loop.train) on the tiny synthetic set, COCO evaluation of predict()'s output,
the weights carried over by engine.load_converted, and the cascade's own mechanics (per-stage IoU
labelling, gradient scale, score averaging, last-stage boxes)."""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
from test_engine_tasks import check_results, short_spec
from test_loop import tiny_specs

from rethink import checkpoint, data, loop, metrics
from rethink.engines import get_engine
from rethink.engines import torchvision_cascade as cascade
from rethink.engines.torchvision_engine import TorchvisionEngine
from rethink.evaluate import evaluate_results

STAGE_LOSSES = {f"loss_{kind}_stage{t}" for kind in ("classifier", "box_reg") for t in range(3)}


def cascade_run(run: dict) -> dict:
    run = copy.deepcopy(run)
    run["recipe"]["task"] = "cascade_mask_rcnn"
    return run


@pytest.fixture(scope="module")
def specs(module_tmp):
    return tiny_specs(module_tmp("cascade"))


@pytest.fixture(scope="module")
def setup(specs):
    spec = short_spec(specs)
    return get_engine("torchvision"), cascade_run(spec["run"]), data.load_manifest(spec["dataset"])


def history_losses(path) -> list[dict]:
    return [json.loads(line)["losses"] for line in open(path)]


# ------------------------------------------------------------------------------ structure
def test_structure_three_stages_with_their_own_heads(setup):
    engine, run, manifest = setup
    model = engine.build_model(run, "cpu", dataset=manifest)
    rh = model.roi_heads
    assert isinstance(rh, cascade.CascadeRoIHeads) and rh.num_stages == 3
    assert not hasattr(rh, "box_head") and not hasattr(rh, "box_predictor")
    assert [m.high_threshold for m in rh.proposal_matchers] == [0.5, 0.6, 0.7]
    assert all(m.low_threshold == m.high_threshold and not m.allow_low_quality_matches for m in rh.proposal_matchers)
    assert [c.weights for c in rh.box_coders] == [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    k = len(manifest["categories"]) + 1
    for head, pred in zip(rh.box_heads, rh.box_predictors):
        assert sum(isinstance(m, torch.nn.Conv2d) for m in head.modules()) == 4
        assert any(isinstance(m, torch.nn.GroupNorm) for m in head.modules())  # the run's norm
        assert pred.cls_score.out_features == k and pred.bbox_pred.out_features == 4  # class-agnostic
    # three distinct heads (not one shared), MSRA-filled convs
    w = [h[0][0].weight for h in rh.box_heads]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert w[0].shape[0] == run["recipe"]["head_channels"]
    assert abs(float(w[0].detach().std()) / (2 / (w[0].shape[0] * 9)) ** 0.5 - 1) < 0.1
    assert rh.box_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32] == rh.mask_roi_pool.scales
    assert rh.fg_bg_sampler.batch_size_per_image == run["recipe"]["roi_batch_per_image"]
    assert rh.detections_per_img == run["recipe"]["detections_per_image"]


# ------------------------------------------------------------------------------ the switch, training, evaluation
class RecordingEngine(TorchvisionEngine):
    """The real engine; keeps the model's weights right after the conversion (before training)."""

    def load_converted(self, model, state_dict, from_task, run):
        self.report = super().load_converted(model, state_dict, from_task, run)
        self.converted = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return self.report


@pytest.fixture(scope="module")
def switched(specs, module_tmp):
    """A run that trains iterations 0-1 as Mask R-CNN and 2-3 as cascade, both segments through
    rethink.loop.train; the second starts from the first's checkpoint with start_task mask_rcnn,
    as JobSpecs.train_spec writes it for the segment at cascade_from_iter."""
    tmp = module_tmp("switch")
    spec_a = short_spec(specs, iterations=2, output=str(tmp / "mask_rcnn-2.pth"))
    assert spec_a["run"]["recipe"]["task"] == "mask_rcnn"
    manifest = data.load_manifest(spec_a["dataset"])
    loop.train(get_engine("torchvision"), spec_a, manifest)
    spec_b = {
        **short_spec(specs, iterations=4),
        "start": 2,
        "start_checkpoint": spec_a["output"],
        "start_task": "mask_rcnn",
        "output": str(tmp / "cascade-4.pth"),
        "history": str(tmp / "history.jsonl"),
    }
    spec_b["run"] = cascade_run(spec_b["run"])
    engine = RecordingEngine()
    loop.train(engine, spec_b, manifest)
    return engine, manifest, spec_a, spec_b


def test_switch_carries_mask_rcnn_weights_into_every_stage(switched):
    engine, manifest, spec_a, spec_b = switched
    before = checkpoint.load(spec_a["output"])["model"]
    after = engine.converted
    assert "3 stages" in engine.report and "freshly initialised" in engine.report

    # backbone, FPN, RPN and mask branch: exactly the checkpoint's
    same = [k for k in before if k in after]
    for prefix in ("backbone.body.", "backbone.fpn.", "rpn.", "roi_heads.mask_head.", "roi_heads.mask_predictor."):
        assert any(k.startswith(prefix) for k in same), prefix
    for k in same:
        assert torch.equal(after[k], before[k]), k
    # every stage's box head and classifier: Mask R-CNN's
    head = {k[len("roi_heads.box_head.") :]: v for k, v in before.items() if k.startswith("roi_heads.box_head.")}
    assert head
    for t in range(3):
        for k, v in head.items():
            assert torch.equal(after[f"roi_heads.box_heads.{t}.{k}"], v), (t, k)
        for p in ("weight", "bias"):
            assert torch.equal(
                after[f"roi_heads.box_predictors.{t}.cls_score.{p}"], before[f"roi_heads.box_predictor.cls_score.{p}"]
            )
    # class-agnostic regressors: the fresh init (the loop seeds before building the model)
    loop.seed_everything(int(spec_b["run"]["seed"]))
    fresh = engine.build_model(spec_b["run"], "cpu", dataset=manifest).state_dict()
    for t in range(3):
        k = f"roi_heads.box_predictors.{t}.bbox_pred.weight"
        assert after[k].shape == (4, 1024) and torch.equal(after[k], fresh[k])
        assert not torch.equal(after[k], after[f"roi_heads.box_predictors.{(t + 1) % 3}.bbox_pred.weight"])
    assert before["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 4 * (len(manifest["categories"]) + 1)
    assert set(after) == set(fresh)


def test_cascade_trains_with_finite_losses_of_every_stage(switched):
    engine, manifest, spec_a, spec_b = switched
    final = checkpoint.load(spec_b["output"])
    assert final["iteration"] == 4 and final["counters"]["images"] > 0
    recs = history_losses(spec_b["history"])
    assert len(recs) == 2
    for losses in recs:
        assert STAGE_LOSSES | {"loss_mask", "loss_objectness", "loss_rpn_box_reg"} == set(losses)
        assert all(math.isfinite(v) for v in losses.values()), losses
        assert losses["loss_classifier_stage2"] > 0 and losses["loss_mask"] > 0
    for k in ("roi_heads.box_heads.2.0.0.weight", "roi_heads.box_predictors.1.bbox_pred.weight"):
        assert not torch.equal(final["model"][k], engine.converted[k]), k  # trained


def test_cascade_predict_gives_coco_results_that_evaluate(switched):
    from pycocotools import mask as mask_util

    engine, manifest, spec_a, spec_b = switched
    run = spec_b["run"]
    model = engine.build_model(run, "cpu", dataset=manifest)
    checkpoint.load_model_weights(model, spec_b["output"])
    model.roi_heads.score_thresh = 0.0
    results = engine.predict(model, run, manifest, "cpu")
    check_results(results, manifest, run["recipe"]["detections_per_image"])
    for r in results[:5]:
        assert mask_util.decode(r["segmentation"]).ndim == 2
    stats = evaluate_results(manifest, results, "cascade_mask_rcnn", log=io.StringIO())
    assert set(stats) == {"bbox", "segm"} and list(stats["bbox"]) == metrics.BOX_STATS
    assert all(math.isfinite(stats[t]["AP"]) for t in stats)


def test_load_converted_refuses_what_does_not_fit(setup):
    engine, run, manifest = setup
    model = engine.build_model(run, "cpu", dataset=manifest)
    mask_run = copy.deepcopy(run)
    mask_run["recipe"]["task"] = "mask_rcnn"
    good = engine.build_model(mask_run, "cpu", dataset=manifest).state_dict()
    untouched = {k: v.clone() for k, v in model.state_dict().items()}
    rid = run["run_id"]

    def refused(state, from_task="mask_rcnn", match=""):
        with pytest.raises(
            ValueError, match=f"run {rid}: architecture switch {from_task} -> cascade_mask_rcnn.*{match}"
        ):
            engine.load_converted(model, state, from_task, run)
        for k, v in model.state_dict().items():  # nothing was loaded
            assert torch.equal(v, untouched[k]), k

    other_classes = engine.build_model({**mask_run, "num_classes": 5}, "cpu").state_dict()  # 5 categories, not 2
    refused(
        other_classes,
        match=r"roi_heads.box_predictor.cls_score.weight \(-> roi_heads.box_predictors.0.cls_score"
        r".weight\): shape \(6, 1024\)",
    )
    faster = engine.build_model(
        {**mask_run, "recipe": {**mask_run["recipe"], "task": "faster_rcnn"}}, "cpu", dataset=manifest
    ).state_dict()
    refused(faster, match="roi_heads.mask_head.*: not in the checkpoint")
    refused({**good, "roi_heads.extra.weight": torch.zeros(1)}, match="roi_heads.extra.weight: not in the cascade")
    refused(model.state_dict(), match="not a Mask R-CNN")
    refused(good, from_task="keypoint_rcnn", match="converts mask_rcnn -> cascade_mask_rcnn only")
    report = engine.load_converted(model, good, "mask_rcnn", run)
    assert "3 stages" in report
    assert torch.equal(model.state_dict()["backbone.body.conv1.weight"], good["backbone.body.conv1.weight"])


# ------------------------------------------------------------------------------ cascade mechanics
def test_stage_labels_use_the_stage_iou_and_box_weights(setup):
    engine, run, manifest = setup
    rh = engine.build_model(run, "cpu", dataset=manifest).roi_heads
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2])}
    props = torch.tensor([[0.0, 0, 10, 5.5], [0, 0, 10, 6.5], [0, 0, 10, 7.5], [0, 0, 10, 3]])  # IoU .55 .65 .75 .3
    expect = {0: [2, 2, 2, 0], 1: [0, 2, 2, 0], 2: [0, 0, 2, 0]}
    for t, want in expect.items():
        (labels,), (targets,) = rh._label(t, [props], [gt])
        assert labels.tolist() == want, t
    (_,), (targets,) = rh._label(
        2, [props], [gt]
    )  # (30, 30, 15, 15): dy = 30 * (5 - 3.75) / 7.5, dh = 15 log(10 / 7.5)
    assert targets[2].tolist() == pytest.approx([0.0, 5.0, 0.0, 15 * math.log(10 / 7.5)], abs=1e-4)
    (labels,), _ = rh._label(1, [torch.zeros((0, 4))], [gt])  # every refined box empty: nothing, not an error
    assert labels.numel() == 0


def test_gradient_to_the_pooled_features_is_scaled_by_one_third(setup):
    x = torch.ones(3, requires_grad=True)
    cascade.scale_gradient(x * 2, 1 / 3).sum().backward()
    assert x.grad.tolist() == pytest.approx([2 / 3] * 3)

    engine, run, manifest = setup
    torch.manual_seed(0)
    model = engine.build_model(run, "cpu", dataset=manifest).train()
    rh = model.roi_heads
    pooled, head_in = [], []

    def keep(seen, x):
        x.retain_grad()
        seen.append(x)

    hooks = [rh.box_roi_pool.register_forward_hook(lambda m, i, o: keep(pooled, o))]
    hooks += [h.register_forward_pre_hook(lambda m, i: keep(head_in, i[0])) for h in rh.box_heads]
    batch = next(iter(engine.train_stream(run, manifest, 0)))
    losses = engine.losses(model, batch)
    for h in hooks:
        h.remove()
    assert STAGE_LOSSES <= set(losses)
    sum(v for k, v in losses.items() if k in STAGE_LOSSES).backward()
    assert len(pooled) == len(head_in) == 3
    for t, (p, h) in enumerate(zip(pooled, head_in)):
        assert float(h.grad.abs().max()) > 0, t
        torch.testing.assert_close(p.grad, h.grad / 3)
    # stage t > 0 trains on every box of stage t - 1 (no resampling), at most as many
    assert pooled[1].shape[0] <= pooled[0].shape[0] and pooled[2].shape[0] <= pooled[1].shape[0]


def test_inference_averages_the_stages_scores_and_takes_the_last_stages_boxes(setup):
    engine, run, manifest = setup
    torch.manual_seed(0)
    model = engine.build_model(run, "cpu", dataset=manifest).eval()
    rh = model.roi_heads
    k = len(manifest["categories"]) + 1
    assert k == 3
    biases = [torch.tensor([0.0, 2.0, 0.0]), torch.tensor([0.0, 0.0, 3.0]), torch.tensor([1.0, -1.0, 0.0])]
    with torch.no_grad():
        for t, pred in enumerate(rh.box_predictors):
            pred.cls_score.weight.zero_()  # constant logits per stage: its probabilities whatever the RoI
            pred.cls_score.bias.copy_(biases[t])
            pred.bbox_pred.weight.zero_()
            pred.bbox_pred.bias.zero_()  # stages 0 and 1: the identity
        rh.box_predictors[2].bbox_pred.bias.copy_(torch.tensor([0.0, 0.0, 15 * math.log(0.5), 0.0]))  # width / 2
    rh.score_thresh, rh.nms_thresh, rh.detections_per_img = 0.0, 1.0, 10_000

    split_img = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        images, _ = model.transform([split_img])
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        (out,), _ = rh(features, proposals, images.image_sizes)
    probs = torch.stack([b.softmax(0) for b in biases])
    mean = probs.mean(0)
    for c in (1, 2):
        scores = out["scores"][out["labels"] == c]
        assert len(scores) > 0
        torch.testing.assert_close(scores, torch.full_like(scores, float(mean[c])))
        assert all(abs(float(mean[c] - probs[t, c])) > 0.05 for t in range(3))  # no single stage gives it
    # boxes: the (clipped) proposals with the last stage's regression, under its weights (30, 30, 15, 15)
    p = proposals[0]
    cx, w = (p[:, 0] + p[:, 2]) / 2, p[:, 2] - p[:, 0]
    expected = torch.stack([cx - w / 4, p[:, 1], cx + w / 4, p[:, 3]], 1)
    expected = expected[(expected[:, 2] - expected[:, 0] >= 1e-2) & (expected[:, 3] - expected[:, 1] >= 1e-2)]
    got = out["boxes"][out["labels"] == 1]
    assert len(got) == len(expected) > 0
    dist = (got[:, None] - expected[None]).abs().amax(-1)  # L-inf distance of every pair
    assert float(dist.min(1).values.max()) < 1e-3 and float(dist.min(0).values.max()) < 1e-3
    assert out["masks"].shape == (len(out["boxes"]), 1, 28, 28)
