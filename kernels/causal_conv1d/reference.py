"""The literal depthwise causal convolution of the Mamba block: the ground truth for the tests.

For x (batch, dim, L), weight (dim, W) and every batch b, channel d and time t:

    y[b, d, t] = bias[d] + Σ_{k=0}^{W−1} weight[d, k] · x[b, d, t − (W − 1) + k]

with x = 0 before t = 0 (left zero padding of W − 1), then SiLU when ``activation`` is "silu" (or
its other name "swish"). With ``seq_idx`` (batch, L) (packed sequences), a term k counts only when
seq_idx[b, t − (W − 1) + k] == seq_idx[b, t]: inputs of another sequence count as 0. The
one-step form keeps the last inputs in a state and rolls it.
Computed in float32 (float64 for float64 inputs); differentiable by autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def causal_conv1d_reference(x, weight, bias=None, activation=None, seq_idx=None):
    """x (batch, dim, L), weight (dim, W), bias (dim,), seq_idx (batch, L) int32 → (batch, dim, L)
    in x's dtype."""
    compute = _compute_dtype(x, weight)
    length, width = x.shape[2], weight.shape[1]
    padded = F.pad(x.to(compute), (width - 1, 0))
    if seq_idx is not None:
        padded_seq = F.pad(seq_idx, (width - 1, 0))  # the padding's x is 0 whatever its label
    w = weight.to(compute)
    terms = []
    for k in range(width):
        term = w[:, k, None] * padded[:, :, k:k + length]
        if seq_idx is not None:
            term = term * (padded_seq[:, k:k + length] == seq_idx)[:, None, :]
        terms.append(term)
    y = sum(terms)
    if bias is not None:
        y = y + bias.to(compute)[:, None]
    if activation is not None:
        y = F.silu(y)
    return y.to(x.dtype)


def causal_conv1d_update_reference(x, conv_state, weight, bias=None, activation=None):
    """One step: x (batch, dim), conv_state (batch, dim, S ≥ W − 1) holding the last S inputs,
    oldest first. The step convolves the last W inputs (state then x), then shifts x into the state
    (the oldest input drops out). Returns (batch, dim) in x's dtype."""
    compute = _compute_dtype(x, weight)
    width, state_len = weight.shape[1], conv_state.shape[2]
    history = torch.cat([conv_state.to(compute), x.to(compute)[:, :, None]], dim=2)
    window = history[:, :, history.shape[2] - width:]
    w = weight.to(compute)
    y = sum(w[:, k] * window[:, :, k] for k in range(width))
    if bias is not None:
        y = y + bias.to(compute)
    if activation is not None:
        y = F.silu(y)
    if state_len > 0:
        conv_state.copy_(history[:, :, 1:])
    return y.to(x.dtype)
