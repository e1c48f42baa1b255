"""Staging pre-trained (ImageNet) weights for the `staged` inits: copy or download once into
the workdir, check the file, record what its pre-training cost.

Sources (config ``inits.<init>.weights.<backbone>-<norm>``): a local path (relative to the
workflow's working directory, or absolute), ``file://`` URLs, ``http(s)://`` URLs,
``detectron2://X`` which is detectron2's public model store
``https://dl.fbaipublicfiles.com/detectron2/X`` (as detectron2's own path handler maps it), and
``torchvision://NAME`` for a model torchvision publishes (TORCHVISION_MODELS: today ``vgg16``,
torchvision.models.VGG16_Weights.IMAGENET1K_V1, VGG16 without BN trained on ImageNet-1k).

A source whose content is a torch file (torch.save's zip or legacy format) is read with
torch.load(weights_only=True) and, if it is the state dict of torchvision's VGG16, converted to
the caffe VGG16 blobs the detectron2 engine loads (see vgg16_blobs_from_torchvision for the
names, shapes and the conv1_1 input transform); only the VGG16 weights fields take one.

The file is written to a temp file beside the output and renamed only after it has been read
back as a pickled dict (detectron2's ImageNet weights are pickled dicts of numpy arrays). The
check unpickles with a restricted unpickler that admits only numpy arrays and plain
containers, so a staged file cannot run code. The cost JSON is
``{"iterations", "images", "instances", "pixels", "source"}`` from ``inits.<init>.cost``
(null where unset), except for a file torchvision publishes (its sha256 starts with the hash in
its file name, as torch.hub checks): that file's own cost as torchvision documents it, with
"cost_basis" saying where the numbers come from (TORCHVISION_MODELS).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"
TORCHVISION_PREFIX = "torchvision://"
COST_KEYS = ("iterations", "images", "instances", "pixels")

IMAGENET_TRAIN_IMAGES = 1_281_167  # ImageNet-1k (ILSVRC 2012) train set

# Models torchvision publishes that a staged init can name as torchvision://<name>: the weights
# enum, the URL (= <enum>.url; the 8 hex digits in the file name start its sha256), and the
# pre-training cost. torchvision documents for VGG16_Weights.IMAGENET1K_V1 only the recipe
# (meta["recipe"]: references/classification/README.md#alexnet-and-vgg: `--model vgg16 --lr 1e-2`
# on the README's defaults, 8 GPUs x --batch-size 32 = 256 images per iteration, --epochs 90,
# 224 px training crops) and the result (71.592 top-1); no log or iteration count is published
# for this file (it predates the README). The numbers below are that recipe's, derived:
# 90 epochs x 1,281,167 images; 90 x ceil(1,281,167 / 256) = 90 x 5005 iterations; one label
# per image (instances = images, as config.yaml counts ImageNet); 224 x 224 pixels per image.
TORCHVISION_MODELS = {
    "vgg16": {
        "weights": "VGG16_Weights.IMAGENET1K_V1",
        "url": "https://download.pytorch.org/models/vgg16-397923af.pth",
        "cost": {
            "iterations": 90 * 5005,
            "images": 90 * IMAGENET_TRAIN_IMAGES,
            "instances": 90 * IMAGENET_TRAIN_IMAGES,
            "pixels": 90 * IMAGENET_TRAIN_IMAGES * 224 * 224,
        },
        "cost_basis": (
            "derived from the recipe torchvision documents for VGG16_Weights.IMAGENET1K_V1 "
            "(references/classification#alexnet-and-vgg: 90 epochs of ImageNet-1k, 256 images per "
            "iteration, 224x224 crops); torchvision publishes no training log for this file"
        ),
    },
}


def _hash_prefix(url: str) -> str:
    """The sha256 prefix torchvision puts in its file names (name-<hash>.pth)."""
    stem = url.rsplit("/", 1)[-1].split(".")[0]
    return stem.rsplit("-", 1)[-1]


class StageError(RuntimeError):
    pass


def resolve_source(source: str) -> tuple[str, str]:
    """("file", local path) or ("url", http(s) URL) for a configured weights source."""
    if source.startswith(DETECTRON2_PREFIX):
        return "url", DETECTRON2_URL + source[len(DETECTRON2_PREFIX) :]
    if source.startswith(TORCHVISION_PREFIX):
        name = source[len(TORCHVISION_PREFIX) :]
        if name not in TORCHVISION_MODELS:
            raise StageError(
                f"unknown torchvision model {name!r} in {source!r} (known: "
                f"{', '.join(TORCHVISION_PREFIX + n for n in TORCHVISION_MODELS)})"
            )
        return "url", TORCHVISION_MODELS[name]["url"]
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        return "url", source
    if parsed.scheme == "file":
        return "file", urllib.request.url2pathname(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise StageError(
            f"unsupported URL scheme {parsed.scheme!r} in {source!r} "
            f"(use a path, file://, http(s)://, detectron2:// or torchvision://)"
        )
    return "file", source


class _WeightsUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # protocol-2 pickles encode bytes so
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not plain weights)")
        return super().find_class(module, name)


def check_weights_pickle(path: str | Path) -> dict:
    """Unpickle `path` (latin1, as detectron2 reads Python 2 pickles) with only numpy arrays and
    plain containers allowed; it must be a dict."""
    try:
        with open(path, "rb") as f:
            obj = _WeightsUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise StageError(f"not a readable weights pickle: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise StageError(f"not a weights pickle: holds a {type(obj).__name__}, not a dict")
    return obj


# ------------------------------------------------------------------ torch files: torchvision VGG16
# torch.save's two formats: a zip archive, or (before torch 1.6, as vgg16-397923af.pth) a pickle
# stream that starts with this pickled magic number
_TORCH_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

# torchvision's ImageNet input normalisation (RGB, [0, 1]: transforms.Normalize(mean, std) after
# ToTensor), which VGG16_Weights.IMAGENET1K_V1.transforms() applies
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)


def is_torch_file(path: str | Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_MAGIC))
    return head.startswith(_TORCH_ZIP_MAGIC) or head == _TORCH_LEGACY_MAGIC


def load_torch_state_dict(path: str | Path, label: str | None = None) -> dict:
    """torch.load(weights_only=True) of a state dict (bare, or under "model" / "state_dict" as
    training checkpoints keep it; a DataParallel "module." prefix is dropped) -> {name: tensor}."""
    import torch

    label = label or str(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise StageError(f"{label}: not a readable torch state dict: {type(e).__name__}: {e}") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise StageError(f"{label}: a torch file, but not a state dict of tensors (holds a {type(obj).__name__})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def torchvision_vgg16_names() -> dict[str, str]:
    """torchvision VGG16 state-dict key -> caffe VGG16 blob name, as the detectron2 engine names
    them (conv1_1_w ... conv5_3_b, fc6_*, fc7_*; _vgg16_pkl_names). torchvision's
    vgg16().features holds each 3x3 conv followed by a ReLU, and a max-pool after each block, so
    the convs are features.{0,2,5,7,10,12,14,17,19,21,24,26,28}; classifier.0 (25088 -> 4096) is
    fc6, classifier.3 (4096 -> 4096) fc7 (classifier.1/2, 4/5 are ReLU/Dropout: no tensors);
    classifier.6, the 1000-way ImageNet classifier (caffe's fc8), is not converted."""
    from .engines.shared import VGG16_BLOCKS

    out, index = {}, 0
    for b, widths in enumerate(VGG16_BLOCKS, 1):
        for i in range(1, len(widths) + 1):
            out[f"features.{index}.weight"], out[f"features.{index}.bias"] = f"conv{b}_{i}_w", f"conv{b}_{i}_b"
            index += 2  # the conv and its ReLU
        index += 1  # the block's max-pool
    for tv, c2 in (("classifier.0", "fc6"), ("classifier.3", "fc7")):
        out[f"{tv}.weight"], out[f"{tv}.bias"] = f"{c2}_w", f"{c2}_b"
    return out


def vgg16_blob_shapes() -> dict[str, tuple[int, ...]]:
    """The shape of each caffe VGG16 blob the detectron2 VGG16 Faster R-CNN takes: the convs of
    rethink.engines.shared.VGG16_BLOCKS, fc6 = box head fc1 (FC_DIM x 512 x POOLER_RESOLUTION^2,
    flattened C, H, W as torchvision's and detectron2's heads both flatten), fc7 = fc2."""
    from .engines import detectron2_config as d2config
    from .engines.shared import VGG16_BLOCKS

    shapes, cin = {}, 3
    for b, widths in enumerate(VGG16_BLOCKS, 1):
        for i, width in enumerate(widths, 1):
            shapes[f"conv{b}_{i}_w"], shapes[f"conv{b}_{i}_b"] = (width, cin, 3, 3), (width,)
            cin = width
    fc, res = d2config.VGG16["MODEL.ROI_BOX_HEAD.FC_DIM"], d2config.VGG16["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"]
    shapes.update(fc6_w=(fc, cin * res * res), fc6_b=(fc,), fc7_w=(fc, fc), fc7_b=(fc,))
    return shapes


def conv1_1_for_detectron2(weight, bias):
    """torchvision VGG16's conv1_1 (weight O x 3 x 3 x 3, bias O) -> the conv1_1 that gives the
    same output on the input the detectron2 engine feeds a pre-trained VGG16 (detectron2_config: INPUT.FORMAT
    "BGR" (detectron2's default, unchanged), PIXEL_MEAN VGG_CAFFE_MEAN, PIXEL_STD UNIT_STD).

    A pixel p (0-255; p_rgb[c] = p_bgr[2 - c]) reaches conv1_1
      in detectron2 as  x_d[k] = (p_bgr[k] - M[k]) / S[k]            k BGR, M = VGG_CAFFE_MEAN, S = 1
      in torchvision as x_t[c] = (p_rgb[c] / 255 - mu[c]) / sigma[c]  c RGB (TORCHVISION_*_RGB)
    so with k = 2 - c:  x_t[c] = a[k] * x_d[k] + d[k],   a[k] = S[k] / (255 sigma[c]),
                                                         d[k] = (M[k] - 255 mu[c]) / (255 sigma[c]).
    conv_t(x_t)[o] = b[o] + sum_{c,u,v} W[o,c,u,v] x_t[c] = b'[o] + sum_{k,u,v} W'[o,k,u,v] x_d[k] with
      W'[o, k] = a[k] * W[o, 2 - k]              (channels reversed to BGR, torchvision's 1/(255 sigma) folded in)
      b'[o]    = b[o] + sum_{k,u,v} W[o, 2 - k, u, v] * d[k]    (the mean difference folded into the bias).
    Exact wherever the 3x3 window is inside the image. At the 1-pixel border (and over
    detectron2's batch padding) the conv's zero padding is 0 in x_d, i.e. d[k] in x_t rather than
    torchvision's 0: d = (-0.0096, -0.0058, -0.0155) (B, G, R) standard deviations, the caffe VGG
    mean being 0.3-0.9 grey levels below torchvision's. Arrays in, float32 numpy arrays out."""
    from .engines import detectron2_config as d2config

    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    if w.ndim != 4 or w.shape[1] != 3 or b.shape != (w.shape[0],):
        raise StageError(f"conv1_1 has weight {w.shape}, bias {b.shape}: not 3 RGB input channels")
    mean_d, std_d = np.asarray(d2config.VGG_CAFFE_MEAN, np.float64), np.asarray(d2config.UNIT_STD, np.float64)
    mean_t = 255.0 * np.asarray(TORCHVISION_MEAN_RGB, np.float64)[::-1]  # BGR, 0-255
    std_t = 255.0 * np.asarray(TORCHVISION_STD_RGB, np.float64)[::-1]
    a, d = std_d / std_t, (mean_d - mean_t) / std_t
    w_bgr = w[:, ::-1]  # input channel k of detectron2 (BGR) is torchvision's channel 2 - k (RGB)
    new_w = w_bgr * a[None, :, None, None]
    new_b = b + (w_bgr * d[None, :, None, None]).sum(axis=(1, 2, 3))
    return np.ascontiguousarray(new_w, dtype=np.float32), new_b.astype(np.float32)


def vgg16_blobs_from_torchvision(state: dict, label: str) -> dict:
    """A torchvision VGG16 state dict -> {caffe blob name: float32 array} for the detectron2
    engine (see torchvision_vgg16_names, vgg16_blob_shapes, conv1_1_for_detectron2). Anything
    missing, of another shape or not VGG16's (vgg16_bn's BN layers, vgg19's extra convs) is an
    error naming `label` and the tensors."""
    names, shapes = torchvision_vgg16_names(), vgg16_blob_shapes()
    what = f"{label}: not torchvision's VGG16 without BN (torchvision.models.vgg16)"
    missing = [k for k in names if k not in state]
    extra = [k for k in state if k not in names and k not in ("classifier.6.weight", "classifier.6.bias")]
    problems = []
    if missing and len(missing) == len(names):
        problems.append(f"none of VGG16's {len(names)} tensors ({missing[0]}, {missing[1]}, ..., {missing[-1]})")
    elif missing:
        problems.append(f"missing {', '.join(missing)}")
    if extra:
        bn = (
            " (BatchNorm buffers: vgg16_bn? the paper's VGG16 has no BN)"
            if any(k.startswith("features.") and k.endswith("running_mean") for k in extra)
            else ""
        )
        problems.append(f"tensors VGG16 does not have: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}{bn}")
    for tv, c2 in names.items():
        if tv in state and tuple(state[tv].shape) != shapes[c2]:
            problems.append(f"{tv} ({c2}) has shape {tuple(state[tv].shape)}, VGG16 needs {shapes[c2]}")
    if problems:
        raise StageError(f"{what}: {'; '.join(problems)}")
    blobs = {c2: state[tv].detach().cpu().float().numpy() for tv, c2 in names.items()}
    blobs["conv1_1_w"], blobs["conv1_1_b"] = conv1_1_for_detectron2(blobs["conv1_1_w"], blobs["conv1_1_b"])
    return blobs


def _convert_torch_file(path: str, label: str) -> dict:
    """The staged pickle for a torch file at `path`: {"blobs": caffe VGG16 blobs, "conversion": how}."""
    blobs = vgg16_blobs_from_torchvision(load_torch_state_dict(path, label), label)
    return {
        "blobs": blobs,
        "conversion": "torchvision VGG16 state dict -> caffe VGG16 blobs (rethink.stage): conv1_1 for "
        "BGR 0-255 input minus d2config.VGG_CAFFE_MEAN; classifier.6 dropped",
    }


# ------------------------------------------------------------------ staging
class _HashingWriter:
    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, chunk):
        self.sha.update(chunk)
        return self.f.write(chunk)


def _download(url: str, dst, timeout: float = 60.0) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        shutil.copyfileobj(r, dst, length=1 << 20)


def published_torchvision_model(sha256: str) -> str | None:
    """The TORCHVISION_MODELS name whose published file has this content (sha256 prefix), or None."""
    for name, model in TORCHVISION_MODELS.items():
        if sha256.startswith(_hash_prefix(model["url"])):
            return name
    return None


def stage(spec: dict) -> dict:
    """The stage_weights job: spec from rethink.job_specs.JobSpecs.stage_spec. Returns the cost record.
    A rehearsal's downloads nothing (rethink.rehearsal.init_weights)."""
    if spec.get("rehearsal"):
        from .rehearsal import init_weights

        return init_weights(spec)
    from .atomic import write_json_atomic

    field = f"inits.{spec['init']}.weights.{spec['backbone']}-{spec['norm']}"
    source = spec["source"]
    try:
        kind, where = resolve_source(source)
    except StageError as e:
        raise StageError(f"{field}: {e}") from None
    out = Path(spec["output"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file" and not Path(where).is_file():
        raise StageError(f"{field}: weights file {where} does not exist (cwd {os.getcwd()})")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    converted = f"{tmp}.pkl"
    try:
        sha256 = _fetch(kind, where, fd, field)
        published = published_torchvision_model(sha256)
        if source.startswith(TORCHVISION_PREFIX) and published != source[len(TORCHVISION_PREFIX) :]:
            raise StageError(
                f"{field}: {where} downloaded with sha256 {sha256}, not the published file's "
                f"{_hash_prefix(where)}...: a corrupt or changed download"
            )
        staged = _converted(tmp, converted, spec["backbone"], f"{field}: {source}") if is_torch_file(tmp) else tmp
        try:
            check_weights_pickle(staged)
        except StageError as e:
            raise StageError(f"{field}: {source}: {e}") from None
        os.replace(staged, out)
    finally:
        for path in (tmp, converted):
            if os.path.exists(path):
                os.unlink(path)
    cost = _cost(published, spec)
    write_json_atomic(spec["cost"], cost, indent=1, sort_keys=True)
    return cost


def _fetch(kind: str, where: str, fd: int, field: str) -> str:
    """The file or URL `where` into the open file `fd` (closed, synced); returns its sha256."""
    with os.fdopen(fd, "wb") as f:
        w = _HashingWriter(f)
        if kind == "file":
            with open(where, "rb") as src:
                shutil.copyfileobj(src, w, length=1 << 20)
        else:
            try:
                _download(where, w)
            except OSError as e:  # URLError, HTTPError, timeouts
                raise StageError(f"{field}: cannot download {where}: {e}") from None
        f.flush()
        os.fsync(f.fileno())
    return w.sha.hexdigest()


def _converted(tmp: str, converted: str, backbone: str, label: str) -> str:
    """A torch file at `tmp` (torchvision's VGG16 only) converted to the staged pickle at `converted`."""
    if backbone != "VGG16":
        raise StageError(
            f"{label} is a torch file; staging converts only torchvision's VGG16 "
            f"(for VGG16 fields); {backbone} needs detectron2's pickled weights"
        )
    obj = _convert_torch_file(tmp, label)
    with open(converted, "wb") as f:
        pickle.dump(obj, f, protocol=4)
        f.flush()
        os.fsync(f.fileno())
    return converted


def _cost(published: str | None, spec: dict) -> dict:
    """The staged weights' pre-training cost: torchvision's published one, else the init's cost_record."""
    if published:
        model = TORCHVISION_MODELS[published]
        cost = dict(model["cost"])
        cost["cost_basis"] = f"torchvision's {model['weights']}: {model['cost_basis']}"
    else:
        record = spec.get("cost_record") or {}
        cost = {k: record.get(k) for k in COST_KEYS}
    cost["source"] = spec["source"]
    return cost
