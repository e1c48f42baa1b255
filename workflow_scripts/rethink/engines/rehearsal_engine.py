"""The rehearsal engine (rethink.rehearsal): the one training loop's engine when the arithmetic is
simulated. Same interface as the torchvision and detectron2 engines (engines/__init__.py); imports
torch only, never torchvision, detectron2 or pycocotools.

* Model: one parameter vector of 4 numbers (zeros; a pre-trained init sets it to ones, read from
  the rehearsal's own weights file, rethink.rehearsal.read_weights, which no real engine reads).
* Batches: {"iteration": i, "iterations": n, "images": images this process trains in them}: one
  batch stands for the n iterations up to the next multiple of the spec's stride
  (rethink.rehearsal.stride), which the loop advances by (``iterations_in``); each is handed out
  after pacing the run to ``seconds_per_iter / compression`` per iteration
  (sleeps under a millisecond carried to the next batch), so a segment takes its simulated time
  divided by the compression (times ``slow`` for a family config rehearsal.slow names).
* Losses: rethink.rehearsal.losses_at(iteration) plus ``loss_param = 0.5 * ||w - 1||^2 / 4`` of
  the parameter, which SGD trains (one SGD step per batch): its value depends on the optimizer
  state that checkpoints carry, so a resume that lost state shows in the loss. With ``diverge_at``
  (config rehearsal.diverge) the loss of the batch holding that iteration is NaN, which the loop's
  divergence guard stops on. The optimizer is RehearsalSGD (torch.optim.SGD's update without its
  start-up cost).
* Counts: the recipe's images per iteration, 7 instances per image (COCO's mean is 7.3) and the
  pixels of a training image at ``min_size_train[0]`` x ``max_size_train``.
* Evaluation does not predict: rethink.evaluate hands a rehearsal to rethink.rehearsal.evaluation.
"""

from __future__ import annotations

import time

import torch

from .. import rehearsal

PARAMS = 4
INSTANCES_PER_IMAGE = 7


class RehearsalModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(PARAMS))


class RehearsalSGD:
    """SGD with momentum and weight decay (torch.optim.SGD's update) on the rehearsal's parameters in
    plain tensor ops: torch.optim's first optimizer imports torch's compiler (torch._dynamo), about a
    second of a cold job's start-up, which a rehearsal job is meant to show cheap. The loop uses
    param_groups, zero_grad, step, state_dict and load_state_dict, as of any optimizer."""

    def __init__(self, params, momentum: float, weight_decay: float):
        self.param_groups = [{"params": list(params), "lr": 0.0, "momentum": momentum, "weight_decay": weight_decay}]
        self.state: dict[int, torch.Tensor] = {}  # parameter index -> momentum buffer

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        g = self.param_groups[0]
        for k, p in enumerate(g["params"]):
            if p.grad is None:
                continue
            d = p.grad + g["weight_decay"] * p
            buf = self.state.get(k)
            self.state[k] = d.clone() if buf is None else buf.mul_(g["momentum"]).add_(d)
            p.add_(self.state[k], alpha=-g["lr"])

    def state_dict(self) -> dict:
        return {
            "state": {k: v.clone() for k, v in self.state.items()},
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
        }

    def load_state_dict(self, state: dict) -> None:
        self.state = {int(k): v.clone() for k, v in state["state"].items()}
        for g, saved in zip(self.param_groups, state["param_groups"]):
            g.update(saved)


class RehearsalEngine:
    name = rehearsal.ENGINE

    def build_model(self, run: dict, device, distributed: bool = False, dataset: dict | None = None):
        rh = run["rehearsal"]
        print(
            f"{rehearsal.banner(rh)}; {rh['seconds_per_iter']:g} s/iteration simulated "
            f"(config seconds_per_iter), {rh['seconds_per_iter'] / rh['compression']:.3g} s slept per iteration; "
            f"{rh['gpus']} GPU(s) simulated on one CPU process",
            flush=True,
        )
        self.run = run
        return RehearsalModel().to(device)

    def build_optimizer(self, model, recipe: dict) -> RehearsalSGD:
        return RehearsalSGD(model.parameters(), float(recipe["momentum"]), float(recipe["weight_decay"]))

    def load_init_weights(self, model, path: str, run: dict) -> None:
        rehearsal.read_weights(path)  # refuses anything but the rehearsal's own weights file
        with torch.no_grad():
            model.w.fill_(1.0)

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
        out = {k: torch.tensor(v) for k, v in terms.items()}
        out["loss_param"] = 0.5 * ((model.w - 1.0) ** 2).mean()
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
