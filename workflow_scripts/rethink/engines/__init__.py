"""Engines: what the one training loop (rethink.loop) and the evaluation (rethink.evaluate)
need from a detection library. An engine supplies a model, a train data stream and
predictions in COCO result format; the loop, the checkpoints, the LR schedule, the
counters and the COCO evaluation are the project's own and exist once.

Interface (duck-typed; see engines/torchvision_engine.py and engines/detectron2_engine.py):

    engine = get_engine(name)
    model = engine.build_model(run: dict, device: torch.device, distributed: bool, dataset: dict | None = None)
        -> torch.nn.Module  (`dataset`: the manifest, for the number of categories)
        `run` is Run.to_dict() (backbone, norm, init, data, seed, recipe, ...); recipe.task is the
        architecture of this segment or checkpoint (rethink.grid.task_at). Random init as
        detectron2 does it (MSRA fill, nothing frozen); norm "SyncBN" gives torch's SyncBatchNorm
        on GPU and the all_reduce-based rethink.engines.torchvision_norms.NaiveSyncBatchNorm on CPU.
    engine.load_init_weights(model, path: str, run: dict) -> None
        backbone weights of the pre-trained init (a .pth written by the pretrain rule, or a
        staged ImageNet .pkl for detectron2).
    report = engine.load_converted(model, state_dict: dict, from_task: str, run: dict) -> str
        the switch of architecture inside a run (today: a checkpoint trained as "mask_rcnn" into
        the "cascade_mask_rcnn" model of a run with recipe cascade_from_iter, Table 3 from
        scratch). Every tensor whose name and shape agree is copied; the single box head and
        classifier initialise each cascade stage's; what has no counterpart (the class-agnostic
        box regressors) keeps its fresh init. Returns a one-line report for the log; raises
        ValueError naming the run if the state dict does not fit (e.g. another backbone).
    stream = engine.train_stream(run: dict, dataset: dict, start_iter: int, rank: int, world: int)
        an iterator of batches; batch i (i >= start_iter) depends only on (seed, i), so a run
        resumed at iteration i sees the same data as one that never stopped.
    losses = engine.losses(model, batch) -> dict[str, Tensor]   (model in train mode)
    counts = engine.count(batch) -> {"images": int, "instances": int, "pixels": int}  (this process)
    results = engine.predict(model, run: dict, dataset: dict, device) -> list[dict]
        COCO result dicts for the val set: image_id, category_id, score, bbox [x,y,w,h],
        and "segmentation" (RLE, counts as str) for mask tasks, "keypoints" for keypoint tasks.

`dataset` is the manifest that the prepare_data rule writes (rethink.data).

The rehearsal (rethink.rehearsal) trains with engines/rehearsal_engine.py: the same interface, a
simulated model; `run["rehearsal"]` carries its compression and simulated seconds per iteration.
"""
from __future__ import annotations

ENGINES = ("torchvision", "detectron2")  # the config's choices; "rehearsal" is the rehearsal's (rethink.rehearsal)


def get_engine(name: str):
    if name == "torchvision":
        from .torchvision_engine import TorchvisionEngine

        return TorchvisionEngine()
    if name == "detectron2":
        from .detectron2_engine import Detectron2Engine

        return Detectron2Engine()
    if name == "rehearsal":
        from .rehearsal_engine import RehearsalEngine

        return RehearsalEngine()
    raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
