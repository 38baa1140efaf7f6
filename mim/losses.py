"""Stage-1 losses (paper §III-A, eq. 3): the multi-resolution perceptual loss L_per, the
multi-scale patch discriminator with its adversarial losses L_adv^G / L_discr and feature
matching, the threshold mask loss L_pg, and the weighted total.

Images are float tensors ``(B, 3, H, W)`` in [0, 1].
"""
import logging
import os

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

logger = logging.getLogger("mim.losses")

VGG19_WEIGHTS_ENV = "MIM_VGG19_WEIGHTS"

# torchvision's VGG configurations: an int is a 3x3 conv (+ ReLU) with that many output channels,
# "M" a 2x2 max pool. Module indices in the Sequential follow torchvision exactly.
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in torchvision's vgg19().features.
VGG19_TAPS = (1, 6, 11, 20, 29)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_feature_trunk(config):
    """``nn.Sequential`` of 3x3 convs (padding 1) each followed by a ReLU, and 2x2 max pools, built
    from a torchvision VGG configuration, so its state-dict keys are torchvision's ``N.weight`` and
    ``N.bias``."""
    layers = []
    in_channels = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_channels, item, kernel_size=3, padding=1))
            layers.append(nn.ReLU())
            in_channels = item
    return nn.Sequential(*layers)


def check_images(images, name):
    """Raise an error naming ``name`` unless ``images`` is a floating ``(B, 3, H, W)`` tensor."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {images.dtype}")


def check_image_pair(pred, target):
    """Check ``pred`` and ``target`` are images of one shape."""
    check_images(pred, "pred")
    check_images(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}")


def load_safetensors_into(module, path, rename=None):
    """Load ``path`` (a safetensors file) into ``module`` with a strict key and shape check.

    ``rename``, when given, maps the file's key set to the module's before the check (a dict in,
    a dict out). Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the path
    for an unreadable file or one whose keys or shapes differ, listing the missing, unexpected and
    mismatched keys. Returns ``module``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist or is not a file")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"weights file {path!r} is not a readable safetensors file: {error}") from error
    if rename is not None:
        tensors = rename(tensors)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(
        f"{key}: file {tuple(tensors[key].shape)}, expected {tuple(expected[key].shape)}"
        for key in set(expected) & set(tensors)
        if tensors[key].shape != expected[key].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"weights file {path!r} does not match {type(module).__name__}: "
            f"missing keys {missing}, unexpected keys {unexpected}, shape mismatches {mismatched}")
    module.load_state_dict(tensors)
    return module


class VGG19Features(nn.Module):
    """The convolutional trunk of VGG-19, parameter names as torchvision's ``vgg19().features``
    (``features.0.weight`` ... ``features.34.bias``), frozen and in eval mode.

    ``forward(images)`` takes ``(B, 3, H, W)`` images in [0, 1], normalizes them with the ImageNet
    mean and std, and returns the five activations relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
    (channels 64, 128, 256, 512, 512 at H, H/2, H/4, H/8, H/16); layers after relu5_1 hold
    weights for key compatibility but are not run. H and W must be at least 16.
    """

    def __init__(self):
        super().__init__()
        self.features = vgg_feature_trunk(VGG19_CONFIG)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        """Stays in eval mode: the trunk is a fixed feature extractor."""
        return super().train(False)

    def forward(self, images):
        check_images(images, "images")
        if min(images.shape[-2:]) < 16:
            raise ValueError(
                f"images must be at least 16x16 for VGG-19 up to relu5_1, got "
                f"{tuple(images.shape[-2:])}")
        x = (images - self.mean) / self.std
        activations = []
        for index, layer in enumerate(self.features[: VGG19_TAPS[-1] + 1]):
            x = layer(x)
            if index in VGG19_TAPS:
                activations.append(x)
        return activations


def _torchvision_vgg19_keys(tensors):
    # torchvision's vgg19().features.state_dict() has no "features." prefix; its full
    # vgg19().state_dict() adds "classifier.*" keys, which the trunk does not use.
    if tensors and not any(key.startswith("features.") for key in tensors):
        tensors = {f"features.{key}": value for key, value in tensors.items()}
    return {key: value for key, value in tensors.items() if not key.startswith("classifier.")}


def load_vgg19_weights(path):
    """A frozen :class:`VGG19Features` with its weights loaded from the safetensors file ``path``.

    Accepted key layouts: ``features.N.weight`` (torchvision's ``vgg19().state_dict()``, whose
    ``classifier.*`` keys are ignored) or ``N.weight`` (``vgg19().features.state_dict()``). All
    32 trunk tensors must be present with torchvision's shapes; otherwise ``ValueError`` lists the
    missing, unexpected and mismatched keys. A missing file raises ``FileNotFoundError``.
    """
    return load_safetensors_into(VGG19Features(), path, rename=_torchvision_vgg19_keys)


def resize_images(images, scale):
    """Downsample ``images`` by ``scale`` (0 < scale <= 1) with antialiased bilinear interpolation
    (a triangle filter widened by 1/scale, close to area averaging); scale 1 returns the input."""
    if scale == 1:
        return images
    height, width = images.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def _check_scales(scales):
    scales = tuple(float(s) for s in scales)
    if not scales or any(not 0 < s <= 1 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of values in (0, 1], got {scales}")
    return scales


class PerceptualLoss(nn.Module):
    """L_per, the multi-resolution perceptual loss of FOMM/TPSMM: ``forward(pred, target)`` gives
    a scalar.

    Weights: ``weights_path``, else the environment variable ``MIM_VGG19_WEIGHTS``, else none.
    A path that is given (argument or environment) but missing or unreadable is an error.

    ``mode == "vgg19"``: for each scale s, ``pred`` and ``target`` are resized by s
    (:func:`resize_images`) and the loss adds
    ``layer_weight * sum_l mean|phi_l(pred) - phi_l(target)|`` over the five VGG-19 activations
    phi_l (relu1_1 ... relu5_1); target features carry no gradient. Images must be at least 16
    pixels on each side at the smallest scale.

    ``mode == "pixel-pyramid"`` (no weights; one warning is logged at construction): over the same
    pyramid the loss adds ``layer_weight * (mean|p - t| + mean|dx p - dx t| + mean|dy p - dy t|)``,
    where dx, dy are forward differences along width and height: pixel L1 plus image-gradient L1,
    each term weighted like one VGG layer. Images must be at least 2 pixels on each side at the
    smallest scale.
    """

    def __init__(self, weights_path=None, scales=(1, 0.5, 0.25, 0.125), layer_weight=10.0):
        super().__init__()
        self.scales = _check_scales(scales)
        self.layer_weight = float(layer_weight)
        if weights_path is None:
            weights_path = os.environ.get(VGG19_WEIGHTS_ENV) or None
        if weights_path is None:
            self.vgg = None
            self.mode = "pixel-pyramid"
            logger.warning(
                "PerceptualLoss: no VGG-19 weights were given (pass weights_path= or set %s to a "
                "safetensors file of torchvision's vgg19 features); using the pixel-pyramid "
                "fallback instead: L1 on pixels plus L1 on image gradients at scales %s, each "
                "term weighted %g.", VGG19_WEIGHTS_ENV, self.scales, self.layer_weight)
        else:
            self.vgg = load_vgg19_weights(weights_path)
            self.mode = "vgg19"

    def forward(self, pred, target):
        check_image_pair(pred, target)
        smallest = round(min(pred.shape[-2:]) * min(self.scales))
        needed = 16 if self.mode == "vgg19" else 2
        if smallest < needed:
            raise ValueError(
                f"pred is {tuple(pred.shape[-2:])}: at scale {min(self.scales)} it is {smallest} "
                f"pixels per side, and the {self.mode} loss needs at least {needed}")
        total = pred.new_zeros(())
        for scale in self.scales:
            pred_s = resize_images(pred, scale)
            with torch.no_grad():
                target_s = resize_images(target, scale)
            if self.mode == "vgg19":
                with torch.no_grad():
                    target_features = self.vgg(target_s)
                for pred_feature, target_feature in zip(self.vgg(pred_s), target_features):
                    total = total + self.layer_weight * (pred_feature - target_feature).abs().mean()
            else:
                diff = pred_s - target_s
                total = total + self.layer_weight * (
                    diff.abs().mean()
                    + (diff[..., :, 1:] - diff[..., :, :-1]).abs().mean()
                    + (diff[..., 1:, :] - diff[..., :-1, :]).abs().mean())
        return total


class MultiScalePatchDiscriminator(nn.Module):
    """A PatchGAN per image scale.

    At each scale s the images are resized by s (:func:`resize_images`) and passed through
    ``num_layers`` blocks of 4x4 conv (stride 2, padding 1) + LeakyReLU(0.2), with channels
    ``base_channels * 2**i`` capped at 512, then a 4x4 conv (stride 1, padding 1) to one channel of
    patch logits; with ``spectral_norm`` every conv's weight is spectrally normalized. No other
    normalization. Each block halves the size (floor), the head takes one off: a 256x256 input
    gives 15x15 logits at scale 1 with 4 layers.

    ``forward(images)`` returns one ``(features, logits)`` pair per scale: ``features`` is the
    list of the ``num_layers`` block outputs (for feature matching), ``logits`` is
    ``(B, 1, h, w)``.
    """

    def __init__(self, in_channels=3, scales=(1, 0.5), base_channels=64, num_layers=4,
                 spectral_norm=True):
        super().__init__()
        self.scales = _check_scales(scales)
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if base_channels < 1:
            raise ValueError(f"base_channels must be at least 1, got {base_channels}")
        self.in_channels = in_channels
        self.num_layers = num_layers
        norm = _spectral_norm if spectral_norm else (lambda conv: conv)
        self.discriminators = nn.ModuleList()
        for _ in self.scales:
            blocks = nn.ModuleList()
            channels = in_channels
            for i in range(num_layers):
                out_channels = min(base_channels * 2 ** i, 512)
                blocks.append(nn.Sequential(
                    norm(nn.Conv2d(channels, out_channels, kernel_size=4, stride=2, padding=1)),
                    nn.LeakyReLU(0.2)))
                channels = out_channels
            head = norm(nn.Conv2d(channels, 1, kernel_size=4, stride=1, padding=1))
            self.discriminators.append(nn.ModuleDict({"blocks": blocks, "head": head}))

    def forward(self, images):
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"images must have shape (B, {self.in_channels}, H, W), got {tuple(images.shape)}")
        smallest = round(min(images.shape[-2:]) * min(self.scales))
        if smallest // 2 ** self.num_layers < 2:
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} are too small: the smallest scale "
                f"{min(self.scales)} needs at least {2 ** (self.num_layers + 1)} pixels per side "
                f"for {self.num_layers} layers")
        outputs = []
        for scale, discriminator in zip(self.scales, self.discriminators):
            x = resize_images(images, scale)
            features = []
            for block in discriminator["blocks"]:
                x = block(x)
                features.append(x)
            outputs.append((features, discriminator["head"](x)))
        return outputs


def _check_outputs(real_outputs, fake_outputs):
    if not fake_outputs:
        raise ValueError("fake_outputs must hold at least one (features, logits) pair")
    if len(real_outputs) != len(fake_outputs):
        raise ValueError(
            f"real_outputs and fake_outputs must hold one entry per scale each, got "
            f"{len(real_outputs)} and {len(fake_outputs)}")


def _check_kind(kind):
    if kind not in ("lsgan", "hinge"):
        raise ValueError(f"kind must be 'lsgan' or 'hinge', got {kind!r}")


def discriminator_loss(real_outputs, fake_outputs, kind="lsgan"):
    """L_discr: the discriminator's loss, summed over scales.

    ``real_outputs``/``fake_outputs`` are :class:`MultiScalePatchDiscriminator` outputs on real
    images and on generated images (detach those first). Per scale, with patch logits r and f:
    ``lsgan``: ``mean((1 - r)^2) + mean(f^2)``;
    ``hinge``: ``mean(relu(1 - r)) + mean(relu(1 + f))``.
    """
    _check_kind(kind)
    _check_outputs(real_outputs, fake_outputs)
    total = 0
    for (_, real), (_, fake) in zip(real_outputs, fake_outputs):
        if kind == "lsgan":
            total = total + (1 - real).pow(2).mean() + fake.pow(2).mean()
        else:
            total = total + F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return total


def generator_adversarial_loss(fake_outputs, kind="lsgan"):
    """L_adv^G: the generator's adversarial loss, summed over scales. Per scale, with patch
    logits f: ``lsgan``: ``mean((1 - f)^2)``; ``hinge``: ``-mean(f)``."""
    _check_kind(kind)
    _check_outputs(fake_outputs, fake_outputs)
    total = 0
    for _, fake in fake_outputs:
        total = total + ((1 - fake).pow(2).mean() if kind == "lsgan" else -fake.mean())
    return total


def feature_matching_loss(real_outputs, fake_outputs):
    """Mean over all scales and layers of ``mean|D_l(fake) - D_l(real)|`` between the
    discriminator's intermediate features; the real features carry no gradient."""
    _check_outputs(real_outputs, fake_outputs)
    terms = []
    for (real_features, _), (fake_features, _) in zip(real_outputs, fake_outputs):
        if len(real_features) != len(fake_features):
            raise ValueError(
                f"real_outputs and fake_outputs must hold as many feature maps per scale, got "
                f"{len(real_features)} and {len(fake_features)}")
        terms.extend((fake - real.detach()).abs().mean()
                     for real, fake in zip(real_features, fake_features))
    if not terms:
        raise ValueError("real_outputs and fake_outputs hold no feature maps")
    return torch.stack(terms).mean()


def threshold_mask_loss(v_gt, v_dev, tau):
    """L_pg, the threshold mask loss: ``l_mask = mean(|v_gt - v_dev|) > tau``,
    ``L_pg = sqrt(mean((v_gt - v_dev)^2)) * l_mask``.

    ``v_gt`` (the driving frame's own encoded features) and ``v_dev`` (the warped source deviation
    features) are ``(B, C, *spatial)``. With d = v_gt - v_dev:

    - the mask is taken per spatial location: ``m = mean_c |d| > tau`` (the mean over the channel
      axis), binary, with no gradient through it;
    - per sample, the RMS over the masked locations and all channels:
      ``L_b = sqrt(sum(m * d^2) / (C * sum(m)))``, and ``L_b = 0`` when no location is masked
      (its gradient is then zero, not NaN);
    - ``L_pg = mean_b L_b``.

    ``tau`` must be a finite number >= 0. Neither input is detached here: the caller decides
    whether ``v_gt`` carries gradient. Computed in at least float32; returns a scalar.
    """
    if v_gt.shape != v_dev.shape:
        raise ValueError(
            f"v_gt and v_dev must have the same shape, got {tuple(v_gt.shape)} and "
            f"{tuple(v_dev.shape)}")
    if v_gt.ndim < 2:
        raise ValueError(f"v_gt must have shape (B, C, *spatial), got {tuple(v_gt.shape)}")
    tau = float(tau)
    if not tau >= 0 or tau == float("inf"):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    dtype = torch.promote_types(torch.promote_types(v_gt.dtype, v_dev.dtype), torch.float32)
    diff = v_gt.to(dtype) - v_dev.to(dtype)
    channels = diff.shape[1]
    with torch.no_grad():
        mask = (diff.abs().mean(dim=1, keepdim=True) > tau).to(dtype)
    squared = (diff.pow(2) * mask).flatten(1).sum(dim=1)
    count = mask.flatten(1).sum(dim=1) * channels
    mean_squared = squared / count.clamp_min(1)
    positive = mean_squared > 0
    per_sample = torch.where(
        positive, torch.sqrt(torch.where(positive, mean_squared, torch.ones_like(mean_squared))),
        torch.zeros_like(mean_squared))
    return per_sample.mean()


def crop_boxes(images, boxes, size, margin=0.0):
    """Crops of ``images`` (B, C, H, W), one per box of ``boxes`` (B, 4) = (x0, y0, x1, y1) in
    normalized coordinates ([-1, 1] spans the image's pixel edges, x right, y down), each grown
    by ``margin`` times its width/height on every side and resampled bilinearly to
    (size, size): (B, C, size, size), differentiable in ``images``. Outside the image is 0."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if boxes.shape != (images.shape[0], 4):
        raise ValueError(f"boxes must have shape ({images.shape[0]}, 4), got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all() or not ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all():
        raise ValueError("boxes must be finite with x1 > x0 and y1 > y0")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    boxes = boxes.to(images.dtype)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * (1 + 2 * margin)
    theta = torch.zeros(images.shape[0], 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 1, 1] = half[:, 0], half[:, 1]
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, (images.shape[0], images.shape[1], size, size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def total_generator_loss(perceptual, adversarial, mask_loss, alpha):
    """Eq. 3: ``L_total^Stage1 = a1 * L_per + a2 * L_adv^G + a3 * L_pg``, alpha = (a1, a2, a3)."""
    if len(alpha) != 3:
        raise ValueError(f"alpha must hold three weights (a1, a2, a3), got {alpha!r}")
    a1, a2, a3 = alpha
    return a1 * perceptual + a2 * adversarial + a3 * mask_loss
