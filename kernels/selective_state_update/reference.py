"""One step of the selective-scan recurrence, literally: the ground truth for the tests.

In the heads layout (Mamba-2's: heads h of p channels, B and C shared by groups of heads), with
dt = dt (+ dt_bias) (→ softplus if asked), for every batch b, head i, channel j and state n:

    h[r, i, j, n] ← exp(dt[b, i, j] · A[i, j, n]) · h[r, i, j, n] + dt[b, i, j] · B[b, g(i), n] · x[b, i, j]
    y[b, i, j]    = Σ_n C[b, g(i), n] · h[r, i, j, n] + D[i, j] · x[b, i, j]
    out           = y · silu(z)  (when z is given)

g(i) = i // (h / G) is the group of head i (B and C of shape (batch, N) are one group); r is the
state row of batch element b: b itself, or state_batch_indices[b]. The Mamba-1 layout (state
(batch, dim, N), x (batch, dim), A (dim, N), D (dim,)) is the heads layout with one channel per
head (h = dim, p = 1), its groups dividing dim. This is one time step of
``selective_scan_reference``; the new state is written back into ``state`` (in its own dtype).
Computed in float32 (float64 when the state or x is float64), out in x's dtype; differentiable by
autograd (the write-back is an in-place copy, so a state that is a leaf requiring grad is refused
by torch: step a clone of it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, N) or (batch, G, N) → (batch, heads, 1, N), each head seeing its group."""
    if x.dim() == 2:
        x = x.unsqueeze(1)
    return x.repeat_interleave(heads // x.shape[1], dim=1).unsqueeze(2)


def selective_state_update_reference(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                                     dt_softplus=False, state_batch_indices=None):
    """Updates ``state`` in place; returns out, x's shape and dtype."""
    compute = torch.float64 if torch.float64 in (state.dtype, x.dtype) else torch.float32
    mamba1 = x.dim() == 2
    state_heads = state.unsqueeze(2) if mamba1 else state

    def heads(t, unsqueeze_at):
        return None if t is None else (t.unsqueeze(unsqueeze_at) if mamba1 else t).to(compute)

    x_h, dt, z_h = heads(x, -1), heads(dt, -1), heads(z, -1)
    A_h, D_h, bias_h = heads(A, 1), heads(D, -1), heads(dt_bias, -1)
    if bias_h is not None:
        dt = dt + bias_h
    if dt_softplus:
        dt = F.softplus(dt)
    rows = (state_heads if state_batch_indices is None
            else state_heads.index_select(0, state_batch_indices.long()))
    h_prev = rows.to(compute, copy=True)
    nheads = x_h.shape[1]
    h = (torch.exp(dt[..., None] * A_h) * h_prev
         + (dt * x_h)[..., None] * _per_head(B.to(compute), nheads))
    if state_batch_indices is None:
        state_heads.copy_(h)
    else:
        state_heads.index_copy_(0, state_batch_indices.long(), h.to(state.dtype))
    y = (h * _per_head(C.to(compute), nheads)).sum(-1)
    if D_h is not None:
        y = y + D_h * x_h
    if z_h is not None:
        y = y * F.silu(z_h)
    return (y.squeeze(-1) if mamba1 else y).to(x.dtype)
