"""Audio front end of stage 2: an audio file -> mono 16 kHz -> log-mel, aligned to 25 fps video.

The features the Mamba extractors read (paper §III-B): Mamba-g runs over the whole clip's log-mel
(:attr:`AudioFeatures.mel`), Mamba-l over the mel frames around each video frame
(:meth:`AudioFeatures.local_windows`).

Spectrogram
    16 kHz mono; STFT with a 400-sample (25 ms) periodic Hann window, n_fft 512 (the window is
    zero-padded to 512, centred), hop 160 samples (10 ms, 100 mel frames/s); ``center=True`` with
    reflect padding of n_fft // 2, so a clip of N samples gives ``N // 160 + 1`` mel frames and mel
    frame m is centred on sample 160 m, time m / 100 s. Power spectrum |X|^2, unnormalized window.
Mel filterbank
    80 triangular filters from 0 to 8000 Hz on the HTK mel scale, mel = 2595 log10(1 + f / 700),
    centres equally spaced in mel; each triangle is area-normalized the Slaney way (scaled by
    2 / (upper edge - lower edge) in Hz), so a filter averages power over its band rather than
    summing it, and wide high-frequency filters do not dominate.
Log
    natural log of (mel energy + 1e-6): exact silence gives :data:`LOG_FLOOR` = ln(1e-6) ≈ -13.8
    everywhere, finite. 16-bit quantization noise lies far below the 1e-6 floor, so a silent
    16-bit file also reads as the floor.
Normalization
    features are (log-mel - :data:`LOG_MEL_MEAN`) / :data:`LOG_MEL_STD`, a fixed affine map (no
    per-clip statistics): -9 and 4 are the rounded mean (-9.3) and standard deviation (4.3) of the
    log-mel of :func:`mim.data.synthetic.speech_like_audio` (10 s clips, seeds 0-3, pauses
    included), so values are O(1): silence sits at :data:`FEATURE_FLOOR` = (ln(1e-6) + 9) / 4
    ≈ -1.20, a full-scale tone near +3.
Alignment
    video frame t covers audio time [t / 25, (t + 1) / 25) s; mel frame m is centred at m / 100 s,
    so video frame t owns mel frames 4t .. 4t + 3, whose centres all lie inside its interval.
    A clip of N samples has ceil(N / 16000 * 25) video frames (:func:`num_video_frames`); its
    last video frames may own mel frames past the end of the clip, which are filled with silence.
Resampling
    done once, on reading (:func:`load_audio`, libswresample through :func:`mim.io.read_audio`).
    :func:`log_mel` takes 16 kHz audio only and refuses any other ``sample_rate``.
"""
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from mim.io import MediaError, read_audio

__all__ = [
    "AudioFeatures",
    "FEATURE_FLOOR",
    "FMAX",
    "FMIN",
    "HOP_LENGTH",
    "LOG_EPSILON",
    "LOG_FLOOR",
    "LOG_MEL_MEAN",
    "LOG_MEL_STD",
    "MEL_BINS",
    "MEL_FPS",
    "MEL_PER_VIDEO_FRAME",
    "MIN_AUDIO_SAMPLES",
    "N_FFT",
    "SAMPLE_RATE",
    "VIDEO_FPS",
    "WIN_LENGTH",
    "audio_features",
    "hz_to_mel",
    "load_audio",
    "local_windows_range",
    "log_mel",
    "log_mel_range",
    "mel_filterbank",
    "mel_to_hz",
    "normalize_log_mel",
    "num_video_frames",
]

SAMPLE_RATE = 16000
MEL_BINS = 80
MEL_FPS = 100
HOP_LENGTH = SAMPLE_RATE // MEL_FPS  # 160 samples, 10 ms
WIN_LENGTH = 400  # 25 ms Hann window
N_FFT = 512
FMIN = 0.0
FMAX = 8000.0
VIDEO_FPS = 25
MEL_PER_VIDEO_FRAME = MEL_FPS // VIDEO_FPS  # 4
LOG_EPSILON = 1e-6
LOG_FLOOR = math.log(LOG_EPSILON)
LOG_MEL_MEAN = -9.0
LOG_MEL_STD = 4.0
FEATURE_FLOOR = (LOG_FLOOR - LOG_MEL_MEAN) / LOG_MEL_STD
# log_mel's STFT reflect-pads n_fft // 2 samples at each end, so a clip needs one sample more.
MIN_AUDIO_SAMPLES = N_FFT // 2 + 1


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float, Fraction, np.number)) and not isinstance(value, bool)


def hz_to_mel(freq):
    """HTK mel scale: 2595 log10(1 + f / 700). Takes a float or a tensor of frequencies in Hz."""
    if isinstance(freq, torch.Tensor):
        return 2595.0 * torch.log10(1.0 + freq / 700.0)
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def mel_to_hz(mel):
    """Inverse of :func:`hz_to_mel`: 700 (10^(m / 2595) - 1). Takes a float or a tensor."""
    if isinstance(mel, torch.Tensor):
        return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_fft=N_FFT, n_mels=MEL_BINS, sample_rate=SAMPLE_RATE, fmin=FMIN, fmax=FMAX):
    """Triangular mel filters as a float32 tensor (n_mels, n_fft // 2 + 1); mel = weights @ power.

    n_mels + 2 points equally spaced on the HTK mel scale from ``fmin`` to ``fmax`` give, for
    filter i, its lower edge, centre and upper edge (points i, i + 1, i + 2). The weight of FFT
    bin k (frequency k sample_rate / n_fft) rises linearly from 0 at the lower edge to 1 at the
    centre and falls back to 0 at the upper edge, then the whole filter is multiplied by
    2 / (upper - lower) (Slaney area normalization: unit area in Hz). Raises ``ValueError`` if a
    filter is so narrow that no FFT bin falls inside it (too many ``n_mels`` for ``n_fft``).
    """
    if not _is_int(n_fft) or n_fft < 2:
        raise ValueError(f"n_fft must be an int >= 2, got {n_fft!r}")
    if not _is_int(n_mels) or n_mels < 1:
        raise ValueError(f"n_mels must be a positive int, got {n_mels!r}")
    if not _is_number(sample_rate) or not sample_rate > 0:
        raise ValueError(f"sample_rate must be a positive number, got {sample_rate!r}")
    if not _is_number(fmin) or not fmin >= 0:
        raise ValueError(f"fmin must be a number >= 0, got {fmin!r}")
    if not _is_number(fmax) or not fmin < fmax <= sample_rate / 2:
        raise ValueError(f"fmax must be a number in (fmin, sample_rate / 2] = ({fmin}, {sample_rate / 2}], "
                         f"got {fmax!r}")
    mels = torch.linspace(hz_to_mel(float(fmin)), hz_to_mel(float(fmax)), n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mels)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (float(sample_rate) / n_fft)
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0) * (2.0 / (upper - lower))
    empty = (weights.sum(dim=1) == 0).nonzero().flatten()
    if empty.numel():
        first = int(empty[0])
        raise ValueError(
            f"n_mels={n_mels} is too many for n_fft={n_fft} at sample_rate={sample_rate}: filter {first} "
            f"({edges[first]:.1f}-{edges[first + 2]:.1f} Hz) contains no FFT bin "
            f"(bins are {sample_rate / n_fft:.2f} Hz apart)")
    return weights.to(torch.float32)


def _check_audio(audio):
    """1-D float numpy array or tensor, finite, long enough for reflect padding -> float32 tensor."""
    if isinstance(audio, np.ndarray):
        if not np.issubdtype(audio.dtype, np.floating):
            raise TypeError(f"audio must be a float array, got dtype {audio.dtype}")
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    elif isinstance(audio, torch.Tensor):
        if not audio.is_floating_point():
            raise TypeError(f"audio must be a float tensor, got dtype {audio.dtype}")
    else:
        raise TypeError(f"audio must be a 1-D numpy array or torch.Tensor, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D (mono samples), got shape {tuple(audio.shape)}")
    if audio.shape[0] <= N_FFT // 2:
        minimum = N_FFT // 2 + 1
        raise ValueError(f"audio must have at least {minimum} samples ({minimum / SAMPLE_RATE * 1000:.0f} ms "
                         f"at {SAMPLE_RATE} Hz) for the STFT's reflect padding, got {audio.shape[0]}")
    if not torch.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite values")
    return audio.to(torch.float32)


def log_mel(audio, sample_rate=SAMPLE_RATE):
    """Natural-log mel spectrogram ln(mel power + 1e-6): float32 (N // 160 + 1, 80) for N samples.

    ``audio``: 1-D float numpy array or tensor of 16 kHz mono samples, at least 257 long (the
    STFT reflect-pads 256 samples at each end). Computed on the tensor's device. Row m is the mel
    frame centred on sample 160 m (see the module docstring for the STFT and filterbank).
    ``sample_rate`` must be 16000: there is no resampling here; read files with
    :func:`load_audio`, which resamples on reading.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"sample_rate must be {SAMPLE_RATE} (log_mel does not resample; load_audio "
                         f"resamples on reading), got {sample_rate!r}")
    audio = _check_audio(audio)
    window = torch.hann_window(WIN_LENGTH, periodic=True, device=audio.device)
    spectrum = torch.stft(audio, n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH, window=window,
                          center=True, pad_mode="reflect", return_complex=True)
    power = spectrum.real.square() + spectrum.imag.square()
    mel = mel_filterbank().to(audio.device) @ power
    return torch.log(mel + LOG_EPSILON).T.contiguous()


def log_mel_range(audio, start, stop):
    """``log_mel(audio)[start:stop]``, computed from only the samples those mel frames read.

    ``audio``: 1-D float32 numpy array of 16 kHz samples, at least 257 long (already checked:
    only the samples read here are checked for NaN/inf); 0 <= start < stop <= N // 160 + 1. Mel
    frame m reads samples 160 m - 256 … 160 m + 255 of the clip reflect-padded by 256 at each end,
    as :func:`log_mel`'s centred STFT does, so a long clip can be featurized a chunk at a time.
    """
    if not isinstance(audio, np.ndarray) or audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise TypeError(f"audio must be a 1-D float numpy array, got "
                        f"{getattr(audio, 'dtype', type(audio).__name__)} of shape {getattr(audio, 'shape', None)}")
    total = audio.shape[0] // HOP_LENGTH + 1
    if not (_is_int(start) and _is_int(stop) and 0 <= start < stop <= total):
        raise ValueError(f"start, stop must be ints with 0 <= start < stop <= {total} (the clip's mel "
                         f"frames), got {start!r}, {stop!r}")
    if audio.shape[0] <= N_FFT // 2:
        raise ValueError(f"audio must have at least {N_FFT // 2 + 1} samples, got {audio.shape[0]}")
    last = audio.shape[0] - 1
    index = np.abs(np.arange(start * HOP_LENGTH - N_FFT // 2, (stop - 1) * HOP_LENGTH + N_FFT // 2))
    index = np.where(index > last, 2 * last - index, index)
    segment = torch.from_numpy(np.ascontiguousarray(audio[index], dtype=np.float32))
    if not torch.isfinite(segment).all():
        raise ValueError("audio contains NaN or infinite values")
    window = torch.hann_window(WIN_LENGTH, periodic=True)
    spectrum = torch.stft(segment, n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH, window=window,
                          center=False, return_complex=True)
    power = spectrum.real.square() + spectrum.imag.square()
    return torch.log(mel_filterbank() @ power + LOG_EPSILON).T.contiguous()


def local_windows_range(audio, num_frames, start, stop, context=2):
    """``audio_features(audio, num_frames).local_windows(context)[start:stop]``, computed from only
    the mel frames that video frames start - context … stop + context - 1 own:
    (stop - start, 4 (2 context + 1), 80) float32.

    So Mamba-l's slices of a long clip can be built a chunk of video frames at a time.
    ``audio``: 1-D float numpy array of 16 kHz samples, at least :data:`MIN_AUDIO_SAMPLES` long;
    0 <= start < stop <= num_frames. Video frames outside [0, num_frames) and mel frames past the
    clip's end are silence (:data:`FEATURE_FLOOR`), as in :meth:`AudioFeatures.local_windows`.
    """
    if not _is_int(num_frames) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    if not (_is_int(start) and _is_int(stop) and 0 <= start < stop <= num_frames):
        raise ValueError(f"start, stop must be ints with 0 <= start < stop <= num_frames = {num_frames}, "
                         f"got {start!r}, {stop!r}")
    if not _is_int(context) or context < 0:
        raise ValueError(f"context must be an int >= 0, got {context!r}")
    if not isinstance(audio, np.ndarray) or audio.ndim != 1:
        raise TypeError(f"audio must be a 1-D float numpy array, got "
                        f"{getattr(audio, 'dtype', type(audio).__name__)} of shape {getattr(audio, 'shape', None)}")
    first, last = start - context, stop + context              # the video frames read: [first, last)
    lo, hi = max(first, 0), min(last, num_frames)
    mel_lo = lo * MEL_PER_VIDEO_FRAME
    mel_hi = min(hi * MEL_PER_VIDEO_FRAME, len(audio) // HOP_LENGTH + 1)
    per_frame = torch.full(((last - first) * MEL_PER_VIDEO_FRAME, MEL_BINS), FEATURE_FLOOR)
    if mel_hi > mel_lo:
        offset = (lo - first) * MEL_PER_VIDEO_FRAME
        per_frame[offset:offset + mel_hi - mel_lo] = normalize_log_mel(log_mel_range(audio, mel_lo, mel_hi))
    windows = per_frame.view(last - first, MEL_PER_VIDEO_FRAME, MEL_BINS).unfold(0, 2 * context + 1, 1)
    return windows.permute(0, 3, 1, 2).reshape(stop - start, -1, MEL_BINS)


def normalize_log_mel(log_mel_frames):
    """(log-mel - LOG_MEL_MEAN) / LOG_MEL_STD: the fixed affine map to O(1) features."""
    return (log_mel_frames - LOG_MEL_MEAN) / LOG_MEL_STD


def load_audio(path):
    """Read any common audio file (or a video's audio track) as mono float32 at 16 kHz.

    :func:`mim.io.read_audio` does the reading: channels are averaged, the signal is resampled
    with libswresample. Raises :class:`mim.io.MediaError` naming the path for a missing, corrupt
    or audio-less file, for a file that holds no samples at all (silence of any nonzero length
    is valid audio and is returned as it is), and for one whose samples include NaN or infinity
    (a float wav can hold them; they would poison every mel frame after them).
    """
    audio = read_audio(path, SAMPLE_RATE)
    if audio.size == 0:
        raise MediaError(f"{path}: the file holds no audio samples")
    finite = np.isfinite(audio)
    if not finite.all():
        first = int(np.argmin(finite))
        raise MediaError(f"{path}: the audio holds {int(audio.size - finite.sum())} NaN or infinite "
                         f"sample(s) (the first at {first / SAMPLE_RATE:.3f} s after resampling to "
                         f"{SAMPLE_RATE} Hz)")
    return audio


def num_video_frames(num_samples, sample_rate=SAMPLE_RATE, fps=VIDEO_FPS):
    """Video frames needed to cover ``num_samples`` of audio: ceil(num_samples / sample_rate * fps).

    Exact rational arithmetic (a float ``fps`` is read as the nearest fraction with denominator
    at most 1001, so 29.97 and 30000 / 1001 both work). 0 samples -> 0 frames.
    """
    if not _is_int(num_samples) or num_samples < 0:
        raise ValueError(f"num_samples must be an int >= 0, got {num_samples!r}")
    if not _is_int(sample_rate) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if not _is_number(fps) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if isinstance(fps, (int, np.integer, Fraction)):
        rate = Fraction(fps)
    else:
        rate = Fraction(float(fps)).limit_denominator(1001)
    return math.ceil(Fraction(int(num_samples)) * rate / int(sample_rate))


@dataclass(frozen=True)
class AudioFeatures:
    """Normalized log-mel features of one clip, aligned to its video frames.

    ``mel``: (M, 80) float32, the whole clip (what Mamba-g reads). ``mel_per_frame``: (T, 4, 80),
    row t holds mel frames 4t .. 4t + 3, the ones centred inside video frame t; frames past the
    end of the clip are :data:`FEATURE_FLOOR` (silence).
    """

    mel: torch.Tensor
    mel_per_frame: torch.Tensor

    @property
    def num_frames(self):
        """T, the number of video frames."""
        return self.mel_per_frame.shape[0]

    def local_windows(self, context=2):
        """Mel frames of video frames t - context .. t + context: (T, 4 (2 context + 1), 80).

        The per-frame slices Mamba-l reads. Row t is ``mel_per_frame[t - context : t + context + 1]``
        flattened in time order; video frames before the first or after the last are silence
        (:data:`FEATURE_FLOOR`).
        """
        if not _is_int(context) or context < 0:
            raise ValueError(f"context must be an int >= 0, got {context!r}")
        silence = self.mel_per_frame.new_full((int(context), MEL_PER_VIDEO_FRAME, MEL_BINS), FEATURE_FLOOR)
        padded = torch.cat([silence, self.mel_per_frame, silence])
        windows = padded.unfold(0, 2 * context + 1, 1)  # (T, 4, 80, 2 context + 1)
        return windows.permute(0, 3, 1, 2).reshape(self.num_frames, -1, MEL_BINS)


def audio_features(audio, num_frames=None):
    """Normalized log-mel of 16 kHz mono ``audio`` split over ``num_frames`` 25 fps video frames.

    ``num_frames`` defaults to :func:`num_video_frames` of the clip (every video frame that
    overlaps the audio). A larger value pads with silence, a smaller one drops the mel frames of
    video frames past it from ``mel_per_frame`` (``mel`` always covers the whole clip).
    """
    mel = normalize_log_mel(log_mel(audio))
    if num_frames is None:
        num_frames = num_video_frames(len(audio))
    elif not _is_int(num_frames) or num_frames < 1:
        raise ValueError(f"num_frames must be None or a positive int, got {num_frames!r}")
    needed = int(num_frames) * MEL_PER_VIDEO_FRAME
    owned = mel[:needed]
    if owned.shape[0] < needed:
        silence = owned.new_full((needed - owned.shape[0], MEL_BINS), FEATURE_FLOOR)
        owned = torch.cat([owned, silence])
    return AudioFeatures(mel=mel, mel_per_frame=owned.reshape(int(num_frames), MEL_PER_VIDEO_FRAME, MEL_BINS))
