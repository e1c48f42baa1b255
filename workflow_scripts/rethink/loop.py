"""The one training loop, for every engine (and for the tiny pre-training).

``train(engine, spec, dataset)`` trains one segment of one line of a family, from iteration ``start``
to ``end`` (spec built by :meth:`rethink.paths.Paths.train_spec`; ``rethink.segment.train_segment``
picks the engine and reads the dataset manifest). Batches come from the engine's stream (drawn by
rethink.sampling):

* SGD with the recipe's momentum and weight decay (none on norm parameters, as detectron2; an engine
  with ``optimizer_param_groups(model, run)`` supplies its own parameter groups); the LR of
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
* A non-finite loss stops the run (exit code 3) with a message naming run, family/line and iteration;
  no output checkpoint is written.
* Counters (images, instances, pixels; all processes), wall seconds and device seconds accumulate
  from iteration 0 across segments; RNG states travel in the checkpoints, and batch i depends only on
  (seed, i), so a resumed or segmented run trains exactly like one that never stopped.
* DDP through torchrun (WORLD_SIZE > 1): nccl on GPU, gloo on CPU; each process gets batch / world
  images; only rank 0 writes checkpoints and logs.

Spec keys besides those of train_spec (all optional):
    log_period      log every N iterations (default 20; the last iteration always)
    history         path of a JSON-lines file; one line per iteration {iteration, lr, loss, losses}
    deterministic   true: torch.use_deterministic_algorithms (warn only), no cudnn benchmark
                    (also env RETHINK_DETERMINISTIC=1)
    debug           {"nan_at": k}   make the loss of iteration k NaN (tests; also env RETHINK_NAN_AT=k)
                    {"iter_sleep": s}  sleep s seconds per iteration (tests that must catch a run mid-way;
                    also env RETHINK_ITER_SLEEP=s)
"""
from __future__ import annotations

import datetime
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint
from .norms import is_norm
from .paths import DIVERGED_MARKER
from .schedule import Schedule

EXIT_DIVERGED = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # SIGINT: Ctrl-C reaches every job of the terminal


class Preempted(Exception):
    """Stopped by a signal after writing a resume checkpoint; exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Diverged(RuntimeError):
    """A non-finite loss; nothing was written for this iteration."""

    exit_code = EXIT_DIVERGED


# ---------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)


def schedule_from_spec(s: dict) -> Schedule:
    return Schedule(iterations=int(s["iterations"]), base_lr=float(s["base_lr"]),
                    lr_drops=tuple(int(d) for d in s["lr_drops"]), drop_factor=float(s["drop_factor"]),
                    warmup_iters=int(s["warmup_iters"]), warmup_factor=float(s["warmup_factor"]))


def build_optimizer(model: torch.nn.Module, recipe: dict) -> torch.optim.SGD:
    """SGD; norm parameters without weight decay (detectron2's WEIGHT_DECAY_NORM = 0)."""
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


class _Dist:
    def __init__(self, gpus: int):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if gpus > 0 and not torch.cuda.is_available():
            raise RuntimeError(f"the recipe asks for {gpus} GPU(s) but CUDA is not available "
                               f"(set recipe.gpus: 0 to train on CPU)")
        self.cuda = gpus > 0
        self.device = torch.device(f"cuda:{self.local_rank}" if self.cuda else "cpu")
        if self.cuda:
            torch.cuda.set_device(self.device)
        self.owns_group = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.cuda else "gloo", timeout=datetime.timedelta(minutes=30))
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _fmt_time(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


# ---------------------------------------------------------------------------- the loop
def train(engine, spec: dict, dataset: dict) -> dict:
    run, family, line = spec["run"], spec["family"], spec["line"]
    recipe = run["recipe"]
    start, end = int(spec["start"]), int(spec["end"])
    if not 0 <= start < end:
        raise ValueError(f"segment {family}/{line}: start {start} and end {end} do not make a segment")
    sched = schedule_from_spec(spec["schedule"])
    debug = dict(spec.get("debug") or {})
    if os.environ.get("RETHINK_NAN_AT"):
        debug["nan_at"] = int(os.environ["RETHINK_NAN_AT"])
    nan_at = debug.get("nan_at")
    if os.environ.get("RETHINK_ITER_SLEEP"):
        debug["iter_sleep"] = float(os.environ["RETHINK_ITER_SLEEP"])
    iter_sleep = float(debug.get("iter_sleep", 0.0))
    log_period = int(spec.get("log_period", 20))
    period = int(recipe["checkpoint_period"])
    resume_dir = spec.get("resume_dir")
    who = f"run {run['run_id']} ({family}/{line})"
    t0, cpu0 = time.perf_counter(), time.process_time()

    marker = Path(resume_dir) / DIVERGED_MARKER if resume_dir else None
    if marker is not None and marker.exists():
        # the same data and weights would diverge again: do not spend the (re)submitted job on it
        raise Diverged(f"{who}: diverged before ({marker.read_text().strip()}); "
                       f"change the recipe, or delete {marker} to train this segment again")
    d = _Dist(int(recipe.get("gpus", 0)))
    deterministic = bool(spec.get("deterministic")) or os.environ.get("RETHINK_DETERMINISTIC") == "1"
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    set_deterministic(deterministic)
    log = (lambda msg: print(f"[{who}] {msg}", flush=True)) if d.main else (lambda msg: None)
    stop = {"signal": None}
    old_handlers = {}

    def on_signal(signum, frame):  # no printing here: a signal may interrupt a print
        stop["signal"] = signum

    for s in STOP_SIGNALS:
        old_handlers[s] = signal.signal(s, on_signal)
    try:
        batch_total = int(recipe["batch"])
        if batch_total % d.world:
            raise ValueError(f"{who}: recipe.batch {batch_total} is not divisible by {d.world} processes")

        # ---- model, optimizer, start state
        seed_everything(int(run["seed"]))
        model = engine.build_model(run, d.device, distributed=d.world > 1, dataset=dataset)
        model.to(d.device)
        if hasattr(engine, "optimizer_param_groups"):  # an engine may group parameters its own way
            optimizer = torch.optim.SGD(engine.optimizer_param_groups(model, run), lr=0.0,
                                        momentum=recipe["momentum"], weight_decay=recipe["weight_decay"])
        else:
            optimizer = build_optimizer(model, recipe)
        base = {"counters": {k: 0 for k in checkpoint.COUNTERS}, "wall_seconds": 0.0, "device_seconds": 0.0}
        state = checkpoint.latest_valid(resume_dir, start, end, log) if resume_dir else None
        from_start = False  # state is the start checkpoint (not a resume checkpoint of this segment)
        if state is not None:
            log(f"resuming from {state['_path']} at iteration {state['iteration']}")
        elif spec.get("start_checkpoint"):
            state = checkpoint.load(spec["start_checkpoint"])
            if state["iteration"] != start:
                raise checkpoint.CheckpointError(
                    f"{spec['start_checkpoint']}: holds iteration {state['iteration']}, but segment "
                    f"{family}/{line} starts at iteration {start}")
            if state["family"] != family:
                raise checkpoint.CheckpointError(
                    f"{spec['start_checkpoint']}: belongs to family {state['family']}, not {family}")
            log(f"starting from {spec['start_checkpoint']} (iteration {start})")
            from_start = True
        elif start != 0:
            raise ValueError(f"{who}: segment starts at iteration {start} but the spec names no start_checkpoint")
        elif spec.get("init_weights"):
            engine.load_init_weights(model, spec["init_weights"], run)
            log(f"random init + pre-trained backbone from {spec['init_weights']}")
        else:
            log("random init (MSRA fill)")
        switch_from = spec.get("start_task") if from_start else None
        if switch_from:  # (only with a start checkpoint)
            # the start checkpoint holds another architecture (Mask R-CNN before the switch to
            # cascade): the engine maps its weights; the optimizer starts afresh (other parameters)
            report = engine.load_converted(model, state["model"], switch_from, run)
            log(f"architecture switch {switch_from} -> {recipe['task']}: {report}")
        elif state is not None:
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise checkpoint.CheckpointError(
                    f"{state.get('_path', spec.get('start_checkpoint'))}: does not fit the model/optimizer of "
                    f"{who}: {str(e).splitlines()[0]}") from None
        if state is not None:
            rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
            if len(rngs) == d.world:
                checkpoint.set_rng_state(rngs[d.rank])
            else:
                seed_everything(int(run["seed"]) * 1000003 + int(state["iteration"]) * 101 + d.rank)
            base = {"counters": dict(state["counters"]), "wall_seconds": float(state["wall_seconds"]),
                    "device_seconds": float(state["device_seconds"])}
            it = int(state["iteration"])
            del state
        else:
            it = start
            if d.rank:
                seed_everything(int(run["seed"]) + d.rank)  # same init everywhere (DDP broadcasts), other sampling
        for g in optimizer.param_groups:  # the recipe decides, whatever the checkpoint held
            g["momentum"] = recipe["momentum"]
        if d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[d.local_rank] if d.cuda else None)
        model.train()
        stream = iter(engine.train_stream(run, dataset, it, d.rank, d.world))
        local = {k: 0 for k in checkpoint.COUNTERS}
        gpus_total = d.world if d.cuda else 0

        def snapshot(iteration: int) -> dict | None:
            """All processes call this (it reduces counters); rank 0 gets the checkpoint dict."""
            now = time.perf_counter()
            cpu = time.process_time() - cpu0
            sums = d.sum([local[k] for k in checkpoint.COUNTERS] + [cpu])
            rngs = d.gather(checkpoint.rng_state())
            if not d.main:
                return None
            wall = now - t0
            return {
                "format": checkpoint.FORMAT,
                "model": (model.module if hasattr(model, "module") else model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "iteration": iteration,
                "counters": {k: int(base["counters"][k] + sums[i]) for i, k in enumerate(checkpoint.COUNTERS)},
                "wall_seconds": base["wall_seconds"] + wall,
                "device_seconds": base["device_seconds"] + (gpus_total * wall if d.cuda else sums[-1]),
                "gpus": gpus_total,
                "run_id": run["run_id"], "family": family, "line": line, "engine": spec["engine"],
                "identity": spec.get("identity"),  # hash of what determined it (rethink.identity)
                "rng": rngs,
            }

        def save_resume(iteration: int) -> str | None:
            ckpt = snapshot(iteration)
            if ckpt is None:
                return None
            path = checkpoint.resume_path(resume_dir, iteration)
            checkpoint.save(path, ckpt)
            checkpoint.prune(resume_dir, keep=2)
            return str(path)

        history_f = open(spec["history"], "a") if spec.get("history") and d.main else None
        history: list[dict] = []
        log(f"training iterations {it} -> {end} of schedule {sched.iterations} "
            f"(batch {batch_total} on {d.world} process(es), {d.device})")
        t_last, it_last = time.perf_counter(), it
        while it < end:
            batch = next(stream)
            lr = sched.lr(it)
            for g in optimizer.param_groups:
                g["lr"] = lr
            losses = engine.losses(model, batch)
            loss = sum(losses.values())
            if nan_at is not None and it == int(nan_at):
                loss = loss * float("nan")
            if d.world > 1:
                # one all_reduce per iteration: the mean loss and "did any process get a stop signal"
                vec = torch.stack([loss.detach().float(),
                                   torch.tensor(1.0 if stop["signal"] else 0.0, device=loss.device)])
                dist.all_reduce(vec)
                loss_value = vec[0].item() / d.world
                if vec[1].item() > 0 and stop["signal"] is None:
                    stop["signal"] = signal.SIGTERM
            else:
                loss_value = loss.item()
            if not math.isfinite(loss_value):
                parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                if marker is not None and d.main:  # the grid summary reports the run as diverged
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.write_text(json.dumps({"run": run["run_id"], "family": family, "line": line,
                                                  "iteration": it, "loss": str(loss_value)}) + "\n")
                raise Diverged(f"{who}: non-finite loss {loss_value} at iteration {it} ({parts}); "
                               f"training stopped, no output checkpoint written")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in engine.count(batch).items():
                local[k] += v
            if iter_sleep:
                time.sleep(iter_sleep)
            rec = {"iteration": it, "lr": optimizer.param_groups[0]["lr"], "loss": loss_value}
            history.append(rec)
            if history_f:
                history_f.write(json.dumps({**rec, "losses": {k: v.item() for k, v in losses.items()}}) + "\n")
                history_f.flush()
            it += 1
            if stop["signal"] is not None:
                path = save_resume(it)
                name = signal.Signals(stop["signal"]).name
                log(f"stopped by {name} after iteration {it} of {end}; resume checkpoint {path}")
                raise Preempted(f"{who}: stopped by {name} at iteration {it}; resume checkpoint in {resume_dir}",
                                128 + int(stop["signal"]))
            if it % log_period == 0 or it == end:
                now = time.perf_counter()
                ips = (it - it_last) * batch_total / max(now - t_last, 1e-9)
                eta = (end - it) * (now - t_last) / max(it - it_last, 1)
                parts = " ".join(f"{k}={v.item():.4f}" for k, v in losses.items())
                log(f"iter {it}/{end} loss {loss_value:.4f} ({parts}) lr {lr:.6g} {ips:.2f} img/s eta {_fmt_time(eta)}")
                t_last, it_last = now, it
            if resume_dir and it % period == 0 and it < end:
                save_resume(it)
        if history_f:
            history_f.close()

        ckpt = snapshot(end)
        summary = {"iteration": end, "history": history}
        if ckpt is not None:
            checkpoint.save(spec["output"], ckpt)
            summary.update(counters=ckpt["counters"], wall_seconds=ckpt["wall_seconds"],
                           device_seconds=ckpt["device_seconds"])
            if resume_dir and Path(resume_dir).exists():
                shutil.rmtree(resume_dir)
            log(f"done: wrote {spec['output']} (iteration {end}, {ckpt['counters']['images']} images seen, "
                f"{time.perf_counter() - t0:.1f} s this segment)")
        return summary
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        set_deterministic(was_deterministic)
        d.close()


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
    except (checkpoint.CheckpointError, ValueError, OSError, NotImplementedError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
