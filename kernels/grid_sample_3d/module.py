"""``GridSample3d``: the nn.Module wrapper of ``grid_sample_3d`` (settings + one op call)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .op import grid_sample_3d


class GridSample3d(nn.Module):
    """Trilinear ``F.grid_sample`` on 5-D tensors: forward(input (N, C, D, H, W),
    grid (N, Do, Ho, Wo, 3)) → (N, C, Do, Ho, Wo)."""

    def __init__(self, padding_mode: str = "zeros", align_corners: bool = False,
                 backend: Optional[str] = None):
        super().__init__()
        self.padding_mode = padding_mode
        self.align_corners = align_corners
        self.backend = backend

    def forward(self, input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return grid_sample_3d(input, grid, self.padding_mode, self.align_corners, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"padding_mode={self.padding_mode!r}, align_corners={self.align_corners}, "
                f"backend={self.backend!r}")
