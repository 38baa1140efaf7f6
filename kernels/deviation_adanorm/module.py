"""``DeviationAdaNorm``: the nn.Module wrapper of ``deviation_adanorm`` (settings + one op call)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .op import deviation_adanorm


class DeviationAdaNorm(nn.Module):
    """Δ = (v_i − v_0)/sqrt(var + ε)·scale + shift for every frame i ≥ 1 and region (paper eq. 2).

    forward(v (B, T, G), scale (B, T−1, R, G), shift (B, T−1, R, G)) → (B, T−1, R, G).
    """

    def __init__(self, eps: float = 1e-5, backend: Optional[str] = None):
        super().__init__()
        self.eps = eps
        self.backend = backend

    def forward(self, v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return deviation_adanorm(v, scale, shift, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, backend={self.backend!r}"
