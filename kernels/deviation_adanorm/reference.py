"""The literal math of the DIT deviation map (paper eq. 2): the ground truth for the tests.

For each batch b, frame i = 1..N and region r (of λ = R regions):

    d_i = V_nor^i − V_nor^0
    Δ[b, i−1, r] = d_i / sqrt(var(d_i) + ε) · k_sc[b, i−1, r] + k_sh[b, i−1, r]

with var the population variance over the G features. Plain PyTorch ops, so autograd gives every
gradient; ``gradcheck`` in float64 proves it in the tests.
"""
from __future__ import annotations

import torch


def deviation_adanorm_reference(v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                                eps: float = 1e-5) -> torch.Tensor:
    """v (B, T, G), scale/shift (B, T−1, R, G) → Δ (B, T−1, R, G); computed in at least float32."""
    compute = torch.promote_types(v.dtype, torch.float32)
    v32, scale32, shift32 = v.to(compute), scale.to(compute), shift.to(compute)
    deviation = v32[:, 1:, :] - v32[:, :1, :]
    variance = deviation.var(dim=-1, unbiased=False, keepdim=True)
    normalized = deviation / torch.sqrt(variance + eps)
    out = normalized.unsqueeze(2) * scale32 + shift32
    return out.to(v.dtype)
