"""The two profiled scenarios, stage by stage, and what they run on.

- **img2img** (reenactment, as :func:`mim.reenact.reenact`): source encoding, motion encoding of
  the driving frames (relative to the first one), then per render window the renderer's DIT,
  LMDD, warp and decoder (``Renderer.render`` with the recorder as its ``stage``), then video
  writing;
- **audio2video** (as :class:`mim.animate.Animator`): source encoding, audio features (log-mel),
  Mamba-g/l (``MotionGenerator.encode_audio``), diffusion sampling (``MotionGenerator.generate``),
  the renderer's four stages per window, video writing (with the audio muxed in).

Inputs are procedural (``mim.data.make_clip``, ``speech_like_audio``); weights are random unless
a checkpoint is given (no stage's cost depends on the weights' values). Frames are rendered whole
before they are encoded, so that each stage is timed apart (the products stream them).

``precision`` "bf16" runs each scenario as the products run it (``mim.precision``): the source
encoded in fp32 and its F_id stored in bf16 (``render_state``), the audio features in fp32; one
autocast region per step of the product (audio encoding; sampling; the first driving frame's
motion; each render window, whose region also holds that window's motion encoding in img2img),
with the same casts to fp32 at their borders (the audio features and F_A handed to the sampler,
the motion arithmetic of reenactment, the frames).

``graphs`` runs each unit that ``mim.graphs`` captures (a DDIM window: ``generate``'s window
sampler; a render window: one ``Renderer.render`` of ``render_window`` frames) as a CUDA-graph
replay would run it, inside the recorder's ``graph_replay`` region: autocast's weight cache off
(a capture cannot keep the cached casts, so a replay casts the weights it uses each time), and
its inputs and output copied in and out of the graph's buffers.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from mim.audio import VIDEO_FPS
from mim.config import Config, load_config

__all__ = ["Inputs", "audio_samples", "make_inputs", "run_img2img", "run_audio2video",
           "build_animator", "set_backend"]


@dataclass
class Inputs:
    """A source image (3, S, S), T driving frames (T, 3, S, S), T / 25 s of 16 kHz speech."""
    source: torch.Tensor
    driving: torch.Tensor
    audio: "object"  # numpy float32 array

    @property
    def frames(self) -> int:
        return self.driving.shape[0]


def audio_samples(seconds: float) -> int:
    """16 kHz samples of ``seconds`` of audio; a ValueError unless the audio front end takes it."""
    from mim.animate import MIN_AUDIO_SAMPLES
    from mim.audio import SAMPLE_RATE

    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    samples = round(seconds * SAMPLE_RATE)
    if samples < MIN_AUDIO_SAMPLES:
        raise ValueError(f"seconds must be at least {MIN_AUDIO_SAMPLES / SAMPLE_RATE:.3f} "
                         f"({MIN_AUDIO_SAMPLES} samples at {SAMPLE_RATE} Hz), got {seconds!r}")
    return samples


def make_inputs(image_size: int, seconds: float, seed: int = 0) -> Inputs:
    """Procedural inputs for ``seconds`` of video: T = ceil(25 · seconds) frames."""
    from mim.audio import SAMPLE_RATE, num_video_frames
    from mim.data import make_clip, speech_like_audio

    samples = audio_samples(seconds)
    audio = speech_like_audio(samples / SAMPLE_RATE, seed=seed)[0][:samples]
    frames = num_video_frames(len(audio))
    driving = make_clip(seed, num_frames=frames, size=image_size)["frames"]
    source = make_clip(seed + 1, num_frames=1, size=image_size)["frames"][0]
    return Inputs(source=source, driving=driving, audio=audio)


@torch.no_grad()
def run_img2img(animator, inputs: Inputs, stage, workdir: Path, precision: str = "fp32",
                graphs: bool = False) -> int:
    """Reenactment of the source by the driving frames, stage by stage (as ``mim.reenact``, at
    ``precision``); returns T."""
    from mim.io import write_video
    from mim.precision import autocast, render_state

    renderer, device = animator.renderer, animator.device
    window = renderer.config.render_window
    with stage("source encoding"):
        state = render_state(renderer.encode_source(inputs.source[None].to(device)), precision)
    with autocast(precision, device), stage("motion encoding"):
        first = renderer.encode_motion(inputs.driving[:1].to(device))
    rendered = []
    for start in range(0, inputs.frames, window):
        with autocast(precision, device):
            with stage("motion encoding"):
                motion = renderer.encode_motion(inputs.driving[start:start + window].to(device)).float()
                motion = state.motion.float() + (motion - first.float())
            rendered.append(_render_window(renderer, state, motion[None], stage, graphs)[0])
    with stage("video writing"):
        frames = torch.cat(rendered).float().clamp(0, 1).cpu()
        write_video(workdir / "img2img.mp4", frames, fps=VIDEO_FPS)
    return inputs.frames


def _uncached_autocast(device: torch.device):
    """Inside a replayed unit: autocast as around it, its weight cache off (``mim.graphs``)."""
    kind = torch.device(device).type
    if not torch.is_autocast_enabled(kind):
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=torch.get_autocast_dtype(kind), cache_enabled=False)


def _generate(motion_model, audio_global, audio_local, appearance, steps, generator, stage,
              graphs: bool):
    """``MotionGenerator.generate``; with ``graphs`` each window's sampler (every DDIM step of
    the window, guidance included) runs as a replay (module docstring)."""
    def replayed(sampler):
        def run(*args):
            with stage.graph_replay(args) as outputs, _uncached_autocast(args[0].device):
                outputs.append(sampler(*args))
            return outputs[0]
        return run

    return motion_model.generate(audio_global, audio_local, appearance, steps=steps,
                                 generator=generator, wrap=replayed if graphs else None)


def _render_window(renderer, state, motion: torch.Tensor, stage, graphs: bool) -> torch.Tensor:
    """``Renderer.render`` of one window of motion (B, N ≤ render_window, motion_dim): the frames
    (B, N, 3, S, S); with ``graphs`` as a replay (module docstring)."""
    window = renderer.config.render_window
    if not graphs:
        return renderer.render(state, motion, window, stage=stage)
    inputs = (state.feature, state.appearance, state.motion, motion)
    with stage.graph_replay(inputs) as outputs, _uncached_autocast(motion.device):
        outputs.append(renderer.render(state, motion, window, stage=stage))
    return outputs[0]


@torch.no_grad()
def run_audio2video(animator, inputs: Inputs, stage, workdir: Path, steps: Optional[int] = None,
                    seed: int = 0, precision: str = "fp32", graphs: bool = False) -> int:
    """Audio-driven animation of the source, stage by stage (as ``mim.animate.Animator``, at
    ``precision``); returns T."""
    from mim.audio import SAMPLE_RATE, audio_features
    from mim.io import write_video
    from mim.precision import autocast, render_state

    renderer, motion_model, device = animator.renderer, animator.motion, animator.device
    config = animator.config
    with stage("source encoding"):
        state = render_state(renderer.encode_source(inputs.source[None].to(device)), precision)
    with stage("audio features"):
        features = audio_features(inputs.audio, inputs.frames)
        mel = features.mel[None].to(device)
        windows = features.local_windows(config.motion.local_context)[None].to(device)
    with stage("Mamba-g/l"), autocast(precision, device):
        audio_global, audio_local = (f.float() for f in motion_model.encode_audio(mel, windows))
    with stage("diffusion sampling"), autocast(precision, device):
        generator = torch.Generator(device).manual_seed(int(seed))
        motion = _generate(motion_model, audio_global, audio_local, state.appearance.float(),
                           steps, generator, stage, graphs)
    window = config.renderer.render_window
    rendered = []
    for start in range(0, inputs.frames, window):
        with autocast(precision, device):
            rendered.append(_render_window(renderer, state, motion[:, start:start + window],
                                           stage, graphs)[0])
    with stage("video writing"):
        frames = torch.cat(rendered).float().clamp(0, 1).cpu()
        write_video(workdir / "audio2video.mp4", frames, fps=VIDEO_FPS, audio=inputs.audio,
                    sample_rate=SAMPLE_RATE)
    return inputs.frames


def build_animator(config: Union[str, Config, None] = None, checkpoint: Optional[str] = None,
                   device="auto", seed: int = 0):
    """(Animator, weights description). ``checkpoint``: a stage-2 checkpoint (renderer and motion
    generator), or a stage-1 one (its renderer; the motion generator random); its config is
    used. Otherwise ``config`` (a name or file, default tiny) with random weights."""
    from mim.animate import Animator, resolve_device
    from mim.models import Renderer
    from mim.models.motion import MotionGenerator
    from mim.checkpoint import CheckpointError, checkpoint_config, load_checkpoint, read_metadata

    if checkpoint is not None and config is not None:
        raise ValueError("give --config or --checkpoint, not both: a checkpoint carries its config")
    meta = None
    if checkpoint is not None:
        meta = read_metadata(os.fspath(checkpoint))
        if meta["kind"] not in ("stage1", "stage2"):
            raise CheckpointError(f"checkpoint {checkpoint!r} holds a {meta['kind']!r} model, "
                                  f"expected a stage-1 or stage-2 one")
        config = checkpoint_config(os.fspath(checkpoint), meta)
    elif not isinstance(config, Config):
        config = load_config(config or "tiny")
    torch.manual_seed(seed)
    renderer = Renderer.from_config(config)
    motion = MotionGenerator(config.motion, config.renderer.motion_dim, config.renderer.appearance_dim)
    if meta is None:
        weights = "random weights (no checkpoint): stage costs do not depend on the weights' values"
    elif meta["kind"] == "stage2":
        load_checkpoint(os.fspath(checkpoint), kind="stage2",
                        modules={"renderer": renderer, "motion": motion})
        weights = f"stage-2 checkpoint {os.fspath(checkpoint)}"
    else:
        load_checkpoint(os.fspath(checkpoint), kind="stage1", modules={"renderer": renderer})
        weights = (f"renderer from stage-1 checkpoint {os.fspath(checkpoint)}; "
                   f"motion generator random weights")
    return Animator(renderer, motion, config, resolve_device(device)), weights


def set_backend(animator, backend: Optional[str]) -> None:
    """The kernels' backend of the animator's renderer and of every Mamba of its motion model."""
    from kernels import Mamba

    animator.renderer.set_backend(backend)
    for module in animator.motion.modules():
        if isinstance(module, Mamba):
            module.backend = backend
