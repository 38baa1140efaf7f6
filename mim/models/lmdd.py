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

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        skip = self.inp(x)
        if bias is not None:   # (K, width, S_d, 1, 1): the same at every (h, w)
            skip = skip + bias
        return self.act(skip + self.mid(skip))


class LatentMotionDeviationDecoder(nn.Module):
    """Δ (K, λ, motion_dim) of K frames and F_id (K, C, S_d, H, W) → region logits
    (K, λ, S_d, H, W), per-region displacement (K, λ, 3, S_d, H, W) in normalized (x, y, z) units,
    occlusion mask (K, 1, S_d, H, W) in (0, 1), and with ``config.deviation_features`` a
    deviation feature volume (K, C, S_d, H, W) that the renderer adds to φ_r.

    Δ is viewed as λ·motion_dim/64 maps of 8×8, convolved, upsampled to H × W and projected to
    ``lmdd_motion_channels`` channels per depth layer; concatenated with F_id (the depth-aware
    decoding of the paper), a 3-D hourglass and 3×3×3 heads produce the outputs. The logit,
    displacement and feature heads start at zero (uniform regions, identity warp, no added
    features), the mask near 1.

    With ``config.lmdd_global_motion``, Δ of the frame, flattened, also passes a linear layer
    (zero-initialized) whose output is added to the hourglass's first features, the same at every
    (h, w) of a depth layer: the whole motion reaches every voxel, where the 8×8 view carries
    each part of it only as far as the convolutions' reach.
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
        self.global_motion = None
        if config.lmdd_global_motion:
            self.global_motion = nn.Linear(config.regions * config.motion_dim, width * config.depth_layers)
            nn.init.zeros_(self.global_motion.weight)
            nn.init.zeros_(self.global_motion.bias)
        self.logits = nn.Conv3d(width, config.regions, 3, padding=1)
        self.displacement = nn.Conv3d(width, 3 * config.regions, 3, padding=1)
        self.mask = nn.Conv3d(width, 1, 3, padding=1)
        heads = [self.logits, self.displacement, self.mask]
        self.features = None
        if config.deviation_features:
            self.features = nn.Conv3d(width, config.feature_channels, 3, padding=1)
            heads.append(self.features)
        for head in heads:
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
        bias = None
        if self.global_motion is not None:
            bias = self.global_motion(deviation.reshape(k, -1)).view(k, -1, self.depth_layers, 1, 1)
        h = self.hourglass(torch.cat([feature, m], dim=1), bias)
        logits = self.logits(h)
        displacement = self.displacement(h).view(k, self.regions, 3, *h.shape[2:])
        mask = torch.sigmoid(self.mask(h))
        if self.features is None:
            return logits, displacement, mask
        return logits, displacement, mask, self.features(h)

    def forward(self, deviation: torch.Tensor, feature: torch.Tensor):
        return maybe_checkpoint(self._body, self.checkpoint_activations, deviation, feature)


class ImageDecoder(nn.Module):
    """U: the warped, activated volume φ_r (K, C, S_d, H, W) → frames (K, 3, S, S) in [0, 1].

    The C·S_d channels are a 2-D map at H × W: conv, two residual blocks, then ``log2(S / H)``
    upsampling blocks (widths halve, at least 32), each followed by a FiLM modulation from F_A
    (zero-initialized: identity at the start), and a 3×3 conv to RGB with a sigmoid.

    With ``config.decoder_motion``, the driving frames' motion features M (K, motion_dim) also
    enter: standardized, viewed as (motion_dim / 64, 8, 8), two 3×3 convs (the second
    zero-initialized), upsampled bilinearly to H × W and added after the first conv. With
    ``config.decoder_motion_film``, the standardized M modulates every channel (FiLM,
    zero-initialized: identity at the start) after the input block and after each upsampling
    block, the same everywhere in the frame.
    """

    def __init__(self, config: RendererConfig):
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
        self.motion = None
        self.motion_dim = config.motion_dim
        self.eps = config.eps   # of M's standardization, as in the DIT
        if config.decoder_motion:
            first = config.decoder_channels
            self.motion = nn.Sequential(nn.Conv2d(config.motion_dim // 64, first, 3, padding=1), nn.SiLU(),
                                        nn.Conv2d(first, first, 3, padding=1))
            nn.init.zeros_(self.motion[2].weight)
            nn.init.zeros_(self.motion[2].bias)
        self.motion_films = None
        if config.decoder_motion_film:   # at the volume's resolution, then after each upsampling
            widths = [config.decoder_channels] + [film.out_features // 2 for film in self.films]
            self.motion_films = nn.ModuleList(nn.Linear(config.motion_dim, 2 * w) for w in widths)
            for film in self.motion_films:
                nn.init.zeros_(film.weight)
                nn.init.zeros_(film.bias)
        self.checkpoint_activations = config.checkpoint_activations

    @property
    def needs_motion(self) -> bool:
        return self.motion is not None or self.motion_films is not None

    @staticmethod
    def _film(x: torch.Tensor, film: nn.Linear, condition: torch.Tensor) -> torch.Tensor:
        gamma, beta = film(condition).chunk(2, dim=1)
        return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]

    def _motion_map(self, motion: torch.Tensor, size) -> torch.Tensor:
        maps = standardize_motion(motion, self.eps).view(motion.shape[0], -1, 8, 8)
        return F.interpolate(self.motion(maps), size=size, mode="bilinear", align_corners=False)

    def _body(self, volume: torch.Tensor, appearance: torch.Tensor, *motion: torch.Tensor) -> torch.Tensor:
        x = self.inp[0](volume.flatten(1, 2))
        if self.motion is not None:
            x = x + self._motion_map(motion[0], x.shape[-2:])
        x = self.inp[1:](x)
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
        """``motion`` (K, motion_dim): required with ``config.decoder_motion`` or
        ``config.decoder_motion_film``, else ignored."""
        if not self.needs_motion:
            return maybe_checkpoint(self._body, self.checkpoint_activations, volume, appearance)
        if motion is None or motion.shape != (volume.shape[0], self.motion_dim):
            shape = None if motion is None else tuple(motion.shape)
            raise ValueError(f"this decoder (decoder_motion / decoder_motion_film) needs the driving "
                             f"motion features ({volume.shape[0]}, {self.motion_dim}), got {shape}")
        return maybe_checkpoint(self._body, self.checkpoint_activations, volume, appearance, motion)
