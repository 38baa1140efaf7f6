"""The causal convolution's fast path (backend "fast", alias "torch"): torch ops, ATen's grouped
conv1d (autograd comes with it).

``F.conv1d`` with groups = dim pads W − 1 zeros on both sides; the first L outputs are the causal
ones. fp16 and bf16 inputs are computed in fp32 (as the ``causal_conv1d`` CUDA package does) and
cast back, so the two implementations agree.

With ``seq_idx`` (packed sequences) the convolution is a masked sum over the W taps instead: the
(batch, dim, L, W) windows of x (``unfold``, a view) times the weight where the tap is in the
output's sequence (0 elsewhere), summed over W: (batch, dim, L, W) intermediates, W times x.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FAST_PATH = "torch"


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def causal_conv1d_fast(x, weight, bias, silu, seq_idx=None):
    """x (batch, dim, L), weight (dim, W), bias (dim,) or None, seq_idx (batch, L) int32 or None →
    (batch, dim, L) in x's dtype."""
    compute = _compute_dtype(x, weight)
    dim, width = weight.shape
    if x.numel() == 0:  # nothing to convolve (F.conv1d rejects groups=0 and empty sequences)
        return x.clone()
    if seq_idx is not None:
        windows = F.pad(x.to(compute), (width - 1, 0)).unfold(2, width, 1)
        same = F.pad(seq_idx, (width - 1, 0)).unfold(1, width, 1) == seq_idx[:, :, None]
        taps = same[:, None, :, :].to(compute) * weight.to(compute)[None, :, None, :]
        y = (windows * taps).sum(-1)
        if bias is not None:
            y = y + bias.to(compute)[:, None]
        return (F.silu(y) if silu else y).to(x.dtype)
    y = F.conv1d(x.to(compute), weight.to(compute).unsqueeze(1),
                 bias.to(compute) if bias is not None else None, padding=width - 1, groups=dim)
    y = y[..., :x.shape[2]]
    return (F.silu(y) if silu else y).to(x.dtype)


def causal_conv1d_update_fast(x, conv_state, weight, bias, silu):
    """x (batch, dim), conv_state (batch, dim, S ≥ W − 1) rolled in place → (batch, dim)."""
    compute = _compute_dtype(x, weight)
    width, state_len = weight.shape[1], conv_state.shape[2]
    history = torch.cat([conv_state, x[:, :, None].to(conv_state.dtype)], dim=2)
    window = history[:, :, history.shape[2] - width:].to(compute)
    y = torch.einsum("bdw,dw->bd", window, weight.to(compute))
    if bias is not None:
        y = y + bias.to(compute)
    if state_len > 0:
        conv_state.copy_(history[:, :, 1:])
    return (F.silu(y) if silu else y).to(x.dtype)
