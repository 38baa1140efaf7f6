"""``grid_sample_3d``: its custom ops, its one autograd Function, input checks and dispatch on the
resolved backend ("reference", "fast" or "triton")."""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch

from .._checks import KERNEL_DTYPES, check_same, check_tensor
from .._custom_op import custom_op
from .._dispatch import resolve_backend
from .fast_path import grid_sample_3d_backward_fast, grid_sample_3d_forward_fast
from .reference import grid_sample_3d_reference

PADDING_MODES = ("zeros", "border")
MAX_TRITON_BATCH = 65535  # CUDA's limit on a launch grid's y dimension, which walks N


def _triton_module():
    from . import triton_kernels  # imported lazily: triton is only needed when it is used
    return triton_kernels


@custom_op("mim::grid_sample_3d_fwd", mutates_args=())
def _forward_op(input: torch.Tensor, grid: torch.Tensor, padding_mode: str, align_corners: bool,
                backend: str) -> torch.Tensor:
    """out (N, C, Do, Ho, Wo) on the fast or triton path."""
    if backend == "triton":
        return _triton_module().grid_sample_3d_forward_triton(input, grid, padding_mode == "border",
                                                              align_corners)
    return grid_sample_3d_forward_fast(input, grid, padding_mode, align_corners)


@_forward_op.register_fake
def _(input, grid, padding_mode, align_corners, backend):
    return input.new_empty((input.shape[0], input.shape[1], *grid.shape[1:4]))


@custom_op("mim::grid_sample_3d_bwd", mutates_args=())
def _backward_op(grad_out: torch.Tensor, input: torch.Tensor, grid: torch.Tensor, padding_mode: str,
                 align_corners: bool, backend: str, input_grad: bool,
                 grid_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_input, grad_grid); one that is not asked for comes back with 0 elements."""
    if backend == "triton":
        grad_input, grad_grid = _triton_module().grid_sample_3d_backward_triton(
            grad_out, input, grid, padding_mode == "border", align_corners, input_grad, grid_grad)
    else:
        grad_input, grad_grid = grid_sample_3d_backward_fast(grad_out, input, grid, padding_mode,
                                                             align_corners, input_grad, grid_grad)
    grad_input = grad_input if input_grad else input.new_empty((0,))
    grad_grid = grad_grid if grid_grad else grid.new_empty((0,))
    return grad_input, grad_grid


@_backward_op.register_fake
def _(grad_out, input, grid, padding_mode, align_corners, backend, input_grad, grid_grad):
    return (input.new_empty(input.shape if input_grad else (0,)),
            grid.new_empty(grid.shape if grid_grad else (0,)))


def _check_deterministic() -> None:
    """The triton grad_input sums by atomic adds; behave as PyTorch does for its own such ops."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = ("grid_sample_3d backward on the triton backend accumulates grad_input with atomic adds "
               "and is not deterministic, but torch.use_deterministic_algorithms(True) is set. Use "
               "backend='fast' or backend='reference' (or turn deterministic algorithms off) to "
               "compute the gradient of input.")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message)
    else:
        raise RuntimeError(message)


class GridSample3dFunction(torch.autograd.Function):
    """Saves input and grid (the inputs); backward recomputes corner offsets and weights.

    Forward and backward are the custom ops ``mim::grid_sample_3d_fwd`` / ``_bwd`` (with fake
    implementations), so ``torch.compile`` traces through this Function without a graph break."""

    @staticmethod
    def forward(ctx, input, grid, padding_mode, align_corners, backend):
        out = _forward_op(input, grid, padding_mode, align_corners, backend)
        ctx.save_for_backward(input, grid)
        ctx.padding_mode, ctx.align_corners, ctx.backend = padding_mode, align_corners, backend
        return out

    @staticmethod
    def backward(ctx, grad_out):
        input, grid = ctx.saved_tensors
        input_grad, grid_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (input_grad or grid_grad):
            return None, None, None, None, None
        if input_grad and ctx.backend == "triton":
            _check_deterministic()
        grad_input, grad_grid = _backward_op(grad_out.contiguous(), input, grid, ctx.padding_mode,
                                             ctx.align_corners, ctx.backend, input_grad, grid_grad)
        return (grad_input if input_grad else None, grad_grid if grid_grad else None,
                None, None, None)


def _check_inputs(input, grid, padding_mode, align_corners) -> None:
    check_tensor("input", input)
    check_tensor("grid", grid)
    check_same(("input", "grid"), (input, grid))
    if input.dim() != 5:
        raise ValueError(f"input must be 5-D (N, C, D, H, W), got shape {tuple(input.shape)}")
    if grid.dim() != 5 or grid.shape[4] != 3:
        raise ValueError(f"grid must be 5-D (N, Do, Ho, Wo, 3) with (x, y, z) in its last dimension, "
                         f"got shape {tuple(grid.shape)}")
    if grid.shape[0] != input.shape[0]:
        raise ValueError(f"grid has batch {grid.shape[0]} but input has batch {input.shape[0]}; "
                         "grid must be (N, Do, Ho, Wo, 3) with input's N")
    if min(input.shape[2:]) < 1:
        raise ValueError(f"input must have non-empty spatial dimensions (D, H, W), got shape "
                         f"{tuple(input.shape)}")
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r} "
                         "(grid_sample_3d does not implement 'reflection')")
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners must be a bool, got {type(align_corners).__name__}")


def grid_sample_3d(input: torch.Tensor, grid: torch.Tensor, padding_mode: str = "zeros",
                   align_corners: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """Trilinear sampling: exactly ``F.grid_sample(input, grid, mode="bilinear", padding_mode,
    align_corners)`` on 5-D tensors, with gradients for input and grid.

    Args:
        input: (N, C, D, H, W) volume to sample (the warp's F_id).
        grid: (N, Do, Ho, Wo, 3) sampling points, normalized to [−1, 1], in (x, y, z) order:
            x runs along W, y along H, z along D. Same dtype and device as input.
        padding_mode: "zeros" (corners outside the volume count 0) or "border" (points clamped
            into the volume).
        align_corners: True maps −1 and 1 to the centres of the corner voxels, False to their
            outer edges (PyTorch's meaning).
        backend: "auto" (default), "reference", "fast" (alias "torch") or "triton"; see
            ``kernels._dispatch``.
            The triton backward accumulates grad_input with atomic adds: it raises under
            ``torch.use_deterministic_algorithms(True)`` (warns with ``warn_only=True``) when
            input needs a gradient. The triton kernels take N <= 65535 (a ``ValueError`` beyond).

    NaN and ±inf grid coordinates give what ``F.grid_sample`` gives on CPU on every backend (see
    ``kernels/_trilinear.py``); empty tensors (N, C or Do·Ho·Wo of 0) give empty outputs and
    gradients.

    Returns:
        (N, C, Do, Ho, Wo) in input's dtype.

    Example:
        >>> volume = torch.randn(2, 4, 8, 16, 16)
        >>> grid = torch.rand(2, 8, 16, 16, 3) * 2 - 1
        >>> grid_sample_3d(volume, grid, padding_mode="border").shape
        torch.Size([2, 4, 8, 16, 16])
    """
    _check_inputs(input, grid, padding_mode, align_corners)
    chosen = resolve_backend(backend, input.device, "grid_sample_3d")
    if chosen == "reference":
        return grid_sample_3d_reference(input, grid, padding_mode, align_corners)
    if chosen == "triton":
        check_tensor("input", input, KERNEL_DTYPES)
        if input.shape[0] > MAX_TRITON_BATCH:
            raise ValueError(f"input has batch N={input.shape[0]}; the triton kernels take "
                             f"N <= {MAX_TRITON_BATCH} (the launch grid's second dimension): "
                             "split the batch or use backend='fast'")
    if input.shape[0] * input.shape[1] * grid[..., 0].numel() == 0:
        chosen = "fast"  # nothing to sample: no kernel launch over an empty grid
    return GridSample3dFunction.apply(input.contiguous(), grid.contiguous(), padding_mode,
                                      align_corners, chosen)
