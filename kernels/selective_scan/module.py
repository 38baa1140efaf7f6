"""``SelectiveScan``: the nn.Module wrapper of ``selective_scan`` (settings + one op call)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .op import selective_scan


class SelectiveScan(nn.Module):
    """The Mamba-1 selective scan h_t = exp(Δ_t·A)·h_{t−1} + Δ_t·B_t·u_t, y_t = C_t·h_t + D·u_t,
    out = y·silu(z), with Δ = softplus(delta + delta_bias) when ``delta_softplus``.

    forward(u (batch, dim, L), delta (batch, dim, L), A (dim, N), B, C ((batch, N, L),
    (batch, G, N, L) or (dim, N)), D (dim,), z (batch, dim, L), delta_bias (dim,),
    initial_state (batch, dim, N), seq_idx (batch, L)) → out (batch, dim, L), and the last state
    (batch, dim, N) too when ``return_last_state``; see ``selective_scan`` for the rest."""

    def __init__(self, delta_softplus: bool = True, return_last_state: bool = False,
                 backend: Optional[str] = None):
        super().__init__()
        self.delta_softplus = delta_softplus
        self.return_last_state = return_last_state
        self.backend = backend

    def forward(self, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                delta_bias: Optional[torch.Tensor] = None,
                initial_state: Optional[torch.Tensor] = None,
                seq_idx: Optional[torch.Tensor] = None):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, self.delta_softplus,
                              self.return_last_state, initial_state, backend=self.backend,
                              seq_idx=seq_idx)

    def extra_repr(self) -> str:
        return (f"delta_softplus={self.delta_softplus}, "
                f"return_last_state={self.return_last_state}, backend={self.backend!r}")
