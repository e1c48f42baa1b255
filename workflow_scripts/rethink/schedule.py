"""The learning-rate schedule of a run: linear warm-up, then multi-step drops.

The paper lowers the LR by `drop_factor` at fixed distances from the end of the schedule
(60k and 20k iterations), whatever its length. This module is the only place that knows
how the LR of a given iteration is computed; the plan, the training loop and the tests
all ask it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    iterations: int
    base_lr: float
    lr_drops: tuple[int, ...]  # absolute iterations at which the LR is multiplied by drop_factor
    drop_factor: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001

    @classmethod
    def from_recipe(cls, recipe: dict, iterations: int) -> Schedule:
        drops = tuple(sorted(iterations - d for d in recipe["lr_drops_from_end"]))
        return cls(
            iterations=iterations,
            base_lr=recipe["base_lr"],
            lr_drops=drops,
            drop_factor=recipe["drop_factor"],
            warmup_iters=recipe["warmup_iters"],
            warmup_factor=recipe["warmup_factor"],
        )

    @property
    def first_drop(self) -> int:
        """The last iteration trained at the constant (undropped) LR ends here."""
        return self.lr_drops[0] if self.lr_drops else self.iterations

    def lr(self, iteration: int) -> float:
        """LR used for the update that takes the model from `iteration` to `iteration + 1`
        (detectron2's WarmupMultiStepLR convention)."""
        n_drops = bisect.bisect_right(self.lr_drops, iteration)
        lr = self.base_lr * self.drop_factor**n_drops
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            lr *= self.warmup_factor * (1 - alpha) + alpha
        return lr
