"""Small building blocks shared by the renderer's parts (2-D and 3-D residual, down and up blocks).

GroupNorm everywhere, not BatchNorm: a batch of a few clips, split across DDP ranks, gives
noisy batch statistics, and group statistics make a frame's output independent of its batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ 8 that divides ``channels``."""
    groups = max(g for g in range(1, 9) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock2d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResBlock3d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(channels), nn.SiLU(), nn.Conv3d(channels, channels, 3, padding=1),
            group_norm(channels), nn.SiLU(), nn.Conv3d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DownBlock2d(nn.Module):
    """conv 3×3 → norm → SiLU → 2×2 average pool."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                  group_norm(out_channels), nn.SiLU(), nn.AvgPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UpBlock2d(nn.Module):
    """2× nearest upsampling → conv 3×3 → norm → SiLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                  nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                  group_norm(out_channels), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def num_halvings(large: int, small: int) -> int:
    """k with large = small · 2^k (the caller validated that it is a power of two)."""
    return int(round(math.log2(large // small)))


def maybe_checkpoint(module: nn.Module, enabled: bool, *args: torch.Tensor) -> torch.Tensor:
    """Run ``module(*args)``; with ``enabled`` and grad on, keep only its inputs for backward and
    recompute its activations there (``torch.utils.checkpoint``, non-reentrant)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)
