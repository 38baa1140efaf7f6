"""Audio-driven animation (``mim animate``): one portrait + speech -> a 25 fps talking video.

The two stages of a ``stage2`` checkpoint run in turn: the motion generator samples motion
features for every video frame from the speech (Mamba-g/Mamba-l features, windowed DDIM with the
portrait's appearance F_A in the condition), then the renderer draws each frame from the portrait
(encoded once) and those features. T = ceil(25 · audio duration) frames, the last one covering
the audio's tail.

The audio is featurized and encoded one motion window at a time (Mamba-g carries its conv window
and SSM state from window to window; Mamba-l's per-frame slices are independent). Motion is small
(T × motion_dim) and is sampled whole first; frames are rendered one render window
(``config.renderer.render_window``) at a time and streamed to the video encoder, so memory does
not grow with the length of the audio beyond the samples themselves and these T-row tensors.

:meth:`Animator.stream` runs the same windows on audio that arrives in chunks and yields frames
as soon as each window's audio is in, with F_ag the running mean of the audio heard so far
(:mod:`mim.stream`; docs/architecture.md, "Streaming").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np
import torch

from kernels import Mamba
from mim.audio import (
    MIN_AUDIO_SAMPLES,
    SAMPLE_RATE,
    VIDEO_FPS,
    load_audio,
)
from mim.config import Config
from mim.io import MediaError, read_image, write_video
from mim.models.motion import MotionGenerator
from mim.models.renderer import Renderer, SourceState
from mim.face import DEFAULT_CROP_SCALE
from mim.portrait import Framing, frame_portrait
from mim.checkpoint import CheckpointError, checkpoint_config, load_checkpoint, read_metadata
from mim.precision import autocast, check_precision, render_state
from mim.graphs import window_wrapper
from mim.stream import AudioWindows, ChunkResampler, MotionWindows, check_chunk, check_sample_rate, render_windows

__all__ = ["Animator", "DEFAULT_CHECKPOINT", "KIND", "MIN_AUDIO_SAMPLES", "resolve_device"]

KIND = "stage2"
# The demo model `make demo` (tools/train_demo) trains; used when no checkpoint is given.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "examples" / "demo" / "mim_tiny.safetensors"
PathLike = Union[str, os.PathLike]


def resolve_device(device) -> torch.device:
    """``"auto"`` (CUDA when torch sees a device, else the CPU), ``"cpu"``, ``"cuda"`` or a
    ``torch.device`` -> the ``torch.device``; refuses CUDA where torch sees none."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif device in ("cpu", "cuda"):
        resolved = torch.device(device)
    else:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or a torch.device, got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but torch sees no CUDA device")
    return resolved


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


class Animator:
    """A stage-2 model ready to animate: the renderer and the motion generator, in eval mode on
    ``device``, with the ``Config`` they were built from.

    Example (run from the repository root, as the README's copy of it is in the tests)::

        animator = mim.Animator.from_pretrained()        # the demo model in examples/demo/
        # the demo portrait is procedural: no face to detect, so its centre square is animated
        frames = animator.animate("examples/demo/portrait.png", "examples/demo/speech.wav", crop="center")
        animator.animate_to_file("photo.jpg", "speech.wav", "talking.mp4")   # a real face, pasted back
    """

    def __init__(self, renderer: Renderer, motion: MotionGenerator, config: Config,
                 device: Union[str, torch.device] = "cpu", precision: str = "fp32"):
        if not isinstance(renderer, Renderer):
            raise TypeError(f"renderer must be a mim.models.Renderer, got {type(renderer).__name__}")
        if not isinstance(motion, MotionGenerator):
            raise TypeError(f"motion must be a mim.models.motion.MotionGenerator, got {type(motion).__name__}")
        if not isinstance(config, Config):
            raise TypeError(f"config must be a mim.config.Config, got {type(config).__name__}")
        if (motion.motion_dim, motion.appearance_dim) != (renderer.config.motion_dim,
                                                          renderer.config.appearance_dim):
            raise ValueError(f"motion generates (motion_dim, appearance_dim) = "
                             f"{(motion.motion_dim, motion.appearance_dim)} but the renderer uses "
                             f"{(renderer.config.motion_dim, renderer.config.appearance_dim)}")
        self.precision = check_precision(precision)
        self.device = resolve_device(device)
        self.renderer = renderer.to(self.device).eval()
        self.motion = motion.to(self.device).eval()
        self.config = config

    @classmethod
    def from_pretrained(cls, path: Optional[PathLike] = None, device: Union[str, torch.device] = "auto",
                        backend: Optional[str] = None, precision: str = "fp32") -> "Animator":
        """Load a ``stage2`` checkpoint (renderer + motion generator, built from its saved config).

        ``path`` None means :data:`DEFAULT_CHECKPOINT`, the demo model. ``backend`` sets the
        kernels' path of the renderer (adanorm, warp) and of the Mamba extractors. ``precision``
        "fp32" or "bf16" (bf16 autocast, the fp32 weights kept: :mod:`mim.precision`). Raises
        :class:`CheckpointError` for a missing, corrupt or foreign file, a checkpoint of another
        kind (a ``stage1`` one has no motion generator) or weights that do not fit its config.
        """
        if path is None:
            path = DEFAULT_CHECKPOINT
            if not Path(path).is_file():
                raise CheckpointError(f"no checkpoint was given (--checkpoint) and the demo checkpoint "
                                      f"{path} is missing: create it with `make demo` "
                                      f"(tools/train_demo) or pass a stage-2 checkpoint")
        path = os.fspath(path)
        meta = read_metadata(path)
        if meta["kind"] == "stage1":
            raise CheckpointError(f"checkpoint {path!r} is a stage-1 checkpoint (the renderer only): "
                                  f"it has no motion generator; train stage 2 on it to animate from audio")
        if meta["kind"] != KIND:
            raise CheckpointError(f"checkpoint {path!r} holds a {meta['kind']!r} model, expected {KIND!r}")
        config = checkpoint_config(path, meta)
        device = resolve_device(device)
        renderer = Renderer.from_config(config, backend=backend)
        motion = MotionGenerator(config.motion, config.renderer.motion_dim, config.renderer.appearance_dim)
        for module in motion.modules():
            if isinstance(module, Mamba):
                module.backend = backend
        load_checkpoint(path, kind=KIND, modules={"renderer": renderer, "motion": motion})
        return cls(renderer, motion, config, device, precision)

    # How each motion window and render window runs (mim.graphs): "eager" until use_graphs.
    graphs = "eager"
    _wrap = None
    _motion_windows = None
    _render_window = None

    def use_graphs(self, mode: str) -> "Animator":
        """Run every motion window (all DDIM steps, guidance included) and every render window
        as they are ("eager"), captured once per window shape as CUDA graphs and replayed
        ("cuda-graphs", CUDA only: ``mim animate --cuda-graphs``) or under
        ``torch.compile(mode="reduce-overhead", fullgraph=True)`` ("compile", CUDA or CPU:
        ``--compile``). Returns the Animator. See :mod:`mim.graphs`."""
        self._wrap = window_wrapper(mode, self.device)
        self.graphs = mode
        self._motion_windows = {}
        self._render_window = None if self._wrap is None else self._wrap(self.renderer.window_frames)
        return self

    def _motion_window(self, sampler):
        """The wrapped window sampler, one per (plan, guidance scale), kept across calls so its
        captures are reused."""
        key = (sampler.keywords["plan"], sampler.keywords["guidance_scale"])
        if key not in self._motion_windows:
            self._motion_windows[key] = self._wrap(sampler)
        return self._motion_windows[key]

    # Inputs.

    def frame(self, image, crop: str = "face", face: int = 0,
              crop_scale: float = DEFAULT_CROP_SCALE) -> Framing:
        """A path or a (3, H, W) / (1, 3, H, W) tensor in [0, 1] -> its :class:`mim.portrait.Framing`
        for this model (the square the model sees and how its frames go back into the image)."""
        name = str(image) if _is_path(image) else "the portrait"
        if _is_path(image):
            image = read_image(image)
        elif isinstance(image, torch.Tensor):
            if image.ndim == 4 and image.shape[0] == 1:
                image = image[0]
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"image must have shape (3, H, W) or (1, 3, H, W) (RGB), "
                                 f"got {tuple(image.shape)}")
            if not image.is_floating_point():
                raise TypeError(f"image must be a floating-point tensor in [0, 1], got {image.dtype}")
            if image.shape[1] == 0 or image.shape[2] == 0:
                raise ValueError(f"image is empty: shape {tuple(image.shape)}")
            if not torch.isfinite(image).all():
                raise ValueError("image contains NaN or infinite values")
            if image.min() < 0 or image.max() > 1:
                raise ValueError(f"image values must lie in [0, 1], got [{float(image.min()):.3g}, "
                                 f"{float(image.max()):.3g}]")
        else:
            raise TypeError(f"image must be a path or a torch.Tensor (3, H, W), got {type(image).__name__}")
        return frame_portrait(image.detach().to(torch.float32), self.config.renderer.image_size, crop=crop,
                              face=face, scale=crop_scale, name=name)

    @staticmethod
    def _read_audio(audio) -> np.ndarray:
        """A path (any format, resampled to 16 kHz mono) or a 1-D float array at 16 kHz."""
        if _is_path(audio):
            samples = load_audio(audio)
            if samples.size < MIN_AUDIO_SAMPLES:
                raise MediaError(f"{audio}: {samples.size} samples is too short; at least {MIN_AUDIO_SAMPLES} "
                                 f"({MIN_AUDIO_SAMPLES / SAMPLE_RATE * 1000:.0f} ms at {SAMPLE_RATE} Hz) are needed")
            return samples
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        if not isinstance(audio, np.ndarray):
            raise TypeError(f"audio must be a path or a 1-D float array at {SAMPLE_RATE} Hz, "
                            f"got {type(audio).__name__}")
        if audio.ndim != 1:
            raise ValueError(f"audio must be a 1-D (mono) array at {SAMPLE_RATE} Hz, got shape {audio.shape}")
        if not np.issubdtype(audio.dtype, np.floating):
            raise TypeError(f"audio must be a float array in [-1, 1], got dtype {audio.dtype}")
        if audio.size == 0:
            raise ValueError("audio is empty (zero samples)")
        if audio.size < MIN_AUDIO_SAMPLES:
            raise ValueError(f"audio has {audio.size} samples; at least {MIN_AUDIO_SAMPLES} "
                             f"({MIN_AUDIO_SAMPLES / SAMPLE_RATE * 1000:.0f} ms at {SAMPLE_RATE} Hz) are needed")
        if not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinite values")
        return np.ascontiguousarray(audio, dtype=np.float32)

    def _check_sampling(self, steps, seed, guidance_scale) -> None:
        most = self.config.motion.diffusion_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))
                                  or not 1 <= steps <= most):
            raise ValueError(f"steps must be None or an int in [1, diffusion_steps = {most}], got {steps!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if guidance_scale is not None and (isinstance(guidance_scale, bool)
                                           or not isinstance(guidance_scale, (int, float, np.number))
                                           or not np.isfinite(guidance_scale)):
            raise ValueError(f"guidance_scale must be None or a finite number, got {guidance_scale!r}")

    # The two stages, window by window (mim.stream: what animate and stream share).

    def _audio_windows(self, precision: str) -> AudioWindows:
        return AudioWindows(self.motion, self.device, precision)

    def _motion_sampler(self, state: SourceState, steps, seed, guidance_scale, precision: str) -> MotionWindows:
        return MotionWindows(self.motion, state.appearance.float(), torch.Generator(self.device).manual_seed(int(seed)),
                             steps=None if steps is None else int(steps),
                             guidance_scale=None if guidance_scale is None else float(guidance_scale),
                             wrap=None if self._wrap is None else self._motion_window, precision=precision)

    @torch.no_grad()
    def _encode_audio(self, audio: np.ndarray, precision: str = "fp32"):
        """(F_ag (1, audio_dim), F_al (1, T, audio_dim)) for T = num_video_frames(len(audio)), fp32:
        the clip's features computed one motion window at a time (:class:`mim.stream.AudioWindows`:
        Mamba-g over each window's new mel frames carrying its state, Mamba-l over the window's
        slices), so only F_al, T × audio_dim, grows with the audio. F_ag is Mamba-g's mean over
        the whole clip."""
        front = self._audio_windows(precision)
        windows = [*front.push(audio), *front.finish()]
        return windows[-1].audio_global, torch.cat([window.audio_local for window in windows], dim=1)

    @torch.no_grad()
    def _generate_motion(self, state: SourceState, audio: np.ndarray, steps, seed, guidance_scale,
                         progress: bool, precision: str = "fp32") -> torch.Tensor:
        """Motion features (1, T, motion_dim) for T = num_video_frames(len(audio)), fp32, sampled
        window after window (:class:`mim.stream.MotionWindows`) with the clip's F_ag. Under bf16
        the networks run in bf16 while the sampler's state and updates stay fp32: its conditions
        are handed over in fp32, so the draws and x_t are fp32."""
        from tqdm import tqdm

        audio_global, audio_local = self._encode_audio(audio, precision)
        sample = self._motion_sampler(state, steps, seed, guidance_scale, precision)
        window = self.config.motion.window
        pieces = []
        with tqdm(total=-(-audio_local.shape[1] // window), desc="motion", unit="window",
                  disable=not progress) as bar:
            for start in range(0, audio_local.shape[1], window):
                pieces.append(sample(audio_global, audio_local[:, start:start + window]))
                bar.update(1)
        return torch.cat(pieces, dim=1)

    def _render(self, state: SourceState, motion: Iterable[torch.Tensor], framing: Framing,
                progress: bool, precision: str = "fp32", total: Optional[int] = None) -> Iterator[torch.Tensor]:
        """Output frames in [0, 1], fp32, on the CPU (``framing.compose`` of each model frame) of
        motion pieces (1, n, motion_dim) in frame order, rendered one render window at a time as
        soon as the pieces hold it (:func:`mim.stream.render_windows`; under bf16 autocast for
        ``precision`` "bf16": the region closes before each yield, so the caller's code never
        runs in it)."""
        from tqdm import tqdm

        window = self.config.renderer.render_window

        @torch.no_grad()
        def render(chunk):
            with autocast(precision, self.device):
                frames = (self.renderer.render(state, chunk, window=window) if self._render_window is None
                          else self._render_window(state.feature, state.appearance, state.motion, chunk))[0]
            return frames.float().clamp(0, 1).cpu()

        with tqdm(total=total, desc="render", unit="frame", disable=not progress) as bar:
            for frames in render_windows(render, motion, window):
                for frame in frames:
                    yield framing.compose(frame)
                bar.update(frames.shape[0])

    @torch.no_grad()
    def _source(self, image, crop, face, crop_scale, precision):
        framing = self.frame(image, crop, face, crop_scale)
        return framing, render_state(self.renderer.encode_source(framing.source[None].to(self.device)), precision)

    @torch.no_grad()
    def _prepare(self, image, audio, steps, seed, guidance_scale, progress, crop, face, crop_scale,
                 precision):
        self._check_sampling(steps, seed, guidance_scale)
        framing, state = self._source(image, crop, face, crop_scale, precision)
        samples = self._read_audio(audio)
        motion = self._generate_motion(state, samples, steps, seed, guidance_scale, progress, precision)
        return state, motion, samples, framing

    def _precision(self, precision: Optional[str]) -> str:
        return self.precision if precision is None else check_precision(precision)

    def animate(self, image, audio, steps: Optional[int] = None, seed: int = 0,
                guidance_scale: Optional[float] = None, progress: bool = False, crop: str = "face",
                face: int = 0, crop_scale: float = DEFAULT_CROP_SCALE,
                precision: Optional[str] = None) -> torch.Tensor:
        """The talking video as frames (T, 3, H, W) float32 in [0, 1] on the CPU.

        ``image``: a path or a tensor (3, H, W) / (1, 3, H, W) in [0, 1]. ``crop="face"``: face
        ``face`` (0 = the largest) is detected and cropped, and each frame is pasted back into
        the image, so (H, W) is the image's size rounded down to even (the square's side is
        ``crop_scale`` × the face box's longer side); no face raises
        :class:`mim.portrait.NoFaceError`. ``crop="center"``: the centre square resized to
        S = ``config.renderer.image_size``, and the frames are S × S (:mod:`mim.portrait`).
        ``audio``: a path (any format;
        resampled to 16 kHz mono) or a 1-D float array of 16 kHz samples. T = ceil(25 · duration).
        ``steps`` (DDIM steps) and ``guidance_scale`` default to the config's; ``seed`` seeds
        every noise draw, so a seed gives the same video. ``precision`` "fp32" or "bf16" (bf16
        autocast: :mod:`mim.precision`) overrides the Animator's for this call.
        """
        precision = self._precision(precision)
        state, motion, _, framing = self._prepare(image, audio, steps, seed, guidance_scale, progress,
                                                  crop, face, crop_scale, precision)
        return torch.stack(list(self._render(state, [motion], framing, progress, precision, motion.shape[1])))

    def animate_to_file(self, image, audio, out: PathLike, steps: Optional[int] = None, seed: int = 0,
                        guidance_scale: Optional[float] = None, progress: bool = True,
                        crop: str = "face", face: int = 0, crop_scale: float = DEFAULT_CROP_SCALE,
                        precision: Optional[str] = None) -> int:
        """Write the talking video to ``out`` (H.264 mp4 at 25 fps, the audio muxed in as AAC);
        returns T, the number of frames. Arguments as :meth:`animate`.

        Every input is read and checked and all motion is sampled before the file is created;
        frames are rendered window by window and streamed to the encoder. ``out`` is written
        atomically: after any failure it is exactly what it was before.
        """
        precision = self._precision(precision)
        state, motion, samples, framing = self._prepare(image, audio, steps, seed, guidance_scale,
                                                        progress, crop, face, crop_scale, precision)
        write_video(out, self._render(state, [motion], framing, progress, precision, motion.shape[1]),
                    fps=VIDEO_FPS, audio=samples,
                    sample_rate=SAMPLE_RATE)
        return motion.shape[1]

    def stream(self, image, chunks: Iterable, sample_rate: int = SAMPLE_RATE, steps: Optional[int] = None,
               seed: int = 0, guidance_scale: Optional[float] = None, crop: str = "face", face: int = 0,
               crop_scale: float = DEFAULT_CROP_SCALE, precision: Optional[str] = None) -> Iterator[torch.Tensor]:
        """Frames (3, H, W) float32 in [0, 1] on the CPU, each as one frame of :meth:`animate`'s
        result, yielded as the audio ``chunks`` arrive.

        ``chunks``: an iterable of 1-D float arrays (numpy or torch) of mono samples at
        ``sample_rate``, any length (0 included); another rate than 16 kHz is resampled chunk by
        chunk with libswresample (:class:`mim.stream.ChunkResampler`, the resampler files are
        read with). Motion window k's frames come as soon as the audio its features read has
        arrived (its own frames plus ``local_context`` video frames and the STFT's 6 ms after
        them: :class:`mim.stream.AudioWindows`), rendered render window by render window; the
        last, partial window at the end of the stream. All state is carried from chunk to chunk
        (the samples still needed, Mamba-g's states and running sum, the previous frames'
        motion, the noise generator, the cached source), and none of it grows with the stream.

        Where it differs from :meth:`animate`: F_ag is Mamba-g's mean over the mel frames heard
        by each window (a stream cannot know the rest of the clip), the clip's mean only at the
        last window; everything else is animate's, bit for bit, whatever the chunks' sizes.
        The image, the sampling options and ``sample_rate`` are checked on this call; a bad
        chunk raises ValueError naming it when it arrives, and a stream that ends with no
        samples (or fewer than 257) raises ValueError at its end. Other arguments as
        :meth:`animate`.
        """
        precision = self._precision(precision)
        self._check_sampling(steps, seed, guidance_scale)
        rate = check_sample_rate(sample_rate)
        framing, state = self._source(image, crop, face, crop_scale, precision)
        return self._render(state, self._streamed_motion(state, chunks, rate, steps, seed, guidance_scale, precision),
                            framing, False, precision)

    @torch.no_grad()
    def _streamed_motion(self, state, chunks, rate, steps, seed, guidance_scale, precision):
        """Each motion window (1, w, motion_dim) of the stream, as soon as its audio is in."""
        front = self._audio_windows(precision)
        sample = self._motion_sampler(state, steps, seed, guidance_scale, precision)
        resample = None if rate == SAMPLE_RATE else ChunkResampler(rate)
        def windows():
            for index, chunk in enumerate(chunks):
                samples = check_chunk(chunk, index)
                yield from front.push(samples if resample is None else resample(samples))
            if resample is not None:
                yield from front.push(resample.flush())
            yield from front.finish()

        for window in windows():
            yield sample(window.audio_global, window.audio_local)
