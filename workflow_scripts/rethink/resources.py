"""What each job asks the scheduler for, and how a training job starts its processes.

GPUs, CPUs and memory per job (or per node), walltime from the plan's iterations and the config's
seconds_per_iter (training) or from rethink.evalcost (evaluation), and the launcher line: the plain
interpreter, torch.distributed.run for several
GPUs, srun + c10d rendezvous for several nodes. The rules pass these to Snakemake (rules/train.smk,
rules/evaluate.smk); docs/slurm.md says how they map onto SLURM.

A rehearsal (rethink.rehearsal) asks for the same GPUs, CPUs and memory (`request: real`) or for no
GPU (`request: cpu`), for walltimes divided by its compression plus REHEARSAL_START_MIN, with the
SIGTERM REHEARSAL_SIGNAL_S before their end, and starts every training job as one process.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from . import evalcost
from .grid import Run
from .plan import Plan, Segment

SIGNAL_GRACE_S = 300
REHEARSAL_START_MIN = 3  # a rehearsal job's walltime: its compressed time + this (start-up, queue jitter)
REHEARSAL_SIGNAL_S = 60  # SLURM may signal up to 60 s early: the start-up allowance stays clear of it
WARM = Path(__file__).resolve().parents[1] / "warm.py"


def seconds_per_iter(plan: Plan, run: Run) -> float:
    """The config's seconds per iteration for the run (1.0 where seconds_per_iter has no entry: a CPU run)."""
    s = plan.grid.seconds_per_iter(run)
    return s if s is not None else 1.0


class JobResources:
    def __init__(self, cfg: dict, plan: Plan):
        self.cfg = cfg
        self.plan = plan
        self.rehearsal = cfg.get("rehearsal") or None  # rethink.rehearsal's settings, or None
        self.no_gpus = bool(self.rehearsal) and self.rehearsal["request"] == "cpu"

    def segment_of(self, wc) -> Segment:
        """The segment a train_segment job (wildcards family, line, iter) or train_final job (run) trains."""
        run_id = getattr(wc, "run", None)  # train_final: the run's last segment
        return self.plan.final_segment(run_id) if run_id else self.plan.segment(wc.family, wc.line, int(wc.iter))

    def _line_run(self, wc) -> Run:
        return self.plan.run(self.plan.lines[(wc.family, wc.line)].owner)

    def launchers(self, python: str):
        """The rules' `launcher` param: one string where every run of the grid has the same GPU
        count, else a function of the job's wildcards (Snakemake calls it per job)."""
        counts = {int(r.recipe["gpus"]) for r in self.plan.grid.runs.values()}
        if self.rehearsal:  # the simulation is one process, whatever the GPUs asked for
            return self.single(python)
        if len(counts) == 1:
            seg = next(iter(self.plan.segments.values()))
            return self.launcher(seg, python)
        return lambda wc: self.launcher(self.segment_of(wc), python)

    def launcher(self, seg: Segment, python: str) -> str:
        """How the training script starts: the interpreter (or the warm one: single()) for one GPU or the
        CPU; one process per
        GPU (torch.distributed.run) for several; with `resources.nodes` > 1, one such launcher per
        node through srun, meeting at the job's first node (c10d rendezvous)."""
        gpus = self.plan.run(seg.owner).recipe["gpus"]
        nodes = self._nodes(gpus)
        if gpus <= 1:
            return self.single(python)
        python = shlex.quote(python)  # a checkout path may hold spaces or shell characters
        if nodes > 1:
            return (
                f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 {python} -m torch.distributed.run "
                f"--nnodes={nodes} --nproc_per_node={gpus // nodes} --rdzv_backend=c10d "
                '--rdzv_id="$SLURM_JOB_ID" '
                '--rdzv_endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):29500"'
            )
        return f"{python} -m torch.distributed.run --standalone --nproc_per_node={gpus}"

    def single(self, python: str) -> str:
        """How a one-process job starts: the interpreter, or with `warm_interpreter` the warm one
        (workflow_scripts/warm.py: forked from a process with torch imported)."""
        if not self.cfg.get("warm_interpreter"):
            return shlex.quote(python)
        return f"{shlex.quote(python)} {shlex.quote(str(WARM))}"

    def _nodes(self, gpus: int) -> int:
        nodes = int(self.cfg["resources"]["nodes"])
        if nodes == 1 or gpus <= 1:
            return 1
        if gpus % nodes:
            raise ValueError(f"resources.nodes: {nodes} nodes cannot share {gpus} GPUs evenly (recipe.gpus)")
        return nodes

    def _sized(self, gpus, field: str, multi_node: bool = False) -> dict:
        """GPUs, CPUs and memory of one job (`gpus`: wildcards -> the run's recipe[field]); on
        several nodes (training only), per node (gres, --mem) and per task. Where every run of
        the grid has the same GPU count, plain numbers: Snakemake evaluates each callable of each
        job while it plans, which a dry run of the paper grid would feel."""
        res = self.cfg["resources"]
        multi_node = multi_node and int(res["nodes"]) > 1
        counts = {int(r.recipe[field]) for r in self.plan.grid.runs.values()}
        if self.no_gpus:
            counts, multi_node = {0}, False
        if len(counts) == 1:
            n = counts.pop()
            gpus = lambda wc, n=n: n  # noqa: E731
            return {k: f(None) for k, f in self._sized_items(gpus, res, multi_node).items()}
        return self._sized_items(gpus, res, multi_node)

    def _sized_items(self, gpus, res: dict, multi_node: bool) -> dict:
        def per_node(wc):
            return gpus(wc) // self._nodes(gpus(wc)) if multi_node else gpus(wc)

        out = {
            "cpus_per_task": lambda wc: max(res["min_cpus"], res["cpus_per_gpu"] * per_node(wc)),
            "mem_mb": lambda wc: max(res["min_mem_mb"], res["mem_mb_per_gpu"] * per_node(wc)),
        }
        if multi_node:
            out.update(
                nodes=lambda wc: self._nodes(gpus(wc)),
                tasks=lambda wc: self._nodes(gpus(wc)),
                gres=lambda wc: f"gpu:{per_node(wc)}" if gpus(wc) else "",
            )
        else:
            out["gpu"] = gpus
        return out

    def train_resources(self) -> dict:
        """Per-job resources of a training segment (Snakemake resource callables)."""
        return {
            **self._sized(lambda wc: self.plan.run(self.segment_of(wc).owner).recipe["gpus"], "gpus", multi_node=True),
            "runtime": lambda wc, attempt: self.train_runtime_min(self.segment_of(wc), attempt),
            # SLURM sends SIGTERM this long before the walltime: the loop checkpoints and exits
            # non-zero, Snakemake resubmits the job (retries) and it resumes from that checkpoint
            "slurm_extra": f"--signal=TERM@{REHEARSAL_SIGNAL_S if self.rehearsal else SIGNAL_GRACE_S}",
        }

    def eval_resources(self, tta: bool = False) -> dict:
        """Per-job resources of an evaluation: `recipe.eval_gpus`, and a walltime of the predicted
        evaluation time (rethink.evalcost: start-up + val images x seconds per image x passes) x
        runtime_margin x attempt, plus 10 minutes."""

        def runtime(wc, attempt):
            return self.eval_runtime_min(self._line_run(wc), tta, attempt)

        return {**self._sized(lambda wc: self._line_run(wc).recipe["eval_gpus"], "eval_gpus"), "runtime": runtime}

    def eval_runtime_min(self, run: Run, tta: bool, attempt: int) -> int:
        secs = evalcost.seconds(self.cfg, run, tta) * float(self.cfg["runtime_margin"]) * attempt
        if self.rehearsal:
            return int(secs / self.rehearsal["compression"] / 60) + REHEARSAL_START_MIN
        return int(secs / 60) + 10

    def seconds_per_iter(self, run: Run) -> float:
        return seconds_per_iter(self.plan, run)

    def train_runtime_min(self, seg: Segment, attempt: int) -> int:
        run = self.plan.run(seg.owner)
        secs = seg.iterations * self.seconds_per_iter(run) * float(self.cfg["runtime_margin"]) * attempt
        if self.rehearsal:
            return int(secs / self.rehearsal["compression"] / 60) + REHEARSAL_START_MIN
        return max(10, int(secs / 60) + 10)  # + start-up, data loading, checkpointing
