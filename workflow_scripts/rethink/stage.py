"""Staging pre-trained (ImageNet) weights for the `staged` inits: copy or download once into
the workdir, check the file, record what its pre-training cost.

Sources (config ``inits.<init>.weights.<backbone>-<norm>``): a local path (relative to the
workflow's working directory, or absolute), ``file://`` URLs, ``http(s)://`` URLs, and
``detectron2://X`` which is detectron2's public model store
``https://dl.fbaipublicfiles.com/detectron2/X`` (as detectron2's own path handler maps it).

The file is written to a temp file beside the output and renamed only after it has been read
back as a pickled dict (detectron2's ImageNet weights are pickled dicts of numpy arrays). The
check unpickles with a restricted unpickler that admits only numpy arrays and plain
containers, so a staged file cannot run code. The cost JSON is
``{"iterations", "images", "instances", "pixels", "source"}`` from ``inits.<init>.cost``
(null where unset).
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"
COST_KEYS = ("iterations", "images", "instances", "pixels")


class StageError(RuntimeError):
    pass


def resolve_source(source: str) -> tuple[str, str]:
    """("file", local path) or ("url", http(s) URL) for a configured weights source."""
    if source.startswith(DETECTRON2_PREFIX):
        return "url", DETECTRON2_URL + source[len(DETECTRON2_PREFIX):]
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        return "url", source
    if parsed.scheme == "file":
        return "file", urllib.request.url2pathname(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise StageError(f"unsupported URL scheme {parsed.scheme!r} in {source!r} "
                         f"(use a path, file://, http(s):// or detectron2://)")
    return "file", source


class _WeightsUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("collections", "OrderedDict"), ("_codecs", "encode"),  # protocol-2 pickles encode bytes so
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
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


def _download(url: str, dst, timeout: float = 60.0) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        shutil.copyfileobj(r, dst, length=1 << 20)


def stage(spec: dict) -> dict:
    """The stage_weights job: spec from rethink.paths.Paths.stage_spec. Returns the cost record."""
    from .data import write_json_atomic

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
    try:
        with os.fdopen(fd, "wb") as f:
            if kind == "file":
                with open(where, "rb") as src:
                    shutil.copyfileobj(src, f, length=1 << 20)
            else:
                try:
                    _download(where, f)
                except OSError as e:  # URLError, HTTPError, timeouts
                    raise StageError(f"{field}: cannot download {where}: {e}") from None
            f.flush()
            os.fsync(f.fileno())
        try:
            check_weights_pickle(tmp)
        except StageError as e:
            raise StageError(f"{field}: {source}: {e}") from None
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    record = spec.get("cost_record") or {}
    cost = {k: record.get(k) for k in COST_KEYS}
    cost["source"] = source
    write_json_atomic(spec["cost"], cost, indent=1, sort_keys=True)
    return cost
