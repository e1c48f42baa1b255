"""One training segment, as the train_segment / train_final jobs run it: the engine the spec names,
its dataset manifest (a task the dataset cannot train is refused: rethink.data.check_task), and the
one loop (rethink.loop.train; the spec is rethink.job_specs.JobSpecs.train_spec).

A segment that diverges (a non-finite loss, or a start checkpoint marked diverged) still ends with
its output: a checkpoint marked diverged (rethink.checkpoint.diverged_output), and exit status 0. So
a diverged run costs the campaign its own GPU time only: the segments after it pass the mark on in
seconds, its evaluations record ``diverged: true`` (rethink.evaluate), and collect, the tables and
the report are built with the run shown as diverged, while every other run goes on.
"""

from __future__ import annotations

import os
import sys

from . import checkpoint, ledger
from .data import check_task, load_manifest
from .engines import get_engine
from .hooks import Diverged
from .loop import train
from .paths import DIVERGED_MARKER


def train_segment(spec: dict, extra_hooks=()) -> dict:
    """Train one segment (see rethink.loop; `extra_hooks`: rethink.hooks the tests add). Returns a
    summary (rank 0: with `history`; with `diverged` where it diverged)."""
    dataset = load_manifest(spec["dataset"])
    check_task(dataset, spec["run"]["recipe"]["task"])
    try:
        return train(get_engine(spec["engine"]), spec, dataset=dataset, extra_hooks=extra_hooks)
    except Diverged as e:
        return mark_diverged(spec, e)


def mark_diverged(spec: dict, e: Diverged) -> dict:
    """Write the segment's output marked diverged (rank 0), say so on stderr, and count the job's
    ledger row as diverged."""
    if os.environ.get("RANK", "0") == "0":
        checkpoint.save(spec["output"], checkpoint.diverged_output(spec, e.info))
        marker = os.path.join(spec["resume_dir"], DIVERGED_MARKER) if spec.get("resume_dir") else None
        again = f"delete {spec['output']}" + (f" and {marker}" if marker and os.path.exists(marker) else "")
        print(
            f"diverged: {e}; wrote {spec['output']} marked diverged: the run's evaluations record it as "
            f"diverged and its later segments are not trained (to train this segment again with the same "
            f"recipe, {again})",
            file=sys.stderr,
            flush=True,
        )
        row = ledger.current()
        if row is not None:
            row.mark_diverged()
    return {"iteration": int(spec["end"]), "history": [], "diverged": e.info}
