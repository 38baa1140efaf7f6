"""``causal_conv1d`` and ``causal_conv1d_update``: custom ops, the one autograd Function, input
checks and dispatch on the resolved backend ("reference", "fast" or "triton").

Backend "triton" (which auto picks for CUDA tensors) runs the ``causal_conv1d`` package's CUDA
kernels (Dao-AILab's, the ``cuda`` extra) when it is installed and supports the call (widths 2 to
4, fp32/fp16/bf16; ``seq_idx`` only on a channel-last x; for the step, a state of exactly W inputs
and no gradient); otherwise the project's own Triton kernels (``triton_kernels.py``; on CPU tensors
under ``TRITON_INTERPRET=1``, as the tests run them). The Triton step has no backward: a step that
needs a gradient runs the fast path, whose torch ops autograd differentiates. Backend "fast" is
the torch path (``fast_path.py``), "reference" the literal math.
"""
from __future__ import annotations

import functools
import importlib
from typing import Optional, Tuple

import torch

from .._checks import KERNEL_DTYPES, check_same, check_tensor
from .._custom_op import custom_op
from .._dispatch import resolve_backend
from .._seq_idx import check_seq_idx
from .fast_path import causal_conv1d_fast, causal_conv1d_update_fast
from .reference import causal_conv1d_reference, causal_conv1d_update_reference

ACTIVATIONS = (None, "silu", "swish")
PACKAGE_WIDTHS = (2, 3, 4)


@functools.lru_cache(maxsize=None)
def _cuda_package():
    """The ``causal_conv1d`` package (Dao-AILab's CUDA kernels), or None when not importable."""
    try:
        return importlib.import_module("causal_conv1d")
    except ImportError:
        return None


def package_supports(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether the ``causal_conv1d`` package is installed and takes these tensors (CUDA, widths 2
    to 4, fp32/fp16/bf16); ``seq_idx`` has a further rule (channel-last x only)."""
    return (x.is_cuda and weight.shape[1] in PACKAGE_WIDTHS
            and x.dtype in KERNEL_DTYPES and weight.dtype in KERNEL_DTYPES
            and (bias is None or bias.dtype in KERNEL_DTYPES) and _cuda_package() is not None)


def _package_takes_seq_idx(x: torch.Tensor, seq_idx: Optional[torch.Tensor]) -> bool:
    """Whether the package's kernels can take this call's ``seq_idx``: they read it only for a
    channel-last x (stride 1 along dim; (batch, L, dim) memory seen as (batch, dim, L))."""
    return seq_idx is None or (x.stride(1) == 1 and x.stride(2) != 1)


def _triton_module():
    from . import triton_kernels  # imported lazily: triton is only needed when it is used
    return triton_kernels


@custom_op("mim::causal_conv1d_fwd", mutates_args=())
def _forward_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                seq_idx: Optional[torch.Tensor], silu: bool) -> torch.Tensor:
    """out (batch, dim, L) in x's dtype and layout, from the Triton forward kernel."""
    return _triton_module().causal_conv1d_forward_triton(x, weight, bias, seq_idx, silu)


@_forward_op.register_fake
def _(x, weight, bias, seq_idx, silu):
    kernels = _triton_module()
    return kernels.empty_in_layout(x, kernels.is_channel_last(x))


@custom_op("mim::causal_conv1d_bwd", mutates_args=())
def _backward_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
                 silu: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_x in x's dtype and layout, (W + 1, dim) fp32: grad_weight transposed, then
    grad_bias)."""
    return _triton_module().causal_conv1d_backward_triton(grad_out, x, weight, bias, seq_idx, silu)


@_backward_op.register_fake
def _(grad_out, x, weight, bias, seq_idx, silu):
    kernels = _triton_module()
    dim, width = weight.shape
    return (kernels.empty_in_layout(x, kernels.is_channel_last(x)),
            weight.new_empty((width + 1, dim), dtype=torch.float32))


class CausalConv1dFunction(torch.autograd.Function):
    """The Triton path's forward and backward. Saves the inputs only (x, weight, bias, seq_idx):
    backward recomputes the pre-activation for silu rather than keeping a (batch, dim, L) copy.

    Forward and backward are the custom ops ``mim::causal_conv1d_fwd`` / ``_bwd`` (with fake
    implementations), so ``torch.compile`` traces through this Function without a graph break."""

    @staticmethod
    def forward(ctx, x, weight, bias, seq_idx, silu):
        ctx.save_for_backward(x, weight, bias, seq_idx)
        ctx.silu = silu
        return _forward_op(x, weight, bias, seq_idx, silu)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, seq_idx = ctx.saved_tensors
        grad_x, grad_parameters = _backward_op(grad_out, x, weight, bias, seq_idx, ctx.silu)
        width = weight.shape[1]
        return (grad_x, grad_parameters[:width].t().to(weight.dtype),
                grad_parameters[width].to(bias.dtype) if bias is not None else None, None, None)


def _check_common(x, weight, bias, activation, x_rank: int, x_shape: str) -> bool:
    check_tensor("x", x)
    check_tensor("weight", weight)
    if bias is not None:
        check_tensor("bias", bias)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; pass tensors on one device")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() != x_rank:
        raise ValueError(f"x must be {x_rank}-D {x_shape}, got shape {tuple(x.shape)}")
    dim = x.shape[1]
    if weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"weight must be 2-D (dim, width) = ({dim}, width >= 1), got shape "
                         f"{tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"bias must have shape (dim,) = ({dim},), got {tuple(bias.shape)}")
    return activation is not None


def _check_triton_dtype(x: torch.Tensor) -> None:
    """The Triton kernels read x (and write out) in fp32, fp16 or bf16; weight and bias may be
    any float dtype (read in fp32)."""
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}; the triton backend takes float32, float16 or "
                        "bfloat16 (use backend='fast' or 'reference' for float64)")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  activation: Optional[str] = None, backend: Optional[str] = None,
                  seq_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depthwise causal convolution of the Mamba block (``causal_conv1d_fn`` of the
    ``causal_conv1d`` package).

    Args:
        x: (batch, dim, L) input sequence.
        weight: (dim, W) one filter of width W per channel (``nn.Conv1d(dim, dim, W, groups=dim)``'s
            weight ``(dim, 1, W)`` with the middle axis squeezed).
        bias: (dim,) optional.
        activation: None, or "silu" (alias "swish") applied to the result.
        backend: "auto", "reference", "fast" (alias "torch") or "triton" (see the module
            docstring).
        seq_idx: optional int32 (batch, L), non-decreasing along each row: several sequences
            packed into one row (see ``kernels._seq_idx``). Inputs of another sequence count as
            zero, so each sequence's outputs and gradients equal those of a separate call.

    Returns:
        (batch, dim, L) in x's dtype: y[:, :, t] = bias + Σ_k weight[:, k]·x[:, :, t − (W − 1) + k],
        x being zero before the start (and, with seq_idx, outside the sequence of t).
        Differentiable in x, weight and bias.

    Example:
        >>> causal_conv1d(torch.randn(2, 64, 100), torch.randn(64, 4), activation="silu").shape
        torch.Size([2, 64, 100])
    """
    silu = _check_common(x, weight, bias, activation, 3, "(batch, dim, L)")
    check_seq_idx(seq_idx, x.shape[0], x.shape[2], x.device)
    chosen = resolve_backend(backend, x.device, "causal_conv1d")
    if chosen == "reference":
        return causal_conv1d_reference(x, weight, bias, activation, seq_idx)
    if chosen == "fast":
        return causal_conv1d_fast(x, weight, bias, silu, seq_idx)
    if package_supports(x, weight, bias) and _package_takes_seq_idx(x, seq_idx):
        bias = bias.to(weight.dtype) if bias is not None else None
        packed = {} if seq_idx is None else {"seq_idx": seq_idx}
        return _cuda_package().causal_conv1d_fn(x, weight, bias, activation="silu" if silu else None,
                                                **packed)
    _check_triton_dtype(x)
    return CausalConv1dFunction.apply(x, weight, bias, seq_idx, silu)


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, activation: Optional[str] = None,
                         backend: Optional[str] = None) -> torch.Tensor:
    """One step of ``causal_conv1d`` for streaming inference, rolling ``conv_state`` in place.

    Args:
        x: (batch, dim) this step's input.
        conv_state: (batch, dim, S) the last S inputs, oldest first, S ≥ W − 1 (``kernels.Mamba``
            keeps S = W); x's dtype. Updated in place: the oldest input drops out, x is appended.
        weight, bias, activation, backend: as in ``causal_conv1d``.

    Returns:
        (batch, dim) in x's dtype: the convolution of the last W inputs (the state's newest W − 1,
        then x). Stepping it over a sequence from a zero state reproduces ``causal_conv1d``.

    Neither the package's step kernel nor the project's Triton one has a backward, so they run
    only when no gradient is needed; with one, the fast path runs and autograd reaches x, weight
    and bias.
    """
    silu = _check_common(x, weight, bias, activation, 2, "(batch, dim)")
    check_tensor("conv_state", conv_state)
    check_same(("x", "conv_state"), (x, conv_state))
    batch, dim = x.shape
    width = weight.shape[1]
    if conv_state.dim() != 3 or tuple(conv_state.shape[:2]) != (batch, dim) or conv_state.shape[2] < width - 1:
        raise ValueError(f"conv_state must have shape (batch, dim, S) = ({batch}, {dim}, S >= "
                         f"{width - 1}) (S >= width - 1), got {tuple(conv_state.shape)}")
    chosen = resolve_backend(backend, x.device, "causal_conv1d_update")
    if chosen == "reference":
        return causal_conv1d_update_reference(x, conv_state, weight, bias, activation)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, conv_state, weight, bias))
    if chosen == "fast" or needs_grad:
        return causal_conv1d_update_fast(x, conv_state, weight, bias, silu)
    if conv_state.shape[2] == width and package_supports(x, weight, bias):
        bias = bias.to(weight.dtype) if bias is not None else None
        return _cuda_package().causal_conv1d_update(x, conv_state, weight, bias,
                                                    "silu" if silu else None)
    _check_triton_dtype(x)
    return _triton_module().causal_conv1d_update_triton(x, conv_state, weight, bias, silu)
