"""The tiny "ImageNet" pre-training of the embedded default: the run's ResNet body (same builder as the
detector's, rethink.engines.torchvision_models.resnet, same norm) plus a linear classifier, trained on the synthetic
classification set (rethink.data, kind "classification") by the one training loop (rethink.loop:
the same SGD, LR schedule, checkpoints, resume and signal handling).

Outputs (spec from rethink.job_specs.JobSpecs.pretrain_spec):
    spec["output"]  the backbone weights: {"format": "rethink-backbone/1", "backbone", "norm",
                    "model": the body's state_dict (no classifier, torchvision names), "iterations",
                    "train_accuracy"}; each engine's load_init_weights reads them with
                    rethink.weights.read_backbone_weights (the detectron2 engine renames them)
    spec["cost"]    {"iterations", "images", "instances", "pixels", "train_accuracy"}: what the
                    pre-training saw (images = instances for classification)

Schedule: linear warm-up over the first 10% of the iterations (factor 0.1), LR x0.1 at 75%.
Inputs are normalised with the same mean/std as torchvision's detection transform.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint, loop, sampling, weights
from .atomic import write_json_atomic
from .data import load_classification, load_manifest
from .engines.torchvision_models import classifier

IMAGE_MEAN = (0.485, 0.456, 0.406)  # torchvision GeneralizedRCNNTransform's defaults
IMAGE_STD = (0.229, 0.224, 0.225)


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGE_MEAN, device=images_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=images_uint8.device).view(1, 3, 1, 1)
    return (images_uint8.float() / 255.0 - mean) / std


class ClassificationStream:
    def __init__(self, images, labels, seed: int, batch: int, start_iter: int, rank: int, world: int):
        self.images, self.labels = images, labels
        self.seed, self.batch, self.iteration, self.rank, self.world = seed, batch, start_iter, rank, world

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import numpy as np

        i = self.iteration
        idx = torch.tensor(sampling.batch_indices(self.seed, i, self.batch, len(self.labels), self.rank, self.world))
        images = self.images[idx]
        flips = torch.from_numpy(np.random.default_rng([self.seed, i, 1]).random(self.batch) < 0.5)
        flips = flips[self.rank * len(idx) : (self.rank + 1) * len(idx)]
        images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
        self.iteration += 1
        return {"iteration": i, "images": images, "labels": self.labels[idx]}


class ClassificationTask:
    """The pre-training in the engine interface the loop drives (build_model, train_stream, losses, count)."""

    name = "pretrain"

    def build_model(self, run: dict, device, distributed: bool = False, dataset: dict | None = None):
        device = torch.device(device)
        return classifier(run["backbone"], run["norm"], device.type, num_classes=int(dataset["classes"])).to(device)

    def load_init_weights(self, model, path, run):  # pragma: no cover - pre-training starts from scratch
        raise NotImplementedError("the pre-training starts from random init")

    def train_stream(self, run: dict, dataset: dict, start_iter: int, rank: int = 0, world: int = 1):
        images, labels = load_classification(dataset)
        return ClassificationStream(
            images, labels, int(run["seed"]), int(run["recipe"]["batch"]), start_iter, rank, world
        )

    def losses(self, model, batch: dict) -> dict:
        device = next(model.parameters()).device
        logits = model(normalize(batch["images"].to(device)))
        return {"loss_cls": F.cross_entropy(logits, batch["labels"].to(device))}

    def count(self, batch: dict) -> dict:
        n, _, h, w = batch["images"].shape
        return {"images": int(n), "instances": int(n), "pixels": int(n * h * w)}


def loop_spec(spec: dict) -> dict:
    """The pretrain spec -> a rethink.loop spec (one segment from 0 to `iterations`)."""
    iters = int(spec["iterations"])
    rid = f"pretrain-{spec['init']}-{spec['backbone']}-{spec['norm']}"
    out = Path(spec["output"])
    return {
        "engine": "pretrain",
        "run": {
            "run_id": rid,
            "family": rid,
            "backbone": spec["backbone"],
            "norm": spec["norm"],
            "init": "random",
            "seed": int(spec.get("seed", 0)),
            "recipe": {
                "batch": int(spec["batch"]),
                "momentum": 0.9,
                "weight_decay": 1e-4,
                "checkpoint_period": max(1, iters // 4),
                "gpus": int(spec.get("gpus", 0)),
            },
        },
        "family": rid,
        "line": "pretrain",
        "start": 0,
        "end": iters,
        "schedule": {
            "iterations": iters,
            "base_lr": float(spec["base_lr"]),
            "lr_drops": [int(iters * 0.75)] if iters >= 4 else [],
            "drop_factor": 0.1,
            "warmup_iters": iters // 10,
            "warmup_factor": 0.1,
        },
        "init_kind": "random",
        "start_checkpoint": None,
        "init_weights": None,
        "dataset": spec["dataset"],
        # the full training checkpoint (classifier + optimizer) stays beside the weights until they are written
        "output": str(out.with_name(f".{out.name}.train.pth")),
        "resume_dir": str(out.with_name(f".{out.name}.resume")),
        "log_period": max(1, iters // 10),
        **{k: spec[k] for k in ("deterministic", "history") if k in spec},
    }


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for lo in range(0, len(labels), batch):
        logits = model(normalize(images[lo : lo + batch].to(device)))
        correct += int((logits.argmax(1).cpu() == labels[lo : lo + batch]).sum())
    return correct / max(len(labels), 1)


def pretrain(spec: dict) -> dict:
    """Train, then write the backbone weights and the cost JSON. Returns the cost record. A
    rehearsal's trains nothing (rethink.rehearsal.init_weights)."""
    if spec.get("rehearsal"):
        from .rehearsal import init_weights

        return init_weights(spec)
    dataset = load_manifest(spec["dataset"])
    task = ClassificationTask()
    lspec = loop_spec(spec)
    full = Path(lspec["output"])
    done = None
    if full.exists():  # trained before, killed before the weights were written
        try:
            done = checkpoint.load(full)
            if done["iteration"] != lspec["end"]:
                done = None
        except checkpoint.CheckpointError as e:
            print(f"ignoring {e}", flush=True)
            done = None
    if done is None:
        loop.train(task, lspec, dataset)
        if not full.exists():  # another rank
            return {}
        done = checkpoint.load(full)
    model = task.build_model(lspec["run"], "cpu", dataset=dataset)
    model.load_state_dict(done["model"])
    images, labels = load_classification(dataset)
    acc = accuracy(model, images, labels)
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    checkpoint.atomic_torch_save(
        {
            "format": weights.BACKBONE_FORMAT,
            "backbone": spec["backbone"],
            "norm": spec["norm"],
            "model": body,
            "iterations": int(done["iteration"]),
            "train_accuracy": acc,
        },
        spec["output"],
    )
    cost = {
        "iterations": int(done["iteration"]),
        **{k: int(done["counters"][k]) for k in checkpoint.COUNTERS},
        "train_accuracy": acc,
    }
    if spec.get("cost"):
        write_json_atomic(spec["cost"], cost, indent=1, sort_keys=True)
    full.unlink(missing_ok=True)
    print(
        f"pretrain {lspec['run']['run_id']}: train accuracy {acc:.3f} (chance {1 / int(dataset['classes']):.3f}) "
        f"after {cost['iterations']} iterations, {cost['images']} images -> {spec['output']}",
        flush=True,
    )
    return cost
