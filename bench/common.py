"""What the benchmarks share: the config they measure, in a temp folder.

tiny   configs/tiny.yaml's run (R18 GN Mask R-CNN, its image sizes, the torchvision engine)
paper  the paper's recipe (the schema's defaults) on R50-FPN GN, batch 2 per GPU, synthetic
       images of 800 x 1000 px; `engine` picks torchvision or detectron2
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rethink import config

ROOT = Path(__file__).resolve().parents[1]


def bench_config(
    scale: str,
    gpus: int,
    tmp: Path,
    engine: str | None = None,
    norm: str = "GN",
    train_size: int | None = None,
    val_size: int | None = None,
) -> dict:
    """The config of a benchmark at `scale` ("tiny" or "paper") on `gpus` GPUs (0: the CPU),
    with its workdir and results under `tmp`; the synthetic set's sizes are the tiny config's, or
    16 train and 4 val images at paper scale, unless given."""
    cfg = config.load(ROOT / "configs" / "tiny.yaml")
    cfg["workdir"], cfg["results"] = str(tmp / "work"), str(tmp / "results")
    if scale == "paper":
        train_size, val_size = train_size or 16, val_size or 4
        keep = {k: cfg["recipe"][k] for k in ("iters_per_x", "lr_drops_from_end", "warmup_iters")}
        cfg["recipe"] = {**config.recipe_defaults(), **keep, "batch": 2, "base_lr": 0.0025}
        cfg["axes"]["backbone"] = ["R50"]
        cfg["seconds_per_iter"] = []
        cfg["eval_seconds"] = []
        cfg["datasets"]["synthetic"]["image_size"] = [800, 1000]
    synthetic = cfg["datasets"]["synthetic"]
    synthetic.update(train_size=train_size or synthetic["train_size"], val_size=val_size or synthetic["val_size"])
    cfg["axes"]["norm"] = [norm]
    if norm != "GN":
        cfg["seconds_per_iter"] = []
    if engine:
        cfg["engine"] = engine
    cfg["recipe"]["gpus"] = gpus
    cfg["recipe"]["eval_gpus"] = min(gpus, 1)
    return cfg


def sync() -> None:
    """Wait for the GPU's queued work (nothing on a CPU): time the work, not how fast kernels are queued."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timed:
    """An engine whose losses() records when it is called."""

    def __init__(self, engine):
        self.engine, self.stamps = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def losses(self, model, batch):
        sync()
        self.stamps.append(time.perf_counter())
        return self.engine.losses(model, batch)

    def s_per_iter(self) -> float:
        st = self.stamps[1:]  # from the start of the 2nd iteration (the 1st warms up) to that of the last
        return (st[-1] - st[0]) / (len(st) - 1)
