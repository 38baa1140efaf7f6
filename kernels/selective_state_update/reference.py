"""One step of the Mamba-1 recurrence, literally: the ground truth for the tests.

With dt = dt (+ dt_bias) (→ softplus if asked), for every batch b, channel d and state n:

    h[b, d, n] ← exp(dt[b, d] · A[d, n]) · h[b, d, n] + dt[b, d] · B[b, g(d), n] · x[b, d]
    y[b, d]    = Σ_n C[b, g(d), n] · h[b, d, n] + D[d] · x[b, d]
    out        = y · silu(z)  (when z is given)

g(d) = d // (dim / G) is the group of channel d (B and C of shape (batch, N) are one group). This is
one time step of ``selective_scan_reference``; the state is written back into ``state``.
Computed in float32 (float64 when the state or x is float64).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_channel(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, N) or (batch, G, N) → (batch, dim, N), each channel seeing its group."""
    if x.dim() == 2:
        return x.unsqueeze(1).expand(x.shape[0], dim, x.shape[1])
    return x.repeat_interleave(dim // x.shape[1], dim=1)


def selective_state_update_reference(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                                     dt_softplus=False):
    """Updates ``state`` (batch, dim, N) in place; returns out (batch, dim) in x's dtype."""
    compute = torch.float64 if torch.float64 in (state.dtype, x.dtype) else torch.float32
    dim = x.shape[1]
    x64, dt = x.to(compute), dt.to(compute)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)
    if dt_softplus:
        dt = F.softplus(dt)
    decay = torch.exp(dt[:, :, None] * A.to(compute))
    h = decay * state.to(compute) + (dt * x64)[:, :, None] * _per_channel(B.to(compute), dim)
    state.copy_(h)
    y = (h * _per_channel(C.to(compute), dim)).sum(-1)
    if D is not None:
        y = y + D.to(compute) * x64
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(x.dtype)
