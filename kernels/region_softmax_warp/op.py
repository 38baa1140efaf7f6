"""``region_softmax_warp``: its custom ops, its one autograd Function, input checks and dispatch on
the resolved backend ("reference", "fast" or "triton")."""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple, Union

import torch

from .._checks import FLOAT_DTYPES, KERNEL_DTYPES, check_same, check_tensor
from .._custom_op import custom_op
from .._dispatch import resolve_backend
from .reference import region_softmax_warp_reference
from .fast_path import PADDING_MODES, warp_backward_fast, warp_forward_fast


def _triton_module():
    from . import triton_kernels  # imported lazily: triton is only needed when it is used
    return triton_kernels


@custom_op("mim::region_softmax_warp_fwd", mutates_args=())
def _forward_op(feature: torch.Tensor, logits: torch.Tensor, displacement: torch.Tensor,
                mask: torch.Tensor, beta: torch.Tensor, padding_mode: str, align_corners: bool,
                backend: str) -> torch.Tensor:
    """out (B, C, D, H, W) on the fast or triton path."""
    if backend == "triton":
        return _triton_module().warp_forward_triton(feature, logits, displacement, mask, beta,
                                                    padding_mode, align_corners)
    return warp_forward_fast(feature, logits, displacement, mask, beta, padding_mode, align_corners)


@_forward_op.register_fake
def _(feature, logits, displacement, mask, beta, padding_mode, align_corners, backend):
    return feature.new_empty((logits.shape[0],) + tuple(feature.shape[1:]))


@custom_op("mim::region_softmax_warp_bwd", mutates_args=())
def _backward_op(grad_out: torch.Tensor, feature: torch.Tensor, logits: torch.Tensor,
                 displacement: torch.Tensor, mask: torch.Tensor, beta: torch.Tensor,
                 padding_mode: str, align_corners: bool, backend: str, feature_grad: bool
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_feature, grad_logits, grad_displacement, grad_mask, grad_beta), all recomputed from
    the inputs; grad_feature has 0 elements when feature_grad is False."""
    if backend == "triton":
        return _triton_module().warp_backward_triton(grad_out, feature, logits, displacement, mask,
                                                     beta, padding_mode, align_corners, feature_grad)
    return warp_backward_fast(grad_out, feature, logits, displacement, mask, beta, padding_mode,
                               align_corners, feature_grad)


@_backward_op.register_fake
def _(grad_out, feature, logits, displacement, mask, beta, padding_mode, align_corners, backend,
      feature_grad):
    return (feature.new_empty(feature.shape if feature_grad else (0,)), torch.empty_like(logits),
            torch.empty_like(displacement), torch.empty_like(mask), torch.empty_like(beta))


def _check_deterministic() -> None:
    """The triton feature gradient sums by atomic adds; behave as PyTorch does for its own such
    ops (and as grid_sample_3d does)."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = ("region_softmax_warp backward on the triton backend accumulates the feature gradient "
               "with atomic adds and is not deterministic, but torch.use_deterministic_algorithms(True) "
               "is set. Use backend='fast' for a deterministic backward on CPU (on CUDA, PyTorch's "
               "own grid_sampler_3d_backward is not deterministic either), or turn deterministic "
               "algorithms off, to compute the gradient of feature.")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message)
    else:
        raise RuntimeError(message)


class RegionSoftmaxWarpFunction(torch.autograd.Function):
    """Saves the inputs only: backward recomputes w, flow, grid and warped from them.

    Forward and backward are the custom ops ``mim::region_softmax_warp_fwd`` / ``_bwd`` (with fake
    implementations), so ``torch.compile`` traces through this Function without a graph break."""

    @staticmethod
    def forward(ctx, feature, logits, displacement, mask, beta, padding_mode, align_corners, backend):
        out_shape = (logits.shape[0],) + tuple(feature.shape[1:])
        if math.prod(out_shape) == 0:  # an empty out depends on nothing: no launch, zero gradients
            out = feature.new_zeros(out_shape)
        else:
            out = _forward_op(feature, logits, displacement, mask, beta, padding_mode,
                              align_corners, backend)
        ctx.save_for_backward(feature, logits, displacement, mask, beta)
        ctx.options = (padding_mode, align_corners, backend)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        inputs = ctx.saved_tensors
        if grad_out.numel() == 0:
            grads = tuple(torch.zeros_like(t) for t in inputs)
        else:
            if ctx.needs_input_grad[0] and ctx.options[2] == "triton":
                _check_deterministic()
            grads = _backward_op(grad_out.contiguous(), *inputs, *ctx.options,
                                 ctx.needs_input_grad[0])
        grads = tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))
        return (*grads, None, None, None)


def _check_beta(beta, feature: torch.Tensor) -> torch.Tensor:
    """beta as a 0-dim tensor on feature's device (fp32 when given as a number)."""
    if isinstance(beta, torch.Tensor):
        if beta.dim() != 0:
            raise ValueError(f"beta must be a float or a 0-dim tensor, got shape {tuple(beta.shape)}")
        if beta.dtype not in FLOAT_DTYPES:
            raise TypeError(f"beta must have a floating dtype, got {beta.dtype}")
        if beta.device != feature.device:
            raise ValueError(f"beta is on {beta.device} but feature is on {feature.device}; "
                             "pass tensors on one device")
        # Reading beta on the host is a device sync: not while torch.compile traces, and not
        # while a CUDA graph is captured (it would fail the capture); a float beta is checked.
        capturing = beta.is_cuda and torch.cuda.is_current_stream_capturing()
        if not (torch.compiler.is_compiling() or capturing) and not bool(torch.isfinite(beta)):
            raise ValueError(f"beta must be finite, got {beta.item()}")
        return beta
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a float or a 0-dim tensor, got {type(beta).__name__}")
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    # A fill, not a copy from the host: capturable in a CUDA graph (beta becomes a constant of it).
    return torch.full((), float(beta), dtype=torch.float32, device=feature.device)


def _check_inputs(feature, logits, displacement, mask, beta, padding_mode) -> torch.Tensor:
    names = ("feature", "logits", "displacement", "mask")
    for name, t in zip(names, (feature, logits, displacement, mask)):
        check_tensor(name, t)
    check_same(names, (feature, logits, displacement, mask))
    if logits.dim() != 5:
        raise ValueError(f"logits must be 5-D (B, R, D, H, W), got shape {tuple(logits.shape)}")
    B, R, D, H, W = logits.shape
    if feature.dim() != 5:
        raise ValueError(f"feature must be 5-D (B or 1, C, D, H, W), got shape {tuple(feature.shape)}")
    if displacement.dim() != 6:
        raise ValueError(f"displacement must be 6-D (B, R, 3, D, H, W), got shape "
                         f"{tuple(displacement.shape)}")
    if mask.dim() != 5:
        raise ValueError(f"mask must be 5-D (B, 1, D, H, W), got shape {tuple(mask.shape)}")
    if R < 1:
        raise ValueError("logits must hold R >= 1 regions, got R=0")
    if tuple(displacement.shape) != (B, R, 3, D, H, W):
        raise ValueError(f"displacement must have shape (B, R, 3, D, H, W) = ({B}, {R}, 3, {D}, {H}, "
                         f"{W}) to match logits, got {tuple(displacement.shape)}")
    if tuple(mask.shape) != (B, 1, D, H, W):
        raise ValueError(f"mask must have shape (B, 1, D, H, W) = ({B}, 1, {D}, {H}, {W}) to match "
                         f"logits, got {tuple(mask.shape)}")
    if tuple(feature.shape[2:]) != (D, H, W):
        raise ValueError(f"feature must have spatial shape (D, H, W) = ({D}, {H}, {W}) of logits, "
                         f"got {tuple(feature.shape[2:])}")
    if feature.shape[0] not in (1, B):
        raise ValueError(f"feature must have batch 1 (shared by every frame) or B = {B}, "
                         f"got {feature.shape[0]}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {tuple(PADDING_MODES)}, got {padding_mode!r}")
    return _check_beta(beta, feature)


def region_softmax_warp(feature: torch.Tensor, logits: torch.Tensor, displacement: torch.Tensor,
                        mask: torch.Tensor, beta: Union[float, torch.Tensor],
                        padding_mode: str = "border", align_corners: bool = False,
                        backend: Optional[str] = None) -> torch.Tensor:
    """Warp F_id by the softmax-weighted region displacements, blend by the mask, leaky-activate.

    Args:
        feature: F_id (B or 1, C, D, H, W); a batch of 1 is shared by every frame (never copied).
        logits: (B, R, D, H, W) per-region logits ℓ (the LMDD attention maps).
        displacement: (B, R, 3, D, H, W) per-region displacement Δ in normalized (x, y, z) units.
        mask: (B, 1, D, H, W) occlusion mask M in [0, 1].
        beta: β, the slope for negative values (a float, or a 0-dim tensor that may require grad).
        padding_mode: "border" (default) or "zeros", as in ``F.grid_sample``.
        align_corners: as in ``F.grid_sample``; also fixes the identity grid's convention.
        backend: "auto" (default), "reference", "fast" (alias "torch") or "triton"; see
            ``kernels._dispatch``.
            The triton backward accumulates the feature gradient with atomic adds: it raises under
            ``torch.use_deterministic_algorithms(True)`` (warns with ``warn_only=True``) when
            feature needs a gradient, and then only.

    A grid point made NaN or ±inf by the displacement is sampled as ``F.grid_sample`` (CPU) samples
    it; empty tensors (B, C, D, H or W of 0) give an empty out and zero gradients.

    Returns:
        out (B, C, D, H, W) in feature's dtype: with w = softmax_r(ℓ), flow = Σ_r w_r·Δ_r,
        warped = grid_sample(F_id, identity + flow) (trilinear), m = M·warped + (1 − M)·F_id,
        out = max(0, m) + β·min(0, m).

    Example:
        >>> feature = torch.randn(1, 4, 3, 8, 8)
        >>> logits, mask = torch.randn(2, 5, 3, 8, 8), torch.rand(2, 1, 3, 8, 8)
        >>> displacement = 0.1 * torch.randn(2, 5, 3, 3, 8, 8)
        >>> region_softmax_warp(feature, logits, displacement, mask, 0.2).shape
        torch.Size([2, 4, 3, 8, 8])
    """
    beta = _check_inputs(feature, logits, displacement, mask, beta, padding_mode)
    align_corners = bool(align_corners)
    chosen = resolve_backend(backend, feature.device, "region_softmax_warp")
    if chosen == "reference":
        return region_softmax_warp_reference(feature, logits, displacement, mask, beta,
                                             padding_mode, align_corners)
    if chosen == "triton":
        check_tensor("feature", feature, KERNEL_DTYPES)
    return RegionSoftmaxWarpFunction.apply(feature.contiguous(), logits.contiguous(),
                                           displacement.contiguous(), mask.contiguous(), beta,
                                           padding_mode, align_corners, chosen)
