"""The Latent Motion Deviation Decoder and the image decoder U (paper §III-A)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mim.config import RendererConfig
from mim.models.blocks import ResBlock2d, UpBlock2d, group_norm, maybe_checkpoint, num_halvings
from mim.models.dit import standardize_motion


class _Hourglass3d(nn.Module):
    """conv → (down (1, 2, 2) → conv → up) + skip, at S_d × H × W with a half-resolution middle."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.inp = nn.Sequential(nn.Conv3d(in_channels, width, 3, padding=1), group_norm(width), nn.SiLU())
        self.mid = nn.Sequential(nn.AvgPool3d((1, 2, 2)), nn.Conv3d(width, 2 * width, 3, padding=1),
                                 group_norm(2 * width), nn.SiLU(),
                                 nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear"),
                                 nn.Conv3d(2 * width, width, 3, padding=1), group_norm(width))
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.inp(x)
        return self.act(skip + self.mid(skip))


class LatentMotionDeviationDecoder(nn.Module):
    """Δ (K, λ, motion_dim) of K frames and F_id (K, C, S_d, H, W) → region logits
    (K, λ, S_d, H, W), per-region displacement (K, λ, 3, S_d, H, W) in normalized (x, y, z) units,
    occlusion mask (K, 1, S_d, H, W) in (0, 1).

    Δ is viewed as λ·motion_dim/64 maps of 8×8, convolved, upsampled to H × W and projected to
    ``lmdd_motion_channels`` channels per depth layer; concatenated with F_id (the depth-aware
    decoding of the paper), a 3-D hourglass and 3×3×3 heads produce the outputs. The logit and
    displacement heads start at zero (uniform regions, identity warp), the mask near 1.
    """

    def __init__(self, config: RendererConfig):
        super().__init__()
        self.regions = config.regions
        self.depth_layers = config.depth_layers
        self.volume_size = config.volume_size
        self.motion_channels = config.lmdd_motion_channels
        maps = config.regions * (config.motion_dim // 64)
        width = config.lmdd_channels
        self.motion_in = nn.Sequential(nn.Conv2d(maps, width, 3, padding=1), nn.SiLU())
        self.motion_out = nn.Conv2d(width, config.lmdd_motion_channels * config.depth_layers, 3, padding=1)
        self.hourglass = _Hourglass3d(config.feature_channels + config.lmdd_motion_channels, width)
        self.logits = nn.Conv3d(width, config.regions, 3, padding=1)
        self.displacement = nn.Conv3d(width, 3 * config.regions, 3, padding=1)
        self.mask = nn.Conv3d(width, 1, 3, padding=1)
        for head in (self.logits, self.displacement, self.mask):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        nn.init.constant_(self.mask.bias, 2.0)
        self.checkpoint_activations = config.checkpoint_activations

    def _body(self, deviation: torch.Tensor, feature: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        k = deviation.shape[0]
        maps = deviation.reshape(k, -1, 8, 8)
        m = self.motion_in(maps)
        m = F.interpolate(m, size=(self.volume_size, self.volume_size), mode="bilinear",
                          align_corners=False)
        m = self.motion_out(m).view(k, self.motion_channels, self.depth_layers,
                                    self.volume_size, self.volume_size)
        h = self.hourglass(torch.cat([feature, m], dim=1))
        logits = self.logits(h)
        displacement = self.displacement(h).view(k, self.regions, 3, *h.shape[2:])
        mask = torch.sigmoid(self.mask(h))
        return logits, displacement, mask

    def forward(self, deviation: torch.Tensor, feature: torch.Tensor):
        return maybe_checkpoint(self._body, self.checkpoint_activations, deviation, feature)


class ImageDecoder(nn.Module):
    """U: the warped, activated volume φ_r (K, C, S_d, H, W) → frames (K, 3, S, S) in [0, 1].

    The C·S_d channels are a 2-D map at H × W: conv, two residual blocks, then ``log2(S / H)``
    upsampling blocks (widths halve, at least 32), each followed by a FiLM modulation from F_A
    (zero-initialized: identity at the start), and a 3×3 conv to RGB with a sigmoid.

    With ``motion_film`` (the recipe's ``decoder_motion_film``, not in the paper), the driving
    frames' standardized motion features M (K, motion_dim) modulate every channel (FiLM,
    zero-initialized: identity at the start) after the input block and after each upsampling
    block, the same everywhere in the frame.
    """

    def __init__(self, config: RendererConfig, motion_film: bool = False):
        super().__init__()
        width = config.decoder_channels
        self.inp = nn.Sequential(nn.Conv2d(config.feature_channels * config.depth_layers, width, 3, padding=1),
                                 ResBlock2d(width), ResBlock2d(width))
        self.ups = nn.ModuleList()
        self.films = nn.ModuleList()
        for _ in range(num_halvings(config.image_size, config.volume_size)):
            out = max(width // 2, 32)
            self.ups.append(UpBlock2d(width, out))
            film = nn.Linear(config.appearance_dim, 2 * out)
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
            self.films.append(film)
            width = out
        self.out = nn.Conv2d(width, 3, 3, padding=1)
        self.motion_dim = config.motion_dim
        self.eps = config.eps   # of M's standardization, as in the DIT
        self.motion_films = None
        if motion_film:   # at the volume's resolution, then after each upsampling
            widths = [config.decoder_channels] + [film.out_features // 2 for film in self.films]
            self.motion_films = nn.ModuleList(nn.Linear(config.motion_dim, 2 * w) for w in widths)
            for film in self.motion_films:
                nn.init.zeros_(film.weight)
                nn.init.zeros_(film.bias)
        self.checkpoint_activations = config.checkpoint_activations

    @property
    def needs_motion(self) -> bool:
        return self.motion_films is not None

    @staticmethod
    def _film(x: torch.Tensor, film: nn.Linear, condition: torch.Tensor) -> torch.Tensor:
        gamma, beta = film(condition).chunk(2, dim=1)
        return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]

    def _body(self, volume: torch.Tensor, appearance: torch.Tensor, *motion: torch.Tensor) -> torch.Tensor:
        x = self.inp(volume.flatten(1, 2))
        m = standardize_motion(motion[0], self.eps) if self.motion_films is not None else None
        if m is not None:
            x = self._film(x, self.motion_films[0], m)
        for i, (up, film) in enumerate(zip(self.ups, self.films)):
            x = self._film(up(x), film, appearance)
            if m is not None:
                x = self._film(x, self.motion_films[i + 1], m)
        return torch.sigmoid(self.out(x))

    def forward(self, volume: torch.Tensor, appearance: torch.Tensor,
                motion: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``motion`` (K, motion_dim): required with ``motion_film``, else ignored."""
        if not self.needs_motion:
            return maybe_checkpoint(self._body, self.checkpoint_activations, volume, appearance)
        if motion is None or motion.shape != (volume.shape[0], self.motion_dim):
            shape = None if motion is None else tuple(motion.shape)
            raise ValueError(f"this decoder (recipe.decoder_motion_film) needs the driving "
                             f"motion features ({volume.shape[0]}, {self.motion_dim}), got {shape}")
        return maybe_checkpoint(self._body, self.checkpoint_activations, volume, appearance, motion)
