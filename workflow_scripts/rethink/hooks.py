"""The training loop's hooks (rethink.loop.Trainer), one per concern, as detectron2's engine/hooks.py.

A hook sees the trainer (`self.trainer`: iteration, batch, losses, model, optimizer, log, ...) at

    before_start()   once, before anything is set up (no process group, lock, model or log yet;
                     the trainer's `who`, `spec` and `run` are there): a hook may refuse the segment
    before_train()   once, before the first iteration of the segment
    after_forward()  each iteration, after the loss is computed and averaged over the processes,
                     before backward (a hook may stop the run here: nothing of this step is applied)
    after_step()     each iteration, after the optimizer step; trainer.iter is the number of
                     iterations done
    after_train()    once, after the last iteration, before the output checkpoint (not on an error)
    close()          once the segment ends, however (an error included), unless it ended at its start
                     (refused by before_start, or taken over from another trainer)

The trainer calls them in the order of its hook list. Every run has DivergenceGuard, Counters,
History, StopOnSignal, Logger, LiveCurves, PeriodicCheckpoint and LedgerMarks (rethink.loop.default_hooks).
More hooks come first: a caller's `extra_hooks` (rethink.loop.train), and those of the one extension
point, $RETHINK_HOOKS (from_extension), which production code leaves unset; the tests' switches (a NaN
loss, a slow iteration: tests/switches.py) come in through these two.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import signal
import time
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # SIGINT: Ctrl-C reaches every job of the terminal


class Preempted(Exception):
    """Stopped by a signal after writing a resume checkpoint; exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Diverged(RuntimeError):
    """A non-finite loss; nothing was written for this iteration. `info`: where (run, family, line,
    iteration, loss; `inherited_from`: the diverged start checkpoint of a later segment)."""

    exit_code = 3

    def __init__(self, message: str, info: dict | None = None):
        super().__init__(message)
        self.info = dict(info or {})


class HookBase:
    trainer = None  # set by the trainer before before_start

    def before_start(self) -> None:
        pass

    def before_train(self) -> None:
        pass

    def after_forward(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def close(self) -> None:
        """Once the segment ends, an error included (not when it ended at its start): release what
        the hook holds."""


class DivergenceGuard(HookBase):
    """A non-finite loss stops the run (Diverged) before backward, with a message naming run,
    family/line and iteration, and leaves `marker` (the grid summary reports the run as diverged);
    a segment whose marker exists refuses at once (before_start, before a process group starts):
    the same data and weights would diverge again, so no job is spent on it. (A training segment
    then ends with an output marked diverged: rethink.segment.)"""

    def __init__(self, marker: Path | None):
        self.marker = marker

    def before_start(self) -> None:
        if self.marker is not None and self.marker.exists():
            text = self.marker.read_text().strip()
            try:
                info = json.loads(text)
            except ValueError:
                info = {}
            raise Diverged(
                f"{self.trainer.who}: diverged before ({text}); change the recipe, or delete "
                f"{self.marker} to train this segment again",
                info if isinstance(info, dict) else {},
            )

    def after_forward(self) -> None:
        t = self.trainer
        if math.isfinite(t.loss_value):
            return
        parts = ", ".join(f"{k}={v.item():.4g}" for k, v in t.losses.items())
        info = {
            "run": t.run["run_id"],
            "family": t.family,
            "line": t.line,
            "iteration": t.iter,
            "loss": str(t.loss_value),
        }
        if self.marker is not None and t.dist.main:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(json.dumps(info) + "\n")
        raise Diverged(
            f"{t.who}: non-finite loss {t.loss_value} at iteration {t.iter} ({parts}); training stopped", info
        )


class Counters(HookBase):
    """Images, instances and pixels this process trained on (the engine counts each batch); the
    trainer's checkpoints add them up over the processes."""

    def after_step(self) -> None:
        t = self.trainer
        for k, v in t.engine.count(t.batch).items():
            t.counts[k] += v


class History(HookBase):
    """One record per iteration {iteration, lr, loss} (the trainer's summary returns them); with a
    path (spec `history`), also a JSON-lines file with each loss term, on the main process."""

    def __init__(self, path: str | None):
        self.path, self.file, self.records = path, None, []

    def before_train(self) -> None:
        if self.path and self.trainer.dist.main:
            self.file = open(self.path, "a")

    def after_step(self) -> None:
        t = self.trainer
        rec = {"iteration": t.iter - 1, "lr": t.optimizer.param_groups[0]["lr"], "loss": t.loss_value}
        self.records.append(rec)
        if self.file:
            self.file.write(json.dumps({**rec, "losses": {k: v.item() for k, v in t.losses.items()}}) + "\n")
            self.file.flush()

    def after_train(self) -> None:
        self.close()

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None


class StopOnSignal(HookBase):
    """SIGTERM / SIGUSR1 / SIGINT: the current iteration finishes, a resume checkpoint is written and
    the run stops (Preempted, exit code 128 + signal) after a log line saying where. Any process's
    signal stops all (the trainer reduces `trainer.stop_signal` with the loss). The handlers are
    the trainer's from its start to its end (it restores the old ones). A signal during the
    segment's last step lets the segment finish: its output is written (as fast as a resume
    checkpoint, which at the segment's end no attempt could resume from) and the job ends done."""

    def after_step(self) -> None:
        t = self.trainer
        if t.stop_signal is None:
            return
        if t.iter >= t.end:
            t.log(f"{signal.Signals(t.stop_signal).name} in the segment's last step: finishing it")
            return
        path = t.save_resume()
        name = signal.Signals(t.stop_signal).name
        t.log(f"stopped by {name} after iteration {t.iter} of {t.end}; resume checkpoint {path}")
        raise Preempted(
            f"{t.who}: stopped by {name} at iteration {t.iter}; resume checkpoint in {t.resume_dir}",
            128 + int(t.stop_signal),
        )


class Logger(HookBase):
    """Every `period` iterations and at the end: loss and its terms, LR, images per second, ETA."""

    def __init__(self, period: int):
        self.period = max(int(period), 1)

    def before_train(self) -> None:
        self.t_last, self.it_last = time.perf_counter(), self.trainer.iter

    def after_step(self) -> None:
        t = self.trainer
        if t.iter % self.period and t.iter != t.end:
            return
        now = time.perf_counter()
        ips = (t.iter - self.it_last) * t.batch_total / max(now - self.t_last, 1e-9)
        eta = (t.end - t.iter) * (now - self.t_last) / max(t.iter - self.it_last, 1)
        parts = " ".join(f"{k}={v.item():.4f}" for k, v in t.losses.items())
        t.log(
            f"iter {t.iter}/{t.end} loss {t.loss_value:.4f} ({parts}) lr {t.lr:.6g} {ips:.2f} img/s "
            f"eta {datetime.timedelta(seconds=int(max(eta, 0)))}"
        )
        self.t_last, self.it_last = now, t.iter


class LiveCurves(HookBase):
    """Every `period` iterations and at the end, on the main process: LR, total loss, each loss
    term and seconds per iteration into the live curves (rethink.live: metrics.json and
    TensorBoard) of every run that passes through the segment (spec `live`: {dir, runs})."""

    def __init__(self, live: dict | None, period: int):
        self.live, self.period, self.curves = live, max(int(period), 1), None

    def before_train(self) -> None:
        t = self.trainer
        if self.live and t.dist.main:
            from .live import LiveCurves as Writers

            self.curves = Writers(self.live["dir"], self.live["runs"], purge_step=t.iter + 1)
        self.t_last, self.it_last = time.perf_counter(), t.iter

    def after_step(self) -> None:
        t = self.trainer
        if self.curves is None or (t.iter % self.period and t.iter != t.end):
            return
        now = time.perf_counter()
        scalars = {
            "lr": t.lr,
            "total_loss": t.loss_value,
            **{k: v.item() for k, v in t.losses.items()},
            "time": (now - self.t_last) / max(t.iter - self.it_last, 1),
        }
        self.curves.write(t.iter, scalars)
        self.t_last, self.it_last = now, t.iter

    def after_train(self) -> None:
        self.close()

    def close(self) -> None:
        if self.curves is not None:
            self.curves.close()
            self.curves = None


class PeriodicCheckpoint(HookBase):
    """Every `period` iterations inside the segment, an atomic resume checkpoint (the last 2 kept)."""

    def __init__(self, period: int):
        self.period = int(period)

    def after_step(self) -> None:
        t = self.trainer
        if t.resume_dir and t.iter % self.period == 0 and t.iter < t.end:
            t.save_resume()


class LedgerMarks(HookBase):
    """The job's ledger row (rethink.ledger), on the main process: where this attempt's training
    starts (`resumed_from`), when its first iteration began and its latest ended, the iteration
    reached and its newest resume checkpoint. The row is written at the first iteration and after
    each checkpoint; its heartbeat writes the rest. Nothing happens outside a job (no open row)."""

    row = None

    def before_train(self) -> None:
        from . import ledger

        t = self.trainer
        self.row = ledger.current() if t.dist.main else None
        if self.row is not None:
            self.saved = t.saved_iter
            self.row.update(resumed_from=t.iter, iter_reached=t.iter, first_iter=time.time())
            self.row.flush()

    def after_step(self) -> None:
        if self.row is None:
            return
        t = self.trainer
        self.row.update(iter_reached=t.iter, last_iter=time.time())
        if t.saved_iter != self.saved:
            self.saved = t.saved_iter
            self.row.update(last_checkpoint=t.saved_iter)
            self.row.flush()

    def close(self) -> None:  # a stop signal's checkpoint is written after the last after_step
        if self.row is not None and self.trainer.saved_iter is not None:
            self.row.update(last_checkpoint=self.trainer.saved_iter)


# ------------------------------------------------------------------------------ extension point
HOOKS_ENV = "RETHINK_HOOKS"


def from_extension(spec: dict, env=os.environ) -> list[HookBase]:
    """The hooks that $RETHINK_HOOKS adds to a trainer, before the default ones.

    RETHINK_HOOKS=<path/to/file.py>:<function> (the path absolute, or relative to the job's working
    folder): the file is loaded by its path (importlib, no sys.path change) once per trainer and
    `function(spec)` returns a list of HookBase for the segment `spec`. No rule, profile or script of
    the workflow sets it: it is how tests reach a trainer inside a subprocess or a SLURM job
    (tests/switches.py: a NaN at one iteration, a slow iteration); in-process callers pass
    `extra_hooks` instead. A value that does not load is a ValueError naming the variable and value."""
    value = env.get(HOOKS_ENV)
    if not value:
        return []
    where = f"${HOOKS_ENV}: value {value!r}"
    path, sep, name = value.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise ValueError(f"{where}: expected <path/to/file.py>:<function>")
    if not os.path.isfile(path):
        raise ValueError(f"{where}: {path} is not a file (cwd {os.getcwd()})")
    module_spec = importlib.util.spec_from_file_location(f"rethink_hooks_{Path(path).stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"{where}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{where}: {path} has no function {name}")
    out = list(fn(spec))
    bad = [type(h).__name__ for h in out if not isinstance(h, HookBase)]
    if bad:
        raise ValueError(f"{where}: {name}() returned {', '.join(bad)}, not rethink.hooks.HookBase")
    return out
