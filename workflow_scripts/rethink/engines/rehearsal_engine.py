"""The rehearsal engine (rethink.rehearsal): the one training loop's engine when the arithmetic is
simulated. Same interface as the torchvision and detectron2 engines (engines/__init__.py); imports
no torch (nor torchvision, detectron2 or pycocotools): a cold rehearsal job pays Python's and
numpy's start-up, not torch's (``uses_torch()`` False: rethink.loop then sets no torch seed, RNG
state or deterministic mode, and its checkpoints are JSON, rethink.checkpoint).

* Model: one parameter vector of 4 numbers (numpy; zeros; a pre-trained init sets it to ones, read
  from the rehearsal's own weights file, rethink.rehearsal.read_weights, which no real engine
  reads). Model, losses and optimizer are plain numbers with the few methods the loop calls of a
  torch module, tensor and optimizer: ``to``, ``train``, ``state_dict`` / ``load_state_dict``
  (lists of floats); a loss's ``float``, ``item``, ``+`` and ``backward``; SGD's ``param_groups``,
  ``zero_grad``, ``step``.
* Batches: {"iteration": i, "iterations": n, "images": images this process trains in them}: one
  batch stands for the n iterations up to the next multiple of the spec's stride
  (rethink.rehearsal.stride), which the loop advances by (``iterations_in``); each is handed out
  after pacing the run to ``seconds_per_iter / compression`` per iteration
  (sleeps under a millisecond carried to the next batch), so a segment takes its simulated time
  divided by the compression (times ``slow`` for a family config rehearsal.slow names).
* Losses: rethink.rehearsal.losses_at(iteration) plus ``loss_param = 0.5 * ||w - 1||^2 / 4`` of
  the parameter, which SGD trains (one SGD step per batch, torch.optim.SGD's update with momentum
  and weight decay): its value depends on the optimizer state that checkpoints carry, so a resume
  that lost state shows in the loss. With ``diverge_at`` (config rehearsal.diverge) the loss of the
  batch holding that iteration is NaN, which the loop's divergence guard stops on.
* Counts: the recipe's images per iteration, 7 instances per image (COCO's mean is 7.3) and the
  pixels of a training image at ``min_size_train[0]`` x ``max_size_train``.
* Evaluation does not predict: rethink.evaluate hands a rehearsal to rethink.rehearsal.evaluation.
"""

from __future__ import annotations

import time

import numpy as np

from .. import rehearsal

PARAMS = 4
INSTANCES_PER_IMAGE = 7


class RehearsalModel:
    """The simulated model: the parameter vector `w` and its gradient `grad` (set by a loss's backward)."""

    def __init__(self):
        self.w = np.zeros(PARAMS)
        self.grad = None

    def to(self, device) -> RehearsalModel:
        return self

    def train(self, mode: bool = True) -> RehearsalModel:
        return self

    def eval(self) -> RehearsalModel:
        return self

    def state_dict(self) -> dict:
        return {"w": self.w.tolist()}

    def load_state_dict(self, state: dict) -> None:
        """As torch's: RuntimeError for other keys or another shape (the loop names the checkpoint)."""
        w = np.asarray(state["w"], dtype=np.float64)
        if set(state) != {"w"} or w.shape != (PARAMS,):
            raise RuntimeError(
                f"Error(s) in loading state_dict for RehearsalModel: keys {sorted(state)}, w of shape {w.shape}, "
                f"expected only w of shape ({PARAMS},)"
            )
        self.w = w.copy()


class Loss:
    """A simulated loss term: its value and, for the parameter's term, the gradient of `model`'s `w`."""

    def __init__(self, value: float, model: RehearsalModel | None = None, grad=None):
        self.value, self.model, self.grad = float(value), model, grad

    def float(self) -> Loss:
        return self

    def item(self) -> float:
        return self.value

    def __float__(self) -> float:
        return self.value

    def __add__(self, other) -> Loss:
        if not isinstance(other, Loss):  # sum() starts from 0
            return Loss(self.value + float(other), self.model, self.grad)
        grads = [g for g in (self.grad, other.grad) if g is not None]
        return Loss(self.value + other.value, self.model or other.model, sum(grads) if grads else None)

    __radd__ = __add__

    def __mul__(self, factor: float) -> Loss:
        return Loss(self.value * factor, self.model, None if self.grad is None else self.grad * factor)

    def backward(self) -> None:
        if self.model is not None:
            self.model.grad = self.grad


class RehearsalSGD:
    """SGD with momentum and weight decay (torch.optim.SGD's update) on the model's parameter
    vector. The loop uses param_groups, zero_grad, step, state_dict and load_state_dict."""

    def __init__(self, model: RehearsalModel, momentum: float, weight_decay: float):
        self.model = model
        self.param_groups = [{"lr": 0.0, "momentum": momentum, "weight_decay": weight_decay}]
        self.buf = None  # the momentum buffer

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.grad = None

    def step(self) -> None:
        g, m = self.param_groups[0], self.model
        if m.grad is None:
            return
        d = m.grad + g["weight_decay"] * m.w
        self.buf = d.copy() if self.buf is None else self.buf * g["momentum"] + d
        m.w = m.w - g["lr"] * self.buf

    def state_dict(self) -> dict:
        return {
            "state": {} if self.buf is None else {"0": {"momentum_buffer": self.buf.tolist()}},
            "param_groups": [dict(self.param_groups[0])],
        }

    def load_state_dict(self, state: dict) -> None:
        st = state["state"]
        self.buf = np.asarray(st["0"]["momentum_buffer"], dtype=np.float64) if st else None
        self.param_groups[0].update(state["param_groups"][0])


class RehearsalEngine:
    name = rehearsal.ENGINE

    @staticmethod
    def uses_torch() -> bool:
        return False

    def build_model(self, run: dict, device, distributed: bool = False, dataset: dict | None = None):
        rh = run["rehearsal"]
        print(
            f"{rehearsal.banner(rh)}; {rh['seconds_per_iter']:g} s/iteration simulated "
            f"(config seconds_per_iter), {rh['seconds_per_iter'] / rh['compression']:.3g} s slept per iteration; "
            f"{rh['gpus']} GPU(s) simulated on one CPU process",
            flush=True,
        )
        self.run = run
        return RehearsalModel()

    def build_optimizer(self, model, recipe: dict) -> RehearsalSGD:
        return RehearsalSGD(model, float(recipe["momentum"]), float(recipe["weight_decay"]))

    def load_init_weights(self, model, path: str, run: dict) -> None:
        rehearsal.read_weights(path)  # refuses anything but the rehearsal's own weights file
        model.w = np.ones(PARAMS)

    def load_converted(self, model, state_dict: dict, from_task: str, run: dict) -> str:
        model.load_state_dict(state_dict)
        return f"rehearsal: {from_task} -> {run['recipe']['task']}, the simulated parameters carried over"

    def train_stream(self, run: dict, dataset: dict, start_iter: int, rank: int, world: int):
        rh = run["rehearsal"]
        stride = int(rh.get("stride", 1))
        per_iter = float(rh["seconds_per_iter"]) * float(rh.get("slow", 1.0)) / float(rh["compression"])
        images = int(run["recipe"]["batch"]) // max(int(world), 1)
        i, start = int(start_iter), time.perf_counter()
        while True:  # the batch of iterations [i, i + n) is handed out once their simulated time has passed
            n = stride - i % stride
            ahead = start + (i + n - int(start_iter)) * per_iter - time.perf_counter()
            if ahead > 1e-3:  # shorter sleeps are carried to the next batch
                time.sleep(ahead)
            yield {"iteration": i, "iterations": n, "images": images * n}
            i += n

    @staticmethod
    def iterations_in(batch) -> int:
        return int(batch["iterations"])

    def losses(self, model, batch) -> dict:
        run = self.run
        i = int(batch["iteration"])
        terms = rehearsal.losses_at(i, int(run["recipe"]["iters_per_x"]))
        out = {k: Loss(v) for k, v in terms.items()}
        out["loss_param"] = Loss(0.5 * float(np.mean((model.w - 1.0) ** 2)), model, (model.w - 1.0) / PARAMS)
        at = run["rehearsal"].get("diverge_at")
        if at is not None and i <= at < i + int(batch["iterations"]):
            out["loss_param"] = out["loss_param"] * float("nan")
        return out

    def count(self, batch) -> dict:
        recipe = self.run["recipe"]
        n = int(batch["images"])
        return {
            "images": n,
            "instances": n * INSTANCES_PER_IMAGE,
            "pixels": n * int(recipe["min_size_train"][0]) * int(recipe["max_size_train"]),
        }

    def predict(self, model, run: dict, dataset: dict, device):
        raise NotImplementedError("a rehearsal predicts nothing: rethink.rehearsal.evaluation simulates the stats")
