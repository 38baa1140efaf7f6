"""``deviation_adanorm``: its custom ops, its one autograd Function, input checks and dispatch on
the resolved backend ("reference", "fast" or "triton")."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._custom_op import custom_op
from .._checks import KERNEL_DTYPES, check_positive_float, check_same, check_tensor
from .._dispatch import resolve_backend
from .reference import deviation_adanorm_reference
from .fast_path import adanorm_backward_fast, adanorm_forward_fast


def _triton_module():
    from . import triton_kernels  # imported lazily: triton is only needed when it is used
    return triton_kernels


@custom_op("mim::deviation_adanorm_fwd", mutates_args=())
def _forward_op(v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float,
                backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, per-row mean, per-row 1/std) on the fast or triton path."""
    if backend == "triton":
        return _triton_module().adanorm_forward_triton(v, scale, shift, eps)
    return adanorm_forward_fast(v, scale, shift, eps)


@_forward_op.register_fake
def _(v, scale, shift, eps, backend):
    stats_dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    stats = v.new_empty(v.shape[:1] + (v.shape[1] - 1,), dtype=stats_dtype)
    return torch.empty_like(scale), stats, torch.empty_like(stats)


@custom_op("mim::deviation_adanorm_bwd", mutates_args=())
def _backward_op(grad_out: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
                 rstd: torch.Tensor, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_v, grad_scale); grad_shift is grad_out itself and stays outside the op."""
    if backend == "triton":
        return _triton_module().adanorm_backward_triton(grad_out, v, scale, mean, rstd)
    return adanorm_backward_fast(grad_out, v, scale, mean, rstd)


@_backward_op.register_fake
def _(grad_out, v, scale, mean, rstd, backend):
    return torch.empty_like(v), torch.empty_like(scale)


class DeviationAdaNormFunction(torch.autograd.Function):
    """Saves v and scale (inputs) and the per-row mean and 1/std (B·N·2 floats: backward then
    skips two reductions over G). shift is not needed by backward and is not saved.

    Forward and backward are the custom ops ``mim::deviation_adanorm_fwd`` / ``_bwd`` (with fake
    implementations), so ``torch.compile`` traces through this Function without a graph break."""

    @staticmethod
    def forward(ctx, v, scale, shift, eps, backend):
        if scale.numel() == 0:  # an empty Δ depends on nothing: no launch, zero gradients
            ctx.save_for_backward(v, scale)
            return torch.zeros_like(scale)
        out, mean, rstd = _forward_op(v, scale, shift, eps, backend)
        ctx.save_for_backward(v, scale, mean, rstd)
        ctx.backend = backend
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out.numel() == 0:
            v, scale = ctx.saved_tensors
            return torch.zeros_like(v), torch.zeros_like(scale), torch.zeros_like(scale), None, None
        v, scale, mean, rstd = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_v, grad_scale = _backward_op(grad_out, v, scale, mean, rstd, ctx.backend)
        return grad_v, grad_scale, grad_out, None, None


def _check_inputs(v, scale, shift, eps) -> float:
    check_tensor("v", v)
    check_tensor("scale", scale)
    check_tensor("shift", shift)
    check_same(("v", "scale", "shift"), (v, scale, shift))
    if v.dim() != 3:
        raise ValueError(f"v must be 3-D (B, T, G), got shape {tuple(v.shape)}")
    B, T, G = v.shape
    if T < 2:
        raise ValueError(f"v must hold T >= 2 frames (frame 0 is the source), got T={T}")
    if G < 1:
        raise ValueError("v must have G >= 1 features, got G=0")
    if scale.dim() != 4 or tuple(scale.shape[:2]) != (B, T - 1) or scale.shape[3] != G:
        raise ValueError(f"scale must have shape (B, T-1, R, G) = ({B}, {T - 1}, R, {G}), "
                         f"got {tuple(scale.shape)}")
    if shift.shape != scale.shape:
        raise ValueError(f"shift must have the shape of scale (B, T-1, R, G) = {tuple(scale.shape)}, "
                         f"got {tuple(shift.shape)}")
    return check_positive_float("eps", eps)


def deviation_adanorm(v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-5,
                      backend: Optional[str] = None) -> torch.Tensor:
    """DIT deviation maps Δ (paper eq. 2) for N = T − 1 driving frames and R = λ regions.

    Args:
        v: (B, T, G) standardized motion features V_nor of T frames; frame 0 is the source.
        scale, shift: (B, T − 1, R, G) the DIT's k_sc and k_sh per frame and region.
        eps: ε under the square root (> 0).
        backend: "auto" (default), "reference", "fast" (alias "torch") or "triton"; see
            ``kernels._dispatch``.

    Returns:
        Δ of shape (B, T − 1, R, G) in v's dtype:
        Δ[:, i−1, r] = (v_i − v_0) / sqrt(var(v_i − v_0) + ε) · scale[:, i−1, r] + shift[:, i−1, r],
        the variance being the population variance over G, computed in fp32 (fp64 for fp64).

    Example:
        >>> v = torch.randn(2, 5, 768)
        >>> scale, shift = torch.randn(2, 4, 10, 768), torch.randn(2, 4, 10, 768)
        >>> deviation_adanorm(v, scale, shift).shape
        torch.Size([2, 4, 10, 768])
    """
    eps = _check_inputs(v, scale, shift, eps)
    chosen = resolve_backend(backend, v.device, "deviation_adanorm")
    if chosen == "reference":
        return deviation_adanorm_reference(v, scale, shift, eps)
    if chosen == "triton":
        check_tensor("v", v, KERNEL_DTYPES)
        if v.shape[2] > _triton_module().MAX_G:
            raise ValueError(f"v has G={v.shape[2]} features; the triton kernel holds a row in "
                             f"registers and takes G <= {_triton_module().MAX_G}; use backend='fast'")
    return DeviationAdaNormFunction.apply(v.contiguous(), scale.contiguous(), shift.contiguous(),
                                          eps, chosen)
