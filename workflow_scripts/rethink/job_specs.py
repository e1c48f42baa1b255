"""What each job is told (`JobSpecs`): its input files, as the rules declare them, and its spec,
the JSON object its script works from (a job rebuilds this class from the config snapshot and asks
it for its spec: rethink.jobs, so the spec is never on a command line).

A training segment and an evaluation are both jobs on one line of training: what they share
(the engine, the run's settings at the iteration they handle, the line, its dataset, identity hash
and live curves) is `line_job`; each adds its own fields.
"""

from __future__ import annotations

from . import rehearsal
from .grid import Run, recipe_at, task_at
from .identity_files import IdentityFiles, line_settings
from .paths import Paths
from .plan import TRUNK, Milestone, Segment
from .schedule import Schedule


class JobSpecs:
    """The specs and inputs of one config's jobs. `identities` defaults to the plan's identity files
    read-only (a job, a test, a bench: hashes computed, no file written)."""

    def __init__(self, paths: Paths, identities: IdentityFiles | None = None):
        self.paths = paths
        self.identities = IdentityFiles(paths) if identities is None else identities
        self.cfg = paths.cfg
        self.plan = paths.plan

    # ------------------------------------------------------------------ data and init weights
    def data_spec(self, data: str) -> dict:
        from .evalcost import val_images

        extra = rehearsal.spec(self.cfg, val_images=lambda: val_images(self.cfg, data))
        return {"name": data, **self.cfg["datasets"][data], "output": self.paths.dataset(data), **extra}

    def pretrain_data_spec(self, init: str) -> dict:
        return {
            **self.cfg["inits"][init],
            "name": f"pretrain-{init}",
            "kind": "classification",
            "output": self.paths.pretrain_dataset(init),
            **rehearsal.spec(self.cfg),
        }

    def pretrain_spec(self, init: str, backbone: str, norm: str) -> dict:
        return {
            "init": init,
            "backbone": backbone,
            "norm": norm,
            **self.cfg["inits"][init],
            "dataset": self.paths.pretrain_dataset(init),
            **self._init_outputs(init, backbone, norm),
            **rehearsal.spec(self.cfg),
        }

    def stage_spec(self, init: str, backbone: str, norm: str) -> dict:
        spec = self.cfg["inits"][init]
        return {
            "init": init,
            "backbone": backbone,
            "norm": norm,
            "source": spec["weights"][f"{backbone}-{norm}"],
            "cost_record": spec.get("cost", {}),
            **self._init_outputs(init, backbone, norm),
            **rehearsal.spec(self.cfg),
        }

    def _init_outputs(self, init: str, backbone: str, norm: str) -> dict:
        return {
            "output": self.paths.init_weights(init, backbone, norm),
            "cost": self.paths.init_cost(init, backbone, norm),
        }

    # ------------------------------------------------------------------ jobs on a line of training
    def live(self, family: str, line: str, iteration: int) -> dict:
        """Where a job on (family, line) up to `iteration` writes its live curves (rethink.live):
        the TensorBoard folder and the runs whose curve passes through it. For watching only: no
        rule reads these files, so which runs are listed decides no job."""
        return {"dir": self.paths.tensorboard, "runs": list(self.plan.runs_through(family, line, iteration))}

    def line_job(self, family: str, line: str, recipe_iteration: int, live_to: int) -> tuple[dict, dict, Run]:
        """What every job on (family, line) is told, training or evaluating: the engine (the
        rehearsal's in a rehearsal: rethink.rehearsal), the run's settings with the architecture that
        trains iteration `recipe_iteration` (rethink.grid.recipe_at), the family and line, the
        dataset, the line's identity hash and its live curves up to `live_to`. Returns (that spec,
        the line's LR schedule, the run that owns the line)."""
        run = self.plan.run(self.plan.lines[(family, line)].owner)
        settings, schedule = line_settings(self.cfg, self.plan, family, line)
        settings["recipe"] = recipe_at(settings["recipe"], recipe_iteration)
        spec = {
            "engine": rehearsal.ENGINE if rehearsal.settings(self.cfg) else self.cfg["engine"],
            "run": settings,
            "family": family,
            "line": line,
            "dataset": self.paths.dataset(run.data),
            "identity": self.identities.line_identity(family, line)[1],
            "live": self.live(family, line, live_to),
        }
        return spec, schedule, run

    def train_input(self, seg: Segment) -> dict:
        """A training segment's input files: the dataset, the line's identity file, and the
        checkpoint it starts from or else the init's weights (none for a random init)."""
        run = self.plan.run(seg.owner)
        inputs = {
            "dataset": self.paths.dataset(run.data),
            "identity": self.identities.line_identity(seg.family, seg.line)[0],
        }
        if seg.start_from is not None:
            inputs["start"] = self.paths.checkpoint_file(seg.family, seg.start_from[0], seg.start_from[1])
        else:
            weights = self.paths.init_weights(run.init, run.backbone, run.norm)
            if weights:
                inputs["weights"] = weights
        return inputs

    def train_spec(self, seg: Segment, output: str | None = None) -> dict:
        """A training segment's spec (rethink.segment): `line_job` from `seg.start` to `seg.end`,
        with the line's LR schedule, where it starts from and where it writes (`output`: the run's
        model for a run's last segment, else the segment's checkpoint)."""
        spec, schedule, run = self.line_job(seg.family, seg.line, seg.start, seg.end)
        inputs = self.train_input(seg)
        spec.update(
            start=seg.start,
            end=seg.end,
            schedule=schedule,
            init_kind=self.paths.init_kind(run.init),
            start_checkpoint=inputs.get("start"),
            init_weights=inputs.get("weights"),
            output=output or self.paths.checkpoint(seg.family, seg.line, seg.end),
            resume_dir=self.paths.resume_dir(seg.family, seg.line, seg.end),
        )
        settings = spec["run"]
        if rehearsal.settings(self.cfg):  # the rehearsal engine, one process on the CPU (rethink.rehearsal)
            from .resources import seconds_per_iter

            settings["rehearsal"], spec["log_period"] = rehearsal.training(
                self.cfg, seg, run.recipe, seconds_per_iter(self.plan, run)
            )
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
        inputs = {
            "checkpoint": self.paths.checkpoint_file(ms.family, ms.line, ms.iteration),
            "identity": self.identities.line_identity(ms.family, ms.line)[0],
        }
        cost = self.paths.init_cost(run.init, run.backbone, run.norm)
        if cost:
            inputs["init_cost"] = cost
        return inputs

    def eval_spec(self, ms: Milestone, tta: bool = False) -> dict:
        """An evaluation's spec (rethink.evaluate): `line_job` at the checkpoint's architecture, with
        the LR it was trained at, the checkpoint and where the metrics go. Describes the checkpoint
        only; which runs pass through it is the plan's business (collect asks it), so growing the
        grid never re-runs an evaluation. tta: the evaluation with test-time augmentation (its own
        output; the plain spec has no `tta` key)."""
        spec, schedule, run = self.line_job(ms.family, ms.line, ms.iteration - 1, ms.iteration)
        inputs = self.eval_input(ms)
        spec.update(
            iteration=ms.iteration,
            lr=Schedule(**schedule).lr(max(ms.iteration - 1, 0)),
            checkpoint=inputs["checkpoint"],
            init_cost=inputs.get("init_cost"),
            output=self.paths.metrics(ms.family, ms.line, ms.iteration, tta),
        )
        if rehearsal.settings(self.cfg):  # simulated (rethink.rehearsal.evaluation)
            from .evalcost import seconds
            from .resources import seconds_per_iter

            spec.update(
                rehearsal.spec(
                    self.cfg,
                    seconds_per_iter=lambda: seconds_per_iter(self.plan, run),
                    gpus=lambda: int(run.recipe["gpus"]),
                    trunk=lambda: ms.line == TRUNK,
                    eval_seconds=lambda: seconds(self.cfg, run, tta),
                )
            )
        if self.cfg.get("coco_eval", "pycocotools") != "pycocotools":  # the default keeps older specs as they were
            spec["coco_eval"] = self.cfg["coco_eval"]
        if tta:
            spec["tta"] = True
        return spec
