"""``causal_conv1d`` and ``causal_conv1d_update``: input checks and dispatch.

There is no Triton kernel of this op: on the GPU path (backend "triton", which auto picks for CUDA
tensors) the ``causal_conv1d`` package's CUDA kernels run when it is installed (the ``cuda`` extra)
and support the call (widths 2 to 4, fp32/fp16/bf16; for the step, a state of exactly W inputs);
every other call takes the project's torch path, with the same results. The package reads
``seq_idx`` (packed sequences) only in the channel-last layout (x of stride 1 along dim); a call
with ``seq_idx`` on any other layout takes the torch path.
"""
from __future__ import annotations

import functools
import importlib
from typing import Optional

import torch

from .._checks import KERNEL_DTYPES, check_same, check_tensor
from .._dispatch import resolve_backend
from .._seq_idx import check_seq_idx
from .reference import causal_conv1d_reference, causal_conv1d_update_reference
from .torch_path import causal_conv1d_torch, causal_conv1d_update_torch

ACTIVATIONS = (None, "silu", "swish")
PACKAGE_WIDTHS = (2, 3, 4)


@functools.lru_cache(maxsize=None)
def _cuda_package():
    """The ``causal_conv1d`` package (Dao-AILab's CUDA kernels), or None when not importable."""
    try:
        return importlib.import_module("causal_conv1d")
    except ImportError:
        return None


def _package_supports(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    return (x.is_cuda and weight.shape[1] in PACKAGE_WIDTHS
            and x.dtype in KERNEL_DTYPES and weight.dtype in KERNEL_DTYPES
            and (bias is None or bias.dtype in KERNEL_DTYPES) and _cuda_package() is not None)


def _package_takes_seq_idx(x: torch.Tensor, seq_idx: Optional[torch.Tensor]) -> bool:
    """Whether the package's kernels can take this call's ``seq_idx``: they read it only for a
    channel-last x (stride 1 along dim; (batch, L, dim) memory seen as (batch, dim, L))."""
    return seq_idx is None or (x.stride(1) == 1 and x.stride(2) != 1)


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
        backend: "auto", "reference", "torch" or "triton" (see the module docstring).
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
    if chosen == "triton" and _package_supports(x, weight, bias) and _package_takes_seq_idx(x, seq_idx):
        bias = bias.to(weight.dtype) if bias is not None else None
        packed = {} if seq_idx is None else {"seq_idx": seq_idx}
        return _cuda_package().causal_conv1d_fn(x, weight, bias, activation="silu" if silu else None,
                                                **packed)
    return causal_conv1d_torch(x, weight, bias, silu, seq_idx)


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

    The package's step kernel has no backward, so it runs only when no gradient is needed; with
    one, the torch path runs and autograd reaches x, weight and bias.
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
    if (chosen == "triton" and not needs_grad and conv_state.shape[2] == width
            and _package_supports(x, weight, bias)):
        bias = bias.to(weight.dtype) if bias is not None else None
        return _cuda_package().causal_conv1d_update(x, conv_state, weight, bias,
                                                    "silu" if silu else None)
    return causal_conv1d_update_torch(x, conv_state, weight, bias, silu)
