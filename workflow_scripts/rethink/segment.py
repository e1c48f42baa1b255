"""One training segment, as the train_segment / train_final jobs run it: the engine the spec names,
its dataset manifest (a task the dataset cannot train is refused: rethink.data.check_task), and the
one loop (rethink.loop.train; the spec is rethink.paths.Paths.train_spec)."""
from __future__ import annotations

from .data import check_task, load_manifest
from .engines import get_engine
from .loop import train


def train_segment(spec: dict, extra_hooks=()) -> dict:
    """Train one segment (see rethink.loop; `extra_hooks`: rethink.hooks the tests add). Returns a
    summary (rank 0: with `history`)."""
    dataset = load_manifest(spec["dataset"])
    check_task(dataset, spec["run"]["recipe"]["task"])
    return train(get_engine(spec["engine"]), spec, dataset=dataset, extra_hooks=extra_hooks)
