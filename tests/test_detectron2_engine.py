# over 400 lines: its scenarios share the module-scoped detectron2 engine, dataset and paper-plan fixtures
"""The detectron2 engine with real detectron2 on CPU: the generated CfgNode equals
d2config.resolved() (hence detectron2's own configs, see test_detectron2_config.py), a tiny
R50-FPN GN Mask R-CNN trains two iterations through engine.losses + SGD, the train stream is
a function of (seed, iteration), predict() gives COCO results that pycocotools accepts, and
ImageNet .pkl weights in Caffe2 names load. The section 5.1 VGG16 Faster R-CNN (no norm) builds,
freezes conv1_x/conv2_x only when pre-trained, trains two iterations, predicts, loads caffe VGG16 blobs.
Table 3's Cascade Mask R-CNN: its config has detectron2's own cascade fields, the project's loop
switches a run from Mask R-CNN to cascade at cascade_from_iter (engine.load_converted), and a
cascade with test-time augmentation (GeneralizedRCNNWithTTA) predicts COCO results.

detectron2 is on no package index: without it every test here is skipped (see the engine's INSTALL_HINT).
Run with an environment that has it built from source:  python -m pytest tests/test_detectron2_engine.py"""

from __future__ import annotations

import copy
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import detectron2  # noqa: F401
    from detectron2 import _C  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(
        f"detectron2 is not importable ({e}); see rethink.engines.detectron2_engine.INSTALL_HINT",
        allow_module_level=True,
    )

from rethink import config as rconfig
from rethink import data as rdata
from rethink import grid as rgrid
from rethink.engines import detectron2_config as d2config
from rethink.engines import get_engine
from rethink.job_specs import JobSpecs
from rethink.paths import Paths
from rethink.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def engine():
    return get_engine("detectron2")


@pytest.fixture(scope="module")
def paper():
    cfg = rconfig.load(ROOT / "config.yaml")
    plan = Plan(rgrid.build(cfg, "config.yaml"))
    return plan, JobSpecs(Paths(cfg, plan))


@pytest.fixture(scope="module")
def dataset(module_tmp) -> dict:
    """A tiny COCO-format set made by the project's own data preparation: 4 train, 2 val images."""
    out = module_tmp("d2data") / "dataset.json"
    return rdata.prepare(
        {
            "name": "tiny_d2",
            "kind": "synthetic",
            "train_size": 4,
            "val_size": 2,
            "image_size": [96, 128],
            "categories": 3,
            "max_objects": 3,
            "seed": 0,
            "output": str(out),
        }
    )


def tiny_run(paper, norm="GN", init="random", seed=0) -> dict:
    """The paper's R50-FPN run at laptop scale: small images, few proposals and RoIs, batch 2."""
    plan, _ = paper
    run = copy.deepcopy(plan.run(f"R50-{norm}-{init}-coco_full-3x-s0").to_dict())
    run["seed"] = seed
    run["recipe"].update(
        batch=2,
        min_size_train=[96],
        max_size_train=160,
        min_size_test=96,
        max_size_test=160,
        rpn_pre_nms_train=200,
        rpn_post_nms_train=100,
        rpn_pre_nms_test=200,
        rpn_post_nms_test=100,
        roi_batch_per_image=64,
        detections_per_image=20,
        num_workers=0,
        gpus=0,
    )
    return run


def _nested(value):
    """Tuples (of tuples) as lists, as d2config.resolved() writes them."""
    return [_nested(v) for v in value] if isinstance(value, (list, tuple)) else value


def cfg_value(cfg, key):
    node = cfg
    for p in key.split("."):
        node = node[p]
    return _nested(node)


@pytest.mark.parametrize(
    "run_id",
    [
        "R50-GN-random-coco_full-3x-s0",
        "R50-GN-imagenet-coco_full-6x-s0",
        "R50-SyncBN-random-coco_full-2x-s0",
        "R50-SyncBN-imagenet-coco_full-3x-s0",
        "R101-GN-imagenet-coco_full-4x-s0",
    ],
)
def test_cfgnode_equals_resolved(engine, paper, run_id):
    """get_cfg + model-zoo yaml + overrides (the real CfgNode) = d2config.resolved(), key by key."""
    plan, specs = paper
    spec = specs.train_spec(plan.segments_of_run(run_id)[-1])
    run = plan.run(run_id)
    weights = specs.paths.init_weights(run.init, run.backbone, run.norm)
    cfg = engine.config(spec["run"], spec["schedule"], weights)
    want = d2config.resolved(spec["run"], spec["schedule"], weights)
    got = {k: cfg_value(cfg, k) for k in want}
    assert {k: (got[k], v) for k, v in want.items() if got[k] != v} == {}


def test_train_two_iterations_and_predict(engine, paper, dataset):
    run = tiny_run(paper)
    t0 = time.perf_counter()
    model = engine.build_model(run, CPU, False, dataset=dataset)
    t_build = time.perf_counter() - t0
    assert model.roi_heads.box_predictor.cls_score.out_features == 3 + 1  # 3 classes + background
    assert isinstance(model.backbone.bottom_up.stem.conv1.norm, torch.nn.GroupNorm)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == len(list(model.parameters()))  # scratch: nothing frozen
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    stem0 = model.backbone.bottom_up.stem.conv1.weight.detach().clone()
    ann = rdata_annotations(dataset["train"]["annotations"])
    stream = engine.train_stream(run, dataset, 0, 0, 1)
    t_iters = []
    for _ in range(2):
        t = time.perf_counter()
        batch = next(stream)
        counts = engine.count(batch)
        assert counts["images"] == 2
        assert counts["instances"] == sum(ann[d["image_id"]] for d in batch)
        assert counts["pixels"] == sum(d["image"].shape[1] * d["image"].shape[2] for d in batch)
        assert all(min(d["image"].shape[1:]) == 96 for d in batch)  # resized to min_size_train
        losses = engine.losses(model, batch)
        assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        opt.step()
        t_iters.append(time.perf_counter() - t)
    assert not torch.equal(stem0, model.backbone.bottom_up.stem.conv1.weight)

    # after 2 steps almost all scores sit below detectron2's 0.05 threshold: keep every detection
    # (MODEL.ROI_HEADS.SCORE_THRESH_TEST 0, as detectron2's smoke tests do)
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    t = time.perf_counter()
    results = engine.predict(model, run, dataset, CPU)
    t_pred = time.perf_counter() - t
    assert model.training  # predict restores the mode
    print(
        f"\nR50-FPN GN, CPU, 96px: build {t_build:.2f}s, iterations {', '.join(f'{x:.2f}s' for x in t_iters)}, "
        f"predict 2 images {t_pred:.2f}s, {len(results)} detections"
    )
    assert 0 < len(results) <= 2 * 20  # detections_per_image 20
    val = rdata_json(dataset["val"]["annotations"])
    ids = {im["id"] for im in val["images"]}
    cats = {c["id"] for c in val["categories"]}
    for r in results:
        assert r["image_id"] in ids and r["category_id"] in cats
        assert len(r["bbox"]) == 4 and 0.0 <= r["score"] <= 1.0
        assert isinstance(r["segmentation"]["counts"], str)
    # the project's evaluation reads them with pycocotools
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(dataset["val"]["annotations"])
    for iou_type in ("bbox", "segm"):
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert len(ev.stats) == 12


def rdata_json(path):
    import json

    with open(path) as f:
        return json.load(f)


def rdata_annotations(path) -> dict:
    counts: dict = {}
    for a in rdata_json(path)["annotations"]:
        counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
    return counts


def _batches(engine, run, dataset, start, n, rank=0, world=1):
    stream = engine.train_stream(run, dataset, start, rank, world)
    return [next(stream) for _ in range(n)]


def _same(a, b) -> bool:
    return [d["image_id"] for d in a] == [d["image_id"] for d in b] and all(
        torch.equal(x["image"], y["image"]) for x, y in zip(a, b)
    )


def test_stream_depends_only_on_seed_and_iteration(engine, paper, dataset):
    run = tiny_run(paper)
    run["recipe"]["min_size_train"] = [80, 96, 112]  # random scale choice: must be reproduced too
    from_start = _batches(engine, run, dataset, 0, 5)
    resumed = _batches(engine, run, dataset, 3, 2)
    assert _same(from_start[3], resumed[0]) and _same(from_start[4], resumed[1])
    assert [d["iteration"] for d in resumed[0]] == [3, 3]
    # every epoch (2 iterations of 4 images) is a permutation of the train set
    assert sorted(d["image_id"] for b in from_start[:2] for d in b) == [1, 2, 3, 4]
    other = _batches(engine, tiny_run(paper, seed=1), dataset, 0, 5)
    assert not all(_same(a, b) for a, b in zip(from_start, other))
    # two processes split each global batch: together they see the one-process batch
    r0 = _batches(engine, run, dataset, 3, 1, rank=0, world=2)[0]
    r1 = _batches(engine, run, dataset, 3, 1, rank=1, world=2)[0]
    assert _same(r0 + r1, from_start[3])


def test_syncbn_on_cpu_is_naive_syncbn(engine, paper, dataset):
    from detectron2.layers import NaiveSyncBatchNorm

    run = tiny_run(paper, norm="SyncBN")
    assert engine.config(run)["MODEL"]["RESNETS"]["NORM"] == "SyncBN"
    model = engine.build_model(run, CPU, False, dataset=dataset)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, NaiveSyncBatchNorm) for m in norms)
    assert torch.allclose(
        model.pixel_std.flatten(), torch.tensor([57.375, 57.12, 58.395])
    )  # as scratch_mask_rcnn_R_50_FPN_9x_syncbn


def test_same_seed_same_init(engine, paper, dataset):
    a = engine.build_model(tiny_run(paper), CPU, False, dataset=dataset).state_dict()
    b = engine.build_model(tiny_run(paper), CPU, False, dataset=dataset).state_dict()
    c = engine.build_model(tiny_run(paper, seed=1), CPU, False, dataset=dataset).state_dict()
    key = "backbone.bottom_up.res2.0.conv1.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


def test_load_imagenet_pkl(engine, paper, dataset, tmp_path):
    """A Caffe2-named ImageNet .pkl (as detectron2's FAIR GN models): numpy arrays under
    conv1_w, conv1_gn_s/_b, res2_0_branch2a_w; detectron2's heuristics rename and load them."""
    run = tiny_run(paper, init="imagenet")
    model = engine.build_model(run, CPU, False, dataset=dataset)
    assert model.backbone.bottom_up.stem.conv1.weight.requires_grad is False  # FREEZE_AT 2, as detectron2
    rng = np.random.default_rng(0)
    blobs = {
        "conv1_w": rng.normal(size=(64, 3, 7, 7)).astype(np.float32),
        "conv1_gn_s": rng.normal(size=64).astype(np.float32),
        "conv1_gn_b": rng.normal(size=64).astype(np.float32),
        "res2_0_branch2a_w": rng.normal(size=(64, 64, 1, 1)).astype(np.float32),
        "pred_w": rng.normal(size=(1000, 2048)).astype(np.float32),
    }  # ImageNet classifier: ignored
    path = tmp_path / "R50-GN.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f)
    engine.load_init_weights(model, str(path), run)
    bu = model.backbone.bottom_up
    assert np.array_equal(bu.stem.conv1.weight.detach().numpy(), blobs["conv1_w"])
    assert np.array_equal(bu.stem.conv1.norm.weight.detach().numpy(), blobs["conv1_gn_s"])
    assert np.array_equal(bu.stem.conv1.norm.bias.detach().numpy(), blobs["conv1_gn_b"])
    assert np.array_equal(bu.res2[0].conv1.weight.detach().numpy(), blobs["res2_0_branch2a_w"])
    # a file with nothing for this backbone is an error, not a silent random init
    bad = tmp_path / "bad.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"fc_w": np.zeros((10, 10), np.float32)}, f)
    with pytest.raises(RuntimeError, match="no backbone weight"):
        engine.load_init_weights(model, str(bad), run)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        engine.load_init_weights(model, str(tmp_path / "missing.pkl"), run)


def test_norm_layers_get_no_weight_decay(engine, paper, dataset):
    run = tiny_run(paper)
    model = engine.build_model(run, CPU, False, dataset=dataset)
    groups = engine.optimizer_param_groups(model, run)
    norm_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()}
    seen = 0
    for g in groups:
        for p in g["params"]:
            seen += 1
            assert g["weight_decay"] == (0.0 if id(p) in norm_params else run["recipe"]["weight_decay"])
    assert seen == sum(1 for p in model.parameters() if p.requires_grad) and norm_params


DDP_SCRIPT = r"""
import copy, json, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from rethink.engines import get_engine
from rethink.data import load_manifest
dist.init_process_group("gloo")
torch.set_num_threads(1)
rank, world = dist.get_rank(), dist.get_world_size()
run, man = json.loads(sys.argv[2]), load_manifest(sys.argv[3])
eng = get_engine("detectron2")
model = eng.build_model(run, torch.device("cpu"), True, dataset=man)
ddp = DistributedDataParallel(model, broadcast_buffers=False)
opt = torch.optim.SGD(ddp.parameters(), lr=0.001, momentum=0.9)
stream = eng.train_stream(run, man, 0, rank, world)
ids = []
for i in range(2):
    b = next(stream)
    ids.append([d["image_id"] for d in b])
    loss = sum(eng.losses(ddp, b).values())
    opt.zero_grad(); loss.backward(); opt.step()
w = model.backbone.bottom_up.res2[0].conv1.weight.detach().clone()
ws = [torch.zeros_like(w) for _ in range(world)]
dist.all_gather(ws, w)
model.roi_heads.box_predictor.test_score_thresh = 0.0
res = eng.predict(ddp, run, man, torch.device("cpu"))
# a file per process: two processes printing to one pipe can interleave their lines
with open(f"{sys.argv[4]}/result{rank}.json", "w") as f:
    json.dump({"rank": rank, "ids": ids, "in_sync": all(torch.equal(ws[0], x) for x in ws),
               "norms": sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}),
               "results": sorted((r["image_id"], r["category_id"], round(r["score"], 5)) for r in res)}, f)
dist.barrier()
dist.destroy_process_group()
"""


def test_two_processes_sync_bn(engine, paper, dataset, tmp_path):
    """torchrun, 2 CPU processes (gloo), SyncBN: each process trains on its half of every global
    batch, the weights stay equal, and predict() gives every process the whole val set."""
    import json
    import subprocess
    import sys

    run = tiny_run(paper, norm="SyncBN")
    run["recipe"]["batch"] = 4
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    manifest = tmp_path / "dataset.json"
    manifest.write_text(json.dumps(dataset))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(ROOT / "workflow_scripts"),
            json.dumps(run),
            str(manifest),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = sorted((json.loads(p.read_text()) for p in tmp_path.glob("result*.json")), key=lambda r: r["rank"])
    assert len(out) == 2
    one = _batches(engine, run, dataset, 0, 2)
    for i in range(2):
        assert out[0]["ids"][i] + out[1]["ids"][i] == [d["image_id"] for d in one[i]]
    assert out[0]["in_sync"] and out[1]["in_sync"]
    assert out[0]["norms"] == ["NaiveSyncBatchNorm"]
    val_ids = {im["id"] for im in rdata_json(dataset["val"]["annotations"])["images"]}
    assert out[0]["results"] == out[1]["results"] and {r[0] for r in out[0]["results"]} == val_ids


def test_project_loop_resumes_bit_exact(tmp_path):
    """The project's loop (rethink.loop) drives the detectron2 engine: a segment split in two
    (0->1, then 1->2 from the checkpoint) ends with the same weights as 0->2 in one go."""
    from rethink.segment import train_segment

    cfg = rconfig.load(ROOT / "configs" / "tiny.yaml")
    cfg.update(engine="detectron2", workdir=str(tmp_path / "work"))
    plan = Plan(rgrid.build(cfg, "configs/tiny.yaml"))
    specs = JobSpecs(Paths(cfg, plan))
    spec = specs.train_spec(plan.segments_of_run("R18-GN-random-synthetic-2x-s0")[0])
    rdata.prepare(
        {
            **specs.data_spec("synthetic"),
            "train_size": 4,
            "val_size": 1,
            "image_size": [64, 96],
            "output": spec["dataset"],
        }
    )
    spec["run"]["recipe"].update(
        min_size_train=[64], max_size_train=96, rpn_pre_nms_train=100, rpn_post_nms_train=50, roi_batch_per_image=32
    )

    def segment(a, b, start, out):
        s = copy.deepcopy(spec)
        s.update(
            start=a,
            end=b,
            start_checkpoint=start,
            output=str(tmp_path / out),
            resume_dir=str(tmp_path / f"resume-{out}"),
        )
        return train_segment(s)

    whole = segment(0, 2, None, "whole.pth")
    segment(0, 1, None, "first.pth")
    second = segment(1, 2, str(tmp_path / "first.pth"), "second.pth")
    assert whole["counters"] == second["counters"] and whole["counters"]["images"] == 4
    a = torch.load(tmp_path / "whole.pth", weights_only=False)["model"]
    b = torch.load(tmp_path / "second.pth", weights_only=False)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- VGG16 (the paper's section 5.1)


def vgg_run(paper, init="random", seed=0) -> dict:
    """Section 5.1's Faster R-CNN VGG16 without normalisation, at laptop scale."""
    run = tiny_run(paper, init=init, seed=seed)
    run.update(backbone="VGG16", norm="none", run_id=f"VGG16-none-{init}-tiny")
    run["recipe"].update(task="faster_rcnn", min_size_train=[64], max_size_train=96, min_size_test=64, max_size_test=96)
    return run


def test_c4_base_table_is_detectron2s(engine):
    """d2config's transcription of COCO-Detection/faster_rcnn_R_50_C4_1x.yaml (the VGG16 runs'
    base, not in paper/detectron2_configs.json) = the installed detectron2's get_cfg + merge_from_file."""
    from detectron2.config import get_cfg

    from rethink.engines.detectron2_engine import config_file

    cfg = get_cfg()
    cfg.merge_from_file(config_file(d2config.C4_DETECTION))
    want = {**d2config.DEFAULTS, **d2config.BASE_CONFIGS[d2config.C4_DETECTION]}
    got = {k: cfg_value(cfg, k) for k in want}
    assert {k: (got[k], v) for k, v in want.items() if got[k] != v} == {}


@pytest.mark.parametrize("init", ["random", "imagenet"])
def test_vgg16_cfgnode_equals_resolved(engine, paper, init):
    run = vgg_run(paper, init)
    weights = None if init == "random" else "/x/VGG16-none.pkl"
    cfg = engine.config(run, None, weights)
    want = d2config.resolved(run, None, weights)
    got = {k: cfg_value(cfg, k) for k in want}
    assert {k: (got[k], v) for k, v in want.items() if got[k] != v} == {}
    assert cfg.MODEL.BACKBONE.NAME == "build_vgg16_backbone" and cfg.MODEL.MASK_ON is False
    engine.config(run, None, weights)  # the backbone is registered once, a second config is fine


def _frozen_blocks(backbone) -> list[bool]:
    return [
        all(not p.requires_grad for n in names for p in getattr(backbone, n).parameters()) for names in backbone.blocks
    ]


def test_vgg16_builds_trains_and_predicts(engine, paper, tmp_path):
    ds = rdata.prepare(
        {
            "name": "tiny_vgg",
            "kind": "synthetic",
            "train_size": 4,
            "val_size": 2,
            "image_size": [64, 96],
            "categories": 3,
            "max_objects": 3,
            "seed": 0,
            "output": str(tmp_path / "dataset.json"),
        }
    )
    run = vgg_run(paper)
    t0 = time.perf_counter()
    model = engine.build_model(run, CPU, False, dataset=ds)
    t_build = time.perf_counter() - t0
    bb = model.backbone
    assert [n for n, _ in bb.named_children()] == [
        f"conv{b}_{i}" for b, k in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, k + 1)
    ]
    shape = bb.output_shape()["vgg_conv5"]
    assert (shape.channels, shape.stride) == (512, 16)
    assert not any(isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm)) for m in model.modules())
    out = bb(torch.zeros(1, 3, 64, 96))
    assert list(out) == ["vgg_conv5"] and tuple(out["vgg_conv5"].shape) == (1, 512, 4, 6)
    # MSRA fill: std sqrt(2 / fan_out), zero bias
    w = bb.conv4_1.weight
    assert abs(w.std().item() / (2.0 / (512 * 9)) ** 0.5 - 1) < 0.05 and not bb.conv4_1.bias.any()
    head = model.roi_heads.box_head
    assert (head.fc1.in_features, head.fc1.out_features, head.fc2.out_features) == (512 * 7 * 7, 4096, 4096)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3 + 1
    assert not hasattr(model.roi_heads, "mask_head") or model.roi_heads.mask_on is False
    # random init: nothing frozen; pre-trained: conv1_x and conv2_x (FREEZE_AT 2), as Faster R-CNN
    assert _frozen_blocks(bb) == [False] * 5
    assert all(p.requires_grad for p in model.parameters())
    pre = engine.build_model(vgg_run(paper, "imagenet"), CPU, False, dataset=ds)
    assert _frozen_blocks(pre.backbone) == [True, True, False, False, False]
    assert pre.backbone.conv3_1.weight.requires_grad and not pre.backbone.conv2_2.bias.requires_grad

    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    stream = engine.train_stream(run, ds, 0, 0, 1)
    conv1 = bb.conv1_1.weight.detach().clone()
    t_iters = []
    for _ in range(2):
        t = time.perf_counter()
        batch = next(stream)
        assert all(min(d["image"].shape[1:]) == 64 for d in batch)
        losses = engine.losses(model, batch)
        assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        opt.step()
        t_iters.append(time.perf_counter() - t)
    assert not torch.equal(conv1, bb.conv1_1.weight)  # random init trains conv1 too

    model.roi_heads.box_predictor.test_score_thresh = 0.0
    t = time.perf_counter()
    results = engine.predict(model, run, ds, CPU)
    t_pred = time.perf_counter() - t
    print(
        f"\nVGG16 Faster R-CNN, CPU, 64px: build {t_build:.2f}s, iterations "
        f"{', '.join(f'{x:.2f}s' for x in t_iters)}, predict 2 images {t_pred:.2f}s, {len(results)} detections"
    )
    assert 0 < len(results) <= 2 * 20
    val = rdata_json(ds["val"]["annotations"])
    ids, cats = {im["id"] for im in val["images"]}, {c["id"] for c in val["categories"]}
    for r in results:
        assert r["image_id"] in ids and r["category_id"] in cats and "segmentation" not in r
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0 and 0.0 <= r["score"] <= 1.0
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(ds["val"]["annotations"])
    ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert len(ev.stats) == 12


def test_vgg16_loads_caffe_pkl(engine, paper, tmp_path):
    """The caffe VGG16 in Caffe2 blob names: convs into the backbone, fc7 into the box head's fc2;
    the classifier (fc8) is ignored; a wrong shape or a file without convs is an error."""
    run = vgg_run(paper, "imagenet")
    model = engine.build_model(run, CPU, False)
    rng = np.random.default_rng(0)
    blobs = {
        "conv1_1_w": rng.normal(size=(64, 3, 3, 3)).astype(np.float32),
        "conv1_1_b": rng.normal(size=64).astype(np.float32),
        "conv5_3_w": rng.normal(size=(512, 512, 3, 3)).astype(np.float32),
        "fc7_b": rng.normal(size=4096).astype(np.float32),
        "fc8_w": rng.normal(size=(1000, 4096)).astype(np.float32),
    }
    path = tmp_path / "VGG16-none.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    conv2 = model.backbone.conv2_1.weight.detach().clone()
    engine.load_init_weights(model, str(path), run)
    assert np.array_equal(model.backbone.conv1_1.weight.detach().numpy(), blobs["conv1_1_w"])
    assert np.array_equal(model.backbone.conv1_1.bias.detach().numpy(), blobs["conv1_1_b"])
    assert np.array_equal(model.backbone.conv5_3.weight.detach().numpy(), blobs["conv5_3_w"])
    assert np.array_equal(model.roi_heads.box_head.fc2.bias.detach().numpy(), blobs["fc7_b"])
    assert torch.equal(conv2, model.backbone.conv2_1.weight)  # not in the file: left as it was
    bad = tmp_path / "bad_shape.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"conv1_1_w": np.zeros((64, 3, 7, 7), np.float32)}, f)
    with pytest.raises(RuntimeError, match=r"bad_shape.pkl: conv1_1_w has shape \(64, 3, 7, 7\)"):
        engine.load_init_weights(model, str(bad), run)
    resnet = tmp_path / "R-50.pkl"
    with open(resnet, "wb") as f:
        pickle.dump({"res2_0_branch2a_w": np.zeros((64, 64, 1, 1), np.float32)}, f)
    with pytest.raises(RuntimeError, match="no backbone weight"):
        engine.load_init_weights(model, str(resnet), run)


# ---------------------------------------------------------------- Cascade Mask R-CNN (the paper's Table 3)
# "we train Mask R-CNN from scratch without cascade, and switch to cascade in the final 270k
# iterations": a run with recipe cascade_from_iter N trains iterations < N as mask_rcnn; the plan
# cuts a segment at N whose spec carries start_task mask_rcnn, and the loop maps the checkpoint
# through engine.load_converted. Built from configs/tiny.yaml (R18-GN, synthetic data, CPU).

CASCADE_RUN = "R18-GN-random-synthetic-2x-s0-cascade"
CASCADE_YAML = "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml"  # detectron2's own Cascade Mask R-CNN
CASCADE_X152_YAML = "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml"  # its X152 GN cascade


def cascade_plan(tmp_path, cascade_from_iter=2):
    """configs/tiny.yaml with one experiment: R18-GN from scratch, 4 iterations (2x at 2 per x),
    Mask R-CNN for iterations 0-1, cascade from `cascade_from_iter` on; the detectron2 engine."""
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw.update(
        engine="detectron2",
        workdir=str(tmp_path / "work"),
        results=str(tmp_path / "results"),
        eval_period=100,
        max_segment_iters=100,
    )
    raw["recipe"].update(
        iters_per_x=2,
        warmup_iters=1,
        lr_drops_from_end=[2, 1],
        min_size_train=[64],
        max_size_train=96,
        min_size_test=64,
        max_size_test=96,
        rpn_pre_nms_train=100,
        rpn_post_nms_train=50,
        rpn_pre_nms_test=100,
        rpn_post_nms_test=50,
        roi_batch_per_image=32,
        detections_per_image=20,
    )
    raw["experiments"] = {
        "cascade_tiny": {
            "description": "Table 3 at laptop scale: Mask R-CNN, then cascade",
            "backbone": ["R18"],
            "norm": ["GN"],
            "init": ["random"],
            "data": ["synthetic"],
            "schedule": ["2x"],
            "seed": [0],
            "variant": "cascade",
            "recipe": {"task": "cascade_mask_rcnn", "cascade_from_iter": cascade_from_iter},
        }
    }
    cfg = rconfig.validate(raw, "tiny cascade config")
    plan = Plan(rgrid.build(cfg, "tiny cascade config"))
    return plan, JobSpecs(Paths(cfg, plan))


def cascade_run(tmp_path, backbone="R18", tta=False) -> dict:
    """The cascade run as it trains after the switch (recipe task cascade_mask_rcnn)."""
    plan, _ = cascade_plan(tmp_path)
    run = plan.run(CASCADE_RUN).to_dict()
    run["recipe"] = rgrid.recipe_at(run["recipe"], run["recipe"]["cascade_from_iter"])
    run["recipe"]["tta"] = tta
    if backbone != "R18":
        run.update(backbone=backbone, run_id=CASCADE_RUN.replace("R18", backbone))
    return run


CASCADE_FIELDS = [
    "MODEL.META_ARCHITECTURE",
    "MODEL.MASK_ON",
    "MODEL.ROI_HEADS.NAME",
    "MODEL.ROI_HEADS.IOU_THRESHOLDS",
    "MODEL.ROI_BOX_CASCADE_HEAD.IOUS",
    "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS",
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK",
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
]


@pytest.mark.parametrize("backbone", ["R18", "R50", "X152"])
def test_cascade_config_is_detectron2s(engine, tmp_path, backbone):
    """The cascade run's CfgNode has detectron2's own Cascade Mask R-CNN fields (its configs/Misc
    cascade yaml read with get_cfg + merge_from_file), the paper's 3 stages at IoU 0.5/0.6/0.7 with
    class-agnostic box regression, the box head of detectron2's X152 GN cascade (4 conv + 1 fc,
    GN), and equals d2config.resolved() key by key."""
    from detectron2.config import get_cfg

    from rethink.engines.detectron2_engine import config_file

    run = cascade_run(tmp_path, backbone)
    cfg = engine.config(run)
    ref = get_cfg()
    ref.merge_from_file(config_file(CASCADE_YAML))
    assert {
        k: (cfg_value(cfg, k), cfg_value(ref, k)) for k in CASCADE_FIELDS if cfg_value(cfg, k) != cfg_value(ref, k)
    } == {}
    assert cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads" and cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG is True
    assert cfg_value(cfg, "MODEL.ROI_BOX_CASCADE_HEAD.IOUS") == [0.5, 0.6, 0.7]
    assert cfg_value(cfg, "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS") == [
        [10, 10, 5, 5],
        [20, 20, 10, 10],
        [30, 30, 15, 15],
    ]
    assert cfg.MODEL.MASK_ON is True and cfg.MODEL.KEYPOINT_ON is False and cfg.TEST.AUG.ENABLED is False
    x152 = get_cfg()
    x152.merge_from_file(config_file(CASCADE_X152_YAML))
    for key in (
        "MODEL.ROI_BOX_HEAD.NAME",
        "MODEL.ROI_BOX_HEAD.NUM_CONV",
        "MODEL.ROI_BOX_HEAD.NUM_FC",
        "MODEL.ROI_BOX_HEAD.NORM",
        "MODEL.ROI_HEADS.NAME",
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
    ):
        assert cfg_value(cfg, key) == cfg_value(x152, key), key
    if backbone == "X152":  # the ResNeXt of detectron2's X152 cascade (without its deformable convs)
        for key in (
            "MODEL.RESNETS.DEPTH",
            "MODEL.RESNETS.NUM_GROUPS",
            "MODEL.RESNETS.WIDTH_PER_GROUP",
            "MODEL.RESNETS.STRIDE_IN_1X1",
        ):
            assert cfg_value(cfg, key) == cfg_value(x152, key), key
    want = d2config.resolved(run)
    got = {k: cfg_value(cfg, k) for k in want}
    assert {k: (got[k], v) for k, v in want.items() if got[k] != v} == {}
    # before the switch the same run is a plain Mask R-CNN
    before = dict(run, recipe=rgrid.recipe_at(run["recipe"], run["recipe"]["cascade_from_iter"] - 1))
    assert engine.config(before).MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    assert engine.config(dict(run, recipe={**run["recipe"], "tta": True})).TEST.AUG.ENABLED is True


def _read_history(path) -> list[dict]:
    import json

    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_switch_to_cascade_through_the_loop(tmp_path, capsys):
    """Segment 0->2 trains Mask R-CNN, segment 2->4 (start_task mask_rcnn) the cascade: the loop
    maps the iteration-2 checkpoint through load_converted: same-name tensors copied, the box
    head and classifier into each of the 3 stages, the class-agnostic regressors fresh; all 3
    stages' losses are finite in the history; the output checkpoint is the cascade at iteration 4."""
    from rethink import loop
    from rethink.engines.detectron2_engine import Detectron2Engine

    plan, job_specs = cascade_plan(tmp_path)
    specs = [job_specs.train_spec(s) for s in plan.segments_of_run(CASCADE_RUN)]
    assert [(s["start"], s["end"]) for s in specs] == [(0, 2), (2, 4)]
    assert [s["run"]["recipe"]["task"] for s in specs] == ["mask_rcnn", "cascade_mask_rcnn"]
    assert "start_task" not in specs[0] and specs[1]["start_task"] == "mask_rcnn"
    assert specs[1]["start_checkpoint"] == specs[0]["output"]
    manifest = rdata.prepare(
        {
            **job_specs.data_spec("synthetic"),
            "train_size": 4,
            "val_size": 2,
            "image_size": [64, 96],
            "output": specs[0]["dataset"],
        }
    )
    for i, s in enumerate(specs):
        s.update(history=str(tmp_path / f"history{i}.jsonl"), log_period=1)

    class Recording(Detectron2Engine):
        """The real engine; keeps the model's weights right after the conversion."""

        def load_converted(self, model, state_dict, from_task, run):
            self.report = super().load_converted(model, state_dict, from_task, run)
            self.converted = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return self.report

    eng = Recording()
    t0 = time.perf_counter()
    loop.train(eng, specs[0], manifest)
    t_mask = time.perf_counter() - t0
    mask = torch.load(specs[0]["output"], weights_only=False)
    assert mask["iteration"] == 2 and "roi_heads.box_predictor.bbox_pred.weight" in mask["model"]
    capsys.readouterr()
    t0 = time.perf_counter()
    loop.train(eng, specs[1], manifest)
    t_cascade = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert f"architecture switch mask_rcnn -> cascade_mask_rcnn: {eng.report}" in out

    src, got = mask["model"], eng.converted
    fresh = eng.build_model(specs[1]["run"], CPU, False, dataset=manifest).state_dict()  # the loop's init (same seed)
    box_head = [k for k in src if k.startswith("roi_heads.box_head.")]
    assert box_head and "roi_heads.box_head.fc1.weight" in box_head
    same = [k for k in src if k in got]
    assert len(same) == len(src) - len(box_head) - 4  # all but box head, classifier, class-specific regressor
    for k in same:
        assert torch.equal(got[k], src[k]), k
    for stage in range(3):
        for k in box_head:
            assert torch.equal(got[k.replace("box_head.", f"box_head.{stage}.")], src[k]), (stage, k)
        for p in ("weight", "bias"):
            assert torch.equal(
                got[f"roi_heads.box_predictor.{stage}.cls_score.{p}"], src[f"roi_heads.box_predictor.cls_score.{p}"]
            )
            reg = got[f"roi_heads.box_predictor.{stage}.bbox_pred.{p}"]
            assert reg.shape[0] == 4 and torch.equal(reg, fresh[f"roi_heads.box_predictor.{stage}.bbox_pred.{p}"])
    assert set(got) == set(fresh)
    assert eng.report == (
        f"{len(same)} tensors copied by name, "
        f"{3 * (len(box_head) + 2)} mapped into 3 cascade stages (box head + classifier), 6 fresh "
        f"(class-agnostic box regressors), 2 dropped (class-specific box regressor)"
    )

    hist0, hist1 = _read_history(specs[0]["history"]), _read_history(specs[1]["history"])
    assert [h["iteration"] for h in hist0 + hist1] == [0, 1, 2, 3]
    assert all({"loss_cls", "loss_box_reg", "loss_mask"} <= set(h["losses"]) for h in hist0)
    stages = {f"loss_{n}_stage{k}" for n in ("cls", "box_reg") for k in range(3)}
    for h in hist1:
        assert stages | {"loss_mask", "loss_rpn_cls", "loss_rpn_loc"} == set(h["losses"])
        assert all(np.isfinite(v) for v in h["losses"].values()) and np.isfinite(h["loss"])
    final = torch.load(specs[1]["output"], weights_only=False)
    assert final["iteration"] == 4 and final["counters"]["images"] == 4 * 2
    assert set(final["model"]) == set(fresh)
    assert not torch.equal(
        final["model"]["roi_heads.box_predictor.2.bbox_pred.weight"], got["roi_heads.box_predictor.2.bbox_pred.weight"]
    )  # the cascade trained
    print(f"\nR18-FPN GN, CPU, 64px: mask_rcnn segment 0->2 {t_mask:.1f}s, cascade segment 2->4 {t_cascade:.1f}s")


def test_load_converted_refuses_what_does_not_fit(engine, tmp_path):
    """Another task pair, another backbone, another number of classes: ValueError naming the run
    and the tasks, and the model is left untouched."""
    run = cascade_run(tmp_path)
    model = engine.build_model(run, CPU, False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask_run = dict(run, recipe={**run["recipe"], "task": "mask_rcnn"})
    src = engine.build_model(mask_run, CPU, False).state_dict()
    with pytest.raises(
        ValueError, match=rf"run {run['run_id']}: .*'faster_rcnn' checkpoint into a 'cascade_mask_rcnn'"
    ):
        engine.load_converted(model, src, "faster_rcnn", run)
    with pytest.raises(ValueError, match=r"'mask_rcnn' checkpoint into a 'mask_rcnn' model"):
        engine.load_converted(model, src, "mask_rcnn", mask_run)
    # an R50 checkpoint (res2 of 256 channels, bottlenecks) into the R18 cascade
    r50 = {
        k: torch.zeros(v.shape[0] * 4, *v.shape[1:]) if k.startswith("backbone.bottom_up.res2.") else v
        for k, v in src.items()
    }
    r50["backbone.bottom_up.res2.0.conv3.weight"] = torch.zeros(256, 64, 1, 1)
    with pytest.raises(
        ValueError,
        match=rf"run {run['run_id']}: the mask_rcnn checkpoint does not fit its "
        rf"cascade_mask_rcnn model \(R18-GN\): backbone.bottom_up.res2",
    ):
        engine.load_converted(model, r50, "mask_rcnn", run)
    classes = dict(src)
    classes["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(
        4, src["roi_heads.box_predictor.cls_score.weight"].shape[1]
    )
    with pytest.raises(
        ValueError, match=r"cls_score.weight \(-> roi_heads.box_predictor.0.cls_score.weight\): shape \(4, "
    ):
        engine.load_converted(model, classes, "mask_rcnn", run)
    missing = {k: v for k, v in src.items() if not k.startswith("roi_heads.mask_head.")}
    with pytest.raises(ValueError, match=r"roi_heads.mask_head.* not in the checkpoint"):
        engine.load_converted(model, missing, "mask_rcnn", run)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cascade_tta_predicts_coco_results(engine, tmp_path):
    """A Cascade Mask R-CNN (3 stages, IoU 0.5/0.6/0.7 matchers, class-agnostic regression) with
    recipe tta: predict() runs detectron2's GeneralizedRCNNWithTTA (every image at each test
    scale, flipped and not) and returns bbox + segm results that rethink.evaluate scores."""
    from rethink.evaluate import evaluate_results

    ds = rdata.prepare(
        {
            "name": "tiny_cascade",
            "kind": "synthetic",
            "train_size": 2,
            "val_size": 2,
            "image_size": [64, 96],
            "categories": 3,
            "max_objects": 3,
            "seed": 0,
            "output": str(tmp_path / "data" / "dataset.json"),
        }
    )
    run = cascade_run(tmp_path, tta=True)
    model = engine.build_model(run, CPU, False, dataset=ds)
    heads = model.roi_heads
    assert type(heads).__name__ == "CascadeROIHeads" and heads.num_cascade_stages == 3
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.5, 0.6, 0.7]
    assert [p.box2box_transform.weights for p in heads.box_predictor] == [
        (10, 10, 5, 5),
        (20, 20, 10, 10),
        (30, 30, 15, 15),
    ]
    assert all(p.bbox_pred.out_features == 4 and p.cls_score.out_features == 3 + 1 for p in heads.box_predictor)
    assert model.rethink_cfg.TEST.AUG.ENABLED is True
    # detectron2's test scales (400 ... 1200 px) take minutes on a CPU even for 2 images: two tiny ones
    cfg = model.rethink_cfg.clone()
    cfg.defrost()
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE = (64, 96), 160
    cfg.freeze()
    model.rethink_cfg = cfg
    heads.box_predictor[-1].test_score_thresh = 0.0  # untrained: keep every detection (the last stage's)
    seen: list[int] = []
    model.backbone.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape[0]))
    t = time.perf_counter()
    results = engine.predict(model, run, ds, CPU)
    t_pred = time.perf_counter() - t
    print(
        f"\nR18-FPN GN cascade + TTA (2 scales x flip), CPU: predict 2 images {t_pred:.2f}s, {len(results)} detections"
    )
    assert sum(seen) >= 2 * 2 * 2  # every val image at each of the 2 scales, flipped and not
    assert 0 < len(results) <= 2 * 20
    val = rdata_json(ds["val"]["annotations"])
    ids, cats = {im["id"] for im in val["images"]}, {c["id"] for c in val["categories"]}
    for r in results:
        assert r["image_id"] in ids and r["category_id"] in cats
        assert len(r["bbox"]) == 4 and 0.0 <= r["score"] <= 1.0 and isinstance(r["segmentation"]["counts"], str)
    stats = evaluate_results(ds, copy.deepcopy(results), "cascade_mask_rcnn")
    assert set(stats) == {"bbox", "segm"} and all(len(stats[t]) == 12 for t in stats)
    assert all(0.0 <= stats[t]["AP"] <= 100.0 for t in stats)  # defined: there are detections and ground truth


# ---------------------------------------------------------------- VGG16 from torchvision (rethink.stage)


def test_vgg16_loads_staged_torchvision_weights(engine, paper, tmp_path):
    """torchvision's VGG16 (no BN) as the stage_weights rule converts it (rethink.stage, source a
    .pth as torchvision://vgg16 downloads it) loads into the section 5.1 Faster R-CNN: every conv
    into the backbone, classifier.0/.3 into the box head's fc1/fc2; and the real model's input
    (preprocess_image with the pre-trained VGG16 config's FORMAT, PIXEL_MEAN, PIXEL_STD) through
    its conv1_1 gives torchvision's conv1_1 output on torchvision's normalisation of the image."""
    import torchvision

    from rethink import stage

    torch.manual_seed(0)
    tv = torchvision.models.vgg16(weights=None).eval()
    pth = tmp_path / "vgg16-seeded.pth"
    torch.save(tv.state_dict(), pth)
    spec = {
        "init": "imagenet",
        "backbone": "VGG16",
        "norm": "none",
        "source": pth.as_uri(),
        "cost_record": {},
        "output": str(tmp_path / "init" / "VGG16-none.pkl"),
        "cost": str(tmp_path / "cost.json"),
    }
    t = time.perf_counter()
    stage.stage(spec)
    t_stage = time.perf_counter() - t
    run = vgg_run(paper, "imagenet")
    model = engine.build_model(run, CPU, False)
    cfg = model.rethink_cfg
    assert (cfg.INPUT.FORMAT, list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)) == (
        "BGR",
        d2config.VGG_CAFFE_MEAN,
        d2config.UNIT_STD,
    )  # what the conversion assumes
    t = time.perf_counter()
    engine.load_init_weights(model, spec["output"], run)
    t_load = time.perf_counter() - t
    print(f"\ntorchvision VGG16 -> staged .pkl {t_stage:.1f}s, into the Faster R-CNN {t_load:.1f}s")
    sd, bb, head = tv.state_dict(), model.backbone, model.roi_heads.box_head
    convs = [k for k in sd if k.startswith("features.") and k.endswith(".weight")]
    names = [n for n, _ in bb.named_children()]
    assert len(convs) == len(names) == 13
    for tvk, name in zip(convs[1:], names[1:]):
        assert torch.equal(getattr(bb, name).weight, sd[tvk]), name
        assert torch.equal(getattr(bb, name).bias, sd[tvk[: -len("weight")] + "bias"]), name
    assert torch.equal(head.fc1.weight, sd["classifier.0.weight"]) and torch.equal(
        head.fc1.bias, sd["classifier.0.bias"]
    )
    assert torch.equal(head.fc2.weight, sd["classifier.3.weight"]) and torch.equal(
        head.fc2.bias, sd["classifier.3.bias"]
    )
    assert model.roi_heads.box_predictor.cls_score.out_features == 80 + 1  # not ImageNet's 1000 (fc8 dropped)
    # conv1_1: torchvision's, transformed for detectron2's input
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 40, 52), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        images = model.preprocess_image([{"image": rgb.flip(0)}])  # the mapper hands the model BGR (INPUT.FORMAT)
        y_d = bb.conv1_1(images.tensor[:, :, :40, :52])
        tv_tf = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()  # its Normalize; no resize here
        mean, std = torch.tensor(tv_tf.mean)[:, None, None], torch.tensor(tv_tf.std)[:, None, None]
        y_t = tv.features[0](((rgb.float() / 255 - mean) / std)[None])
    scale = y_t.abs().max().item()
    assert torch.allclose(y_d[..., 1:-1, 1:-1], y_t[..., 1:-1, 1:-1], rtol=0, atol=1e-4 * scale)
    assert (y_d - y_t).abs().max().item() < 0.05 * scale  # the border: the caffe mean colour as padding
