"""Training checkpoints: save, load and validate, in one place.

A checkpoint is one ``torch.save`` file (loadable with ``weights_only=True``) holding:

    format          "rethink-checkpoint/1"
    model           the model's state_dict (unwrapped from DDP)
    optimizer       the optimizer's state_dict
    iteration       iterations trained (the next iteration to run)
    counters        {"images", "instances", "pixels"} seen since iteration 0 (all processes)
    wall_seconds    training wall time since iteration 0, summed over segments
    device_seconds  accelerator-seconds since iteration 0 (GPUs x wall; on CPU: process CPU seconds)
    gpus            GPUs of the job that wrote it (0 = CPU)
    run_id, family, line, engine
    identity        (optional) hash of the line's identity file it was trained with (rethink.identity)
    rng             {"python", "numpy", "torch", "cuda"} states of the process that wrote it (rank 0)
    checksum        sha256 of everything else, tensors by their bytes (:func:`digest`); verified on
                    every load (checkpoints written before it existed load without it)
    diverged        (only in the output of a segment that diverged, or started from one that did:
                    :func:`diverged_output`) where the run diverged; model and optimizer are empty

A checkpoint that holds no tensor is one JSON object of the same fields instead: the rehearsal's
(rethink.rehearsal: its model is 4 numbers, its RNG states Python's and numpy's) and a diverged
output (no weights). Writing and reading it needs no torch, so a rehearsal job never imports torch;
:func:`load` tells the two encodings apart by the file's first byte, and a real engine refuses a
rehearsal checkpoint by its ``engine`` (rethink.evaluate).

Writes are atomic (a temp file in the same folder, fsync, os.replace), so a reader sees a whole
checkpoint or none; the checksum catches what the file system or a copy damaged afterwards. Segment outputs
are written by the loop; resume checkpoints live in a segment's
resume folder as ``iter_<7 digits>.pth``. Anything unreadable raises :class:`CheckpointError` naming
the file.

Weight files that are not training checkpoints (pre-trained backbones) and state dicts mapped
between architectures: rethink.weights (rethink.pretrain writes backbone weights with
:func:`atomic_torch_save`; rethink.weights reads them with :func:`verify`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_file

if TYPE_CHECKING:
    import torch

FORMAT = "rethink-checkpoint/1"
REQUIRED = (
    "format",
    "model",
    "optimizer",
    "iteration",
    "counters",
    "wall_seconds",
    "device_seconds",
    "run_id",
    "family",
    "line",
    "rng",
)
COUNTERS = ("images", "instances", "pixels")
RESUME_RE = re.compile(r"iter_(\d{7})\.pth")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


CHECKSUM = "checksum"
DAMAGED_HINT = (
    "delete it and run snakemake again: the job that wrote it runs again (a dry run shows "
    "which, and a run stops to ask before it retrains finished work)"
)


def digest(obj) -> str:
    """sha256 of a checkpoint's content, the same before torch.save and after torch.load: dict
    keys in sorted order, tensors by dtype, shape and bytes, other values by their repr (a tuple
    and a list alike: weights-only loading may return either)."""
    h = hashlib.sha256()
    torch = sys.modules.get("torch")  # (not imported: there is no tensor to meet)

    def feed(x):
        if torch is not None and isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save to a temp file next to `path`, fsync, then os.replace (all or nothing); a dict
    gets its `checksum` (:func:`digest`) first."""
    if isinstance(obj, dict):
        content = {k: v for k, v in obj.items() if k != CHECKSUM}
        obj = {**content, CHECKSUM: digest(content)}
    import torch

    with atomic_file(path, "wb", fsync=True) as f:
        torch.save(obj, f)


def holds_tensors(obj) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return any(holds_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(holds_tensors(v) for v in obj)
    return False


def atomic_json_save(state: dict, path: str | Path) -> None:
    """A checkpoint without tensors as one JSON object (atomic, fsync), with its `checksum` of the
    content as JSON reads it back (lists for tuples, string keys)."""
    content = json.loads(json.dumps({k: v for k, v in state.items() if k != CHECKSUM}))
    with atomic_file(path, "w", fsync=True) as f:
        json.dump({**content, CHECKSUM: digest(content)}, f)


def verify(state, path: str | Path) -> None:
    """CheckpointError if a loaded dict's checksum does not match its content (none: not checked)."""
    if not isinstance(state, dict) or CHECKSUM not in state:
        return
    want = state[CHECKSUM]
    got = digest({k: v for k, v in state.items() if k != CHECKSUM})
    if got != want:
        raise CheckpointError(
            f"{path}: damaged: its content does not match its checksum (sha256 {got[:12]}..., "
            f"written as {str(want)[:12]}...); {DAMAGED_HINT}"
        )


def rng_state(with_torch: bool = True) -> dict:
    """The process's RNG states; without torch's (`with_torch` false: an engine that uses no torch,
    the rehearsal's) numbers only."""
    st = np.random.get_state()
    keys = st[1].astype(np.int64)
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": st[0],
            "keys": keys.tolist(),
            "pos": int(st[2]),
            "has_gauss": int(st[3]),
            "cached_gaussian": float(st[4]),
        },
    }
    if not with_torch:
        return state
    import torch

    state["numpy"]["keys"] = torch.from_numpy(keys)
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    keys = n["keys"].numpy() if hasattr(n["keys"], "numpy") else np.asarray(n["keys"], dtype=np.int64)
    np.random.set_state((n["name"], keys.astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "torch" in state:
        import torch

        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save(path: str | Path, state: dict) -> None:
    """Write a checkpoint (see the module docstring for its fields) atomically: torch.save's
    encoding, or JSON for one that holds no tensor."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint for {path} lacks field(s) {', '.join(missing)}")
    if holds_tensors(state):
        atomic_torch_save(state, path)
    else:
        atomic_json_save(state, path)


def load(path: str | Path, map_location="cpu") -> dict:
    """Read and validate a checkpoint; CheckpointError (naming the file) if it is missing,
    truncated, corrupt or not a rethink checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with path.open("rb") as f:
            as_json = f.read(1) == b"{"
        if as_json:  # (a torch file starts with a zip's or a pickle's magic)
            state = json.loads(path.read_text())
        else:
            import torch

            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, wrong magic, broken JSON ...
        raise CheckpointError(
            f"{path}: unreadable checkpoint (truncated or corrupt?): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}; {DAMAGED_HINT}"
        ) from None
    verify(state, path)
    validate(state, path)
    return state


def validate(state, path: str | Path = "checkpoint") -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a rethink checkpoint (a {type(state).__name__}, not a dict)")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a rethink checkpoint: missing field(s) {', '.join(missing)}")
    if state["format"] != FORMAT:
        raise CheckpointError(f"{path}: format {state['format']!r}, expected {FORMAT!r}")
    if not isinstance(state["iteration"], int) or state["iteration"] < 0:
        raise CheckpointError(f"{path}: iteration {state['iteration']!r} is not a non-negative integer")
    for key in COUNTERS:
        if key not in state["counters"]:
            raise CheckpointError(f"{path}: counters.{key} missing")


def metadata(state: dict) -> dict:
    """Everything but the tensors: what evaluation records next to its metrics."""
    return {k: v for k, v in state.items() if k not in ("model", "optimizer", "rng", CHECKSUM)}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if hasattr(model, "module") else model


def load_model_weights(model: torch.nn.Module, path: str | Path, state: dict | None = None) -> dict:
    """Load a checkpoint's weights (`state`, else read from `path`) into `model` (strict) and return
    its metadata (iteration, counters, wall_seconds, device_seconds, gpus, run_id, ...)."""
    state = load(path) if state is None else state
    target = unwrap(model)
    try:
        target.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model: {str(e).splitlines()[0]}") from None
    return metadata(state)


def diverged_output(spec: dict, info: dict) -> dict:
    """The output checkpoint of a training segment that diverged (`info`: where; rethink.hooks.Diverged):
    no weights, the segment's end iteration, family, line and identity, so the segments after it
    and the evaluations of its milestones read it like any output and record the run as diverged
    without training or predicting."""
    return {
        "format": FORMAT,
        "model": {},
        "optimizer": {},
        "iteration": int(spec["end"]),
        "counters": {k: 0 for k in COUNTERS},
        "wall_seconds": 0.0,
        "device_seconds": 0.0,
        "gpus": 0,
        "run_id": spec["run"]["run_id"],
        "family": spec["family"],
        "line": spec["line"],
        "engine": spec.get("engine"),
        "identity": spec.get("identity"),
        "rng": {},
        "diverged": dict(info),
    }


# ---------------------------------------------------------------------------- resume folders
def resume_path(resume_dir: str | Path, iteration: int) -> Path:
    return Path(resume_dir) / f"iter_{int(iteration):07d}.pth"


def resume_candidates(resume_dir: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the resume checkpoints in `resume_dir`, newest first."""
    d = Path(resume_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = RESUME_RE.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def latest_valid(resume_dir: str | Path, start: int, end: int, log=print) -> dict | None:
    """The newest readable resume checkpoint with start <= iteration < end, or None. Unreadable
    ones are reported through `log` and skipped in favour of the previous good one."""
    for it, p in resume_candidates(resume_dir):
        if not start <= it < end:
            log(f"ignoring resume checkpoint {p}: iteration {it} is outside this segment [{start}, {end})")
            continue
        try:
            state = load(p)
        except CheckpointError as e:
            log(f"WARNING: skipping resume checkpoint: {e}")
            continue
        if state["iteration"] != it:
            log(f"WARNING: skipping resume checkpoint {p}: it holds iteration {state['iteration']}, not {it}")
            continue
        state["_path"] = str(p)
        return state
    return None


def prune(resume_dir: str | Path, keep: int = 2) -> None:
    """Delete all but the `keep` newest resume checkpoints (and stale temp files)."""
    d = Path(resume_dir)
    for _, p in resume_candidates(d)[keep:]:
        p.unlink(missing_ok=True)
    for p in d.glob(".iter_*.tmp"):  # left by a process killed while writing (one writer per folder)
        p.unlink(missing_ok=True)
