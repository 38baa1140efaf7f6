"""``CausalConv1d``: the nn.Module wrapper of ``causal_conv1d`` (weight, bias, settings + one op
call; ``step`` for streaming with ``causal_conv1d_update``)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .op import ACTIVATIONS, causal_conv1d, causal_conv1d_update


class CausalConv1d(nn.Module):
    """Depthwise causal convolution: ``nn.Conv1d(dim, dim, width, groups=dim, padding=width − 1)``
    keeping the first L outputs, then ``activation`` (None or "silu").

    forward(x (batch, dim, L), seq_idx=None) → (batch, dim, L); step(x (batch, dim), state
    (batch, dim, S ≥ width − 1), rolled in place) → (batch, dim). Parameters weight (dim, width)
    and bias (dim,) (with ``bias=True``), initialized as ``nn.Conv1d``'s."""

    def __init__(self, dim: int, width: int = 4, bias: bool = True, activation: Optional[str] = None,
                 backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if dim < 1 or width < 1:
            raise ValueError(f"dim and width must be >= 1, got dim={dim} width={width}")
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(dim, width, **factory))
        self.bias = nn.Parameter(torch.empty(dim, **factory)) if bias else None
        self.activation = activation
        self.backend = backend
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(−1/√width, 1/√width) for weight and bias: ``nn.Conv1d``'s default (fan-in = width)."""
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, seq_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        return causal_conv1d(x, self.weight, self.bias, self.activation, backend=self.backend,
                             seq_idx=seq_idx)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return causal_conv1d_update(x, state, self.weight, self.bias, self.activation,
                                    backend=self.backend)

    def extra_repr(self) -> str:
        dim, width = self.weight.shape
        return (f"dim={dim}, width={width}, bias={self.bias is not None}, "
                f"activation={self.activation!r}, backend={self.backend!r}")
