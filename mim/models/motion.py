"""Stage 2 (paper §III-B, Fig. 3): audio → motion features.

Mamba-g reads the whole clip's log-mel and gives one global feature F_ag; Mamba-l reads the audio
slice around each 25 fps video frame and gives a local feature F_al per frame; the denoiser ε_θ, a
transformer over a window of motion-feature frames, predicts the noise added to them under the
condition c = (F_ag, F_al, M̄ of the preceding frames, F_A) and the timestep. ``MotionGenerator``
holds the three, the noise schedule and the motion statistics, samples a clip window by window
and computes the training objective (eqs. 4-7).

Shapes: B clips, L_mel mel frames (100 fps, 80 bins), T video frames, M frames of a window,
D = ``motion_dim`` (the renderer's motion feature size), P = ``config.prev_frames``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kernels import Mamba, causal_conv1d, selective_scan
from mim.audio import MEL_BINS, MEL_PER_VIDEO_FRAME
from mim.config import MotionConfig
from mim.diffusion import (
    LOSS_TERMS,
    NoiseSchedule,
    acceleration_loss,
    ddim_draws,
    ddim_plan,
    ddim_window,
    drop_condition,
    eps_loss,
    motion_mse,
    velocity_loss,
)
from mim.models.dit import sinusoidal_embedding

__all__ = ["MambaGlobalExtractor", "MambaLocalExtractor", "MotionDenoiser", "MotionGenerator",
           "WindowSampling", "attention", "X0_LOSS_MIN_ALPHA_BAR"]

# With ε-prediction, eqs. 4-6 are computed on x̂_0 = predict_x0(x_t, t, ε̂), whose error is the ε
# error times √((1 − ᾱ_t)/ᾱ_t). Only samples with ᾱ_t ≥ this floor (SNR ≥ 1) enter them then, so
# that factor is ≤ 1. (v-prediction needs no floor: see MotionGenerator._predict.)
X0_LOSS_MIN_ALPHA_BAR = 0.5

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_FLASH_MAX_HEAD_DIM = 256


def _check_features(value, name, shape, expected):
    """Raise an error naming ``value`` unless it is a floating-point tensor of shape ``expected``;
    an ``expected`` entry None accepts any size. ``shape`` is the symbolic shape for messages."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, "
                        f"got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.ndim != len(expected) or any(e is not None and s != e
                                          for s, e in zip(value.shape, expected)):
        wanted = tuple("?" if e is None else e for e in expected)
        raise ValueError(f"{name} must have shape {shape} = {wanted}, got {tuple(value.shape)}")


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@functools.lru_cache(maxsize=1)
def _load_flash_attn():
    """flash-attn's ``flash_attn_func``, or None when the package does not import."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def flash_attention_applies(q, k, v) -> bool:
    """flash-attn's limits: CUDA tensors, all float16 or all bfloat16, head dim ≤ 256."""
    return bool(q.is_cuda and q.dtype in _FLASH_DTYPES and k.dtype == q.dtype
                and v.dtype == q.dtype and q.shape[-1] <= _FLASH_MAX_HEAD_DIM)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional multi-head attention softmax(q kᵀ / √d) v.

    q, k, v: ``(B, L, heads, d)`` (flash-attn's layout, what a fused qkv projection gives without
    a copy) → ``(B, L, heads, d)``. Uses flash-attn's ``flash_attn_func`` when the package imports
    and the tensors are CUDA float16/bfloat16 with d ≤ 256 (its limits); otherwise
    ``torch.nn.functional.scaled_dot_product_attention``. flash-attn is looked up only on that
    CUDA path (once; the result is cached).
    """
    if flash_attention_applies(q, k, v):
        flash_attn_func = _load_flash_attn()
        if flash_attn_func is not None:
            return flash_attn_func(q, k, v, dropout_p=0.0, causal=False)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class _MambaBlock(nn.Module):
    """Pre-norm residual Mamba block: x + Mamba(LayerNorm(x)). (B, L, dim) → same."""

    def __init__(self, dim: int, d_state: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state=d_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mamba(self.norm(x))


def _mamba_carrying_state(mamba: Mamba, hidden: torch.Tensor, state):
    """``mamba(hidden)`` for one chunk of a longer sequence: (out (B, l, d_model), next state).

    ``state`` is None before the first chunk, else what the previous chunk returned:
    (the last d_conv − 1 inputs of the causal conv (B, d_inner, d_conv − 1), the SSM state h
    (B, d_inner, N) float32). The conv reads those inputs ahead of the chunk's (its output for
    them is dropped) and the scan starts from h, so chunk after chunk gives what one call over
    the whole sequence gives, while holding only one chunk's activations.
    """
    batch, length, _ = hidden.shape
    xz = torch.matmul(mamba.in_proj.weight, hidden.transpose(1, 2))     # (B, 2·d_inner, l)
    if mamba.in_proj.bias is not None:
        xz = xz + mamba.in_proj.bias.to(xz.dtype)[:, None]
    x, z = xz.chunk(2, dim=1)
    tail, ssm = (x.new_zeros(batch, mamba.d_inner, 0), None) if state is None else state
    x = torch.cat([tail, x], dim=2)                  # the first chunk: zeros before it, as there
    keep = mamba.d_conv - 1
    padded = F.pad(x, (max(keep - x.shape[2], 0), 0))
    next_tail = padded[:, :, padded.shape[2] - keep:]
    x = causal_conv1d(x, mamba.conv1d.weight.squeeze(1), mamba.conv1d.bias, mamba.activation,
                      backend=mamba.backend)[:, :, tail.shape[2]:].contiguous()
    # From here on the same operations as Mamba.forward, so a first chunk holding the whole
    # sequence gives its result bit for bit.
    x_dbl = mamba.x_proj(x.transpose(1, 2).reshape(batch * length, mamba.d_inner))
    dt, B, C = torch.split(x_dbl, [mamba.dt_rank, mamba.d_state, mamba.d_state], dim=-1)
    dt = (mamba.dt_proj.weight @ dt.t()).unflatten(1, (batch, length)).transpose(0, 1)
    B = B.unflatten(0, (batch, length)).transpose(1, 2).contiguous()
    C = C.unflatten(0, (batch, length)).transpose(1, 2).contiguous()
    full = torch.promote_types(mamba.A_log.dtype, torch.float32)
    y, last = selective_scan(x, dt, -torch.exp(mamba.A_log.to(full)), B, C,
                             mamba.D.to(torch.promote_types(mamba.D.dtype, torch.float32)), z=z,
                             delta_bias=mamba.dt_proj.bias.to(torch.promote_types(mamba.dt_proj.bias.dtype,
                                                                                  torch.float32)),
                             delta_softplus=True, return_last_state=True, initial_state=ssm,
                             backend=mamba.backend)
    return mamba.out_proj(y.transpose(1, 2)), (next_tail, last)


class _MambaStack(nn.Module):
    """Linear(80 → audio_dim), ``layers`` Mamba blocks, a final LayerNorm: (N, L, 80) →
    (N, L, audio_dim). Causal: token i depends on mel frames 0 … i only."""

    def __init__(self, config: MotionConfig, layers: int):
        super().__init__()
        self.input = nn.Linear(MEL_BINS, config.audio_dim)
        self.blocks = nn.ModuleList(_MambaBlock(config.audio_dim, config.d_state)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(config.audio_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.input(mel)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_chunk(self, mel: torch.Tensor, states: Optional[list]):
        """:meth:`forward` on one chunk (N, l, 80) of a longer sequence: (out, next states).
        ``states`` is None before the first chunk, else what the previous chunk returned (one
        conv window and SSM state per block, see :func:`_mamba_carrying_state`)."""
        x = self.input(mel)
        states = [None] * len(self.blocks) if states is None else states
        carried = []
        for block, state in zip(self.blocks, states):
            out, state = _mamba_carrying_state(block.mamba, block.norm(x), state)
            x = x + out
            carried.append(state)
        return self.norm(x), carried


class MambaGlobalExtractor(nn.Module):
    """Mamba-g: the whole clip's log-mel ``(B, L_mel, 80)`` → F_ag ``(B, audio_dim)``.

    Linear(80 → audio_dim), ``config.global_layers`` pre-norm residual Mamba blocks, LayerNorm,
    then the mean over the valid mel frames. ``lengths`` ``(B,)`` (integers in [1, L_mel]) gives
    each clip's count of valid frames in a padded batch; the Mamba is causal, so the frames a clip
    keeps never see its padding, and F_ag does not depend on what the padding holds.
    """

    def __init__(self, config: MotionConfig):
        super().__init__()
        self.stack = _MambaStack(config, config.global_layers)

    def forward(self, mel: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        _check_features(mel, "mel", "(B, L_mel, 80)", (None, None, MEL_BINS))
        batch, frames, _ = mel.shape
        if frames < 1:
            raise ValueError("mel must hold at least one mel frame, got L_mel = 0")
        x = self.stack(mel)
        if lengths is None:
            return x.mean(dim=1)
        if (not isinstance(lengths, torch.Tensor) or lengths.dtype == torch.bool
                or lengths.is_floating_point() or lengths.is_complex()):
            raise ValueError(f"lengths must be an integer tensor (B,), got "
                             f"{getattr(lengths, 'dtype', type(lengths).__name__)}")
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape (B,) = ({batch},), "
                             f"got {tuple(lengths.shape)}")
        if int(lengths.min()) < 1 or int(lengths.max()) > frames:
            raise ValueError(f"lengths must lie in [1, L_mel = {frames}], got values in "
                             f"[{int(lengths.min())}, {int(lengths.max())}]")
        lengths = lengths.to(x.device)
        valid = torch.arange(frames, device=x.device)[None, :] < lengths[:, None]   # (B, L_mel)
        total = (x * valid[..., None].to(x.dtype)).sum(dim=1)
        return total / lengths[:, None].to(x.dtype)

    def forward_chunks(self, chunks: Iterable[torch.Tensor]) -> torch.Tensor:
        """F_ag ``(B, audio_dim)`` of a clip whose log-mel comes as consecutive chunks
        ``(B, l_k, 80)`` in time order: what :meth:`forward` gives on their concatenation
        (without ``lengths``), holding one chunk's activations at a time. Each Mamba block's conv
        window and SSM state are carried from chunk to chunk, and the mean is a running sum, so
        memory does not grow with the clip's length (inference: ``mim animate``)."""
        total, frames, states, batch = None, 0, None, None
        for index, chunk in enumerate(chunks):
            _check_features(chunk, f"mel chunk {index}", "(B, l, 80)", (batch, None, MEL_BINS))
            if chunk.shape[1] < 1:
                raise ValueError(f"mel chunk {index} holds no mel frame (l = 0)")
            batch = chunk.shape[0]
            x, states = self.stack.forward_chunk(chunk, states)
            total = x.sum(dim=1) if total is None else total + x.sum(dim=1)
            frames += chunk.shape[1]
        if total is None:
            raise ValueError("chunks yielded no mel chunk: the clip needs at least one mel frame")
        return total / frames


class MambaLocalExtractor(nn.Module):
    """Mamba-l: per-frame audio slices ``(B, T, W, 80)`` → F_al ``(B, T, audio_dim)``.

    W = 4·(2·``local_context`` + 1) mel frames around each video frame
    (``mim.audio.AudioFeatures.local_windows``). The B·T slices run independently through
    Linear(80 → audio_dim), ``config.local_layers`` pre-norm residual Mamba blocks and a
    LayerNorm. A frame's feature is the slice's **last token**: the Mamba is causal, so only the
    last token has read the whole slice (a mean would mix in tokens that saw only its oldest mel
    frames); the selective state decides what of the earlier frames it keeps.
    """

    def __init__(self, config: MotionConfig):
        super().__init__()
        self.slice_frames = MEL_PER_VIDEO_FRAME * (2 * config.local_context + 1)
        self.stack = _MambaStack(config, config.local_layers)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        _check_features(windows, "local_windows", "(B, T, 4·(2·local_context + 1), 80)",
                        (None, None, self.slice_frames, MEL_BINS))
        batch, frames = windows.shape[:2]
        if frames < 1:
            raise ValueError("local_windows must hold at least one video frame, got T = 0")
        x = self.stack(windows.reshape(batch * frames, self.slice_frames, MEL_BINS))
        return x[:, -1].reshape(batch, frames, -1)


class _SelfAttention(nn.Module):
    """Multi-head self-attention through :func:`attention`: (B, L, width) → same."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).unbind(2)
        return self.out(attention(q, k, v).reshape(batch, length, width))


class _TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) (4× width, GELU)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(width)
        self.attn = _SelfAttention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class MotionDenoiser(nn.Module):
    """ε_θ: x_t ``(B, M, motion_dim)`` (normalized motion features), t ``(B,)`` → ε̂, same shape.

    Condition (keyword tensors): ``audio_global`` F_ag ``(B, audio_dim)``, ``audio_local`` F_al
    ``(B, M, audio_dim)``, ``prev_motion`` ``(B, prev_frames, motion_dim)`` (normalized, zeros
    before the clip's start), ``appearance`` F_A ``(B, appearance_dim)``.

    Tokens, in order: the timestep (sinusoidal embedding → MLP), F_ag, F_A, the ``prev_frames``
    preceding frames (with their own learned positions), then the M frames, each
    Linear(x_t) + Linear(F_al) + a learned position (M ≤ ``config.window``). A pre-norm transformer
    (``layers`` blocks, ``heads`` heads, ``width``) attends over all of them in both directions;
    a final LayerNorm and a zero-initialized Linear(width → motion_dim) read the frame tokens, so
    ε̂ = 0 at initialisation.
    """

    def __init__(self, config: MotionConfig, motion_dim: int, appearance_dim: int):
        super().__init__()
        _check_positive_int(motion_dim, "motion_dim")
        _check_positive_int(appearance_dim, "appearance_dim")
        if config.width % config.heads:
            raise ValueError(f"config.width ({config.width}) must be divisible by config.heads "
                             f"({config.heads})")
        width = config.width
        self.width = width
        self.window = config.window
        self.prev_frames = config.prev_frames
        self.audio_dim = config.audio_dim
        self.motion_dim = motion_dim
        self.appearance_dim = appearance_dim
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.global_in = nn.Linear(config.audio_dim, width)
        self.appearance_in = nn.Linear(appearance_dim, width)
        self.prev_in = nn.Linear(motion_dim, width)
        self.prev_position = nn.Parameter(torch.randn(config.prev_frames, width) * 0.02)
        self.motion_in = nn.Linear(motion_dim, width)
        self.local_in = nn.Linear(config.audio_dim, width)
        self.frame_position = nn.Parameter(torch.randn(config.window, width) * 0.02)
        self.blocks = nn.ModuleList(_TransformerBlock(width, config.heads)
                                    for _ in range(config.layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, motion_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _check_inputs(self, x_t, t, audio_global, audio_local, prev_motion, appearance):
        _check_features(x_t, "x_t", "(B, M, motion_dim)", (None, None, self.motion_dim))
        batch, frames, _ = x_t.shape
        if not 1 <= frames <= self.window:
            raise ValueError(f"x_t must have between 1 and config.window = {self.window} frames "
                             f"(M), got M = {frames}")
        if (not isinstance(t, torch.Tensor) or t.dtype == torch.bool or t.is_floating_point()
                or t.is_complex()):
            raise ValueError(f"t must be an integer tensor (B,), got "
                             f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.shape != (batch,):
            raise ValueError(f"t must have shape (B,) = ({batch},), got {tuple(t.shape)}")
        _check_features(audio_global, "audio_global", "(B, audio_dim)", (batch, self.audio_dim))
        _check_features(audio_local, "audio_local", "(B, M, audio_dim)",
                        (batch, frames, self.audio_dim))
        _check_features(prev_motion, "prev_motion", "(B, prev_frames, motion_dim)",
                        (batch, self.prev_frames, self.motion_dim))
        _check_features(appearance, "appearance", "(B, appearance_dim)",
                        (batch, self.appearance_dim))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, audio_global: torch.Tensor,
                audio_local: torch.Tensor, prev_motion: torch.Tensor,
                appearance: torch.Tensor) -> torch.Tensor:
        self._check_inputs(x_t, t, audio_global, audio_local, prev_motion, appearance)
        frames = x_t.shape[1]
        time = self.time_mlp(sinusoidal_embedding(t, self.width).to(x_t.dtype))
        tokens = torch.cat([
            time[:, None],
            self.global_in(audio_global)[:, None],
            self.appearance_in(appearance)[:, None],
            self.prev_in(prev_motion) + self.prev_position,
            self.motion_in(x_t) + self.local_in(audio_local) + self.frame_position[:frames],
        ], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, -frames:]))


class MotionGenerator(nn.Module):
    """Stage 2: Mamba-g (``mamba_g``), Mamba-l (``mamba_l``), ε_θ (``denoiser``), the noise
    schedule (``schedule``, ``NoiseSchedule(config.diffusion_steps, config.schedule)``) and the
    per-feature motion statistics (buffers ``motion_mean``, ``motion_std`` ``(motion_dim,)``,
    0 and 1 until the trainer sets them from data; ``motion_std`` must be positive).

    The diffusion runs on normalized motion x = (M_D − motion_mean) / motion_std.
    """

    def __init__(self, config: MotionConfig, motion_dim: int, appearance_dim: int):
        super().__init__()
        self.config = config
        self.motion_dim = motion_dim
        self.appearance_dim = appearance_dim
        self.mamba_g = MambaGlobalExtractor(config)
        self.mamba_l = MambaLocalExtractor(config)
        self.denoiser = MotionDenoiser(config, motion_dim, appearance_dim)
        self.schedule = NoiseSchedule(config.diffusion_steps, config.schedule)
        self.register_buffer("motion_mean", torch.zeros(motion_dim))
        self.register_buffer("motion_std", torch.ones(motion_dim))

    def _check_motion(self, value, name):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor (..., motion_dim), "
                            f"got {getattr(value, 'dtype', type(value).__name__)}")
        if value.ndim < 1 or value.shape[-1] != self.motion_dim:
            raise ValueError(f"{name} must have shape (..., motion_dim) with motion_dim = "
                             f"{self.motion_dim}, got {tuple(value.shape)}")

    def normalize(self, motion: torch.Tensor) -> torch.Tensor:
        """(M_D − motion_mean) / motion_std over the last dimension ``(…, motion_dim)``."""
        self._check_motion(motion, "motion")
        return (motion - self.motion_mean.to(motion.dtype)) / self.motion_std.to(motion.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`: x · motion_std + motion_mean."""
        self._check_motion(x, "x")
        return x * self.motion_std.to(x.dtype) + self.motion_mean.to(x.dtype)

    def encode_audio(self, mel: torch.Tensor, local_windows: torch.Tensor,
                     mel_lengths: Optional[torch.Tensor] = None):
        """(F_ag ``(B, audio_dim)``, F_al ``(B, T, audio_dim)``) from the clip's log-mel
        ``(B, L_mel, 80)`` (valid lengths ``mel_lengths`` ``(B,)`` in a padded batch) and the
        per-frame slices ``(B, T, 4·(2·local_context + 1), 80)``."""
        _check_features(mel, "mel", "(B, L_mel, 80)", (None, None, MEL_BINS))
        _check_features(local_windows, "local_windows", "(B, T, 4·(2·local_context + 1), 80)",
                        (mel.shape[0], None, None, None))
        return self.mamba_g(mel, mel_lengths), self.mamba_l(local_windows)

    def _predict(self, x_t, t, audio_global, audio_local, prev_motion, appearance):
        """(ε̂, x̂_0) at (x_t, t) under the condition. With ``config.prediction`` "eps" the
        transformer's output is ε̂ and x̂_0 = predict_x0(x_t, t, ε̂); with "v" it is v̂ and
        ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂, x̂_0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v̂ (no division by √ᾱ_t)."""
        out = self.denoiser(x_t, t, audio_global=audio_global, audio_local=audio_local,
                            prev_motion=prev_motion, appearance=appearance).to(x_t.dtype)   # fp32 under bf16 autocast
        if self.config.prediction == "eps":
            return out, self.schedule.predict_x0(x_t, t, out)
        signal, noise = self._signal_noise(x_t, t)
        return noise * x_t + signal * out, signal * x_t - noise * out

    def _signal_noise(self, x_t, t):
        """(√ᾱ_t, √(1−ᾱ_t)) as ``(B, 1, 1)`` in x_t's dtype, gathered on x_t's device (no host
        read of t, so capturable once the schedule's device copy exists)."""
        alpha_bar = self.schedule.alpha_bars_on(x_t.device)[t].view(-1, 1, 1)
        return alpha_bar.sqrt().to(x_t.dtype), (1 - alpha_bar).sqrt().to(x_t.dtype)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, audio_global: torch.Tensor,
                audio_local: torch.Tensor, prev_motion: torch.Tensor,
                appearance: torch.Tensor) -> torch.Tensor:
        """ε̂ = ε_θ(x_t, t, c): the :class:`MotionDenoiser`'s output read as ``config.prediction``
        says (ε̂ itself, or v̂ turned into ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂; see :meth:`_predict`).
        Reads no tensor value on the host (x̂_0 is not computed here)."""
        out = self.denoiser(x_t, t, audio_global=audio_global, audio_local=audio_local,
                            prev_motion=prev_motion, appearance=appearance).to(x_t.dtype)   # fp32 under bf16 autocast
        if self.config.prediction == "eps":
            return out
        signal, noise = self._signal_noise(x_t, t)
        return noise * x_t + signal * out

    def sample_window(self, x_T: torch.Tensor, noises: torch.Tensor, audio_global: torch.Tensor,
                      audio_local: torch.Tensor, prev_motion: torch.Tensor,
                      appearance: torch.Tensor, *, plan, guidance_scale: float) -> torch.Tensor:
        """One window's whole DDIM run (every update of ``plan``, from ``mim.diffusion.ddim_plan``,
        guidance included): normalized motion ``(B, M, motion_dim)`` from x_T ``(B, M,
        motion_dim)``, the z draws ``noises`` ``(ddim_noise_count(plan), B, M, motion_dim)`` and
        the condition (F_ag, F_al ``(B, M, audio_dim)``, the preceding frames, F_A). With
        ``guidance_scale`` ≠ 1 the unconditional call has F_ag and F_al zeroed.

        Capturable (tensor arguments only, fixed shapes, no host read of a tensor): the unit
        that ``mim animate --cuda-graphs`` captures once and replays per window, and that
        ``torch.compile(fullgraph=True)`` compiles without a graph break."""
        cond = {"audio_global": audio_global, "audio_local": audio_local,
                "prev_motion": prev_motion, "appearance": appearance}
        uncond = None
        if guidance_scale != 1:
            uncond = dict(cond, audio_global=torch.zeros_like(audio_global),
                          audio_local=torch.zeros_like(audio_local))
        return ddim_window(self, x_T, plan, cond, uncond, guidance_scale, noises)

    def window_sampler(self, steps: Optional[int] = None, eta: Optional[float] = None,
                       guidance_scale: Optional[float] = None) -> functools.partial:
        """:meth:`sample_window` with its plan (``steps``, ``eta``; the config's by default) and
        guidance scale bound: ``sampler(x_T, noises, audio_global, audio_local, prev_motion,
        appearance)``, tensors only, ready to capture or compile (``sampler.keywords["plan"]``
        is the plan, for ``mim.diffusion.ddim_draws``)."""
        steps = self.config.sample_steps if steps is None else steps
        eta = self.config.eta if eta is None else eta
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"guidance_scale must be a finite number, got {scale!r}")
        plan = ddim_plan(self.schedule, steps, eta)
        # The device copy of ᾱ that v-prediction gathers from is made now, never in a capture.
        self.schedule.alpha_bars_on(self.motion_mean.device)
        return functools.partial(self.sample_window, plan=plan, guidance_scale=scale)

    def previous_frames(self, generated: torch.Tensor) -> torch.Tensor:
        """The last ``prev_frames`` frames of ``generated`` (B, n, D), left-padded with zeros
        when n < prev_frames."""
        count = self.config.prev_frames
        last = generated[:, generated.shape[1] - min(count, generated.shape[1]):]
        return F.pad(last, (0, 0, count - last.shape[1], 0))

    def generate(self, audio_global: torch.Tensor, audio_local: torch.Tensor,
                 appearance: torch.Tensor, steps: Optional[int] = None,
                 eta: Optional[float] = None, guidance_scale: Optional[float] = None,
                 generator: Optional[torch.Generator] = None,
                 progress: Optional[Callable[[int, int], None]] = None,
                 wrap: Optional[Callable[[Callable], Callable]] = None) -> torch.Tensor:
        """Sample motion features for T frames: ``(B, T, motion_dim)``, denormalized.

        F_ag ``(B, audio_dim)``, F_al ``(B, T, audio_dim)`` (from :meth:`encode_audio`), F_A
        ``(B, appearance_dim)``. The T frames are cut into consecutive windows of
        ``config.window`` frames (the last one shorter, sampled at its own length), each sampled
        with DDIM (``steps``, ``eta``; defaults from the config). Window k is conditioned on the
        last ``prev_frames`` normalized frames sampled before it (zeros for window 0, zero
        left-padding when fewer exist). Classifier-free guidance on the audio: the
        unconditional branch has F_ag and F_al zeroed (as condition dropout in training), the
        preceding frames and F_A kept; ``guidance_scale`` 1 makes one model call per step.
        Noise is drawn from ``generator`` window after window, so a seeded generator gives the
        same motion. ``progress(k, num_windows)`` is called after window k (0-based) is done.

        Each window is one call of :meth:`window_sampler`'s sampler; ``wrap`` (sampler → a
        function of the same arguments) swaps in a captured or compiled version of it
        (``mim.graphs``), which gives the same motion to rounding.
        """
        _check_features(audio_local, "audio_local", "(B, T, audio_dim)",
                        (None, None, self.config.audio_dim))
        batch, frames, _ = audio_local.shape
        if frames < 1:
            raise ValueError("audio_local has no frames (T = 0): there is nothing to generate")
        _check_features(audio_global, "audio_global", "(B, audio_dim)",
                        (batch, self.config.audio_dim))
        _check_features(appearance, "appearance", "(B, appearance_dim)",
                        (batch, self.appearance_dim))
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be a callable (window_index, num_windows) or None, "
                            f"got {type(progress).__name__}")
        if wrap is not None and not callable(wrap):
            raise TypeError(f"wrap must be a callable (sampler -> sampler) or None, "
                            f"got {type(wrap).__name__}")
        dtype = torch.promote_types(audio_local.dtype, torch.float32)   # the sampler's x_t: fp32 at least
        sampling = WindowSampling(self, appearance, generator, steps, eta, guidance_scale, wrap, dtype)
        window = self.config.window
        starts = range(0, frames, window)
        generated = []
        for k, start in enumerate(starts):
            generated.append(sampling(audio_global, audio_local[:, start:start + window]))
            if progress is not None:
                progress(k, len(starts))
        return self.denormalize(torch.cat(generated, dim=1))

    def training_loss(self, m: torch.Tensor, audio_global: torch.Tensor,
                      audio_local: torch.Tensor, prev_motion: torch.Tensor,
                      appearance: torch.Tensor, weights: Sequence[float],
                      generator: Optional[torch.Generator] = None) -> dict:
        """The stage-2 objective on a batch of windows.

        ``m``: the ground-truth motion features ``(B, M, motion_dim)``, raw (normalized here),
        3 ≤ M ≤ ``config.window``. ``prev_motion`` ``(B, prev_frames, motion_dim)`` is already
        **normalized** (``normalize`` of the preceding ground-truth frames, zeros for frames
        before the clip's start), the space :meth:`generate` conditions on. F_ag, F_al, F_A as in
        :meth:`forward`. ``weights`` = (simple, mse, velocity, acceleration), each ≥ 0.

        t ~ U{0, …, T−1} and ε ~ N(0, I) per sample (from ``generator``, in that order, then the
        dropout draws); x_t = q_sample(x_0, t, ε). The audio (F_ag and F_al together, one mask per
        sample) is zeroed with probability ``config.condition_drop``. Returns a dict of the four
        unweighted scalar terms and ``"total"``, their weighted sum:

        - ``simple`` (eq. 7): mean (ε − ε̂)² over the whole batch.
        - ``mse``, ``velocity``, ``acceleration`` (eqs. 4-6) between the normalized x_0 and
          x̂_0 (see :meth:`_predict`). With ``config.prediction`` "v", x̂_0's error is the
          network's times √(1 − ᾱ_t) ≤ 1 and every sample enters them. With "eps", x̂_0's error
          is ε̂'s times √((1 − ᾱ_t)/ᾱ_t), about 2e4 at t = 999 of the cosine schedule, so
          **only the samples with ᾱ_t ≥ X0_LOSS_MIN_ALPHA_BAR = 0.5** (SNR ≥ 1, factor ≤ 1)
          enter them. The terms are means over the samples kept (0 when the batch keeps none).
        """
        if (not isinstance(weights, Sequence) or len(weights) != len(LOSS_TERMS)
                or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                           and math.isfinite(w) and w >= 0 for w in weights)):
            raise ValueError(f"weights must be {len(LOSS_TERMS)} finite numbers >= 0 for "
                             f"{LOSS_TERMS}, got {weights!r}")
        _check_features(m, "m", "(B, M, motion_dim)", (None, None, self.motion_dim))
        batch, frames, _ = m.shape
        if not 3 <= frames <= self.config.window:
            raise ValueError(f"m must have between 3 (eq. 6 needs 3 frames) and config.window = "
                             f"{self.config.window} frames (M), got M = {frames}")
        x0 = self.normalize(m)
        device = m.device
        t = torch.randint(0, self.schedule.num_steps, (batch,), generator=generator,
                          device=device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=device)
        x_t = self.schedule.q_sample(x0, t, noise)
        _check_features(audio_global, "audio_global", "(B, audio_dim)",
                        (batch, self.config.audio_dim))
        _check_features(audio_local, "audio_local", "(B, M, audio_dim)",
                        (batch, frames, self.config.audio_dim))
        audio_global, dropped = drop_condition(audio_global, self.config.condition_drop, generator)
        audio_local = audio_local * (~dropped).to(audio_local.dtype).view(-1, 1, 1)
        eps_hat, x0_hat = self._predict(x_t, t, audio_global, audio_local, prev_motion,
                                        appearance)
        terms = {"simple": eps_loss(noise, eps_hat)}
        if self.config.prediction == "eps":
            kept = self.schedule.alpha_bars.to(device)[t] >= X0_LOSS_MIN_ALPHA_BAR
        else:
            kept = torch.ones_like(t, dtype=torch.bool)
        if bool(kept.any()):
            m_hat = x0_hat[kept]
            terms["mse"] = motion_mse(x0[kept], m_hat)
            terms["velocity"] = velocity_loss(x0[kept], m_hat)
            terms["acceleration"] = acceleration_loss(x0[kept], m_hat)
        else:
            for name in LOSS_TERMS[1:]:
                terms[name] = eps_hat.new_zeros(())
        terms["total"] = sum(w * terms[name] for w, name in zip(weights, LOSS_TERMS))
        return terms


class WindowSampling:
    """Sampling motion window after window, as :meth:`MotionGenerator.generate` does, one call
    per window: ``sampling(F_ag (B, audio_dim), F_al (B, w, audio_dim))`` -> the window's
    normalized motion ``(B, w, motion_dim)`` in ``dtype``. It carries what crosses windows: the
    last ``prev_frames`` sampled frames (zeros at the start) and ``generator``, whose draws are
    taken window after window (the same noise as ``generate`` for the same windows). ``steps``,
    ``eta``, ``guidance_scale``: :meth:`MotionGenerator.window_sampler`'s; ``wrap`` (sampler ->
    a function of the same arguments) swaps in a captured or compiled sampler (``mim.graphs``).
    ``generate`` runs one over a clip; ``mim.stream`` over windows as their audio arrives."""

    def __init__(self, model: MotionGenerator, appearance: torch.Tensor,
                 generator: Optional[torch.Generator] = None, steps: Optional[int] = None,
                 eta: Optional[float] = None, guidance_scale: Optional[float] = None,
                 wrap: Optional[Callable[[Callable], Callable]] = None,
                 dtype: torch.dtype = torch.float32):
        sampler = model.window_sampler(steps, eta, guidance_scale)
        self.plan = sampler.keywords["plan"]
        self.sampler = sampler if wrap is None else wrap(sampler)
        self.model, self.appearance, self.generator, self.dtype = model, appearance, generator, dtype
        self.previous = appearance.new_zeros(appearance.shape[0], model.config.prev_frames,
                                             model.motion_dim, dtype=dtype)

    def __call__(self, audio_global: torch.Tensor, audio_local: torch.Tensor) -> torch.Tensor:
        shape = (audio_local.shape[0], audio_local.shape[1], self.model.motion_dim)
        x_T, noises = ddim_draws(self.plan, shape, self.generator, self.dtype, audio_local.device)
        sample = self.sampler(x_T, noises, audio_global, audio_local, self.previous, self.appearance)
        self.previous = self.model.previous_frames(torch.cat([self.previous, sample], dim=1))
        return sample
