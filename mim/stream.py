"""Streaming animation: speech that arrives in chunks -> frames as soon as their audio is in.

The pieces :meth:`mim.animate.Animator.animate` and :meth:`mim.animate.Animator.stream` share,
window by window of ``config.motion.window`` (W) video frames:

:class:`AudioWindows`
    the audio front end. Samples are pushed as they arrive; motion window k (frames kW …
    (k+1)W − 1) is ready once the samples that its features read have arrived: Mamba-l's slices
    reach ``local_context`` (c) video frames past the window, and the last mel frame they own,
    4((k+1)W + c) − 1, is the STFT's frame centred on sample 160 m, reading 256 samples past
    it. So window k needs 640((k+1)W + c) + 96 samples (:meth:`AudioWindows.samples_needed`);
    the last, partial window waits for the end of the stream. Mamba-g reads mel frames 0 …
    4((k+1)W + c) − 1 by then (carrying its conv window and SSM state from window to window);
    its running mean over the mel frames read so far is the window's F_ag (the clip's mean at
    the last window). Samples are kept only back to the first one the next window reads.
:class:`MotionWindows`
    the DDIM sampler, window after window, carrying the last ``prev_frames`` normalized frames
    and the noise generator (the draws of ``MotionGenerator.generate`` for the same seed).
:func:`render_windows`
    regroups motion windows into render windows (``config.renderer.render_window`` frames) and
    renders each as soon as it is complete, from the cached source state.

Every computation is keyed to the window index and, at the end, to the stream's length — never
to how the audio was cut into chunks — so the same samples in any chunks give the same frames,
bit for bit. :class:`ChunkResampler` turns audio at another rate into 16 kHz chunk by chunk
(libswresample, stateful: the chunks' output is the whole signal's); :func:`stream_file` is
``mim animate --stream``.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional

import av
import numpy as np
import torch

from mim.audio import (
    HOP_LENGTH,
    MEL_PER_VIDEO_FRAME,
    MIN_AUDIO_SAMPLES,
    N_FFT,
    SAMPLE_RATE,
    VIDEO_FPS,
    load_audio,
    local_windows_range,
    log_mel_range,
    normalize_log_mel,
    num_video_frames,
)
from mim.io import write_video
from mim.models.motion import MotionGenerator, WindowSampling
from mim.precision import autocast

__all__ = ["AudioWindows", "ChunkResampler", "MotionWindows", "StreamInterrupted", "StreamMeter", "WindowFeatures",
           "check_chunk", "check_sample_rate", "live_chunks", "render_windows", "stream_file"]

SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS            # 640: one video frame of 16 kHz audio
# Resampling (libswresample) takes these input rates.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000


def check_sample_rate(sample_rate) -> int:
    """An int in [1000, 384000] (Hz) -> that int; anything else raises ValueError naming it."""
    if (isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer))
            or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE):
        raise ValueError(f"sample_rate must be an int in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] (Hz), "
                         f"got {sample_rate!r}")
    return int(sample_rate)


def check_chunk(chunk, index: int) -> np.ndarray:
    """Audio chunk ``index`` (a 1-D float numpy array or tensor, any length, 0 included, finite)
    -> float32 numpy array; anything else raises an error naming the chunk."""
    if isinstance(chunk, torch.Tensor):
        if not chunk.is_floating_point():
            raise ValueError(f"audio chunk {index} must be a 1-D float array of samples in [-1, 1], "
                             f"got a tensor of dtype {chunk.dtype}")
        chunk = chunk.detach().cpu().numpy()
    if not isinstance(chunk, np.ndarray):
        raise ValueError(f"audio chunk {index} must be a 1-D float numpy array or tensor of samples, "
                         f"got {type(chunk).__name__}")
    if not np.issubdtype(chunk.dtype, np.floating):
        raise ValueError(f"audio chunk {index} must be a 1-D float array of samples in [-1, 1], "
                         f"got dtype {chunk.dtype}")
    if chunk.ndim != 1:
        raise ValueError(f"audio chunk {index} must be 1-D (mono samples), got shape {chunk.shape}")
    if not np.isfinite(chunk).all():
        raise ValueError(f"audio chunk {index} contains NaN or infinite values")
    return np.ascontiguousarray(chunk, dtype=np.float32)


class ChunkResampler:
    """Mono float32 audio at ``sample_rate`` -> 16 kHz, a chunk at a time, with libswresample
    (PyAV's ``AudioResampler``, the resampler :func:`mim.io.read_audio` uses on files). It keeps
    its filter state between chunks, so the chunks' outputs joined are the whole signal's,
    whatever the cut; :meth:`flush` gives the filter's tail at the end of the stream."""

    def __init__(self, sample_rate: int):
        self.sample_rate = check_sample_rate(sample_rate)
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    @staticmethod
    def _joined(frames) -> np.ndarray:
        pieces = [frame.to_ndarray()[0] for frame in frames]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if samples.size == 0:
            return samples
        frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
        frame.sample_rate = self.sample_rate
        return self._joined(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        return self._joined(self._resampler.resample(None))


@dataclass(frozen=True)
class WindowFeatures:
    """Motion window ``index``'s audio features: video frames ``start`` … ``stop`` − 1, F_al
    ``audio_local`` (1, stop − start, audio_dim) and ``audio_global`` (1, audio_dim), Mamba-g's
    mean over the ``mel_frames`` mel frames read so far; fp32, on the model's device."""

    index: int
    start: int
    stop: int
    audio_local: torch.Tensor
    audio_global: torch.Tensor
    mel_frames: int


class AudioWindows:
    """The audio front end of a stream: 16 kHz samples in (:meth:`push`, then :meth:`finish`),
    each motion window's :class:`WindowFeatures` out as soon as its audio is in (see the module
    docstring for when that is). Holds the samples from the first one the next window reads, the
    Mamba-g conv windows and SSM states, and F_ag's running sum: memory does not grow with the
    stream. The networks run under ``precision``'s autocast; the mel features and F_ag's sum are
    fp32."""

    def __init__(self, motion: MotionGenerator, device: torch.device, precision: str = "fp32"):
        self.motion, self.device, self.precision = motion, device, precision
        self.window, self.context = motion.config.window, motion.config.local_context
        self._kept = np.zeros(0, np.float32)    # samples from absolute sample self._kept_from on
        self._kept_from = 0
        self._arrived: List[np.ndarray] = []    # chunks not yet joined to self._kept
        self.samples = 0                        # samples pushed so far
        self.next_window = 0
        self._mel_read = 0                      # mel frames Mamba-g has read
        self._states = None
        self._global_sum = None
        self.total_samples: Optional[int] = None   # known at finish()

    def samples_needed(self, index: int) -> int:
        """Samples that window ``index`` needs before the end of the stream: the STFT frame of the
        last mel frame its Mamba-l slices read, 4((index + 1)W + c) − 1, ends 256 samples past
        that frame's centre."""
        last_mel = MEL_PER_VIDEO_FRAME * ((index + 1) * self.window + self.context) - 1
        return HOP_LENGTH * last_mel + N_FFT // 2

    @property
    def samples_held(self) -> int:
        """The samples held now (kept for the next window, or arrived and not joined yet)."""
        return self._kept.size + sum(chunk.size for chunk in self._arrived)

    def push(self, samples: np.ndarray) -> Iterator[WindowFeatures]:
        """Add 16 kHz float32 samples; yields the windows their arrival completes."""
        if self.total_samples is not None:
            raise RuntimeError("push after finish: the stream has ended")
        if samples.size:
            self._arrived.append(samples)
            self.samples += samples.size
        while self.samples >= self.samples_needed(self.next_window):
            yield self._window(self.next_window, (self.next_window + 1) * self.window)

    def finish(self) -> Iterator[WindowFeatures]:
        """The end of the stream: yields the windows left (the last one partial). Raises
        ValueError for a stream with no samples, or fewer than the STFT needs."""
        if self.samples == 0:
            raise ValueError("the audio stream is empty: no samples arrived")
        if self.samples < MIN_AUDIO_SAMPLES:
            raise ValueError(f"the audio stream holds {self.samples} samples; at least {MIN_AUDIO_SAMPLES} "
                             f"({MIN_AUDIO_SAMPLES / SAMPLE_RATE * 1000:.0f} ms at {SAMPLE_RATE} Hz) are needed")
        self.total_samples = self.samples
        frames = num_video_frames(self.total_samples)
        while self.next_window * self.window < frames:
            yield self._window(self.next_window, min((self.next_window + 1) * self.window, frames))

    def _from(self, sample: int) -> np.ndarray:
        """The samples from absolute sample ``sample`` to the last one arrived."""
        if self._arrived:
            self._kept = np.concatenate([self._kept, *self._arrived])
            self._arrived = []
        return self._kept[sample - self._kept_from:]

    def _fp32_in(self, features: torch.Tensor) -> torch.Tensor:
        return features[None].to(self.device)

    def _window(self, index: int, stop: int) -> WindowFeatures:
        start, context, ended = index * self.window, self.context, self.total_samples is not None
        total_mel = self.total_samples // HOP_LENGTH + 1 if ended else None
        frames = num_video_frames(self.total_samples) if ended else None
        # Mamba-g: the mel frames not read yet up to the last one this window's slices own (all at
        # the last window), read from 2 hops before them (no reflection but the clip's own ends).
        mel_stop = MEL_PER_VIDEO_FRAME * (stop + context)
        if ended:
            mel_stop = total_mel if stop == frames else min(mel_stop, total_mel)
        if mel_stop > self._mel_read:
            first = max(self._mel_read - 2, 0)
            mel = normalize_log_mel(log_mel_range(self._from(HOP_LENGTH * first), self._mel_read - first,
                                                  mel_stop - first))
            with autocast(self.precision, self.device):
                tokens, self._states = self.motion.mamba_g.stack.forward_chunk(self._fp32_in(mel), self._states)
            block = tokens.float().sum(dim=1)
            self._global_sum = block if self._global_sum is None else self._global_sum + block
            self._mel_read = mel_stop
        # Mamba-l: the slices of frames start … stop − 1, from a video frame before the first one
        # they read (or the clip's start), so the STFT reflects at the clip's ends only.
        origin = max(start - context - 1, 0)
        length = (frames if ended else stop + context) - origin
        windows = local_windows_range(self._from(SAMPLES_PER_FRAME * origin), length, start - origin,
                                      stop - origin, context)
        with autocast(self.precision, self.device):
            audio_local = self.motion.mamba_l(self._fp32_in(windows)).float()
        self.next_window = index + 1
        self._drop_before(SAMPLES_PER_FRAME * max(stop - context - 1, 0))
        return WindowFeatures(index, start, stop, audio_local, self._global_sum / self._mel_read, self._mel_read)

    def _drop_before(self, sample: int) -> None:
        if sample > self._kept_from:
            self._kept = self._from(sample)
            self._kept_from = sample


class MotionWindows:
    """Motion window after motion window, as ``MotionGenerator.generate`` samples them (both run
    ``mim.models.motion.WindowSampling``: DDIM with ``steps``, ``guidance_scale``, the config's
    by default, from the draws of ``generator`` in window order, each window conditioned on the
    last ``prev_frames`` normalized frames before it), under ``precision``'s autocast and
    denormalized. ``wrap`` swaps in a captured or compiled sampler (``mim.graphs``). Called with (F_ag (1, audio_dim), F_al (1, w, audio_dim)) -> the window's
    motion features (1, w, motion_dim), denormalized, fp32."""

    def __init__(self, motion: MotionGenerator, appearance: torch.Tensor, generator: torch.Generator,
                 steps: Optional[int] = None, guidance_scale: Optional[float] = None,
                 wrap: Optional[Callable] = None, precision: str = "fp32"):
        self.sampling = WindowSampling(motion, appearance, generator, steps, None, guidance_scale, wrap)
        self.motion, self.precision = motion, precision

    def __call__(self, audio_global: torch.Tensor, audio_local: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, audio_local.device):
            sample = self.sampling(audio_global, audio_local)
        return self.motion.denormalize(sample)


def render_windows(render: Callable[[torch.Tensor], torch.Tensor], motion: Iterable[torch.Tensor],
                   window: int) -> Iterator[torch.Tensor]:
    """Motion (1, n_k, motion_dim) pieces in frame order -> ``render`` of each run of ``window``
    frames as soon as the pieces hold it (the rest at the end): the same render windows, frame
    0 … window − 1, window …, whatever the pieces' sizes."""
    pending = None
    for piece in motion:
        pending = piece if pending is None else torch.cat([pending, piece], dim=1)
        while pending.shape[1] >= window:
            yield render(pending[:, :window])
            pending = pending[:, window:]
    if pending is not None and pending.shape[1]:
        yield render(pending)


class StreamMeter:
    """Timing of a live stream (``mim animate --stream``). :meth:`arrived` marks a chunk's arrival
    (its last sample's time), :meth:`frame` each frame out. A frame's latency is from the
    arrival of the last chunk in before it to the frame; the real-time factor is the time spent
    computing (the wall time less the time waiting for audio) over the audio's duration."""

    def __init__(self, report: Optional[Callable[[str], None]] = None):
        self.report = report
        self.start = time.perf_counter()
        self.waited = 0.0
        self.chunk, self.chunk_arrival, self.audio_seconds = -1, None, 0.0
        self.chunk_frames = 0
        self.frames = 0
        self.latencies: List[float] = []      # per frame, seconds
        self.chunk_latencies: List[float] = []   # per chunk that released frames: to its last frame

    def arrived(self, index: int, arrival: float, seconds: float, waited: float) -> None:
        self._close_chunk()
        self.chunk, self.chunk_arrival = index, arrival
        self.audio_seconds += seconds
        self.waited += waited

    def frame(self) -> None:
        now = time.perf_counter()
        self.latencies.append(now - self.chunk_arrival)
        self.frames += 1
        self.chunk_frames += 1

    def _close_chunk(self) -> None:
        if self.chunk_frames:
            latency = self.latencies[-1]
            self.chunk_latencies.append(latency)
            if self.report is not None:
                busy = time.perf_counter() - self.start - self.waited
                self.report(f"chunk {self.chunk} (audio to {self.audio_seconds:.2f} s): {self.chunk_frames} "
                            f"frames, latency {self.latencies[-self.chunk_frames] * 1000:.0f}-{latency * 1000:.0f} ms, "
                            f"{self.frames / max(busy, 1e-9):.1f} frames/s, real-time factor "
                            f"{busy / max(self.audio_seconds, 1e-9):.2f}")
        self.chunk_frames = 0

    def summary(self) -> dict:
        """Frames, audio seconds, compute seconds, frames/s, real-time factor, and the median,
        p95 and max of the per-chunk and per-frame latencies (ms)."""
        self._close_chunk()
        busy = time.perf_counter() - self.start - self.waited

        def spread(values):
            if not values:
                return {"median": None, "p95": None, "max": None}
            ms = np.asarray(values) * 1000
            return {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95)), "max": float(ms.max())}

        return {"frames": self.frames, "audio_seconds": self.audio_seconds, "compute_seconds": busy,
                "frames_per_second": self.frames / max(busy, 1e-9),
                "real_time_factor": busy / max(self.audio_seconds, 1e-9),
                "chunk_latency_ms": spread(self.chunk_latencies), "frame_latency_ms": spread(self.latencies)}


def live_chunks(samples: np.ndarray, chunk_samples: int, meter: StreamMeter, pace: bool = True,
                sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """``samples`` in chunks of ``chunk_samples``, as if spoken live: chunk k is handed over no
    sooner than its last sample's time after the first call (``pace``), and its arrival — that
    time, or the moment it is taken when the stream runs late — goes to ``meter``."""
    origin = time.perf_counter()
    for index, begin in enumerate(range(0, len(samples), chunk_samples)):
        chunk = samples[begin:begin + chunk_samples]
        due = origin + (begin + len(chunk)) / sample_rate
        now = time.perf_counter()
        waited = 0.0
        if pace and now < due:
            waited = due - now
            time.sleep(waited)
        meter.arrived(index, due if pace else time.perf_counter(), len(chunk) / sample_rate, waited)
        yield chunk


class StreamInterrupted(KeyboardInterrupt):
    """A ``stream_file`` run stopped by SIGINT or SIGTERM; nothing was written at its output."""


@contextlib.contextmanager
def _terminate_interrupts():
    """SIGTERM raises KeyboardInterrupt in the block (as SIGINT does), so the output's temporary
    file is removed on the way out; the old handler is back after it. Only the main thread can
    set handlers: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stream_file(animator, image, audio, out, chunk_ms: float = 200.0, steps=None, seed=0,
                guidance_scale=None, crop="face", face=0, crop_scale=None, progress=True,
                pace: bool = True) -> dict:
    """``mim animate --stream``: read ``audio`` (a file, resampled to 16 kHz), hand it to
    ``animator.stream`` in chunks of ``chunk_ms`` as if it arrived live, write the frames to
    ``out`` as they come (H.264 mp4, the audio muxed in), and print each chunk's frames,
    latency, frames/s and real-time factor to stderr (``progress``). The file appears at
    ``out`` only complete: it is written to a temporary file next to it and moved into place at
    the end (:func:`mim.io.atomic_output`), so a run stopped part way leaves no file at ``out``
    (an interrupt or SIGTERM also removes the temporary; after SIGKILL it stays behind, a hidden
    ``.<name>.tmp-*`` file). Returns :meth:`StreamMeter.summary`."""
    if isinstance(chunk_ms, bool) or not isinstance(chunk_ms, (int, float)) or not 0 < chunk_ms <= 60000:
        raise ValueError(f"chunk_ms must be a number in (0, 60000] (milliseconds), got {chunk_ms!r}")
    samples = load_audio(audio)
    chunk_samples = max(1, round(chunk_ms * SAMPLE_RATE / 1000))
    meter = StreamMeter((lambda line: print(f"mim: {line}", file=sys.stderr, flush=True)) if progress else None)
    options = {} if crop_scale is None else {"crop_scale": crop_scale}
    frames = animator.stream(image, live_chunks(samples, chunk_samples, meter, pace), steps=steps, seed=seed,
                             guidance_scale=guidance_scale, crop=crop, face=face, **options)

    def metered():
        for frame in frames:
            meter.frame()
            yield frame

    try:
        with _terminate_interrupts():
            write_video(out, metered(), fps=VIDEO_FPS, audio=samples, sample_rate=SAMPLE_RATE)
    except KeyboardInterrupt as stop:
        raise StreamInterrupted(f"interrupted ({stop.args[0] if stop.args else 'SIGINT'}) after {meter.frames} "
                                f"frames: no video written ({out} appears only complete)") from None
    summary = meter.summary()
    if progress:
        chunk = summary["chunk_latency_ms"]
        print(f"mim: streamed {summary['frames']} frames of {summary['audio_seconds']:.2f} s of audio: "
              f"{summary['frames_per_second']:.1f} frames/s, real-time factor {summary['real_time_factor']:.2f}, "
              f"latency per chunk median {chunk['median']:.0f} ms, p95 {chunk['p95']:.0f} ms, "
              f"max {chunk['max']:.0f} ms", file=sys.stderr, flush=True)
    return summary
