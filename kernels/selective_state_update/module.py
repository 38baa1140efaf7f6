"""``SelectiveStateUpdate``: the nn.Module wrapper of ``selective_state_update`` (settings + one
op call)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .op import selective_state_update


class SelectiveStateUpdate(nn.Module):
    """One step of the selective scan's recurrence for streaming inference:
    h = exp(Δ·A)·h_prev + Δ·B·x written into ``state`` in place, out = (Σ_n C·h + D·x)·silu(z),
    with Δ = softplus(dt + dt_bias) when ``dt_softplus``.

    forward(state (batch, dim, N), x (batch, dim), dt (batch, dim), A (dim, N), B, C ((batch, N)
    or (batch, G, N)), D (dim,), z (batch, dim), dt_bias (dim,), state_batch_indices (batch,))
    → out (batch, dim); the heads layout and the rest as ``selective_state_update``."""

    def __init__(self, dt_softplus: bool = True, backend: Optional[str] = None):
        super().__init__()
        self.dt_softplus = dt_softplus
        self.backend = backend

    def forward(self, state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
                state_batch_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        return selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, self.dt_softplus,
                                      state_batch_indices, backend=self.backend)

    def extra_repr(self) -> str:
        return f"dt_softplus={self.dt_softplus}, backend={self.backend!r}"
