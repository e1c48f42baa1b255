"""Mixed precision for the training loop (recipe ``amp``; off by default: the paper trained in fp32).

On: the forward pass and the losses run under ``torch.autocast``; float16 with a ``GradScaler`` on
CUDA (what detectron2's AMPTrainer does), bfloat16 on the CPU (float32's exponent range, so no loss
scaling). The scaler's state (scale, growth tracker) travels in every checkpoint, so a resumed run
scales exactly as one that never stopped. Backward and the optimizer step stay in float32 master
weights; a step whose scaled gradients are not finite is skipped by the scaler, while a loss that
is not finite still stops the run (rethink.hooks.DivergenceGuard). Evaluation runs in float32.
Off, it imports no torch (an engine that uses none: the rehearsal's).
"""

from __future__ import annotations

import contextlib


class MixedPrecision:
    def __init__(self, enabled: bool, device):
        self.enabled = bool(enabled)
        self.scaler = None
        if not self.enabled:
            return
        import torch

        self.device_type = torch.device(device).type
        self.dtype = torch.float16 if self.device_type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if self.device_type == "cuda" else None

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward_and_step(self, loss, optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
