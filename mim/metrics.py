"""Image-quality metrics: PSNR, SSIM and LPIPS (VGG), one value per image.

Images are float tensors ``(B, C, H, W)``; PSNR and SSIM take any channel count, LPIPS takes
``(B, 3, H, W)`` in [0, 1].
"""
import os

import torch
import torch.nn.functional as F
from torch import nn

from mim.losses import check_image_pair, load_safetensors_into, vgg_feature_trunk

LPIPS_WEIGHTS_ENV = "MIM_LPIPS_WEIGHTS"

# torchvision's VGG-16 configuration (see mim.losses.VGG19_CONFIG for the notation).
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                512, 512, 512, "M", 512, 512, 512, "M")
# relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's vgg16().features.
VGG16_TAPS = (3, 8, 15, 22, 29)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's ScalingLayer: inputs in [-1, 1] become (x - shift) / scale.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(pred, target, data_range):
    for name, images in (("pred", pred), ("target", target)):
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"{name} must be a floating-point (B, C, H, W) tensor, got shape "
                f"{tuple(images.shape)} and dtype {images.dtype}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")


def _working_dtype(pred, target):
    return torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)


def psnr(pred, target, data_range=1.0):
    """Peak signal-to-noise ratio in dB per image, ``(B,)``:
    ``10 * log10(data_range^2 / MSE)`` with the MSE over channels and pixels; ``inf`` where the
    images are equal."""
    _check_pair(pred, target, data_range)
    dtype = _working_dtype(pred, target)
    mse = (pred.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(dtype, device):
    offsets = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    window = torch.exp(-offsets.pow(2) / (2 * SSIM_SIGMA ** 2))
    return window / window.sum()


def ssim(pred, target, data_range=1.0):
    """Structural similarity per image, ``(B,)`` (Wang et al. 2004).

    Local statistics use an 11x11 Gaussian window (sigma 1.5) with VALID padding: the SSIM map
    covers only the ``(H - 10) x (W - 10)`` positions where the window fits, so H and W must be at
    least 11. Constants ``C1 = (0.01 * data_range)^2``, ``C2 = (0.03 * data_range)^2``; the map is
    computed per channel and averaged over positions and channels. Computed in at least float32.
    """
    _check_pair(pred, target, data_range)
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"pred must be at least {SSIM_WINDOW}x{SSIM_WINDOW} for SSIM's {SSIM_WINDOW}x"
            f"{SSIM_WINDOW} window, got {tuple(pred.shape[-2:])}")
    dtype = _working_dtype(pred, target)
    x = pred.to(dtype)
    y = target.to(dtype)
    channels = x.shape[1]
    window = _gaussian_window(dtype, x.device)
    rows = window.view(1, 1, SSIM_WINDOW, 1).expand(channels, 1, SSIM_WINDOW, 1)
    cols = window.view(1, 1, 1, SSIM_WINDOW).expand(channels, 1, 1, SSIM_WINDOW)

    def local_mean(images):
        return F.conv2d(F.conv2d(images, rows, groups=channels), cols, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x.pow(2)
    var_y = local_mean(y * y) - mu_y.pow(2)
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


class LPIPS(nn.Module):
    """LPIPS distance with the VGG-16 network (Zhang et al. 2018): ``forward(pred, target)`` gives
    ``(B,)`` distances.

    Images in [0, 1] are mapped to [-1, 1], then through LPIPS's scaling layer
    ``(x - shift) / scale`` (shift -0.030, -0.088, -0.188; scale 0.458, 0.448, 0.450), and the
    VGG-16 trunk. At relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 each feature vector is divided
    by its channel norm (+1e-10); the squared difference of the two images' normalized features
    goes through the 1x1 head ``lin{k}`` (weight ``(1, C_k, 1, 1)``, no bias), is averaged over
    positions and summed over the five layers. H and W must be at least 16.

    All weights come from ONE safetensors file, ``weights_path`` or else the environment variable
    ``MIM_LPIPS_WEIGHTS``, with keys ``features.N.weight``/``features.N.bias`` (torchvision's
    vgg16 layout, the 13 convs) and ``lin0.weight`` ... ``lin4.weight``. LPIPS is meaningless with
    untrained weights, so without a file the constructor raises ``ValueError`` (callers skip
    LPIPS then); a missing file raises ``FileNotFoundError``, a mismatched one ``ValueError``.
    """

    def __init__(self, weights_path=None):
        super().__init__()
        if weights_path is None:
            weights_path = os.environ.get(LPIPS_WEIGHTS_ENV) or None
        if weights_path is None:
            raise ValueError(
                "LPIPS needs pretrained weights: pass weights_path= or set "
                f"{LPIPS_WEIGHTS_ENV} to a safetensors file holding the VGG-16 trunk "
                "(features.N.weight/bias) and the linear heads lin0.weight ... lin4.weight")
        self.features = vgg_feature_trunk(VGG16_CONFIG)
        for k, channels in enumerate(LPIPS_CHANNELS):
            self.add_module(f"lin{k}", nn.Conv2d(channels, 1, kernel_size=1, bias=False))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        load_safetensors_into(self, weights_path)
        self.requires_grad_(False)
        self.eval()

    def _normalized_features(self, images):
        x = (images * 2 - 1 - self.shift) / self.scale
        features = []
        for index, layer in enumerate(self.features[: VGG16_TAPS[-1] + 1]):
            x = layer(x)
            if index in VGG16_TAPS:
                norm = x.pow(2).sum(dim=1, keepdim=True).sqrt()
                features.append(x / (norm + 1e-10))
        return features

    def forward(self, pred, target):
        check_image_pair(pred, target)
        if min(pred.shape[-2:]) < 16:
            raise ValueError(f"pred must be at least 16x16 for LPIPS, got {tuple(pred.shape[-2:])}")
        distance = pred.new_zeros(pred.shape[0])
        pairs = zip(self._normalized_features(pred), self._normalized_features(target))
        for k, (pred_feature, target_feature) in enumerate(pairs):
            head = getattr(self, f"lin{k}")
            distance = distance + head((pred_feature - target_feature).pow(2)).mean(dim=(1, 2, 3))
        return distance
