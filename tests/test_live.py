"""The live curves (rethink.live): TensorBoard files written with TensorBoard's own event writer,
read back with TensorBoard's reader; a resumed segment's writer drops the steps a pre-empted
attempt wrote past its checkpoint, as torch's SummaryWriter(purge_step=...) does."""

from __future__ import annotations

import json
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rethink.live import METRICS_FILE, LiveCurves


def test_a_resumed_writer_purges_the_steps_after_its_start(tmp_path):
    first = LiveCurves(tmp_path, ["a", "b"])
    for i in range(1, 6):  # an attempt pre-empted after step 5, its last checkpoint at step 3
        first.write(i, {"total_loss": float(i), "lr": 0.02})
    first.close()
    # a resumed attempt starts later: TensorBoard reads a folder's event files in name order, and a
    # name starts with its creation second (then host, pid and a per-process counter)
    time.sleep(1.1)
    again = LiveCurves(tmp_path, ["a", "b"], purge_step=4)
    for i in (4, 5, 6):
        again.write(i, {"total_loss": 10.0 * i, "lr": 0.02})
    again.close()
    for run in ("a", "b"):
        ea = EventAccumulator(str(tmp_path / run))
        ea.Reload()
        assert {"total_loss", "lr"} <= set(ea.Tags()["scalars"])
        assert [(e.step, e.value) for e in ea.Scalars("total_loss")] == [
            (1, 1.0),
            (2, 2.0),
            (3, 3.0),
            (4, 40.0),
            (5, 50.0),
            (6, 60.0),
        ]
        lines = [json.loads(x) for x in (tmp_path / run / METRICS_FILE).read_text().splitlines()]
        assert [x["iteration"] for x in lines] == [1, 2, 3, 4, 5, 4, 5, 6]  # a reader keeps an iteration's last
