"""The identity files of one config's plan (`IdentityFiles`): one per line of training, dataset,
pre-training set and init weight file, and one for the metrics table. What an identity file holds
and how it is dated is rethink.identity; which fields of a line go into it is `line_settings`.

The rules take these files as inputs, so Snakemake's mtime comparison redoes exactly the jobs
whose identity changed; every job's spec carries its line's hash (rethink.job_specs), and
every checkpoint and metrics JSON records it.
"""

from __future__ import annotations

import csv
import json
import os

from . import identity, rehearsal
from .grid import Run
from .paths import Paths
from .plan import TRUNK, Plan


def recorded_identity(path: str) -> str | None:
    """The identity hash a metrics JSON records (None: unreadable, or written before identities)."""
    try:
        with open(path) as f:
            return json.load(f).get("identity")
    except (OSError, ValueError, AttributeError):
        return None


def run_settings(cfg: dict, run: Run) -> dict:
    """A run's settings as its jobs are told them. Which experiments name a run does not change what
    it trains: left out of the job's params, or adding an experiment would make Snakemake retrain it."""
    d = run.to_dict()
    d.pop("experiments")
    d["init_kind"] = cfg["inits"][run.init]["kind"]  # engines tell random init by kind, not by name
    return d


def line_settings(cfg: dict, plan: Plan, family: str, line: str) -> tuple[dict, dict]:
    """(run settings, LR schedule) that a job on this line trains or evaluates with.

    The trunk is every member's schedule before its first drop: it is described without
    naming one member, so adding a schedule to a family changes none of its jobs' params
    (which would make Snakemake retrain them)."""
    ln = plan.lines[(family, line)]
    run = plan.run(ln.owner)
    sched = run.schedule
    settings = run_settings(cfg, run)
    schedule = {
        "iterations": sched.iterations,
        "base_lr": sched.base_lr,
        "lr_drops": list(sched.lr_drops),
        "drop_factor": sched.drop_factor,
        "warmup_iters": sched.warmup_iters,
        "warmup_factor": sched.warmup_factor,
    }
    if line == TRUNK:
        settings.update(run_id=f"{family}-trunk", schedule=TRUNK, iterations=None)
        schedule.update(iterations=ln.end, lr_drops=[])
    return settings, schedule


class IdentityFiles:
    """Each identity file of the plan: its path and current hash, written (with `write`) when its
    content changes. Read-only (the default) for a job, a test or a bench: the hashes, no files."""

    def __init__(self, paths: Paths, write: bool = False):
        self.paths = paths
        self.cfg = paths.cfg
        self.plan = paths.plan
        self.store = identity.Store(f"{paths.work}/identity", write=write)
        self._lost: list[str] | None = None

    def line_identity(self, family: str, line: str) -> tuple[str, str]:
        """(identity file, hash) of every checkpoint and evaluation of one line of training."""
        path = self.store.path("lines", family, line)
        if path in self.store.current:
            return path, self.store.current[path][0]
        run = self.plan.run(self.plan.lines[(family, line)].owner)
        settings, schedule = line_settings(self.cfg, self.plan, family, line)
        if line == TRUNK:  # constant LR: where the trunk ends changes none of its checkpoints
            schedule = {k: v for k, v in schedule.items() if k != "iterations"}
        content = identity.line_identity(
            settings,
            schedule,
            self.cfg["engine"],
            self.cfg["datasets"][run.data],
            self._init_definition(run.init, run.backbone, run.norm),
        )
        content = rehearsal.identity(self.cfg, content, family)
        return path, self.store.ensure(path, content, lambda: list(self.recorded_identities(family, line).values()))

    def recorded_identities(self, family: str, line: str) -> dict[str, str | None]:
        """Every metrics JSON of the line on disk (plain and test-time augmented) -> the identity
        hash it records."""
        out = {}
        for m in self.plan.line_milestones[(family, line)]:
            tta = [True] if (family, line, m.iteration) in self.plan.tta_milestones else []
            for t in [False, *tta]:
                f = self.paths.metrics(family, line, m.iteration, tta=t)
                if os.path.exists(f):
                    out[f] = recorded_identity(f)
        return out

    def data_identity(self, data: str) -> str:
        path = self.store.path("data", data)
        content = {"dataset": identity.dataset_definition(self.cfg["datasets"][data])}
        self.store.ensure(path, rehearsal.identity(self.cfg, content))
        return path

    def pretrain_data_identity(self, init: str) -> str:
        path = self.store.path("data", f"pretrain-{init}")
        content = {"pretrain_data": self._init_definition(init, None, None)}
        self.store.ensure(path, rehearsal.identity(self.cfg, content))
        return path

    def init_identity(self, init: str, backbone: str, norm: str) -> str:
        path = self.store.path("init", f"{init}-{backbone}-{norm}")
        self.store.ensure(
            path,
            rehearsal.identity(
                self.cfg, {"init": self._init_definition(init, backbone, norm), "backbone": backbone, "norm": norm}
            ),
        )
        return path

    def table_identity(self) -> str:
        """The metrics table's identity: the set of metrics files it collects. Snakemake compares
        modification times only, so a grown grid (an experiment, test_aug, a new eval_period) must
        rewrite a file for collect, and through it the new evaluations, to be planned.

        A metrics file the existing table holds a row of but that is gone from disk (deleted by
        hand, lost in a copy) is named in it too (`lost`): otherwise Snakemake would see a table
        newer than every file left and plan nothing, and the stale row would stay. Collect then
        runs and needs that file, so its evaluation is planned (from the kept model, or, for an
        intermediate checkpoint, by retraining, which the campaign guard stops to ask about)."""
        path = self.store.path("metrics_table")
        content = rehearsal.identity(self.cfg, {"metrics": sorted(self.paths.all_metrics())})
        lost = self.lost_metrics() if self.store.write_files else []
        if lost:
            content["lost"] = lost
        self.store.ensure(path, content)
        if lost and os.path.getmtime(path) <= os.path.getmtime(self.paths.metrics_table):
            os.utime(path)  # a new identity file is dated in the past; this one must look newer
        return path

    def lost_metrics(self) -> list[str]:
        """The metrics files (paths as the rules name them) that rows of the existing metrics table
        were collected from and that no longer exist (read once per parse of the workflow)."""
        if self._lost is None:
            self._lost = self._read_lost_metrics()
        return self._lost

    def _read_lost_metrics(self) -> list[str]:
        try:
            with open(self.paths.metrics_table, newline="") as f:
                sources = {row.get("source") or "" for row in csv.DictReader(f)}
        except (OSError, UnicodeDecodeError, csv.Error):
            return []
        planned = set(self.paths.all_metrics())
        return sorted(
            p for p in (f"{self.paths.results}/{s}" for s in sources if s) if p in planned and not os.path.exists(p)
        )

    def _init_definition(self, init: str, backbone: str | None, norm: str | None) -> dict:
        spec = {k: v for k, v in self.cfg["inits"][init].items() if k not in identity.OPERATIONAL_INIT}
        if "weights" in spec:  # staged: only this backbone's source matters
            spec["weights"] = spec["weights"].get(f"{backbone}-{norm}") if backbone else None
        return spec

    def write_all(self) -> None:
        """Every identity file of the plan, so Snakemake's mtime comparison sees the current ones."""
        for family, line in self.plan.lines:
            self.line_identity(family, line)
        self.table_identity()
        for run in self.plan.grid.runs.values():
            self.data_identity(run.data)
            if self.paths.init_kind(run.init) != "random":
                self.init_identity(run.init, run.backbone, run.norm)
            if self.paths.init_kind(run.init) == "pretrain":
                self.pretrain_data_identity(run.init)
