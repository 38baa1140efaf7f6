"""The recurrence step's fast path (backend "fast"): torch ops, in place on the state, no
per-channel copies of B, C (``FAST_PATH = "torch"``).

It takes the Mamba-1 layout (``op.py`` flattens the heads layout to channels). The channels are
viewed as (G, dim / G) so B and C broadcast over their group instead of being repeated per channel;
the state is updated with ``mul_`` / ``addcmul_`` in place (when it already has the compute dtype
and no ``state_batch_indices`` gather is needed), and Σ_n C·h is a batched matrix-vector product,
so the only (batch, dim, N) temporaries are exp(dt·A) and dt·x·B.

When autograd records (grad mode on and an input requiring grad) the step is computed out of place
and the new state is then copied into ``state`` (``index_copy_`` with ``state_batch_indices``), an
in-place write autograd tracks: gradients reach the inputs and the state before the step, and a
loss on the state after the step (or on a later step's output) flows back through it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FAST_PATH = "torch"
"""What the fast path runs: PyTorch ops (any device)."""


def selective_state_update_fast(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                 state_batch_indices=None):
    """Same contract as ``selective_state_update_reference`` on the Mamba-1 layout."""
    compute = torch.float64 if torch.float64 in (state.dtype, x.dtype) else torch.float32
    batch, dim = x.shape
    N = state.shape[2]
    groups = 1 if B.dim() == 2 else B.shape[1]
    grouped = (groups, dim // groups)
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (state, x, dt, A, B, C, D, z, dt_bias))
    x_c, dt = x.to(compute), dt.to(compute)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)
    if dt_softplus:
        dt = F.softplus(dt)
    rows = state if state_batch_indices is None else state.index_select(0, state_batch_indices)
    decay = torch.exp(dt[:, :, None] * A.to(compute)).unflatten(1, grouped)
    inflow = (dt * x_c).unflatten(1, grouped)[..., None]
    B_grouped = B.to(compute).reshape(batch, groups, 1, N)
    if tracked:
        # A copy: autograd keeps h_prev for dA, and the state is overwritten below.
        h_prev = rows.to(compute, copy=True).unflatten(1, grouped)
        h = torch.addcmul(h_prev * decay, inflow, B_grouped)
        h_grouped, h = h, h.flatten(1, 2)
    else:
        h = rows if rows.dtype == compute else rows.to(compute)
        h_grouped = h.unflatten(1, grouped)
        h_grouped.mul_(decay).addcmul_(inflow, B_grouped)
    if state_batch_indices is not None:
        state.index_copy_(0, state_batch_indices, h.to(state.dtype))
    elif h is not state:
        state.copy_(h)
    C_grouped = C.to(compute).reshape(batch, groups, N, 1)
    y = torch.matmul(h_grouped, C_grouped).flatten(1)
    if D is not None:
        y = y + D.to(compute) * x_c
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(x.dtype)
