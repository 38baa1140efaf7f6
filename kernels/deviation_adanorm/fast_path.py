"""The deviation map's fast path (backend "fast"): PyTorch ops, with a memory-lean closed-form
backward.

Forward is a handful of ATen calls (subtract, var_mean, rsqrt, addcmul) with the statistics in fp32
(fp64 for fp64 inputs). The R-sized elementwise work runs in the input dtype: x̂ = d·ρ is rounded
to it once and scale, shift, grad_out are never copied to fp32 (CPU kernels for mixed-dtype
operands are 3-8x slower than same-dtype ones; the sum over regions still accumulates in fp32);
backward uses the closed-form gradient below instead of replaying an autograd graph, from the
inputs plus the per-row mean and 1/std that forward returns (B·N·2 floats).

Gradient, per row (b, i) with d = v_i − v_0, μ = mean(d), ρ = 1/sqrt(var(d) + ε), x̂ = d·ρ and
g_x = Σ_r ∂L/∂out_r · scale_r:

    ∂L/∂scale_r = ∂L/∂out_r · x̂,   ∂L/∂shift_r = ∂L/∂out_r,
    ∂L/∂d = ρ·g_x − ρ³·(d − μ)·mean_g(g_x·d),
    ∂L/∂v_i = ∂L/∂d_i (i ≥ 1),     ∂L/∂v_0 = −Σ_i ∂L/∂d_i.
"""
from __future__ import annotations

import torch

FAST_PATH = "torch"


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _deviation(v: torch.Tensor) -> torch.Tensor:
    v = v.to(_compute_dtype(v))
    return v[:, 1:, :] - v[:, :1, :]


def adanorm_forward_fast(v, scale, shift, eps):
    """Returns (out (B, N, R, G) in v's dtype, mean (B, N), rstd (B, N)) with fp32/fp64 statistics."""
    deviation = _deviation(v)
    variance, mean = torch.var_mean(deviation, dim=-1, correction=0, keepdim=True)
    rstd = torch.rsqrt(variance + eps)
    normalized = (deviation * rstd).to(scale.dtype).unsqueeze(2)
    out = torch.addcmul(shift, normalized, scale)
    return out, mean.squeeze(-1), rstd.squeeze(-1)


def adanorm_backward_fast(grad_out, v, scale, mean, rstd):
    """Returns (grad_v, grad_scale) in the inputs' dtype (grad_shift is grad_out itself)."""
    compute = _compute_dtype(v)
    deviation = _deviation(v)
    mean = mean.to(compute).unsqueeze(-1)
    rstd = rstd.to(compute).unsqueeze(-1)
    grad_scale = grad_out * (deviation * rstd).to(scale.dtype).unsqueeze(2)
    grad_normalized = (grad_out * scale).sum(dim=2, dtype=compute)
    dot = (grad_normalized * deviation).mean(dim=-1, keepdim=True)
    grad_deviation = rstd * grad_normalized - rstd.pow(3) * dot * (deviation - mean)
    grad_v = torch.cat([-grad_deviation.sum(dim=1, keepdim=True), grad_deviation], dim=1)
    return grad_v.to(v.dtype), grad_scale
