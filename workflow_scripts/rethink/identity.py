"""Result identity: what determines a result, kept apart from how the job runs.

Snakemake's default rerun triggers (params, code, software environment) would redo a finished job
whenever anything in its params or its rule's text changes: a loader-worker count, a resume
checkpoint period, an upgrade of the workflow. Here a job is redone only when what determines its
result changes:

- Every job that makes a result takes an **identity file** as an input: a small JSON of the fields
  that determine that result and nothing else (`work/identity/...`). One per line of training
  (family + line: the run's recipe without its operational fields, backbone, norm, init, data, seed,
  the line's LR schedule, the dataset's and the init's definitions), one per dataset and one per
  init weight file.
- The workflow writes an identity file when the workflow is parsed, and only when its content
  changes. Snakemake runs with `rerun-triggers: mtime` (the Snakefile enforces it), so a rewritten
  identity file (newer than the results made from it) redoes exactly the jobs that read it and what
  depends on them; an operational edit writes no file and redoes nothing.
- A file that appears for the first time is dated 2000-01-01, so results that already exist (an
  upgrade from a workflow without identity files, or results/ copied to a laptop) are not redone. A
  rewritten file whose content is what every existing result of its line records (an edit undone)
  is dated the same way.
- Every checkpoint and metrics JSON records the hash of the identity it was made with; the previous
  contents are kept beside the file (`<name>.<hash>.json`), so a warning can say which field changed,
  old -> new.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .atomic import write_json_atomic

# recipe fields that change how a job runs, never what it computes
OPERATIONAL_RECIPE = ("num_workers", "checkpoint_period", "eval_gpus")
# dataset / init fields that describe cost or provenance, not content
OPERATIONAL_INIT = ("cost",)
# dataset fields at a value that makes the dataset what it was before the field existed
DATASET_DEFAULTS = {"on_bad_data": "error"}
UNDATED = 946684800  # 2000-01-01 UTC: older than any result this workflow has made


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def digest(content: dict) -> str:
    return hashlib.sha256(canonical(content).encode()).hexdigest()[:16]


# recipe fields added after results existed, at the value that trains as before the field existed:
# left out of the identity at that value, so an upgrade of the workflow redoes nothing
RECIPE_DEFAULTS = {"amp": False, "head_channels": 256}


def result_recipe(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k not in OPERATIONAL_RECIPE and RECIPE_DEFAULTS.get(k, object()) != v}


def dataset_definition(dataset: dict) -> dict:
    """A dataset's config entry as its identity: a field of DATASET_DEFAULTS at its default is left
    out (it prepares the same data as a config without it), so adding it redoes nothing."""
    return {k: v for k, v in dataset.items() if DATASET_DEFAULTS.get(k, object()) != v}


def line_identity(settings: dict, schedule: dict, engine: str, dataset: dict, init: dict) -> dict:
    """What every checkpoint and evaluation of one line of training depends on (its settings:
    rethink.identity_files.line_settings; its file: IdentityFiles.line_identity)."""
    settings = dict(settings)
    settings["recipe"] = result_recipe(settings["recipe"])
    for k in ("run_id", "family"):  # names, not content (the family is the file's folder)
        settings.pop(k, None)
    return {
        "engine": engine,
        "run": settings,
        "schedule": schedule,
        "dataset": dataset_definition(dataset),
        "init": {k: v for k, v in init.items() if k not in OPERATIONAL_INIT},
    }


def flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def diff(old: dict, new: dict) -> list[str]:
    """'field: old -> new' for every leaf that differs."""
    a, b = flatten(old), flatten(new)
    return [
        f"{k}: {json.dumps(a.get(k, '(absent)'))} -> {json.dumps(b.get(k, '(absent)'))}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "(absent)") != b.get(k, "(absent)")
    ]


class Store:
    """The identity files under `root`: written when their content changes, read back by hash."""

    def __init__(self, root: str, write: bool = True):
        self.root = root
        self.write_files = write
        self.current: dict[str, tuple[str, dict]] = {}  # path -> (hash, content)

    def path(self, *parts: str) -> str:
        return f"{self.root}/" + "/".join(parts) + ".json"

    def ensure(self, path: str, content: dict, recorded=lambda: ()) -> str:
        """Make `path` hold `content`; return its hash. `recorded()` lists the hashes the existing
        results of this identity record (read only when the content changes)."""
        if path in self.current:
            return self.current[path][0]
        h = digest(content)
        self.current[path] = (h, content)
        if not self.write_files:
            return h
        p = Path(path)
        old = None
        try:
            old = json.loads(p.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            old = {}  # unreadable: rewrite it
        if old is not None and old.get("hash") == h:
            return h
        if old and old.get("hash"):  # keep what it was, so a warning can say what changed
            write_json_atomic(self.history(path, old["hash"]), old, indent=1, sort_keys=True)
        write_json_atomic(p, {"hash": h, "content": content}, indent=1, sort_keys=True)
        seen = set(recorded())
        if old is None or (seen and seen == {h}):
            os.utime(p, (UNDATED, UNDATED))  # new, or an edit undone: existing results stand
        return h

    @staticmethod
    def history(path: str, h: str) -> str:
        return str(path)[: -len(".json")] + f".{h}.json"

    def content_of(self, path: str, h: str) -> dict | None:
        """The content `path` had when its hash was `h` (None if never seen)."""
        if path in self.current and self.current[path][0] == h:
            return self.current[path][1]
        for p in (path, self.history(path, h)):
            try:
                rec = json.loads(Path(p).read_text())
            except (OSError, ValueError):
                continue
            if rec.get("hash") == h:
                return rec.get("content")
        return None
