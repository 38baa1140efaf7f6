"""Configs as dataclasses: the renderer's shapes, the stage-1 losses and trainer, the stage-2
motion generator and trainer (the paper's settings), and the recipe (what a training recipe adds
outside the paper: :class:`RecipeConfig`).

Four named configs ship: ``tiny`` (64×64 frames, small widths: trains on a CPU in minutes) and
``base`` (256×256, the paper's setting: C = 32, S_d = 16, a 64×64 volume, λ = 10, 768-d motion,
512-d F_A); ``gesture`` and ``gesture-tiny`` are base and tiny on the procedural co-speech
gesture data (``train.procedural: gestures``, docs/gesture.md). A config is saved to and loaded from YAML or JSON (by suffix); unknown keys and
wrong types are errors naming the key. Mappings of earlier forms (flat recipe knobs, no
``motion.prediction``) are brought to the current one by :func:`migrate_config`.

:meth:`Config.validate` runs before any model is built (every load does it, a checkpoint's stored
config included): sizes and widths positive, head counts dividing their widths, learning rates
finite and positive, and :func:`estimate_memory` (the weights plus one frame's activations, a
lower bound) within :func:`machine_memory`; a ValueError names the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

__all__ = ["RendererConfig", "Stage1LossConfig", "Stage1TrainConfig", "MotionConfig", "Stage2TrainConfig",
           "RecipeConfig", "Config", "get_config", "load_config", "save_config", "config_to_dict",
           "config_from_dict", "migrate_config", "CONFIG_NAMES", "RECIPE_NAMES", "FREEZABLE_PARTS",
           "PREDICTIONS", "PROCEDURAL_DATA", "estimate_memory", "machine_memory", "check_memory"]


@dataclass
class RendererConfig:
    """Shapes and widths of the stage-1 renderer (paper §III-A)."""

    image_size: int = 256            # frames are image_size × image_size RGB
    feature_channels: int = 32       # C, channels of each depth layer of F_m / F_id
    depth_layers: int = 16           # S_d, depth layers of the volume
    volume_size: int = 64            # H = W of the volume (image_size / volume_size = 2^k)
    encoder_channels: int = 64       # first conv width of the image encoder
    resnet3d_blocks: int = 6         # 3-D residual blocks after eq. 1's weighting
    appearance_dim: int = 512        # F_A
    motion_dim: int = 768            # M; reshaped to (motion_dim / 64, 8, 8)
    motion_channels: int = 64        # first conv width of the motion encoder
    regions: int = 10                # λ
    dit_conv_layers: int = 2         # n, 3-D conv layers over (frame, 8, 8)
    dit_channels: int = 64
    dit_layers: int = 2              # transformer layers over (frame, 8×8) tokens
    dit_heads: int = 4
    lmdd_channels: int = 64          # hidden width of the LMDD's 3-D hourglass
    lmdd_motion_channels: int = 4    # channels per depth layer that Δ contributes to the LMDD
    decoder_channels: int = 128      # width at the volume resolution; halves per upsampling
    beta: float = 0.2                # β, slope of the activation on negative values
    learn_beta: bool = False
    eps: float = 1e-5                # ε of eq. 2
    padding_mode: str = "border"
    align_corners: bool = False
    render_window: int = 16          # frames per DIT window when rendering a long video
    checkpoint_activations: bool = False  # recompute ResNet3D/LMDD/decoder blocks in backward

    def validate(self) -> None:
        for name in ("image_size", "feature_channels", "depth_layers", "volume_size", "encoder_channels",
                     "appearance_dim", "motion_dim", "motion_channels", "regions", "dit_conv_layers",
                     "dit_channels", "dit_layers", "dit_heads", "lmdd_channels", "lmdd_motion_channels",
                     "decoder_channels", "render_window"):
            _check_int(self, "renderer", name, 1)
        _check_int(self, "renderer", "resnet3d_blocks", 0)
        _check_number(self, "renderer", "beta", 0.0)
        _check_number(self, "renderer", "eps", 0.0, strict=True)
        if self.image_size % self.volume_size or self.image_size < self.volume_size:
            raise ValueError(f"renderer.image_size ({self.image_size}) must be a multiple of "
                             f"renderer.volume_size ({self.volume_size})")
        ratio = self.image_size // self.volume_size
        if ratio & (ratio - 1):
            raise ValueError(f"renderer.image_size / renderer.volume_size must be a power of two, "
                             f"got {ratio}")
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"renderer.image_size must be a power of two >= 8 (the motion encoder "
                             f"halves it down to 4×4), got {self.image_size}")
        if self.volume_size < 2:
            raise ValueError(f"renderer.volume_size must be >= 2 (the LMDD's hourglass halves it), "
                             f"got {self.volume_size}")
        if self.motion_dim % 64:
            raise ValueError(f"renderer.motion_dim must be a multiple of 64 (8×8 tokens), "
                             f"got {self.motion_dim}")
        if self.dit_channels % self.dit_heads:
            raise ValueError(f"renderer.dit_channels ({self.dit_channels}) must be divisible by "
                             f"renderer.dit_heads ({self.dit_heads})")
        if self.padding_mode not in ("border", "zeros"):
            raise ValueError(f"renderer.padding_mode must be 'border' or 'zeros', "
                             f"got {self.padding_mode!r}")


@dataclass
class Stage1LossConfig:
    """Eq. 3: α1·L_per + α2·L_adv^G + α3·L_pg, plus the discriminator's settings."""

    alpha_perceptual: float = 1.0    # α1
    alpha_adversarial: float = 0.1   # α2
    alpha_mask: float = 1.0          # α3
    feature_matching: float = 10.0   # weight of the discriminator feature-matching term
    mask_tau: float = 0.1            # τ of the threshold mask loss
    perceptual_scales: Tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    perceptual_layer_weight: float = 10.0
    vgg19_weights: Optional[str] = None   # safetensors path; else $MIM_VGG19_WEIGHTS; else fallback
    gan_kind: str = "lsgan"
    discriminator_scales: Tuple[float, ...] = (1.0, 0.5)
    discriminator_channels: int = 64
    adversarial_start_step: int = 0  # generator-only warm-up before the GAN terms switch on


@dataclass
class Stage1TrainConfig:
    """The stage-1 trainer: optimizer, batch, data and logging."""

    batch_size: int = 4              # global batch of clips (split across DDP ranks)
    num_driving: int = 2             # N driving frames per clip, a contiguous window
    grad_accumulation: int = 1
    lr: float = 2e-4
    betas: Tuple[float, float] = (0.5, 0.999)
    discriminator_lr: float = 2e-4
    lr_schedule: str = "constant"    # or "cosine": both learning rates decay to lr_min_factor·lr
    lr_min_factor: float = 0.05      # over the run's --steps (resume with the same --steps)
    grad_clip: float = 1.0           # 0 disables
    amp: bool = True                 # bf16 autocast, used on CUDA only
    dtype: str = "float32"           # parameter dtype; float64 for numerical checks (DDP tests)
    seed: int = 0
    train_clips: int = 256           # synthetic data: clips in the training split
    heldout_clips: int = 16
    frames_per_clip: int = 50
    log_every: int = 10
    checkpoint_every: int = 200
    # what --data synthetic renders, for stage 1, stage 2 and evaluation: one of PROCEDURAL_DATA,
    # "heads" (mim.data.synthetic, talking heads) or "gestures" (mim.data.gesture, upper bodies)
    procedural: str = "heads"
    eval_every: int = 0              # 0: evaluate only at the end


PREDICTIONS = ("eps", "v")
PROCEDURAL_DATA = ("heads", "gestures")
FREEZABLE_PARTS = ("image_encoder", "appearance_extractor", "motion_encoder", "dit", "lmdd", "decoder")


@dataclass
class MotionConfig:
    """Stage 2 (paper §III-B): Mamba-g/Mamba-l audio extractors and the motion denoiser ε_θ."""

    window: int = 80                 # motion frames per denoising window
    prev_frames: int = 4             # M̄ of the preceding frames in the condition (zeros at start)
    audio_dim: int = 256             # d_model of the Mamba extractors, size of F_ag and F_al
    global_layers: int = 2           # Mamba-g blocks over the whole clip's log-mel
    local_layers: int = 2            # Mamba-l blocks over each frame's audio slice
    local_context: int = 2           # video frames of audio on each side of a frame for Mamba-l
    d_state: int = 16
    width: int = 512                 # denoiser transformer width
    layers: int = 8
    heads: int = 8
    diffusion_steps: int = 1000
    schedule: str = "cosine"
    sample_steps: int = 50           # DDIM steps at inference
    eta: float = 0.0
    guidance_scale: float = 2.0      # classifier-free guidance on the audio (1 = off)
    condition_drop: float = 0.25     # training-time probability of dropping the audio condition
    # What the transformer's output means: "v" (it is v̂ and ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂,
    # x̂_0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v̂; see docs/architecture.md) or "eps" (it is ε̂ itself).
    # Configs and checkpoints written before the field existed predict ε (migrate_config).
    prediction: str = "v"


@dataclass
class Stage2TrainConfig:
    """The stage-2 trainer: windows of motion features with their audio, from clips encoded by a
    trained stage-1 renderer."""

    batch_size: int = 16             # global batch of windows
    grad_accumulation: int = 1
    lr: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    lr_schedule: str = "cosine"
    lr_min_factor: float = 0.05
    grad_clip: float = 1.0
    amp: bool = True
    dtype: str = "float32"
    seed: int = 0
    loss_weights: Tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)   # eq. 7, eq. 4, eq. 5, eq. 6
    train_clips: int = 256
    heldout_clips: int = 16
    frames_per_clip: int = 100
    log_every: int = 10
    checkpoint_every: int = 500


RECIPE_NAMES = ("paper", "mouth", "custom")


@dataclass
class RecipeConfig:
    """What a training recipe adds to the paper: every knob here is outside the paper's
    equations, and the default (``name: paper``) leaves them all off, so the other sections read
    as the paper alone. The shipped demo's ``mouth`` recipe (tools/train_demo.py; measured in
    docs/experiments.md) sets them: after the paper's stage 1 it warm-starts the motion encoder
    on the procedural labels (``mim train motion-encoder``), then fine-tunes with the source
    encoders frozen, the mouth-crop loss and the mouth read-out, then only the decoder with the
    motion FiLM. ``custom``: knobs set by hand (and what a config written before the recipe
    section existed migrates to when it set any)."""

    name: str = "paper"              # one of RECIPE_NAMES; a label, the knobs below decide
    # The standardized M of the driving frame modulates the decoder's channels (FiLM, zero at the
    # start) after its input block and after each upsampling, the same over the whole frame:
    # the opening of the mouth reaches the pixels wherever the mouth is. Changes the renderer's
    # parameters (a checkpoint trained without it initializes a renderer with it: stage-1 --init).
    decoder_motion_film: bool = False
    # The perceptual loss again on a crop around the mouth (the data's mouth_box, upsampled to
    # mouth_crop pixels), weighted alpha_mouth; 0 turns it off, and data without mouth boxes
    # (a folder of videos) trains without it.
    alpha_mouth: float = 0.0
    mouth_crop: int = 32
    mouth_margin: float = 0.25       # the box grows by this fraction of its size on each side
    # The mouth read-out (the paper's motion is unsupervised): where the data knows each frame's
    # mouth opening (procedural clips), a linear head reads it from the driving frames'
    # standardized M and its squared error, weighted alpha_mouth_open, joins the stage-1 loss,
    # so M is pushed to carry the opening. 0 turns it off; data without the labels trains without it.
    alpha_mouth_open: float = 0.0
    # Renderer parts kept fixed in stage 1 (fine-tuning; the paper trains everything): any of
    # FREEZABLE_PARTS. Their parameters get no gradient and no optimizer state.
    freeze: Tuple[str, ...] = ()


@dataclass
class Config:
    name: str = "base"
    renderer: RendererConfig = field(default_factory=RendererConfig)
    loss: Stage1LossConfig = field(default_factory=Stage1LossConfig)
    train: Stage1TrainConfig = field(default_factory=Stage1TrainConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    stage2: Stage2TrainConfig = field(default_factory=Stage2TrainConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)

    def validate(self) -> "Config":
        """Check every field (types, ranges, divisibility), then refuse a config whose model
        cannot fit in this machine's memory (:func:`estimate_memory`). Raises ValueError naming
        the key."""
        if not isinstance(self.name, str):
            raise ValueError(f"config key name must be a string, got {self.name!r}")
        self.renderer.validate()
        _validate_numbers(self)
        if self.train.batch_size < 1 or self.train.num_driving < 1 or self.train.grad_accumulation < 1:
            raise ValueError("train.batch_size, train.num_driving and train.grad_accumulation "
                             "must be >= 1")
        m = self.motion
        if m.width % m.heads:
            raise ValueError(f"motion.width ({m.width}) must be divisible by motion.heads ({m.heads})")
        if m.schedule not in ("cosine", "linear"):
            raise ValueError(f"motion.schedule must be 'cosine' or 'linear', got {m.schedule!r}")
        if not 1 <= m.sample_steps <= m.diffusion_steps:
            raise ValueError(f"motion.sample_steps must be in [1, motion.diffusion_steps = "
                             f"{m.diffusion_steps}], got {m.sample_steps}")
        if m.window <= m.prev_frames or m.prev_frames < 0:
            raise ValueError(f"motion.window ({m.window}) must exceed motion.prev_frames ({m.prev_frames}) >= 0")
        if m.prediction not in PREDICTIONS:
            raise ValueError(f"motion.prediction must be one of {', '.join(PREDICTIONS)}, "
                             f"got {m.prediction!r}")
        if not 0 <= m.condition_drop < 1:
            raise ValueError(f"motion.condition_drop must be in [0, 1), got {m.condition_drop}")
        for section in ("train", "stage2"):
            t = getattr(self, section)
            if t.lr_schedule not in ("constant", "cosine"):
                raise ValueError(f"{section}.lr_schedule must be 'constant' or 'cosine', got {t.lr_schedule!r}")
            if t.dtype not in ("float32", "float64"):
                raise ValueError(f"{section}.dtype must be 'float32' or 'float64', got {t.dtype!r}")
            if t.batch_size < 1 or t.grad_accumulation < 1:
                raise ValueError(f"{section}.batch_size and {section}.grad_accumulation must be >= 1")
        if len(self.stage2.loss_weights) != 4 or min(self.stage2.loss_weights) < 0:
            raise ValueError("stage2.loss_weights must be 4 non-negative numbers (eqs. 7, 4, 5, 6)")
        if self.stage2.frames_per_clip < self.motion.window:
            raise ValueError(f"stage2.frames_per_clip ({self.stage2.frames_per_clip}) must be >= "
                             f"motion.window ({self.motion.window})")
        recipe = self.recipe
        if recipe.name not in RECIPE_NAMES:
            raise ValueError(f"recipe.name must be one of {', '.join(RECIPE_NAMES)}, got {recipe.name!r}")
        if recipe.name == "paper" and recipe != RecipeConfig():
            changed = [f.name for f in dataclasses.fields(RecipeConfig)
                       if getattr(recipe, f.name) != getattr(RecipeConfig(), f.name)]
            raise ValueError(f"recipe.name is 'paper' (no knob outside the paper) but the recipe sets "
                             f"{', '.join('recipe.' + name for name in changed)}; name the recipe "
                             f"(recipe.name: mouth or custom) or leave those at their defaults")
        unknown = [part for part in recipe.freeze if part not in FREEZABLE_PARTS]
        if unknown or len(set(recipe.freeze)) != len(recipe.freeze):
            raise ValueError(f"recipe.freeze must name distinct renderer parts among "
                             f"{', '.join(FREEZABLE_PARTS)}; got {list(recipe.freeze)}")
        if not isinstance(self.train.procedural, str) or self.train.procedural not in PROCEDURAL_DATA:
            raise ValueError(f"config key train.procedural must be one of {', '.join(PROCEDURAL_DATA)}, "
                             f"got {self.train.procedural!r}")
        if self.loss.gan_kind not in ("lsgan", "hinge"):
            raise ValueError(f"loss.gan_kind must be 'lsgan' or 'hinge', got {self.loss.gan_kind!r}")
        check_memory(self)
        return self


# Widths, sizes and counts of layers above this are refused outright: they keep the memory
# estimate's arithmetic (and any shape built from them) far from overflow.
_MAX_WIDTH = 2 ** 20
_MAX_COUNT = 2 ** 31 - 1


def _check_int(section_obj, section: str, name: str, minimum: int, maximum: int = _MAX_WIDTH) -> None:
    value = getattr(section_obj, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"config key {section}.{name} must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(f"config key {section}.{name} must be in [{minimum}, {maximum}], got {value}")


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(section_obj, section: str, name: str, minimum: Optional[float] = None,
                  strict: bool = False, maximum: Optional[float] = None) -> None:
    """A finite number, >= ``minimum`` (> with ``strict``) and <= ``maximum`` where given."""
    value = getattr(section_obj, name)
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"config key {section}.{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"config key {section}.{name} must be {'>' if strict else '>='} {minimum}, "
                         f"got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"config key {section}.{name} must be <= {maximum}, got {value}")


def _check_numbers(section_obj, section: str, name: str, length: Optional[int], minimum: float,
                   strict: bool, below: Optional[float] = None) -> None:
    """A tuple of finite numbers (``length`` of them, else at least one), each >= ``minimum``
    (> with ``strict``) and < ``below`` where given."""
    values = getattr(section_obj, name)
    count = f"{length}" if length else "one or more"
    ok = isinstance(values, tuple) and (len(values) == length if length else len(values) >= 1)
    ok = ok and all(_is_real(v) and math.isfinite(v) and (v > minimum if strict else v >= minimum)
                    and (below is None or v < below) for v in values)
    if not ok:
        bound = f"{'>' if strict else '>='} {minimum}" + (f" and < {below}" if below is not None else "")
        raise ValueError(f"config key {section}.{name} must be {count} finite numbers {bound}, "
                         f"got {list(values) if isinstance(values, tuple) else values!r}")


def _validate_numbers(config: "Config") -> None:
    """Types and ranges of every numeric field outside the renderer section (which checks its own)."""
    loss, train, motion, stage2 = config.loss, config.train, config.motion, config.stage2
    recipe = config.recipe
    for name in ("alpha_perceptual", "alpha_adversarial", "alpha_mask", "feature_matching",
                 "perceptual_layer_weight"):
        _check_number(loss, "loss", name, 0.0)
    if not isinstance(recipe.name, str):
        raise ValueError(f"config key recipe.name must be a string, got {recipe.name!r}")
    if not isinstance(recipe.decoder_motion_film, bool):
        raise ValueError(f"config key recipe.decoder_motion_film must be true or false, "
                         f"got {recipe.decoder_motion_film!r}")
    for name in ("alpha_mouth", "alpha_mouth_open", "mouth_margin"):
        _check_number(recipe, "recipe", name, 0.0)
    _check_int(recipe, "recipe", "mouth_crop", 8, 4096)
    if not isinstance(recipe.freeze, tuple) or not all(isinstance(part, str) for part in recipe.freeze):
        raise ValueError(f"config key recipe.freeze must be a list of renderer part names, "
                         f"got {recipe.freeze!r}")
    _check_number(loss, "loss", "mask_tau")
    _check_numbers(loss, "loss", "perceptual_scales", None, 0.0, True)
    _check_numbers(loss, "loss", "discriminator_scales", None, 0.0, True)
    _check_int(loss, "loss", "discriminator_channels", 1)
    _check_int(loss, "loss", "adversarial_start_step", 0, _MAX_COUNT)
    if loss.vgg19_weights is not None and not isinstance(loss.vgg19_weights, str):
        raise ValueError(f"config key loss.vgg19_weights must be a path or null, got {loss.vgg19_weights!r}")
    for section, t in (("train", train), ("stage2", stage2)):
        for name in ("batch_size", "grad_accumulation", "train_clips", "frames_per_clip", "log_every"):
            _check_int(t, section, name, 1, _MAX_COUNT)
        for name in ("heldout_clips", "checkpoint_every"):
            _check_int(t, section, name, 0, _MAX_COUNT)
        _check_int(t, section, "seed", 0, 2 ** 63 - 1)
        _check_number(t, section, "lr", 0.0, strict=True)
        _check_number(t, section, "lr_min_factor", 0.0, maximum=1.0)
        _check_number(t, section, "grad_clip", 0.0)
        _check_numbers(t, section, "betas", 2, 0.0, False, below=1.0)
        for name in ("lr_schedule", "dtype"):
            if not isinstance(getattr(t, name), str):
                raise ValueError(f"config key {section}.{name} must be a string, got {getattr(t, name)!r}")
    _check_int(train, "train", "num_driving", 1, _MAX_COUNT)
    _check_int(train, "train", "eval_every", 0, _MAX_COUNT)
    _check_number(train, "train", "discriminator_lr", 0.0, strict=True)
    if train.frames_per_clip <= train.num_driving:
        raise ValueError(f"train.frames_per_clip ({train.frames_per_clip}) must exceed train.num_driving "
                         f"({train.num_driving}): a source frame and the driving window")
    _check_numbers(stage2, "stage2", "loss_weights", 4, 0.0, False)
    for name in ("window", "audio_dim", "d_state", "width", "heads"):
        _check_int(motion, "motion", name, 1)
    for name in ("prev_frames", "global_layers", "local_layers", "local_context", "layers"):
        _check_int(motion, "motion", name, 0)
    _check_int(motion, "motion", "diffusion_steps", 1, 10 ** 6)
    _check_int(motion, "motion", "sample_steps", 1, 10 ** 6)
    _check_number(motion, "motion", "eta", 0.0)
    _check_number(motion, "motion", "guidance_scale")
    _check_number(motion, "motion", "condition_drop")
    for name in ("schedule", "prediction"):
        if not isinstance(getattr(motion, name), str):
            raise ValueError(f"config key motion.{name} must be a string, got {getattr(motion, name)!r}")


def _conv(inputs: int, outputs: int, taps: int) -> int:
    return inputs * outputs * taps + outputs


def _down_stack(size: int, width: int, stop: int, cap: int) -> Tuple[int, int]:
    """(parameters, output channels) of mim.models.encoders.down_stack."""
    count, channels = 0, 3
    while size > stop:
        count += _conv(channels, width, 9)
        channels, width, size = width, min(2 * width, cap), size // 2
    return count, channels


def _renderer_parameters(r: RendererConfig, motion_film: bool) -> int:
    """The renderer's parameter count, layer by layer as mim.models builds it (norms and biases
    of norms left out: a few per cent at most); ``motion_film``: the recipe's decoder FiLM."""
    halvings = (r.image_size // r.volume_size).bit_length() - 1
    volume = r.feature_channels * r.depth_layers
    width, count = r.encoder_channels, _conv(3, r.encoder_channels, 9)
    for _ in range(halvings):                                   # E: stem, expand, ResNet3D
        count += _conv(width, min(2 * width, 256), 9)
        width = min(2 * width, 256)
    count += _conv(width, volume, 1) + _conv(r.feature_channels, r.feature_channels, 1)
    count += 2 * r.resnet3d_blocks * _conv(r.feature_channels, r.feature_channels, 27)
    body, channels = _down_stack(r.image_size, r.encoder_channels, 8, 512)   # appearance
    count += body + _conv(channels, r.appearance_dim, 1)
    body, channels = _down_stack(r.image_size, r.motion_channels, 4, 512)    # motion encoder
    count += body + _conv(16 * channels, r.motion_dim, 1)
    maps, d = r.motion_dim // 64, r.dit_channels                             # DIT
    count += sum(_conv(maps if i == 0 else d, d, 27) for i in range(r.dit_conv_layers))
    count += r.dit_layers * 12 * d * d + 64 * d + _conv(d, 2 * r.regions * maps, 1)
    l = r.lmdd_channels                                                     # LMDD
    count += _conv(r.regions * maps, l, 9) + _conv(l, r.lmdd_motion_channels * r.depth_layers, 9)
    count += (_conv(r.feature_channels + r.lmdd_motion_channels, l, 27) + _conv(l, 2 * l, 27)
              + _conv(2 * l, l, 27) + _conv(l, 4 * r.regions + 1, 27))
    width = r.decoder_channels                                              # decoder
    count += _conv(volume, width, 9) + 4 * _conv(width, width, 9)
    widths = [width]
    for _ in range(halvings):
        out = max(width // 2, 32)
        count += _conv(width, out, 9) + _conv(r.appearance_dim, 2 * out, 1)
        width = out
        widths.append(out)
    count += _conv(width, 3, 9)
    if motion_film:
        count += sum(_conv(r.motion_dim, 2 * w, 1) for w in widths)
    return count


def _motion_parameters(m: MotionConfig, motion_dim: int, appearance_dim: int) -> int:
    """The motion generator's parameter count: two Mamba stacks (about 6·d² + 6·d·d_state per
    block at expand 2) and the denoiser's transformer (12·width² per layer) with its inputs."""
    a, w = m.audio_dim, m.width
    mamba = (m.global_layers + m.local_layers) * (6 * a * a + 6 * a * m.d_state + 16 * a)
    inputs = 2 * _conv(80, a, 1) + 2 * _conv(w, w, 1) + 2 * _conv(a, w, 1) + _conv(appearance_dim, w, 1)
    inputs += 2 * _conv(motion_dim, w, 1) + _conv(w, motion_dim, 1) + (m.window + m.prev_frames) * w
    return mamba + inputs + m.layers * 12 * w * w + 4 * m.diffusion_steps


def _frame_activations(r: RendererConfig) -> Tuple[int, int]:
    """Elements of the largest tensors one frame's forward holds: (the image-sized maps of the
    encoders and decoder, the feature volume with the LMDD's hourglass and heads plus the
    decoder's input at the volume's resolution)."""
    pixels, voxels = r.image_size ** 2, r.depth_layers * r.volume_size ** 2
    image = pixels * (3 + 2 * max(r.encoder_channels, r.motion_channels, 32))
    volume = voxels * (3 * r.feature_channels + 3 * r.lmdd_channels + 4 * r.regions + r.lmdd_motion_channels + 1)
    decoder = r.volume_size ** 2 * (r.feature_channels * r.depth_layers + 2 * r.decoder_channels)
    return image, volume + decoder


def estimate_memory(config: "Config") -> Dict[str, int]:
    """A lower bound on the memory any use of the config needs, in bytes of float32: the weights
    of the renderer and the motion generator (counted layer by layer, within a few per cent of
    the built models) plus the largest activations of one frame's forward pass at batch 1.
    Training needs several times more (gradients, optimizer state, a batch, saved activations).
    Returns ``parameters``, ``image_activations`` and ``volume_activations`` (elements) and
    ``bytes``."""
    r = config.renderer
    parameters = _renderer_parameters(r, config.recipe.decoder_motion_film) + _motion_parameters(config.motion, r.motion_dim, r.appearance_dim)
    image, volume = _frame_activations(r)
    return {"parameters": parameters, "image_activations": image, "volume_activations": volume,
            "bytes": 4 * (parameters + image + volume)}


def machine_memory() -> int:
    """This machine's physical memory in bytes (/proc/meminfo's MemTotal, else sysconf)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(config: "Config") -> None:
    """Raise ValueError, naming the fields that drive the estimate, when
    :func:`estimate_memory` exceeds :func:`machine_memory`."""
    estimate = estimate_memory(config)
    total = machine_memory()
    if estimate["bytes"] > total:
        r, m = config.renderer, config.motion
        drivers = {
            "image_activations": f"renderer.image_size = {r.image_size} (maps of image_size² × "
                                 f"renderer.encoder_channels = {r.encoder_channels} / "
                                 f"motion_channels = {r.motion_channels})",
            "volume_activations": f"renderer.volume_size = {r.volume_size}, depth_layers = {r.depth_layers}, "
                                  f"feature_channels = {r.feature_channels}, lmdd_channels = {r.lmdd_channels}",
            "parameters": f"the widths (renderer.*_channels, renderer.motion_dim = {r.motion_dim}, "
                          f"motion.width = {m.width}, motion.audio_dim = {m.audio_dim}, motion.layers = {m.layers})",
        }
        largest = max(drivers, key=lambda key: estimate[key])
        raise ValueError(
            f"config {config.name!r} needs at least {estimate['bytes'] / 2 ** 30:,.1f} GiB (float32 weights "
            f"and one frame's activations) but this machine has {total / 2 ** 30:,.1f} GiB; most of it "
            f"({4 * estimate[largest] / 2 ** 30:,.1f} GiB) comes from {drivers[largest]}")


def _tiny() -> Config:
    return Config(
        name="tiny",
        renderer=RendererConfig(
            image_size=64, feature_channels=8, depth_layers=4, volume_size=32,
            encoder_channels=32, resnet3d_blocks=2, appearance_dim=64, motion_dim=192,
            motion_channels=32, regions=4, dit_conv_layers=1, dit_channels=32, dit_layers=1,
            dit_heads=2, lmdd_channels=32, lmdd_motion_channels=2, decoder_channels=64,
            render_window=16),
        loss=Stage1LossConfig(alpha_adversarial=0.05, discriminator_channels=32,
                              discriminator_scales=(1.0,), adversarial_start_step=3000,
                              perceptual_scales=(1.0, 0.5, 0.25)),
        train=Stage1TrainConfig(batch_size=8, num_driving=2, lr=1e-3, lr_schedule="cosine", train_clips=128,
                                heldout_clips=8, frames_per_clip=50, log_every=10,
                                checkpoint_every=100),
        motion=MotionConfig(window=25, audio_dim=64, global_layers=1, local_layers=1,
                            d_state=8, width=128, layers=3, heads=4, sample_steps=20),
        stage2=Stage2TrainConfig(batch_size=16, lr=5e-4, train_clips=128, heldout_clips=8,
                                 frames_per_clip=100, checkpoint_every=200),
    )


def _base() -> Config:
    return Config(name="base")


def _gesture() -> Config:
    """The paper's second task (Table II: PATS, 256², 25 fps): base's model on the procedural
    upper bodies of mim.data.gesture."""
    config = _base()
    config.name = "gesture"
    config.train.procedural = "gestures"
    return config


def _gesture_tiny() -> Config:
    """tiny's model (trains on a CPU) on the procedural upper bodies, 64²."""
    config = _tiny()
    config.name = "gesture-tiny"
    config.train.procedural = "gestures"
    return config


_FACTORIES = {"tiny": _tiny, "base": _base, "gesture": _gesture, "gesture-tiny": _gesture_tiny}
CONFIG_NAMES = tuple(_FACTORIES)


def config_to_dict(config: Config) -> Dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _build(cls, data: Dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or 'root'} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    defaults = cls()
    kwargs = {}
    for name, value in data.items():
        default = getattr(defaults, name)
        key = where + name
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key + ".")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"config key {key} must be a list, got {value!r}")
            kwargs[name] = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"config key {key} must be true or false, got {value!r}")
            kwargs[name] = value
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"config key {key} must be an integer, got {value!r}")
            kwargs[name] = value
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or abs(value) > 1e308:
                raise ValueError(f"config key {key} must be a finite number, got {value!r}")
            kwargs[name] = float(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ValueError(f"config key {key} must be a string, got {value!r}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _field_names(cls) -> frozenset:
    return frozenset(f.name for f in dataclasses.fields(cls))


# The recipe's knobs where configs kept them before the recipe section existed (flat fields).
_RECIPE_MOVES = {"renderer": ("decoder_motion_film",),
                 "loss": ("alpha_mouth", "mouth_crop", "mouth_margin", "alpha_mouth_open"),
                 "train": ("freeze",)}


def migrate_config(data: Dict[str, Any]) -> Dict[str, Any]:
    """Turn a config mapping of any earlier form into the current one: the one migration that
    every config file (:func:`config_from_dict`) and every checkpoint's stored config
    (``mim.checkpoint.migrate_checkpoint_metadata``) passes through. A current mapping comes
    back equal. Returns a new mapping; ``data`` is left as it was.

    - A complete ``motion`` section without ``prediction`` (saved before the field existed: a
      checkpoint or a run's config.yaml holds every field) predicts ε: ``prediction: eps``. A
      partial section (hand-written) gets the current default, v.
    - The recipe's knobs at their former places (``renderer.decoder_motion_film``,
      ``loss.alpha_mouth``, ``loss.mouth_crop``, ``loss.mouth_margin``,
      ``loss.alpha_mouth_open``, ``train.freeze``) move into ``recipe``; a recipe without a
      name is named ``custom`` when a moved knob differs from its default (else ``paper``).
    - A complete ``renderer`` section may hold on/off switches of experiments deleted since it
      was saved (docs/experiments.md): off, they built nothing and are dropped; on, the model
      they describe cannot be built any more: ValueError naming them.
    """
    if not isinstance(data, dict):
        raise ValueError(f"config must be a mapping, got {type(data).__name__}")
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    motion = data.get("motion")
    if (isinstance(motion, dict) and "prediction" not in motion
            and set(motion) >= _field_names(MotionConfig) - {"prediction"}):
        motion["prediction"] = "eps"
    recipe = data.get("recipe", {})
    if not isinstance(recipe, dict):
        raise ValueError(f"config section recipe must be a mapping, got {type(recipe).__name__}")
    recipe = dict(recipe)
    defaults, moved_any = RecipeConfig(), False
    for section, names in _RECIPE_MOVES.items():
        old = data.get(section)
        if not isinstance(old, dict):
            continue
        for name in names:
            if name not in old:
                continue
            if name in recipe:
                raise ValueError(f"config sets both {section}.{name} (its place before the recipe "
                                 f"section) and recipe.{name}; keep recipe.{name}")
            recipe[name] = old.pop(name)
            value = tuple(recipe[name]) if isinstance(recipe[name], list) else recipe[name]
            moved_any = moved_any or value != getattr(defaults, name)
    if recipe or "recipe" in data:
        if moved_any and "name" not in recipe:
            recipe["name"] = "custom"
        data["recipe"] = recipe
    renderer = data.get("renderer")
    known = _field_names(RendererConfig)
    if isinstance(renderer, dict) and set(renderer) >= known:
        removed = sorted(key for key in set(renderer) - known if isinstance(renderer[key], bool))
        on = [key for key in removed if renderer[key]]
        if on:
            raise ValueError(f"renderer.{', renderer.'.join(on)}: an experiment removed from this "
                             f"version (docs/experiments.md); a model built with it cannot be built now")
        for key in removed:
            del renderer[key]
    return data


def config_from_dict(data: Dict[str, Any]) -> Config:
    """Build a Config from a mapping of any form (:func:`migrate_config`); a ``name`` of a
    shipped config fills unspecified keys from it."""
    data = migrate_config(data)
    name = data.get("name", "")
    if not isinstance(name, str):
        raise ValueError(f"config key name must be a string, got {name!r}")
    base = _FACTORIES.get(name, _base)()
    merged = _merge(config_to_dict(base), data)
    return _build(Config, merged, "").validate()


def _merge(into: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(into)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def get_config(name: str) -> Config:
    if name not in _FACTORIES:
        raise ValueError(f"unknown config name {name!r}; known: {', '.join(CONFIG_NAMES)}")
    return _FACTORIES[name]().validate()


def load_config(name_or_path: str) -> Config:
    """A shipped config by name (:data:`CONFIG_NAMES`) or a YAML/JSON file by path."""
    if name_or_path in _FACTORIES:
        return get_config(name_or_path)
    if not os.path.isfile(name_or_path):
        raise FileNotFoundError(f"config {name_or_path!r} is neither a known name "
                                f"({', '.join(CONFIG_NAMES)}) nor an existing file")
    with open(name_or_path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        if name_or_path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError
        raise ValueError(f"config file {name_or_path!r} does not parse: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {name_or_path!r} must hold a mapping at its top level")
    return config_from_dict(data)


def save_config(config: Config, path: str) -> None:
    """Write YAML (``.yaml``/``.yml``) or JSON (``.json``), atomically."""
    from mim.io import atomic_output

    data = config_to_dict(config)
    if path.endswith(".json"):
        text = json.dumps(data, indent=2) + "\n"
    elif path.endswith((".yaml", ".yml")):
        import yaml
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise ValueError(f"config path {path!r} must end in .json, .yaml or .yml")
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
