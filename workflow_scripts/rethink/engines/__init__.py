"""Engines: what the one training loop (rethink.loop) and the evaluation (rethink.evaluate) need
from a detection library. An engine supplies a model, a train data stream and predictions in COCO
result format; the loop, the checkpoints, the LR schedule, the counters and the COCO evaluation are
the project's own and exist once.

The interface, documented here once: :class:`Engine` (every engine has each method) and
:class:`OptionalEngineMethods` (the loop looks each up and has a default without it). Who calls what:

    rethink.loop.Trainer   build_model, then build_optimizer | optimizer_param_groups (optional),
                           load_init_weights (spec init_weights), load_converted (spec start_task),
                           train_stream, then per step losses and iterations_in (optional)
    rethink.hooks.Counters count, per step
    rethink.evaluate       build_model, then predict (the checkpoint's weights loaded in between)

`run` is Run.to_dict() (backbone, norm, init, data, seed, recipe, ...; recipe.task is the
architecture of this segment or checkpoint: rethink.grid.task_at); `dataset` is the manifest the
prepare_data rule writes (rethink.data). Objects the project passes through without looking inside:
`batch` (one item of train_stream, handed back to losses, count and iterations_in) and the model
(a torch.nn.Module; the loop wraps it in DistributedDataParallel with several processes, so an
engine unwraps it: rethink.checkpoint.unwrap).

The engines (get_engine):
    torchvision   engines/torchvision_engine.py (+ torchvision_data, torchvision_models,
                  torchvision_cascade, torchvision_norms): CPU-capable, the embedded default and CI
    detectron2    engines/detectron2_engine.py (+ detectron2_config, detectron2_base_configs,
                  detectron2_backbones): the cluster path; imports without detectron2
    rehearsal     engines/rehearsal_engine.py: a simulated model for rethink.rehearsal (its run
                  carries `run["rehearsal"]`); has build_optimizer and iterations_in
The tiny pre-training's engine is rethink.pretrain.ClassificationTask: the training half only
(build_model, load_init_weights, train_stream, losses, count), as it starts from scratch (no
start_task, so no load_converted) and is not evaluated (no predict).
engines/shared.py holds what both detection engines build alike (VGG16's blocks, the test-time
augmentation sizes). Outside engines/, the workflow reaches an engine through get_engine and what
both build alike through shared.py, with two stated exceptions (tests/test_module_graph.py); no
engine imports another's modules. Importing this package (or shared.py) imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only
    from collections.abc import Iterable

    import torch

ENGINES = ("torchvision", "detectron2")  # the config's choices; "rehearsal" is the rehearsal's (rethink.rehearsal)


class Engine(Protocol):
    """Every engine's methods. An engine refuses what it cannot do with an error naming the run (or
    the file)."""

    def build_model(
        self, run: dict, device: torch.device | str, distributed: bool = False, dataset: dict | None = None
    ) -> torch.nn.Module:
        """The run's model, randomly initialised as detectron2 does it (MSRA fill; nothing frozen from
        scratch), on `device`. `distributed`: several processes will train it (the loop wraps it in
        DDP itself). `dataset`: the manifest, for the number of categories (and keypoints). Norm
        "SyncBN" is torch's SyncBatchNorm on GPU and an all_reduce-based sync BN on CPU
        (rethink.engines.torchvision_norms.NaiveSyncBatchNorm, detectron2's naiveSyncBN_N)."""
        ...

    def load_init_weights(self, model: torch.nn.Module, path: str, run: dict) -> None:
        """The pre-trained init's backbone weights into a fresh model (a .pth the pretrain rule
        wrote: rethink.weights.read_backbone_weights; or a staged ImageNet .pkl for detectron2).
        The loop calls it at iteration 0 of a spec with init_weights."""
        ...

    def load_converted(self, model: torch.nn.Module, state_dict: dict, from_task: str, run: dict) -> str:
        """A checkpoint of another architecture into this run's model: the switch inside a run
        (today a "mask_rcnn" checkpoint into the "cascade_mask_rcnn" model of recipe
        cascade_from_iter, Table 3 from scratch). Every tensor whose name and shape agree is copied;
        the single box head and classifier initialise each cascade stage's; what has no
        counterpart (the class-agnostic box regressors) keeps its fresh init. Returns a one-line
        report for the log; raises ValueError naming the run if the state dict does not fit (e.g.
        another backbone). The loop calls it for a spec with start_task; the optimizer then starts
        afresh."""
        ...

    def train_stream(self, run: dict, dataset: dict, start_iter: int, rank: int, world: int) -> Iterable[Any]:
        """The batches from iteration `start_iter` on, this process's share (`rank` of `world`) of
        recipe.batch: an iterable the loop draws one batch from per step. Batch i (i >= start_iter)
        depends only on (seed, i), so a run resumed at iteration i sees the same data as one that
        never stopped."""
        ...

    def losses(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """The loss terms of `batch` (model in train mode; under the loop's autocast with
        recipe.amp). The loop sums them, checks the sum is finite and steps."""
        ...

    def count(self, batch: Any) -> dict[str, int]:
        """{"images", "instances", "pixels"} this process trains on in `batch` (pixels after the
        resize); the checkpoints add them up over processes and iterations."""
        ...

    def predict(self, model: torch.nn.Module, run: dict, dataset: dict, device: torch.device | str) -> list[dict]:
        """COCO result dicts for the val set (eval mode, no grad): image_id, category_id (the
        dataset's ids), score, bbox [x, y, w, h], and "segmentation" (RLE, counts as str) for mask
        tasks, "keypoints" for keypoint tasks. With recipe.tta, over the test-time augmentation of
        rethink.engines.shared.test_aug_sizes. (The rehearsal's raises: rethink.evaluate simulates
        a rehearsal's evaluation instead.)"""
        ...


class OptionalEngineMethods(Protocol):
    """Methods the loop uses where an engine has them; without them it does what each says."""

    def build_optimizer(self, model: torch.nn.Module, recipe: dict) -> Any:
        """The whole optimizer (the rehearsal's: torch.optim's start-up cost avoided): anything with
        param_groups, zero_grad, step, state_dict and load_state_dict. Looked up first. Without it:
        optimizer_param_groups, else rethink.loop.build_optimizer (SGD with recipe.momentum and
        recipe.weight_decay, none on norm parameters: rethink.loop.is_norm)."""
        ...

    def optimizer_param_groups(self, model: torch.nn.Module, run: dict) -> list[dict]:
        """Parameter groups for the loop's SGD (torch.optim.SGD(groups, lr=0, recipe.momentum,
        recipe.weight_decay); a group may set its own weight_decay): the detectron2 engine's
        (detectron2's get_default_optimizer_params). Without it: rethink.loop.build_optimizer."""
        ...

    def uses_torch(self) -> bool:
        """False where the engine's model, losses and optimizer are plain numbers (the rehearsal's):
        the loop then imports no torch (no torch seed, RNG state or deterministic mode; JSON
        checkpoints, rethink.checkpoint). Without it: True."""
        ...

    def iterations_in(self, batch: Any) -> int:
        """The iterations `batch` stands for, which the loop advances by (the rehearsal's: never past
        a checkpoint period or the segment's end). Without it: 1."""
        ...


def get_engine(name: str) -> Engine:
    """The engine called `name` (ENGINES, or "rehearsal"); its module is imported here, on demand."""
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
