"""grid_sample_3d's fast path (backend "fast"): PyTorch ops, ATen's own trilinear grid sampler.

Forward is ``F.grid_sample(mode="bilinear")``; backward calls ``aten.grid_sampler_3d_backward``
directly with the inputs forward saved, asking only for the gradients that are needed. fp16/bf16
tensors are computed in fp32 and cast back: ATen's kernel does the index math in the grid's
dtype, and a bf16 source index (8 bits of mantissa) misplaces points by up to 1/32 voxel at
W = 10.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FAST_PATH = "torch"

_ATEN_PADDING = {"zeros": 0, "border": 1}  # ATen's GridSamplerPadding codes
_ATEN_BILINEAR = 0


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def grid_sample_3d_forward_fast(input: torch.Tensor, grid: torch.Tensor, padding_mode: str,
                                align_corners: bool) -> torch.Tensor:
    """out (N, C, Do, Ho, Wo) in input's dtype."""
    out = F.grid_sample(_upcast(input), _upcast(grid), mode="bilinear", padding_mode=padding_mode,
                        align_corners=align_corners)
    return out.to(input.dtype)


def grid_sample_3d_backward_fast(grad_out: torch.Tensor, input: torch.Tensor, grid: torch.Tensor,
                                 padding_mode: str, align_corners: bool, input_grad: bool,
                                 grid_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_input, grad_grid) in their inputs' dtypes; a gradient not asked for comes back as
    whatever ATen returns for it (the caller replaces it)."""
    grad_input, grad_grid = torch.ops.aten.grid_sampler_3d_backward(
        _upcast(grad_out), _upcast(input), _upcast(grid), _ATEN_BILINEAR,
        _ATEN_PADDING[padding_mode], align_corners, [input_grad, grid_grad])
    grad_input = grad_input.to(input.dtype) if input_grad else grad_input
    grad_grid = grad_grid.to(grid.dtype) if grid_grad else grad_grid
    return grad_input, grad_grid
