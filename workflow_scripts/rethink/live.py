"""Live training curves: what a detectron2 user opens while a job runs.

Per run id, in ``<workdir>/tb/<run_id>/``:

* ``metrics.json``: detectron2's JSON-lines format (engine/hooks.py's JSONWriter), one object per
  line: training lines ``{"iteration", "lr", "total_loss", <each loss term>, "time",
  "data_time"?}``, evaluation lines ``{"iteration", "bbox/AP", "bbox/AP50", ..., "segm/AP", ...}``
  (detectron2's ``<task>/<metric>`` keys).
* TensorBoard event files with the same scalars, so ``tensorboard --logdir <workdir>/tb`` shows one
  curve per run across all its segments. Written with TensorBoard's own event writer, the one
  torch.utils.tensorboard's SummaryWriter wraps, so writing them needs no torch (a rehearsal job
  imports none: rethink.rehearsal).

A segment on a shared trunk writes into the folder of every run that passes through it, and an
evaluation into the folder of every run whose curve holds that checkpoint, so each run's folder
holds its whole curve. A resumed segment opens its writers with ``purge_step`` at its start
iteration: TensorBoard drops the steps a preempted attempt wrote past its last checkpoint, and the
JSON lines of those steps appear again (as in detectron2, a reader keeps the last line of an
iteration). These files are evidence for watching, not results: nothing reads them back, and
losing them loses no result.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

METRICS_FILE = "metrics.json"


class LiveCurves:
    """Writers for the runs `run_ids` under `root` (main process only; see the module docstring)."""

    def __init__(self, root: str | os.PathLike, run_ids, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.dirs = [Path(root) / r for r in run_ids]
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.writers = [EventFileWriter(str(d)) for d in self.dirs]
        if purge_step is not None:  # what SummaryWriter(purge_step=...) writes: TensorBoard then drops
            for w in self.writers:  # the steps from purge_step on that earlier files hold
                w.add_event(Event(wall_time=time.time(), step=int(purge_step), file_version="brain.Event:2"))
                start = SessionLog(status=SessionLog.START)
                w.add_event(Event(wall_time=time.time(), step=int(purge_step), session_log=start))

    def write(self, iteration: int, scalars: dict[str, float]) -> None:
        """One line of metrics.json and one TensorBoard scalar per key, at step `iteration`."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        line = json.dumps({"iteration": int(iteration), **scalars}) + "\n"
        for d, w in zip(self.dirs, self.writers):
            with open(
                d / METRICS_FILE, "a"
            ) as f:  # one short append per line: concurrent writers interleave whole lines
                f.write(line)
            for k, v in scalars.items():  # a scalar event each, as SummaryWriter.add_scalar writes it
                summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v))])
                w.add_event(Event(wall_time=time.time(), step=int(iteration), summary=summary))
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()
        self.writers = []


def evaluation_scalars(record: dict) -> dict[str, float]:
    """detectron2's keys for a metrics record's stats: {"bbox/AP": ..., "segm/AP75": ...}."""
    return {
        f"{task}/{k}": float(v)
        for task, stats in record["stats"].items()
        for k, v in stats.items()
        if isinstance(v, (int, float))
    }


def write_evaluation(spec: dict, record: dict) -> None:
    """The evaluation of `spec` (an evaluate job's spec with its `live` field) into the curves of
    every run it belongs to; test-time-augmented evaluations get a ``tta/`` prefix."""
    live = spec.get("live")
    if not live:
        return
    prefix = "tta/" if spec.get("tta") else ""
    curves = LiveCurves(live["dir"], live["runs"])
    try:
        curves.write(int(spec["iteration"]), {prefix + k: v for k, v in evaluation_scalars(record).items()})
    finally:
        curves.close()
