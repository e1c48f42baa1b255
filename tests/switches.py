"""The tests' switches for the training loop (rethink.loop), registered by the tests, never by the
workflow: NanAt (a non-finite loss at one iteration: the divergence tests) and SleepPerIteration (a
slow iteration: tests that must catch a run mid-way).

In-process tests pass them as `extra_hooks` (rethink.loop.train, rethink.segment.train_segment). A
subprocess or SLURM job gets them through the loop's extension point: `environment(...)` gives
RETHINK_HOOKS=<this file>:from_environment (rethink.hooks.from_extension) and the switches' own
variables, RETHINK_NAN_AT=k (with RETHINK_NAN_LINE=<family>/<line>: on that line only) and
RETHINK_ITER_SLEEP=s, which `from_environment` reads in the job."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rethink.hooks import HOOKS_ENV, HookBase

HOOKS = f"{Path(__file__).resolve()}:from_environment"


class NanAt(HookBase):
    """Make the loss of iteration `iteration` NaN (tests of DivergenceGuard); with `line`
    ("<family>/<line>"), only on that line of training."""

    def __init__(self, iteration: int, line: str | None = None):
        self.iteration, self.line = int(iteration), line

    def after_forward(self) -> None:
        t = self.trainer
        if t.iter == self.iteration and self.line in (None, f"{t.family}/{t.line}"):
            t.loss = t.loss * float("nan")
            t.loss_value = float("nan")


class SleepPerIteration(HookBase):
    """Sleep `seconds` per iteration (tests that must catch a run mid-way)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)

    def after_step(self) -> None:
        time.sleep(self.seconds)


def environment(nan_at: int | None = None, nan_line: str | None = None, sleep: float | None = None) -> dict:
    """The variables that switch these hooks on in a job (add them to its environment)."""
    env = {HOOKS_ENV: HOOKS}
    if nan_at is not None:
        env["RETHINK_NAN_AT"] = str(nan_at)
    if nan_line:
        env["RETHINK_NAN_LINE"] = nan_line
    if sleep is not None:
        env["RETHINK_ITER_SLEEP"] = str(sleep)
    return env


def from_environment(spec: dict, env=os.environ) -> list[HookBase]:
    """The switches a job's environment asks for (RETHINK_HOOKS names this function)."""
    out: list[HookBase] = []
    if env.get("RETHINK_NAN_AT"):
        out.append(NanAt(int(env["RETHINK_NAN_AT"]), env.get("RETHINK_NAN_LINE") or None))
    if env.get("RETHINK_ITER_SLEEP"):
        out.append(SleepPerIteration(float(env["RETHINK_ITER_SLEEP"])))
    return out
