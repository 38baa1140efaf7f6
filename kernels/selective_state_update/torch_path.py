"""Fast PyTorch path of the recurrence step: in place on the state, no per-channel copies of B, C.

The channels are viewed as (G, dim / G) so B and C broadcast over their group instead of being
repeated per channel; the state is updated with ``mul_`` / ``addcmul_`` in place (when it already
has the compute dtype), and Σ_n C·h is a batched matrix-vector product, so the only (batch, dim, N)
temporaries are exp(dt·A) and dt·x·B.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """Same contract as ``selective_state_update_reference``."""
    compute = torch.float64 if torch.float64 in (state.dtype, x.dtype) else torch.float32
    batch, dim, N = state.shape
    groups = 1 if B.dim() == 2 else B.shape[1]
    grouped = (groups, dim // groups)
    x_c, dt = x.to(compute), dt.to(compute)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)
    if dt_softplus:
        dt = F.softplus(dt)
    h = state if state.dtype == compute else state.to(compute)
    h_grouped = h.unflatten(1, grouped)
    decay = torch.exp(dt[:, :, None] * A.to(compute)).unflatten(1, grouped)
    inflow = (dt * x_c).unflatten(1, grouped)[..., None]
    B_grouped = B.to(compute).reshape(batch, groups, 1, N)
    h_grouped.mul_(decay).addcmul_(inflow, B_grouped)
    if h is not state:
        state.copy_(h)
    C_grouped = C.to(compute).reshape(batch, groups, N, 1)
    y = torch.matmul(h_grouped, C_grouped).flatten(1)
    if D is not None:
        y = y + D.to(compute) * x_c
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(x.dtype)
