# over 400 lines: one class, the Trainer, below a module docstring that is the loop's specification
"""The one training loop, for every engine (and for the tiny pre-training).

``train(engine, spec, dataset)`` trains one segment of one line of a family, from iteration ``start``
to ``end`` (spec built by :meth:`rethink.job_specs.JobSpecs.train_spec`; ``rethink.segment.train_segment``
picks the engine and reads the dataset manifest). Batches come from the engine's stream (drawn by
rethink.sampling):

* SGD with the recipe's momentum and weight decay (none on norm parameters, as detectron2; an engine
  with ``optimizer_param_groups(model, run)`` supplies its own parameter groups, one with
  ``build_optimizer(model, recipe)`` its own SGD: the rehearsal's); the LR of
  every iteration comes from :class:`rethink.schedule.Schedule` and is set on the param groups.
* Start: the newest valid resume checkpoint in ``resume_dir`` inside [start, end); else
  ``start_checkpoint`` (the trunk's branch point or the previous segment; its iteration must be
  ``start``); else (start 0) a fresh random init plus ``engine.load_init_weights`` if ``init_weights``.
  With ``start_task`` (the start checkpoint's architecture differs from this segment's: the switch
  to cascade) ``engine.load_converted(model, state_dict, start_task, run)`` maps the weights and
  the optimizer starts afresh; a resume checkpoint inside the segment loads as usual.
* Every ``recipe.checkpoint_period`` iterations an atomic resume checkpoint (the last 2 kept); at
  ``end`` the output checkpoint (atomic), then the resume folder is deleted.
* SIGTERM / SIGUSR1 / SIGINT (Ctrl-C): the current iteration finishes, a resume checkpoint is written
  and the process exits with 128 + signal number (143 / 138 / 130) after a log line saying where it
  stopped.
* A non-finite loss stops the run (rethink.hooks.Diverged) with a message naming run, family/line and
  iteration, as does a start checkpoint marked diverged; the loop writes no output (a training
  segment's caller writes its output marked diverged: rethink.segment; the pre-training exits 3).
* Counters (images, instances, pixels; all processes), wall seconds and device seconds accumulate
  from iteration 0 across segments; RNG states travel in the checkpoints, and batch i depends only on
  (seed, i), so a resumed or segmented run trains exactly like one that never stopped.
* One trainer per segment: rank 0 holds an exclusive lock on ``<resume_dir>/.lock`` (rethink.lock)
  from before the start state is read; a second trainer of the same segment waits while the first
  lives, then resumes from what it left, or, where it finished, takes its valid output (iteration
  ``end``, this family and identity) and trains nothing; so does a SLURM job requeued after its
  command finished (SLURM_RESTART_COUNT > 0).
* recipe.amp: the forward pass under autocast (rethink.precision; float16 + GradScaler on CUDA,
  bfloat16 on CPU), the scaler's state in every checkpoint.
* A step is one iteration, except for an engine with ``iterations_in(batch)`` (the rehearsal's,
  engines/rehearsal_engine.py: a batch stands for several simulated iterations, never past a
  checkpoint period or the segment's end).
* DDP through torchrun (WORLD_SIZE > 1): nccl on GPU, gloo on CPU; each process gets batch / world
  images; only rank 0 writes checkpoints and logs.
* An engine whose ``uses_torch()`` is False (the rehearsal's: its model, losses and optimizer are plain
  numbers with the few methods the loop calls) trains in one process on the CPU without torch: no
  torch seed, RNG state or deterministic mode, and its checkpoints are JSON (rethink.checkpoint).

Spec keys besides those of train_spec (all optional):
    log_period      log every N iterations (default 20; the last iteration always)
    history         path of a JSON-lines file; one line per iteration {iteration, lr, loss, losses}
    deterministic   true: torch.use_deterministic_algorithms (warn only), no cudnn benchmark
                    (also env RETHINK_DETERMINISTIC=1)

The loop is a small ``Trainer`` (start state, one step, checkpoints) with one hook per concern
beside it (rethink.hooks: divergence, counters, history, signals, logging, live curves (rethink.live),
periodic checkpoints, the job's ledger row (rethink.ledger)); its processes and their group are
rethink.processes. ``train(..., extra_hooks)`` adds hooks, and so does the one extension point,
``$RETHINK_HOOKS=<file.py>:<function>`` (rethink.hooks.from_extension), which no production code
sets: that is how tests switch on a NaN or a slow iteration, in-process or in a job (tests/switches.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import checkpoint, hooks
from .hooks import Diverged, Preempted
from .lock import SegmentBusy, SegmentLock
from .paths import DIVERGED_MARKER
from .precision import MixedPrecision
from .processes import Processes, deterministic
from .schedule import Schedule

if TYPE_CHECKING:
    import torch

EXIT_DIVERGED = Diverged.exit_code


# ---------------------------------------------------------------------------- helpers
def seed_everything(seed: int, with_torch: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if with_torch:
        import torch

        torch.manual_seed(seed)


def schedule_from_spec(s: dict) -> Schedule:
    return Schedule(
        iterations=int(s["iterations"]),
        base_lr=float(s["base_lr"]),
        lr_drops=tuple(int(d) for d in s["lr_drops"]),
        drop_factor=float(s["drop_factor"]),
        warmup_iters=int(s["warmup_iters"]),
        warmup_factor=float(s["warmup_factor"]),
    )


def is_norm(module: torch.nn.Module) -> bool:
    """Normalization modules, whatever the engine built (their parameters get no weight decay, as in
    detectron2)."""
    import torch

    nn = torch.nn
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm))


def build_optimizer(model: torch.nn.Module, recipe: dict) -> torch.optim.SGD:
    """SGD; norm parameters without weight decay (detectron2's WEIGHT_DECAY_NORM = 0)."""
    import torch

    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if is_norm(module) else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe["weight_decay"]}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=0.0, momentum=recipe["momentum"])


# ---------------------------------------------------------------------------- the loop
def default_hooks(spec: dict) -> list[hooks.HookBase]:
    """Every run's hooks, in the order the trainer calls them (rethink.hooks)."""
    resume_dir = spec.get("resume_dir")
    return [
        hooks.DivergenceGuard(Path(resume_dir) / DIVERGED_MARKER if resume_dir else None),
        hooks.Counters(),
        hooks.History(spec.get("history")),
        hooks.StopOnSignal(),
        hooks.Logger(int(spec.get("log_period", 20))),
        hooks.LiveCurves(spec.get("live"), int(spec.get("log_period", 20))),
        hooks.PeriodicCheckpoint(int(spec["run"]["recipe"]["checkpoint_period"])),
        hooks.LedgerMarks(),
    ]


class Trainer:
    """One segment of training (the module docstring says what it does); `extra_hooks`, then those
    of $RETHINK_HOOKS (rethink.hooks.from_extension), run before the default ones. `train()`
    returns a summary (rank 0: with `history`)."""

    def __init__(self, engine, spec: dict, dataset: dict, extra_hooks=()):
        self.engine, self.spec, self.dataset = engine, spec, dataset
        self.uses_torch = engine.uses_torch() if hasattr(engine, "uses_torch") else True
        self.run, self.family, self.line = spec["run"], spec["family"], spec["line"]
        self.recipe = self.run["recipe"]
        self.start, self.end = int(spec["start"]), int(spec["end"])
        if not 0 <= self.start < self.end:
            raise ValueError(
                f"segment {self.family}/{self.line}: start {self.start} and end {self.end} do not make a segment"
            )
        self.sched = schedule_from_spec(spec["schedule"])
        self.resume_dir = spec.get("resume_dir")
        self.batch_total = int(self.recipe["batch"])
        self.who = f"run {self.run['run_id']} ({self.family}/{self.line})"
        self.hooks = [*extra_hooks, *hooks.from_extension(spec), *default_hooks(spec)]
        self.history = next(h for h in self.hooks if isinstance(h, hooks.History))
        self.dist = None  # rethink.processes.Processes, from the start on
        self.stop_signal = None
        self.saved_iter = None  # the iteration of this attempt's newest resume checkpoint
        self.log = lambda msg: None

    def train(self) -> dict:
        """The segment, shaped as detectron2's TrainerBase.train: the start (refusals, processes,
        lock, signal handlers), before_train, the iterations, after_train, the output checkpoint.
        What the start entered is left again, in reverse order, however the segment ends."""
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        for h in self.hooks:
            h.trainer = self
        with contextlib.ExitStack() as stack:
            taken = self._start(stack)
            if taken is not None:
                return taken
            stack.callback(self._close_hooks)
            self._set_up_model()
            self.before_train()
            self._run_iterations()
            self.after_train()
            return self._finish()

    def _start(self, stack: contextlib.ExitStack) -> dict | None:
        """The hooks' refusals (before_start: before any process group starts), then, each entered
        on `stack`: the processes (rethink.processes), deterministic mode, rank 0's lock on the
        segment (rethink.lock) and the stop signals' handlers. Returns the summary of what another
        trainer of this segment finished while this one waited for the lock (every process returns
        it, or none), else None."""
        for h in self.hooks:
            h.before_start()
        self.dist = Processes(int(self.recipe.get("gpus", 0)))
        stack.callback(self.dist.close)
        if self.uses_torch:
            on = bool(self.spec.get("deterministic")) or os.environ.get("RETHINK_DETERMINISTIC") == "1"
            stack.enter_context(deterministic(on))
        lock = None
        if self.dist.main:
            self.log = lambda msg: print(f"[{self.who}] {msg}", flush=True)
            if self.resume_dir:  # one trainer per segment, held until the segment ends
                lock = stack.enter_context(SegmentLock(self.resume_dir, self.who, self.log))
        # Snakemake removes a job's output before the job starts: one that exists now was written for
        # this job, by a trainer this one waited for, or by this SLURM job before SLURM requeued it
        # (a requeue or pre-emption that struck as the command ended: the same job id starts again)
        again = os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")
        taken = self._output_of_another_trainer() if lock is not None and (lock.waited_s > 0 or again) else None
        if self.dist.sum([1.0 if taken else 0.0])[0]:
            return taken or {"iteration": self.end, "history": []}
        for s in hooks.STOP_SIGNALS:
            stack.callback(signal.signal, s, signal.signal(s, self._on_signal))
        if self.batch_total % self.dist.world:
            raise ValueError(
                f"{self.who}: recipe.batch {self.batch_total} is not divisible by {self.dist.world} processes"
            )
        return None

    def before_train(self) -> None:
        for h in self.hooks:
            h.before_train()
        self.log(
            f"training iterations {self.iter} -> {self.end} of schedule {self.sched.iterations} "
            f"(batch {self.batch_total} on {self.dist.world} process(es), {self.dist.device})"
        )

    def _run_iterations(self) -> None:
        step = getattr(self.engine, "iterations_in", lambda batch: 1)  # iterations a batch stands for
        while self.iter < self.end:
            self.run_step()
            self.iter += step(self.batch)
            for h in self.hooks:
                h.after_step()

    def after_train(self) -> None:
        for h in self.hooks:
            h.after_train()

    def _close_hooks(self) -> None:
        for h in self.hooks:
            h.close()

    def _output_of_another_trainer(self) -> dict | None:
        """The segment's output when it exists as this trainer gets the lock after waiting for it (the
        trainer it waited for, a leftover job of a dead Snakemake, finished it), or as a SLURM job
        requeued after its command had finished starts again. Taken when valid."""
        out = self.spec.get("output")
        if not out or not os.path.exists(out):
            return None
        try:
            state = checkpoint.load(out)
        except checkpoint.CheckpointError as e:
            self.log(f"WARNING: {e}; training the segment again")
            return None
        if (state["iteration"], state["family"], state.get("identity")) != (
            self.end,
            self.family,
            self.spec.get("identity"),
        ):
            return None
        self.log(f"done: {out} was written by another trainer of this segment (iteration {self.end}); nothing to train")
        if not state.get("diverged"):  # (a diverged one keeps its marker there for the grid summary)
            shutil.rmtree(self.resume_dir, ignore_errors=True)  # as _finish: the lock made it again
        return {
            "iteration": self.end,
            "history": [],
            "counters": state["counters"],
            "taken_over": True,
            **({"diverged": state["diverged"]} if state.get("diverged") else {}),
            "wall_seconds": state["wall_seconds"],
            "device_seconds": state["device_seconds"],
        }

    def _on_signal(self, signum, frame):  # no printing here: a signal may interrupt a print
        self.stop_signal = signum

    # ------------------------------------------------------------------ start state
    def _set_up_model(self) -> None:
        """Model and optimizer at the segment's start: the newest valid resume checkpoint, else the
        start checkpoint, else a fresh init (+ pre-trained backbone weights)."""
        d, recipe = self.dist, self.recipe
        seed_everything(int(self.run["seed"]), self.uses_torch)
        model = self.engine.build_model(self.run, d.device, distributed=d.world > 1, dataset=self.dataset)
        model.to(d.device)
        optimizer = self._build_optimizer(model)
        self.amp = MixedPrecision(recipe.get("amp", False), d.device)
        self.base = {"counters": {k: 0 for k in checkpoint.COUNTERS}, "wall_seconds": 0.0, "device_seconds": 0.0}
        state, from_start = self._start_state(model)
        self._load_state(model, optimizer, state, from_start)
        self._restore_progress(state)
        del state
        for g in optimizer.param_groups:  # the recipe decides, whatever the checkpoint held
            g["momentum"] = recipe["momentum"]
        if d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[d.local_rank] if d.cuda else None)
        model.train()
        self.model, self.optimizer = model, optimizer
        self.stream = iter(self.engine.train_stream(self.run, self.dataset, self.iter, d.rank, d.world))
        self.counts = {k: 0 for k in checkpoint.COUNTERS}

    def _build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        engine, recipe = self.engine, self.recipe
        if hasattr(engine, "build_optimizer"):  # the rehearsal's (torch.optim's start-up imports torch's compiler)
            return engine.build_optimizer(model, recipe)
        if hasattr(engine, "optimizer_param_groups"):  # an engine may group parameters its own way
            import torch

            return torch.optim.SGD(
                engine.optimizer_param_groups(model, self.run),
                lr=0.0,
                momentum=recipe["momentum"],
                weight_decay=recipe["weight_decay"],
            )
        return build_optimizer(model, recipe)

    def _start_state(self, model: torch.nn.Module) -> tuple[dict | None, bool]:
        """(the checkpoint the segment starts from, whether it is the start checkpoint rather than a
        resume checkpoint of this segment); (None, False) for a fresh init, whose pre-trained
        backbone weights are loaded into `model` here."""
        spec = self.spec
        state = checkpoint.latest_valid(self.resume_dir, self.start, self.end, self.log) if self.resume_dir else None
        if state is not None:
            self.log(f"resuming from {state['_path']} at iteration {state['iteration']}")
            return state, False
        if spec.get("start_checkpoint"):
            return self._read_start_checkpoint(spec["start_checkpoint"]), True
        if self.start != 0:
            raise ValueError(
                f"{self.who}: segment starts at iteration {self.start} but the spec names no start_checkpoint"
            )
        if spec.get("init_weights"):
            self.engine.load_init_weights(model, spec["init_weights"], self.run)
            self.log(f"random init + pre-trained backbone from {spec['init_weights']}")
        else:
            self.log("random init (MSRA fill)")
        return None, False

    def _read_start_checkpoint(self, path: str) -> dict:
        """The start checkpoint, which must hold this segment's start iteration and family and not
        be marked diverged (such a segment passes the mark on: rethink.segment)."""
        state = checkpoint.load(path)
        if state["iteration"] != self.start:
            raise checkpoint.CheckpointError(
                f"{path}: holds iteration {state['iteration']}, but segment "
                f"{self.family}/{self.line} starts at iteration {self.start}"
            )
        if state["family"] != self.family:
            raise checkpoint.CheckpointError(f"{path}: belongs to family {state['family']}, not {self.family}")
        if state.get("diverged"):  # nothing to train from
            raise Diverged(
                f"{self.who}: its start checkpoint {path} is marked diverged ({state['diverged']}); not trained",
                {**state["diverged"], "inherited_from": path},
            )
        self.log(f"starting from {path} (iteration {self.start})")
        return state

    def _load_state(self, model, optimizer, state: dict | None, from_start: bool) -> None:
        """The start state's weights into `model` (and its optimizer and grad scaler); across an
        architecture switch (a start checkpoint of Mask R-CNN before the switch to cascade) the
        engine maps the weights and the optimizer starts afresh (other parameters)."""
        switch_from = self.spec.get("start_task") if from_start else None
        if switch_from:
            report = self.engine.load_converted(model, state["model"], switch_from, self.run)
            self.log(f"architecture switch {switch_from} -> {self.recipe['task']}: {report}")
        elif state is not None:
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                self.amp.load_state_dict(state.get("grad_scaler"))
            except (RuntimeError, ValueError, KeyError) as e:
                raise checkpoint.CheckpointError(
                    f"{state.get('_path', self.spec.get('start_checkpoint'))}: does not fit the model/optimizer of "
                    f"{self.who}: {str(e).splitlines()[0]}"
                ) from None

    def _restore_progress(self, state: dict | None) -> None:
        """Iteration, counters, seconds and RNG states from the start state (else the segment's
        start, zeros and the run's seed)."""
        d, seed = self.dist, int(self.run["seed"])
        if state is None:
            self.iter = self.start
            if d.rank:
                seed_everything(seed + d.rank, self.uses_torch)  # same init everywhere (DDP broadcasts), other sampling
            return
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rngs) == d.world:
            checkpoint.set_rng_state(rngs[d.rank])
        else:
            seed_everything(seed * 1000003 + int(state["iteration"]) * 101 + d.rank, self.uses_torch)
        self.base = {
            "counters": dict(state["counters"]),
            "wall_seconds": float(state["wall_seconds"]),
            "device_seconds": float(state["device_seconds"]),
        }
        self.iter = int(state["iteration"])

    # ------------------------------------------------------------------ one iteration
    def run_step(self) -> None:
        """Batch `iter` of the stream, its LR, the losses (averaged over processes with one
        all_reduce, which also carries "did any process get a stop signal"), backward, step."""
        self.batch = next(self.stream)
        self.lr = self.sched.lr(self.iter)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr
        with self.amp.autocast():
            self.losses = self.engine.losses(self.model, self.batch)
        self.loss = sum(v.float() for v in self.losses.values())
        if self.dist.world > 1:
            import torch
            import torch.distributed as dist

            vec = torch.stack(
                [self.loss.detach().float(), torch.tensor(1.0 if self.stop_signal else 0.0, device=self.loss.device)]
            )
            dist.all_reduce(vec)
            self.loss_value = vec[0].item() / self.dist.world
            if vec[1].item() > 0 and self.stop_signal is None:
                self.stop_signal = signal.SIGTERM
        else:
            self.loss_value = self.loss.item()
        for h in self.hooks:
            h.after_forward()
        self.optimizer.zero_grad(set_to_none=True)
        self.amp.backward_and_step(self.loss, self.optimizer)

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self) -> dict | None:
        """The checkpoint at `iter`. All processes call this (it reduces counters); rank 0 gets it."""
        d = self.dist
        now = time.perf_counter()
        cpu = time.process_time() - self.cpu0
        sums = d.sum([self.counts[k] for k in checkpoint.COUNTERS] + [cpu])
        rngs = d.gather(checkpoint.rng_state(self.uses_torch))
        if not d.main:
            return None
        wall = now - self.t0
        gpus_total = d.world if d.cuda else 0
        return {
            "format": checkpoint.FORMAT,
            "model": checkpoint.unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iter,
            "counters": {k: int(self.base["counters"][k] + sums[i]) for i, k in enumerate(checkpoint.COUNTERS)},
            "wall_seconds": self.base["wall_seconds"] + wall,
            "device_seconds": self.base["device_seconds"] + (gpus_total * wall if d.cuda else sums[-1]),
            "gpus": gpus_total,
            "run_id": self.run["run_id"],
            "family": self.family,
            "line": self.line,
            "engine": self.spec["engine"],
            "identity": self.spec.get("identity"),  # hash of what determined it (rethink.identity)
            "rng": rngs,
            **({"grad_scaler": self.amp.state_dict()} if self.amp.scaler is not None else {}),
        }

    def save_resume(self) -> str | None:
        ckpt = self.snapshot()
        if ckpt is None:
            return None
        path = checkpoint.resume_path(self.resume_dir, self.iter)
        checkpoint.save(path, ckpt)
        checkpoint.prune(self.resume_dir, keep=2)
        self.saved_iter = self.iter
        return str(path)

    def _finish(self) -> dict:
        """The output checkpoint at `end` (atomic), then the resume folder goes."""
        ckpt = self.snapshot()
        summary = {"iteration": self.end, "history": self.history.records}
        if ckpt is not None:
            checkpoint.save(self.spec["output"], ckpt)
            summary.update(
                counters=ckpt["counters"], wall_seconds=ckpt["wall_seconds"], device_seconds=ckpt["device_seconds"]
            )
            if self.resume_dir and Path(self.resume_dir).exists():
                shutil.rmtree(self.resume_dir)
            self.log(
                f"done: wrote {self.spec['output']} (iteration {self.end}, {ckpt['counters']['images']} "
                f"images seen, {time.perf_counter() - self.t0:.1f} s this segment)"
            )
        return summary


def train(engine, spec: dict, dataset: dict, extra_hooks=()) -> dict:
    """Train one segment (see the module docstring). Returns a summary (rank 0: with `history`)."""
    return Trainer(engine, spec, dataset, extra_hooks).train()


def main_cli(spec: dict, fn) -> int:
    """Run `fn(spec)` as a CLI: exit status 0, 128+signal (preempted), 3 (diverged) or 1 (error),
    with a one-line message on stderr."""
    try:
        fn(spec)
        return 0
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except Diverged as e:
        print(f"diverged: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except (checkpoint.CheckpointError, SegmentBusy, ValueError, OSError, NotImplementedError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
