"""Where every file the workflow reads or writes lies (`Paths`).

The rules (rules/*.smk) ask this module for their inputs, outputs and logs; the identity files
(rethink.identity_files) and the jobs' specs (rethink.job_specs) are built on it. Large files live
under `workdir` (data, weights, checkpoints, resume state, logs), small ones under `results`
(metrics, tables, figures), so copying `results/` off a cluster is enough to rebuild the report.
"""

from __future__ import annotations

import os

from .plan import Plan

DIVERGED_MARKER = "DIVERGED.json"  # the loop leaves it in a segment's resume folder on a non-finite loss


def it7(iteration: int) -> str:
    return f"{int(iteration):07d}"


def _it(iteration) -> str:
    return iteration if isinstance(iteration, str) and iteration.startswith("{") else it7(iteration)


class Paths:
    """The files of one config's plan. A method given wildcards ("{family}", "{iter}", ...) instead
    of values returns the rule's pattern."""

    def __init__(self, cfg: dict, plan: Plan):
        self.cfg = cfg
        self.plan = plan
        self.work = cfg["workdir"].rstrip("/")
        self.results = cfg["results"].rstrip("/")

    # ------------------------------------------------------------------ data and init weights
    def dataset(self, data: str) -> str:
        return f"{self.work}/data/{data}/dataset.json"

    def pretrain_dataset(self, init: str) -> str:
        return f"{self.work}/data/pretrain-{init}/dataset.json"

    def init_kind(self, init: str) -> str:
        """random (no file), pretrain (weights trained here) or staged (weights converted from a source)."""
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
        """The {init} wildcard's constraint for a rule that makes inits of this kind."""
        names = [n for n, spec in self.cfg["inits"].items() if spec["kind"] == kind]
        return "|".join(names) if names else "(?!x)x"  # a regex that matches nothing

    def init_cost(self, init: str, backbone: str, norm: str) -> str | None:
        if self.init_kind(init) == "random":
            return None
        return f"{self.results}/init/{init}/{backbone}-{norm}.json"

    # ------------------------------------------------------------------ training
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

    def resume_dir(self, family: str, line: str, end: int) -> str:
        # outside every declared output: Snakemake's clean-up of a failed job never touches it
        return f"{self.work}/resume/{family}/{line}/to_{it7(end)}"

    @property
    def tensorboard(self) -> str:
        """The live curves' folder (rethink.live): for watching only, no rule reads it."""
        return f"{self.work}/tb"

    def log(self, kind: str, *parts: str) -> str:
        return f"{self.work}/logs/{kind}/" + "/".join(parts) + ".log"

    # ------------------------------------------------------------------ results
    def metrics(self, family: str, line: str, iteration, tta: bool = False) -> str:
        """The metrics JSON of a checkpoint; tta: its evaluation with test-time augmentation."""
        return f"{self.results}/metrics/{family}/{line}/iter_{_it(iteration)}" + ("-tta" if tta else "") + ".json"

    def all_metrics(self) -> list[str]:
        """Every metrics JSON of the plan: plain, then with test-time augmentation."""
        return [self.metrics(m.family, m.line, m.iteration) for m in self.plan.milestones.values()] + [
            self.metrics(m.family, m.line, m.iteration, tta=True) for m in self.plan.tta_milestones.values()
        ]

    @property
    def metrics_table(self) -> str:
        return f"{self.results}/metrics.csv"

    @property
    def grid_csv(self) -> str:
        return f"{self.results}/grid.csv"
