"""Every file the workflow reads or writes, the spec each job works from, and the identity files
that decide when a result is redone (rethink.identity).

The rules (rules/*.smk) ask this module for paths; a job's script rebuilds this class from the
config snapshot and asks it for its spec (rethink.jobs), so the spec is never on a command line. Large files live under `workdir`
(data, weights, checkpoints, resume state, logs), small ones under `results` (metrics,
tables, figures), so copying `results/` off a cluster is enough to rebuild the report.
"""
from __future__ import annotations

import json
import os

from . import identity, rehearsal
from .grid import Run, recipe_at, task_at
from .plan import TRUNK, Milestone, Plan, Segment
from .schedule import Schedule

DIVERGED_MARKER = "DIVERGED.json"  # the loop leaves it in a segment's resume folder on a non-finite loss


def it7(iteration: int) -> str:
    return f"{int(iteration):07d}"


def _it(iteration) -> str:
    return iteration if isinstance(iteration, str) and iteration.startswith("{") else it7(iteration)


def recorded_identity(path: str) -> str | None:
    """The identity hash a metrics JSON records (None: unreadable, or written before identities)."""
    try:
        with open(path) as f:
            return json.load(f).get("identity")
    except (OSError, ValueError, AttributeError):
        return None


class Paths:
    def __init__(self, cfg: dict, plan: Plan, write_identities: bool = False):
        self.cfg = cfg
        self.plan = plan
        self.work = cfg["workdir"].rstrip("/")
        self._lost: list[str] | None = None
        self.results = cfg["results"].rstrip("/")
        self.ids = identity.Store(f"{self.work}/identity", write=write_identities)

    # ------------------------------------------------------------------ result identity (rethink.identity)
    def line_identity(self, family: str, line: str) -> tuple[str, str]:
        """(identity file, hash) of every checkpoint and evaluation of one line of training."""
        path = self.ids.path("lines", family, line)
        if path in self.ids.current:
            return path, self.ids.current[path][0]
        ln = self.plan.lines[(family, line)]
        run = self.plan.run(ln.owner)
        settings, schedule = self.line_settings(family, line)
        if line == TRUNK:  # constant LR: where the trunk ends changes none of its checkpoints
            schedule = {k: v for k, v in schedule.items() if k != "iterations"}
        content = identity.line_identity(settings, schedule, self.cfg["engine"], self.cfg["datasets"][run.data],
                                         self._init_definition(run.init, run.backbone, run.norm))
        content = rehearsal.identity(self.cfg, content, family)
        return path, self.ids.ensure(path, content, lambda: list(self.recorded_identities(family, line).values()))

    def recorded_identities(self, family: str, line: str) -> dict[str, str | None]:
        """Every metrics JSON of the line on disk (plain and test-time augmented) -> the identity
        hash it records."""
        out = {}
        for m in self.plan.line_milestones[(family, line)]:
            tta = [True] if (family, line, m.iteration) in self.plan.tta_milestones else []
            for t in [False, *tta]:
                f = self.metrics(family, line, m.iteration, tta=t)
                if os.path.exists(f):
                    out[f] = recorded_identity(f)
        return out

    def data_identity(self, data: str) -> str:
        path = self.ids.path("data", data)
        self.ids.ensure(path, rehearsal.identity(self.cfg, {"dataset": identity.dataset_definition(self.cfg["datasets"][data])}))
        return path

    def pretrain_data_identity(self, init: str) -> str:
        path = self.ids.path("data", f"pretrain-{init}")
        self.ids.ensure(path, rehearsal.identity(self.cfg, {"pretrain_data": self._init_definition(init, None, None)}))
        return path

    def init_identity(self, init: str, backbone: str, norm: str) -> str:
        path = self.ids.path("init", f"{init}-{backbone}-{norm}")
        self.ids.ensure(path, rehearsal.identity(self.cfg, {"init": self._init_definition(init, backbone, norm),
                                                            "backbone": backbone, "norm": norm}))
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
        path = self.ids.path("metrics_table")
        content = rehearsal.identity(self.cfg, {"metrics": sorted(self.all_metrics())})
        lost = self.lost_metrics() if self.ids.write_files else []
        if lost:
            content["lost"] = lost
        self.ids.ensure(path, content)
        if lost and os.path.getmtime(path) <= os.path.getmtime(self.metrics_table):
            os.utime(path)  # a new identity file is dated in the past; this one must look newer
        return path

    def lost_metrics(self) -> list[str]:
        """The metrics files (paths as the rules name them) that rows of the existing metrics table
        were collected from and that no longer exist (read once per parse of the workflow)."""
        if self._lost is None:
            self._lost = self._read_lost_metrics()
        return self._lost

    def _read_lost_metrics(self) -> list[str]:
        import csv

        try:
            with open(self.metrics_table, newline="") as f:
                sources = {row.get("source") or "" for row in csv.DictReader(f)}
        except (OSError, UnicodeDecodeError, csv.Error):
            return []
        planned = set(self.all_metrics())
        return sorted(p for p in (f"{self.results}/{s}" for s in sources if s)
                      if p in planned and not os.path.exists(p))

    def _init_definition(self, init: str, backbone: str | None, norm: str | None) -> dict:
        spec = {k: v for k, v in self.cfg["inits"][init].items() if k not in identity.OPERATIONAL_INIT}
        if "weights" in spec:  # staged: only this backbone's source matters
            spec["weights"] = spec["weights"].get(f"{backbone}-{norm}") if backbone else None
        return spec

    def write_identities(self) -> None:
        """Every identity file of the plan, so Snakemake's mtime comparison sees the current ones."""
        for family, line in self.plan.lines:
            self.line_identity(family, line)
        self.table_identity()
        for run in self.plan.grid.runs.values():
            self.data_identity(run.data)
            if self.init_kind(run.init) != "random":
                self.init_identity(run.init, run.backbone, run.norm)
            if self.init_kind(run.init) == "pretrain":
                self.pretrain_data_identity(run.init)

    # ------------------------------------------------------------------ files
    def dataset(self, data: str) -> str:
        return f"{self.work}/data/{data}/dataset.json"

    def pretrain_dataset(self, init: str) -> str:
        return f"{self.work}/data/pretrain-{init}/dataset.json"

    def init_kind(self, init: str) -> str:
        return self.cfg["inits"][init]["kind"]

    def init_weights(self, init: str, backbone: str, norm: str) -> str | None:
        kind = self.init_kind(init)
        if kind == "random":
            return None
        ext = "pkl" if kind == "staged" else "pth"
        return f"{self.work}/init/{init}/{backbone}-{norm}.{ext}"

    def init_weights_pattern(self, kind: str) -> str:
        return f"{self.work}/init/{{init}}/{{backbone}}-{{norm}}." + ("pkl" if kind == "staged" else "pth")

    def init_cost_pattern(self) -> str:
        return f"{self.results}/init/{{init}}/{{backbone}}-{{norm}}.json"

    def init_names_regex(self, kind: str) -> str:
        names = [n for n, spec in self.cfg["inits"].items() if spec["kind"] == kind]
        return "|".join(names) if names else "(?!x)x"  # a regex that matches nothing

    def init_cost(self, init: str, backbone: str, norm: str) -> str | None:
        if self.init_kind(init) == "random":
            return None
        return f"{self.results}/init/{init}/{backbone}-{norm}.json"

    def checkpoint(self, family: str, line: str, iteration) -> str:
        """With iteration "{iter}" (and "{family}", "{line}") this is the rule's output pattern."""
        return f"{self.work}/checkpoints/{family}/{line}/iter_{_it(iteration)}.pth"

    def model(self, run_id: str) -> str:
        """A run's final model, kept (not temporary): the last segment's checkpoint. With run_id
        "{run}" this is the train_final rule's output pattern."""
        return f"{self.work}/models/{run_id}/model_final.pth"

    def checkpoint_file(self, family: str, line: str, iteration: int) -> str:
        """The file that holds the checkpoint at (family, line, iteration): a run's kept model where
        it is one, else the temporary segment checkpoint. A run that finished before models were
        kept has neither (its final metrics exist): the temporary path, so nothing is retrained."""
        run_id = self.plan.finals.get((family, line, int(iteration)))
        if run_id is None:
            return self.checkpoint(family, line, iteration)
        model = self.model(run_id)
        if not os.path.exists(model) and os.path.exists(self.metrics(family, line, iteration)):
            return self.checkpoint(family, line, iteration)
        return model

    def live(self, family: str, line: str, iteration: int) -> dict:
        """Where a job on (family, line) up to `iteration` writes its live curves (rethink.live):
        the TensorBoard folder and the runs whose curve passes through it. For watching only: no
        rule reads these files, so which runs are listed decides no job."""
        return {"dir": f"{self.work}/tb", "runs": list(self.plan.runs_through(family, line, iteration))}

    def resume_dir(self, family: str, line: str, end: int) -> str:
        # outside every declared output: Snakemake's clean-up of a failed job never touches it
        return f"{self.work}/resume/{family}/{line}/to_{it7(end)}"

    def metrics(self, family: str, line: str, iteration, tta: bool = False) -> str:
        """The metrics JSON of a checkpoint; tta: its evaluation with test-time augmentation."""
        return f"{self.results}/metrics/{family}/{line}/iter_{_it(iteration)}" + ("-tta" if tta else "") + ".json"

    def log(self, kind: str, *parts: str) -> str:
        return f"{self.work}/logs/{kind}/" + "/".join(parts) + ".log"

    @property
    def metrics_table(self) -> str:
        return f"{self.results}/metrics.csv"

    @property
    def grid_csv(self) -> str:
        return f"{self.results}/grid.csv"

    def all_metrics(self) -> list[str]:
        return ([self.metrics(m.family, m.line, m.iteration) for m in self.plan.milestones.values()]
                + [self.metrics(m.family, m.line, m.iteration, tta=True) for m in self.plan.tta_milestones.values()])

    def figure_names(self) -> list[str]:
        """The figures this grid can draw (rethink.report_targets.figures_for)."""
        from . import report_targets

        return report_targets.figures_for((r.task, r.data) for r in self.plan.grid.runs.values())

    def final_targets(self) -> list[str]:
        from . import report_targets

        return [self.metrics_table, *report_targets.targets(self.results, self.figure_names())]

    def report_entries(self) -> list[dict]:
        from . import report_targets

        entries = report_targets.entries(self.results, figure_names=self.figure_names())
        if rehearsal.settings(self.cfg):  # every category of `snakemake --report` says so
            entries = [{**e, "category": f"REHEARSAL {e['category']}"} for e in entries]
        return entries

    # ------------------------------------------------------------------ specs
    def data_spec(self, data: str) -> dict:
        from .evalcost import val_images

        extra = rehearsal.spec(self.cfg, val_images=lambda: val_images(self.cfg, data))
        return {"name": data, **self.cfg["datasets"][data], "output": self.dataset(data), **extra}

    def pretrain_data_spec(self, init: str) -> dict:
        return {**self.cfg["inits"][init], "name": f"pretrain-{init}", "kind": "classification",
                "output": self.pretrain_dataset(init), **rehearsal.spec(self.cfg)}

    def pretrain_spec(self, init: str, backbone: str, norm: str) -> dict:
        return {"init": init, "backbone": backbone, "norm": norm, **self.cfg["inits"][init],
                "dataset": self.pretrain_dataset(init),
                "output": self.init_weights(init, backbone, norm), "cost": self.init_cost(init, backbone, norm),
                **rehearsal.spec(self.cfg)}

    def stage_spec(self, init: str, backbone: str, norm: str) -> dict:
        spec = self.cfg["inits"][init]
        return {"init": init, "backbone": backbone, "norm": norm,
                "source": spec["weights"][f"{backbone}-{norm}"], "cost_record": spec.get("cost", {}),
                "output": self.init_weights(init, backbone, norm), "cost": self.init_cost(init, backbone, norm),
                **rehearsal.spec(self.cfg)}

    def _run_settings(self, run: Run) -> dict:
        # which experiments name a run does not change what it trains: keep it out of the
        # job's params, or adding an experiment would make Snakemake retrain the run
        d = run.to_dict()
        d.pop("experiments")
        d["init_kind"] = self.init_kind(run.init)  # engines tell random init by kind, not by name
        return d

    def segment_input(self, seg: Segment) -> dict:
        run = self.plan.run(seg.owner)
        inputs = {"dataset": self.dataset(run.data), "identity": self.line_identity(seg.family, seg.line)[0]}
        if seg.start_from is not None:
            inputs["start"] = self.checkpoint_file(seg.family, seg.start_from[0], seg.start_from[1])
        else:
            weights = self.init_weights(run.init, run.backbone, run.norm)
            if weights:
                inputs["weights"] = weights
        return inputs

    def line_settings(self, family: str, line: str) -> tuple[dict, dict]:
        """(run settings, LR schedule) that a job on this line trains or evaluates with.

        The trunk is every member's schedule before its first drop: it is described without
        naming one member, so adding a schedule to a family changes none of its jobs' params
        (which would make Snakemake retrain them)."""
        ln = self.plan.lines[(family, line)]
        run = self.plan.run(ln.owner)
        sched = run.schedule
        settings = self._run_settings(run)
        schedule = {
            "iterations": sched.iterations, "base_lr": sched.base_lr, "lr_drops": list(sched.lr_drops),
            "drop_factor": sched.drop_factor, "warmup_iters": sched.warmup_iters, "warmup_factor": sched.warmup_factor,
        }
        if line == TRUNK:
            settings.update(run_id=f"{family}-trunk", schedule=TRUNK, iterations=None)
            schedule.update(iterations=ln.end, lr_drops=[])
        return settings, schedule

    def train_spec(self, seg: Segment, output: str | None = None) -> dict:
        run = self.plan.run(seg.owner)
        inputs = self.segment_input(seg)
        settings, schedule = self.line_settings(seg.family, seg.line)
        settings["recipe"] = recipe_at(run.recipe, seg.start)  # the architecture this segment trains
        spec = {
            "engine": self.cfg["engine"],
            "run": settings,
            "family": seg.family,
            "line": seg.line,
            "start": seg.start,
            "end": seg.end,
            "schedule": schedule,
            "init_kind": self.init_kind(run.init),
            "start_checkpoint": inputs.get("start"),
            "init_weights": inputs.get("weights"),
            "dataset": inputs["dataset"],
            "output": output or self.checkpoint(seg.family, seg.line, seg.end),
            "resume_dir": self.resume_dir(seg.family, seg.line, seg.end),
            "identity": self.line_identity(seg.family, seg.line)[1],
            "live": self.live(seg.family, seg.line, seg.end),
        }
        if rehearsal.settings(self.cfg):  # the rehearsal engine, one process on the CPU (rethink.rehearsal)
            from .resources import seconds_per_iter

            settings["rehearsal"], log_period = rehearsal.training(self.cfg, seg, run.recipe, seconds_per_iter(self.plan, run))
            spec.update(engine=rehearsal.ENGINE, log_period=log_period)
            settings["recipe"] = {**settings["recipe"], "gpus": 0}
        start_task = task_at(run.recipe, seg.start - 1) if seg.start_from is not None else None
        if start_task is not None and start_task != settings["recipe"]["task"]:
            # the start checkpoint holds another architecture (the switch to cascade): only this
            # segment's spec says so, every other job's params stay as they were
            spec["start_task"] = start_task
        return spec

    def eval_input(self, ms: Milestone) -> dict:
        """The checkpoint (temporary: once evaluated and consumed it is gone, and a missing temp
        file makes Snakemake re-run nothing) and the init's cost record (small, under results/).
        The dataset is not an input: its manifest lies under workdir, which a laptop that holds
        only results/ lacks, and a missing non-temp input would re-run the evaluation; it exists
        whenever the checkpoint does, since training needed it. The line's identity file (under
        workdir too) is an input: the workflow writes it whenever it parses the config, so it always exists."""
        run = self.plan.run(self.plan.lines[(ms.family, ms.line)].owner)
        inputs = {"checkpoint": self.checkpoint_file(ms.family, ms.line, ms.iteration),
                  "identity": self.line_identity(ms.family, ms.line)[0]}
        cost = self.init_cost(run.init, run.backbone, run.norm)
        if cost:
            inputs["init_cost"] = cost
        return inputs

    def eval_spec(self, ms: Milestone, tta: bool = False) -> dict:
        """Describes the checkpoint only; which runs pass through it is the plan's business
        (collect asks it), so growing the grid never re-runs an evaluation. tta: the evaluation
        with test-time augmentation (its own output; the plain spec has no `tta` key)."""
        settings, schedule = self.line_settings(ms.family, ms.line)
        settings["recipe"] = recipe_at(settings["recipe"], ms.iteration - 1)  # the checkpoint's architecture
        inputs = self.eval_input(ms)
        spec = {
            "engine": self.cfg["engine"],
            "run": settings,
            "family": ms.family,
            "line": ms.line,
            "iteration": ms.iteration,
            "lr": Schedule(**schedule).lr(max(ms.iteration - 1, 0)),
            "checkpoint": inputs["checkpoint"],
            "dataset": self.dataset(self.plan.run(self.plan.lines[(ms.family, ms.line)].owner).data),
            "init_cost": inputs.get("init_cost"),
            "output": self.metrics(ms.family, ms.line, ms.iteration, tta),
            "identity": self.line_identity(ms.family, ms.line)[1],
            "live": self.live(ms.family, ms.line, ms.iteration),
        }
        if rehearsal.settings(self.cfg):  # simulated (rethink.rehearsal.evaluation)
            from .evalcost import seconds
            from .resources import seconds_per_iter

            run = self.plan.run(self.plan.lines[(ms.family, ms.line)].owner)
            spec.update(engine=rehearsal.ENGINE, **rehearsal.spec(
                self.cfg, seconds_per_iter=lambda: seconds_per_iter(self.plan, run), gpus=lambda: int(run.recipe["gpus"]),
                trunk=lambda: ms.line == TRUNK, eval_seconds=lambda: seconds(self.cfg, run, tta)))
        if self.cfg.get("coco_eval", "pycocotools") != "pycocotools":  # the default keeps older specs as they were
            spec["coco_eval"] = self.cfg["coco_eval"]
        if tta:
            spec["tta"] = True
        return spec
