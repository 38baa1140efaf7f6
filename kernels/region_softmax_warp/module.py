"""``RegionSoftmaxWarp``: the nn.Module wrapper of ``region_softmax_warp`` (β as a setting or a
learned parameter, + one op call)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .op import region_softmax_warp


class RegionSoftmaxWarp(nn.Module):
    """The LMDD-to-decoder step: softmax over λ regions, flow, 3-D warp of F_id, occlusion blend,
    then max(0, m) + β·min(0, m). forward(feature (B or 1, C, S_d, H, W), logits (B, λ, S_d, H, W),
    displacement (B, λ, 3, S_d, H, W), mask (B, 1, S_d, H, W)) → (B, C, S_d, H, W).

    β (articulation intensity) is a float, or a learnable scalar with ``learn_beta=True``."""

    def __init__(self, beta: float = 0.0, learn_beta: bool = False, padding_mode: str = "border",
                 align_corners: bool = False, backend: Optional[str] = None):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(float(beta))) if learn_beta else float(beta)
        self.padding_mode = padding_mode
        self.align_corners = align_corners
        self.backend = backend

    def forward(self, feature: torch.Tensor, logits: torch.Tensor, displacement: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        return region_softmax_warp(feature, logits, displacement, mask, self.beta, self.padding_mode,
                                   self.align_corners, backend=self.backend)

    def extra_repr(self) -> str:
        beta = "learned" if isinstance(self.beta, nn.Parameter) else self.beta
        return (f"beta={beta}, padding_mode={self.padding_mode!r}, "
                f"align_corners={self.align_corners}, backend={self.backend!r}")
