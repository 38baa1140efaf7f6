"""Source-side encoders of stage 1: the image encoder E (depth stratification, eq. 1, ResNet3D),
the appearance extractor (F_A) and the motion encoder (M)."""

from __future__ import annotations

import torch
from torch import nn

from mim.config import RendererConfig
from mim.models.blocks import DownBlock2d, ResBlock3d, group_norm, maybe_checkpoint, num_halvings


class ImageEncoder(nn.Module):
    """E: image (B, 3, S, S) → F_id (B, C, S_d, H, W) with H = W = volume_size.

    F0 = conv 3×3 and ``log2(S / H)`` down blocks; a 1×1 conv expands it to C·S_d channels,
    viewed as F_m (B, C, S_d, H, W) (the depth axis). Eq. 1: ω_m = σ(FC(mean of F_m over S_d,
    H, W)), one weight per channel C; F_id = ResNet3D(ω_m · F_m).
    """

    def __init__(self, config: RendererConfig):
        super().__init__()
        self.channels = config.feature_channels
        self.depth_layers = config.depth_layers
        width = config.encoder_channels
        layers = [nn.Conv2d(3, width, 3, padding=1), group_norm(width), nn.SiLU()]
        for _ in range(num_halvings(config.image_size, config.volume_size)):
            layers.append(DownBlock2d(width, min(2 * width, 256)))
            width = min(2 * width, 256)
        self.stem = nn.Sequential(*layers)
        self.expand = nn.Conv2d(width, config.feature_channels * config.depth_layers, 1)
        self.depth_fc = nn.Linear(config.feature_channels, config.feature_channels)
        self.resnet3d = nn.Sequential(*[ResBlock3d(config.feature_channels)
                                        for _ in range(config.resnet3d_blocks)])
        self.checkpoint_activations = config.checkpoint_activations

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f0 = self.stem(image)
        b, _, h, w = f0.shape
        f_m = self.expand(f0).view(b, self.channels, self.depth_layers, h, w)
        omega = torch.sigmoid(self.depth_fc(f_m.mean(dim=(2, 3, 4))))       # eq. 1
        weighted = f_m * omega[:, :, None, None, None]
        return maybe_checkpoint(self.resnet3d, self.checkpoint_activations, weighted)


def down_stack(image_size: int, width: int, stop: int, cap: int):
    """Down blocks from 3 channels at ``image_size`` until the map is ``stop`` pixels wide;
    widths start at ``width`` and double up to ``cap``. Returns (module, output channels)."""
    layers, channels_in, size = [], 3, image_size
    while size > stop:
        layers.append(DownBlock2d(channels_in, width))
        channels_in, width, size = width, min(2 * width, cap), size // 2
    return nn.Sequential(*layers), channels_in


class AppearanceExtractor(nn.Module):
    """Source image → F_A (B, appearance_dim): down blocks to 1/8 resolution, global average
    pooling (position-invariant: identity, not pose), a linear layer."""

    def __init__(self, config: RendererConfig):
        super().__init__()
        self.body, channels = down_stack(config.image_size, config.encoder_channels, 8, 512)
        self.head = nn.Linear(channels, config.appearance_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image).mean(dim=(2, 3)))


class MotionEncoder(nn.Module):
    """A frame → M (B, motion_dim): down blocks to a 4×4 map, flattened (not pooled, so the
    head's position survives) and projected by a linear layer."""

    def __init__(self, config: RendererConfig):
        super().__init__()
        self.body, channels = down_stack(config.image_size, config.motion_channels, 4, 512)
        self.head = nn.Linear(channels * 16, config.motion_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image).flatten(1))
