"""The training processes of one job: one per device under torchrun (WORLD_SIZE, RANK, LOCAL_RANK),
their process group (nccl on GPU, gloo on CPU) and the two reductions the loop needs; the process
determinism switch. A single process (no torchrun) needs no group: every reduction is local; one on
the CPU imports no torch here (its device is the string "cpu"), for an engine that uses none (the
rehearsal's)."""

from __future__ import annotations

import contextlib
import datetime
import os


def set_deterministic(on: bool) -> None:
    """Only a change is applied: torch.use_deterministic_algorithms imports torch's compiler
    (torch._inductor), 1-2 s of every job's start-up."""
    import torch

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if not (torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()):
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(False)


@contextlib.contextmanager
def deterministic(on: bool):
    """torch's deterministic mode `on` for the block, as it was after it."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    set_deterministic(on)
    try:
        yield
    finally:
        set_deterministic(before)


class Processes:
    """This process's place among the job's training processes; starts the process group where
    there are several and none runs yet (close() ends the group it started)."""

    def __init__(self, gpus: int):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.cuda = gpus > 0
        self.device = "cpu"
        if self.cuda:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"the recipe asks for {gpus} GPU(s) but CUDA is not available (set recipe.gpus: 0 to train on CPU)"
                )
            self.device = torch.device(f"cuda:{self.local_rank}")
            torch.cuda.set_device(self.device)
        self.owns_group = False
        if self.world == 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.cuda else "gloo", timeout=datetime.timedelta(minutes=30))
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
