"""Normalization layers by the paper's names (GN, SyncBN, BN, none) for the torchvision engine's models
(rethink.engines.torchvision_models, which the tiny pre-training builds too). Torchvision-specific:
detectron2 has its own (get_norm, its NaiveSyncBatchNorm); what the loop asks of any engine's model
(which parameters are a norm's: no weight decay) is rethink.loop.is_norm.

``norm_layer(name, device_type)`` returns a callable ``(num_channels) -> nn.Module`` that torchvision's
ResNet, FPN and heads accept as ``norm_layer``. "SyncBN" is torch's SyncBatchNorm on GPU and
:class:`NaiveSyncBatchNorm` on CPU (torch's SyncBatchNorm refuses CPU tensors); both normalise with the
statistics of the whole batch across all processes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

NORMS = ("GN", "SyncBN", "BN", "none")
GN_GROUPS = 32  # the paper's (and detectron2's) default


def gn_groups(channels: int, groups: int = GN_GROUPS) -> int:
    """The largest number of groups <= `groups` that divides `channels`."""
    for g in range(min(groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def group_norm(channels: int, groups: int = GN_GROUPS) -> nn.GroupNorm:
    return nn.GroupNorm(gn_groups(channels, groups), channels)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of the incoming gradients (detectron2's
    differentiable_all_reduce)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class NaiveSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are averaged over all processes with one
    differentiable all_reduce (as detectron2's NaiveSyncBatchNorm). Works with gloo on CPU.
    Every process must hold a non-empty batch of the same size. Outside training or without a
    process group it is plain BatchNorm2d."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        world = _world()
        if world == 1 or not self.training:
            return super().forward(input)
        C = input.shape[1]
        x = input.float()
        mean = x.mean(dim=[0, 2, 3])
        meansqr = (x * x).mean(dim=[0, 2, 3])
        vec = _AllReduceSum.apply(torch.cat([mean, meansqr])) / world
        mean, meansqr = torch.split(vec, C)
        var = meansqr - mean * mean
        invstd = torch.rsqrt(var + self.eps)
        scale = self.weight * invstd
        bias = self.bias - mean * scale
        with torch.no_grad():
            n = input.numel() // C * world
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
            self.num_batches_tracked.add_(1)
        return (x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)).to(input.dtype)


def norm_layer(name: str, device_type: str = "cpu"):
    """Paper norm name -> callable(num_channels) -> nn.Module."""
    if name == "GN":
        return group_norm
    if name == "BN":
        return nn.BatchNorm2d
    if name == "SyncBN":
        return nn.SyncBatchNorm if device_type == "cuda" else NaiveSyncBatchNorm
    if name == "none":
        return nn.Identity
    raise ValueError(f"unknown norm {name!r} (known: {', '.join(NORMS)})")
