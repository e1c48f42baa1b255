"""Staging torchvision's public VGG16 (no BN, ImageNet) for the paper's section 5.1 runs
(rethink.stage): torchvision://vgg16 resolves to torchvision's published file; a torch state dict
of torchvision's VGG16 is converted at staging into the caffe VGG16 blobs the detectron2 engine
loads (names and shapes of _vgg16_pkl_names, values torchvision's, conv1_1 transformed for
detectron2's BGR 0-255 minus VGG_CAFFE_MEAN input, the 1000-way classifier dropped); anything
else is a clear error. Real torch / torchvision, no network (a published download is served
from localhost), no detectron2 (the engine's module imports without it)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import math
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from rethink import stage
from rethink.engines import detectron2_config as d2config
from rethink.engines.detectron2_backbones import _vgg16_pkl_names

ROOT = Path(__file__).resolve().parents[1]
CONF_COST = {"iterations": 450000, "images": 128116500, "instances": 128116500, "pixels": 6.42e12}


def _spec(tmp_path: Path, source: str, backbone="VGG16", norm="none") -> dict:
    return {
        "init": "imagenet",
        "backbone": backbone,
        "norm": norm,
        "source": source,
        "cost_record": dict(CONF_COST),
        "output": str(tmp_path / "init" / "imagenet" / f"{backbone}-{norm}.pkl"),
        "cost": str(tmp_path / "results" / "init" / "imagenet" / f"{backbone}-{norm}.json"),
    }


def _load_blobs(path) -> dict:
    return stage.check_weights_pickle(path)["blobs"]  # as the engine's load_vgg16_pkl reads it


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def tv_vgg16(module_tmp):
    """A seeded torchvision VGG16 (weights=None: torchvision's own init) saved as a .pth, and its state dict."""
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = module_tmp("tv") / "vgg16-seeded.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def staged(tv_vgg16, module_tmp):
    """The seeded .pth through the real stage_weights code path (plain path source)."""
    path, _ = tv_vgg16
    out = module_tmp("staged")
    spec = _spec(out, str(path))
    t = time.perf_counter()
    cost = stage.stage(spec)
    print(
        f"\nstaged a torchvision VGG16 .pth ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f}s"
    )
    return spec, cost, _load_blobs(spec["output"])


def test_engine_module_imports_without_detectron2():
    code = (
        "import sys; "
        "from rethink.engines.detectron2_backbones import _vgg16_pkl_names; "
        "import rethink.engines.detectron2_engine, rethink.stage; "
        "assert not any(m == 'detectron2' or m.startswith('detectron2.') for m in sys.modules), 'detectron2 imported'; "
        "print(len(_vgg16_pkl_names()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "30"  # 13 convs + fc6 + fc7, weight and bias each


def test_staged_blobs_are_what_the_engine_reads(tv_vgg16, staged):
    _, state = tv_vgg16
    spec, cost, blobs = staged
    assert set(blobs) == set(_vgg16_pkl_names())  # conv1_1_w ... conv5_3_b, fc6_*, fc7_*; no fc8
    assert not any(k.startswith("fc8") or k.startswith("classifier") for k in blobs)
    convs = [k for k in state if k.startswith("features.") and k.endswith(".weight")]
    assert [k.split(".")[1] for k in convs] == "0 2 5 7 10 12 14 17 19 21 24 26 28".split()
    names = [f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
    for tv, c2 in zip(convs, names):
        b = tv[: -len("weight")] + "bias"
        assert blobs[f"{c2}_w"].shape == tuple(state[tv].shape) and blobs[f"{c2}_b"].shape == tuple(state[b].shape)
        if c2 != "conv1_1":  # conv1_1: the documented input transform (test_conv1_1_...)
            assert np.array_equal(blobs[f"{c2}_w"], state[tv].numpy()) and np.array_equal(
                blobs[f"{c2}_b"], state[b].numpy()
            )
    # fc6/fc7: the box head's fc1 (512 x 7 x 7 -> FC_DIM) and fc2 (FC_DIM -> FC_DIM) of d2config.VGG16
    fc, res = d2config.VGG16["MODEL.ROI_BOX_HEAD.FC_DIM"], d2config.VGG16["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"]
    assert blobs["fc6_w"].shape == (fc, 512 * res * res) == (4096, 25088) and blobs["fc7_w"].shape == (fc, fc)
    assert np.array_equal(blobs["fc6_w"], state["classifier.0.weight"].numpy())
    assert np.array_equal(blobs["fc6_b"], state["classifier.0.bias"].numpy())
    assert np.array_equal(blobs["fc7_w"], state["classifier.3.weight"].numpy())
    assert np.array_equal(blobs["fc7_b"], state["classifier.3.bias"].numpy())
    assert all(v.dtype == np.float32 for v in blobs.values())
    assert not np.array_equal(blobs["conv1_1_w"], state["features.0.weight"].numpy())  # transformed
    stage.check_weights_pickle(spec["output"])  # the restricted unpickler admits it
    # not a published file: the init's configured cost, as for any other source
    assert json.loads(Path(spec["cost"]).read_text()) == cost == {**CONF_COST, "source": spec["source"]}
    assert [p.name for p in Path(spec["output"]).parent.iterdir()] == ["VGG16-none.pkl"]  # no temp left


def test_conv1_1_gives_torchvisions_output_on_detectron2s_input(tv_vgg16, staged):
    """The converted conv1_1 on the detectron2-normalised image (BGR, 0-255, minus VGG_CAFFE_MEAN,
    std 1: what d2config sets for a pre-trained VGG16) = torchvision's conv1_1 on the
    torchvision-normalised image (RGB, /255, ImageNet mean/std of VGG16_Weights' transforms):
    exactly inside the image, and at the border as torchvision's conv1_1 with padding d (the mean
    difference in std units) instead of 0, as conv1_1_for_detectron2 documents."""
    _, state = tv_vgg16
    _, _, blobs = staged
    tv_tf = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()
    assert tuple(tv_tf.mean) == stage.TORCHVISION_MEAN_RGB and tuple(tv_tf.std) == stage.TORCHVISION_STD_RGB
    assert np.allclose(255 * np.array(stage.TORCHVISION_STD_RGB)[::-1], d2config.TORCHVISION_STD)
    g = torch.Generator().manual_seed(1)
    rgb = torch.randint(0, 256, (2, 3, 37, 45), generator=g).double()  # 0-255 RGB images
    mean, std = torch.tensor(tv_tf.mean, dtype=torch.float64), torch.tensor(tv_tf.std, dtype=torch.float64)
    x_t = (rgb / 255 - mean[:, None, None]) / std[:, None, None]  # torchvision's ToTensor + Normalize
    bgr = rgb.flip(1)  # detectron2's INPUT.FORMAT "BGR"
    x_d = (bgr - torch.tensor(d2config.VGG_CAFFE_MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(
        d2config.UNIT_STD, dtype=torch.float64
    )[:, None, None]
    w_t, b_t = state["features.0.weight"].double(), state["features.0.bias"].double()
    w_d, b_d = torch.from_numpy(blobs["conv1_1_w"]).double(), torch.from_numpy(blobs["conv1_1_b"]).double()
    y_t = torch.nn.functional.conv2d(x_t, w_t, b_t, padding=1)
    y_d = torch.nn.functional.conv2d(x_d, w_d, b_d, padding=1)
    scale = y_t.abs().max().item()
    assert scale > 1.0
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(y_d[inner], y_t[inner], rtol=0, atol=1e-5 * scale), (y_d[inner] - y_t[inner]).abs().max()
    # the border: detectron2's zero padding is the caffe mean colour = d in torchvision's units
    d = (torch.tensor(d2config.VGG_CAFFE_MEAN, dtype=torch.float64).flip(0) / 255 - mean) / std  # RGB
    padded = torch.stack([torch.nn.functional.pad(x_t[:, c], (1, 1, 1, 1), value=d[c].item()) for c in range(3)], 1)
    assert torch.allclose(y_d, torch.nn.functional.conv2d(padded, w_t, b_t), rtol=0, atol=1e-5 * scale)
    assert d.abs().max() < 0.02  # the caffe VGG mean is within a grey level of torchvision's
    assert not torch.allclose(y_d, y_t, rtol=0, atol=1e-7 * scale)  # (so the border check above is not vacuous)
    # without the transform (torchvision's conv1_1 as is on detectron2's input) it is far off
    y_raw = torch.nn.functional.conv2d(x_d, w_t, b_t, padding=1)
    assert (y_raw[inner] - y_t[inner]).abs().max() > 10 * scale


def test_not_vgg16_is_a_clear_error(tmp_path, tv_vgg16):
    _, state = tv_vgg16
    r18 = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), r18)
    with pytest.raises(stage.StageError) as e:
        stage.stage(_spec(tmp_path, str(r18)))
    msg = str(e.value)
    assert msg.startswith(f"inits.imagenet.weights.VGG16-none: {r18}: not torchvision's VGG16 without BN")
    assert "none of VGG16's 30 tensors (features.0.weight, features.0.bias, ..., classifier.3.bias)" in msg
    assert "tensors VGG16 does not have: conv1.weight, bn1.weight" in msg and "vgg16_bn" not in msg
    partial = {k: v for k, v in state.items() if k not in ("features.28.bias", "classifier.3.weight")}
    with pytest.raises(
        stage.StageError,
        match=r"x\.pth: not torchvision's VGG16 .*: missing features\.28\.bias, classifier\.3\.weight$",
    ):
        stage.vgg16_blobs_from_torchvision(partial, "x.pth")
    assert not Path(_spec(tmp_path, "")["output"]).exists()
    assert list(Path(_spec(tmp_path, "")["output"]).parent.iterdir()) == []  # temp files removed
    # vgg16_bn (its BN buffers), a wrong shape: the same function, in memory
    bn = {**state, "features.1.running_mean": torch.zeros(64), "features.1.weight": torch.ones(64)}
    with pytest.raises(stage.StageError, match=r"x\.pth: not torchvision's VGG16 .*BatchNorm buffers: vgg16_bn\?"):
        stage.vgg16_blobs_from_torchvision(bn, "x.pth")
    small_fc = {**state, "classifier.0.weight": torch.zeros(4096, 512)}
    with pytest.raises(
        stage.StageError, match=r"classifier\.0\.weight \(fc6_w\) has shape \(4096, 512\), VGG16 needs \(4096, 25088\)"
    ):
        stage.vgg16_blobs_from_torchvision(small_fc, "x.pth")
    # a torch file for a ResNet field; a torch file that is no state dict
    with pytest.raises(
        stage.StageError,
        match=r"weights\.R50-GN: .*resnet18\.pth is a torch file; staging converts only torchvision's VGG16",
    ):
        stage.stage(_spec(tmp_path, str(r18), backbone="R50", norm="GN"))
    notsd = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], notsd)
    with pytest.raises(
        stage.StageError, match=r"list\.pth: a torch file, but not a state dict of tensors \(holds a list\)"
    ):
        stage.stage(_spec(tmp_path, notsd.as_uri()))


def test_legacy_torch_format_is_recognised(tmp_path):
    """vgg16-397923af.pth predates torch's zip format: the legacy stream is a torch file too."""
    legacy, new = tmp_path / "legacy.pth", tmp_path / "new.pth"
    sd = {"features.0.weight": torch.arange(6.0)}
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    torch.save(sd, new)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": np.zeros(2)}, protocol=2))
    assert stage.is_torch_file(legacy) and stage.is_torch_file(new) and not stage.is_torch_file(plain)
    for p in (legacy, new):
        assert torch.equal(stage.load_torch_state_dict(p)["features.0.weight"], sd["features.0.weight"])


def test_torchvision_sources_resolve():
    assert stage.resolve_source("torchvision://vgg16") == ("url", torchvision.models.VGG16_Weights.IMAGENET1K_V1.url)
    assert stage.TORCHVISION_MODELS["vgg16"]["url"] == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert stage.TORCHVISION_MODELS["vgg16"]["weights"] == str(torchvision.models.VGG16_Weights.IMAGENET1K_V1)
    with pytest.raises(
        stage.StageError,
        match=r"unknown torchvision model 'vgg16_bn' in 'torchvision://vgg16_bn' \(known: torchvision://vgg16\)",
    ):
        stage.resolve_source("torchvision://vgg16_bn")
    with pytest.raises(
        stage.StageError, match=r"inits\.imagenet\.weights\.VGG16-none: unknown torchvision model 'resnet50'"
    ):
        stage.stage(_spec(Path("/nonexistent"), "torchvision://resnet50"))


def test_published_cost_is_torchvisions_documented_recipe():
    cost = stage.TORCHVISION_MODELS["vgg16"]["cost"]
    images = 90 * 1_281_167  # 90 epochs of ImageNet-1k
    assert cost == {
        "iterations": 90 * math.ceil(1_281_167 / 256),
        "images": images,
        "instances": images,
        "pixels": images * 224 * 224,
    }
    assert cost["iterations"] == 450_450 and cost["images"] == 115_305_030
    assert "recipe" in torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta  # what the numbers are derived from
    assert stage.TORCHVISION_MODELS["vgg16"]["cost_basis"].startswith("derived from the recipe")


@pytest.fixture
def localhost(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www (no network needed)."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_torchvision_download_is_hash_checked_converted_and_costed(tmp_path, tv_vgg16, localhost, monkeypatch):
    """torchvision://vgg16 through the real download path, the published URL pointed at a local
    server: a file whose sha256 starts with the URL's hash is staged, converted, and gets
    torchvision's documented cost; another file under that name is refused as a corrupt download."""
    path, state = tv_vgg16
    www, base = localhost
    prefix = _sha256(path)[:8]
    good = f"vgg16-{prefix}.pth"
    (www / good).symlink_to(path)
    monkeypatch.setitem(stage.TORCHVISION_MODELS["vgg16"], "url", f"{base}/{good}")
    spec = _spec(tmp_path / "ok", "torchvision://vgg16")
    t = time.perf_counter()
    cost = stage.stage(spec)
    print(f"\ndownloaded (localhost), hash-checked, converted and staged in {time.perf_counter() - t:.1f}s")
    expected = {**stage.TORCHVISION_MODELS["vgg16"]["cost"], "source": "torchvision://vgg16"}
    assert {k: v for k, v in cost.items() if k != "cost_basis"} == expected
    assert cost["cost_basis"].startswith("torchvision's VGG16_Weights.IMAGENET1K_V1: derived from the recipe")
    assert json.loads(Path(spec["cost"]).read_text()) == cost
    blobs = _load_blobs(spec["output"])
    assert set(blobs) == set(_vgg16_pkl_names())
    assert np.array_equal(blobs["conv5_3_w"], state["features.28.weight"].numpy())
    # the same URL with other content: refused, nothing staged
    shutil.copy(Path(__file__), www / "other.pth")
    bad = "vgg16-397923af.pth"
    (www / bad).symlink_to(www / "other.pth")
    monkeypatch.setitem(stage.TORCHVISION_MODELS["vgg16"], "url", f"{base}/{bad}")
    spec = _spec(tmp_path / "bad", "torchvision://vgg16")
    with pytest.raises(
        stage.StageError,
        match=r"VGG16-none: http://127\.0\.0\.1:\d+/vgg16-397923af\.pth downloaded with sha256 [0-9a-f]{64}, "
        r"not the published file's 397923af\.\.\.: a corrupt or changed download",
    ):
        stage.stage(spec)
    assert not Path(spec["output"]).exists() and list(Path(spec["output"]).parent.iterdir()) == []
