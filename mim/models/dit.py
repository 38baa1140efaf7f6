"""The Deviation Image Transformer (paper §III-A, eq. 2)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from kernels import DeviationAdaNorm
from mim.config import RendererConfig


def standardize_motion(motion: torch.Tensor, eps: float) -> torch.Tensor:
    """V_nor: each frame's motion feature standardized over its own features (zero mean, unit
    population variance). motion (..., motion_dim) → same shape."""
    mean = motion.mean(dim=-1, keepdim=True)
    var = motion.var(dim=-1, keepdim=True, unbiased=False)
    return (motion - mean) * torch.rsqrt(var + eps)


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(T,) positions → (T, dim) sin/cos features at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device,
                                                        dtype=torch.float32) / max(half, 1))
    angles = positions.float()[:, None] * freqs[None]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return nn.functional.pad(emb, (0, dim - 2 * half))


class DeviationImageTransformer(nn.Module):
    """motion (B, T, motion_dim), frame 0 the source → Δ (B, T − 1, λ, motion_dim).

    Each M is viewed as V (motion_dim / 64, 8, 8) and standardized (V_nor); frames are stacked on
    a time axis and pass n 3-D conv layers (3×3×3 over (frame, 8, 8)) and a transformer over the
    T·64 (frame, 8×8) tokens; a linear head gives k, split into k_sc and k_sh per region and
    feature. Eq. 2 then runs as ``kernels.deviation_adanorm`` with scale = 1 + k_sc, shift =
    k_sh; the head starts at zero, so Δ starts as the plain normalized deviation.
    """

    def __init__(self, config: RendererConfig, backend: Optional[str] = None):
        super().__init__()
        self.motion_dim = config.motion_dim
        self.channels_in = config.motion_dim // 64
        self.regions = config.regions
        self.eps = config.eps
        width = config.dit_channels
        convs = []
        for i in range(config.dit_conv_layers):
            convs += [nn.Conv3d(self.channels_in if i == 0 else width, width, 3, padding=1), nn.GELU()]
        self.convs = nn.Sequential(*convs)
        self.spatial_embedding = nn.Parameter(torch.randn(64, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, config.dit_heads, dim_feedforward=4 * width,
                                           dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, config.dit_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2 * config.regions * self.channels_in)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.adanorm = DeviationAdaNorm(eps=config.eps, backend=backend)

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        b, t, dim = motion.shape
        v_nor = standardize_motion(motion.to(torch.promote_types(motion.dtype, torch.float32)), self.eps)
        x = v_nor.view(b, t, self.channels_in, 8, 8).transpose(1, 2)           # (B, c, T, 8, 8)
        x = self.convs(x)
        width = x.shape[1]
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b, t, 64, width)
        frame_pos = sinusoidal_embedding(torch.arange(t, device=motion.device), width)
        tokens = tokens + self.spatial_embedding[None, None] + frame_pos[None, :, None].to(tokens.dtype)
        tokens = self.norm(self.transformer(tokens.reshape(b, t * 64, width)))
        k = self.head(tokens).view(b, t, 64, 2, self.regions, self.channels_in)
        k = k.permute(0, 1, 3, 4, 5, 2).reshape(b, t, 2, self.regions, dim)    # feature = c·64 + pos
        scale = 1.0 + k[:, 1:, 0]
        shift = k[:, 1:, 1]
        with torch.autocast(motion.device.type, enabled=False):   # eq. 2 in fp32 (k is B·T·λ·G values)
            return self.adanorm(v_nor, scale.to(v_nor.dtype).contiguous(), shift.to(v_nor.dtype).contiguous())
