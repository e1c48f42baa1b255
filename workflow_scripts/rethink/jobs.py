"""How a job learns what to do: the config snapshot and the job's name, never its spec on a command line.

When the workflow is parsed, the validated configuration is written once to a content-addressed
**config snapshot**, `<workdir>/specs/config-<hash>.json` (`write_snapshot`). A job's command line
names only that file and the job (`--config <snapshot> --job <rule>/<wildcard values>`, e.g.
`--job train_segment/<family>/trunk/0000040`), so it stays short enough to read in a log and no
config value ever reaches a shell. The job rebuilds the grid and plan from the snapshot with the
same code that planned it (`load`) and asks `spec` for what the rule means: the same
`rethink.job_specs.JobSpecs` spec its rule would have passed.

The snapshot is every rule's input, dated 2000-01-01 like a new identity file (rethink.identity):
what decides whether a job is redone stays the identity files; an operational edit (a worker
count, a resource) writes a new snapshot and redoes nothing. A snapshot is never rewritten, so a
job queued before an edit reads the configuration it was planned with.

By hand: `python workflow_scripts/train.py --config <snapshot> --job <key> --print-spec` prints the
spec; `--spec <file or JSON>` runs a spec as given (tests, debugging).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from . import identity
from .atomic import write_json_atomic

SNAPSHOT_FORMAT = "rethink-config-snapshot-1"

# rule -> (the wildcards its key carries, in order; spec builder on (JobSpecs, *values))
RULES = {
    "prepare_data": (("data",), lambda specs, data: specs.data_spec(data)),
    "prepare_pretrain_data": (("init",), lambda specs, init: specs.pretrain_data_spec(init)),
    "pretrain": (("init", "backbone", "norm"), lambda specs, *a: specs.pretrain_spec(*a)),
    "stage_weights": (("init", "backbone", "norm"), lambda specs, *a: specs.stage_spec(*a)),
    "train_segment": (
        ("family", "line", "iter"),
        lambda specs, f, ln, it: specs.train_spec(specs.plan.segment(f, ln, int(it))),
    ),
    "train_final": (
        ("run",),
        lambda specs, run: specs.train_spec(specs.plan.final_segment(run), output=specs.paths.model(run)),
    ),
    "evaluate": (
        ("family", "line", "iter"),
        lambda specs, f, ln, it: specs.eval_spec(specs.plan.milestone(f, ln, int(it))),
    ),
    "evaluate_tta": (
        ("family", "line", "iter"),
        lambda specs, f, ln, it: specs.eval_spec(specs.plan.tta_milestone(f, ln, int(it)), tta=True),
    ),
}


class JobError(ValueError):
    pass


def snapshot_path(workdir: str, cfg: dict) -> str:
    return f"{workdir.rstrip('/')}/specs/config-{identity.digest(cfg)}.json"


def write_snapshot(cfg: dict, source: str, write: bool = True) -> str:
    """The snapshot of a validated config (written if absent; dated 2000-01-01); returns its path."""
    path = snapshot_path(cfg["workdir"], cfg)
    if write and not _readable(path):
        write_json_atomic(path, {"format": SNAPSHOT_FORMAT, "source": source, "config": cfg}, indent=1, sort_keys=True)
        os.utime(path, (identity.UNDATED, identity.UNDATED))
    return path


def _readable(path: str) -> bool:
    try:
        return json.loads(Path(path).read_text()).get("format") == SNAPSHOT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_snapshot(path: str) -> tuple[dict, str]:
    """(validated config, where it came from) of a snapshot."""
    try:
        rec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise JobError(f"{path}: config snapshot not found (the workflow writes it when it is parsed)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise JobError(f"{path}: unreadable config snapshot ({e}); delete it and run the workflow again") from None
    if not isinstance(rec, dict) or rec.get("format") != SNAPSHOT_FORMAT or not isinstance(rec.get("config"), dict):
        raise JobError(f"{path}: not a config snapshot (no format {SNAPSHOT_FORMAT!r})")
    return rec["config"], str(rec.get("source") or path)


def load(path: str):
    """The JobSpecs (with its paths and plan) of a snapshot, rebuilt as the workflow built them;
    writes nothing."""
    from . import grid as rgrid
    from .config import ConfigError
    from .job_specs import JobSpecs
    from .paths import Paths
    from .plan import Plan

    cfg, source = read_snapshot(path)
    try:
        return JobSpecs(Paths(cfg, Plan(rgrid.build(cfg, source))))
    except ConfigError as e:
        raise JobError(f"{path}: {e}") from None


def key(rule: str, wildcards) -> str:
    """A job's name on its command line: the rule and its wildcard values, '/'-joined."""
    names, _ = RULES[rule]
    return "/".join([rule, *(str(wildcards[n]) for n in names)])


def key_pattern(rule: str) -> str:
    """`key` as a pattern of the rule's wildcards ("train_segment/{family}/{line}/{iter}"), which
    Snakemake fills in per job without calling a function (a dry run of 1,470 jobs feels each call)."""
    names, _ = RULES[rule]
    return "/".join([rule, *(f"{{{n}}}" for n in names)])


_VALUE = re.compile(r"[A-Za-z0-9_.\-]+")


def spec(specs, job: str) -> dict:
    """The spec of the job named `job` (see `key`) in the plan of `specs` (a JobSpecs)."""
    rule, *values = job.split("/")
    if rule not in RULES:
        raise JobError(f"--job {job}: unknown rule {rule!r} (one of {', '.join(RULES)})")
    names, build = RULES[rule]
    if len(values) != len(names) or not all(_VALUE.fullmatch(v) for v in values):
        raise JobError(f"--job {job}: {rule} takes {'/'.join(names)}")
    try:
        return build(specs, *values)
    except (KeyError, ValueError) as e:
        raise JobError(f"--job {job}: not in the plan of this config snapshot ({e})") from None
