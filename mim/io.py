"""Media in and out: images (Pillow), video and compressed audio (PyAV), wav/flac/ogg (soundfile).

Tensors follow the project's conventions: frames are float32 in [0, 1], an image is (3, H, W) and
a clip (T, 3, H, W); audio is a 1-D float32 numpy array, mono, with an int sample rate.

Every reader raises :class:`MediaError` (a ``ValueError``) for a missing, unreadable, corrupt or
empty file, naming the path and what was wrong. Every writer goes through :func:`atomic_output`:
the destination is either the complete new file or, after any failure, exactly what it was before.
"""
import contextlib
import errno
import itertools
import os
import secrets
import stat
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
from av.video.reformatter import ColorRange, Colorspace, Interpolation
from PIL import Image, UnidentifiedImageError

__all__ = [
    "MediaError",
    "OutputError",
    "atomic_output",
    "has_audio",
    "iter_video",
    "read_audio",
    "read_image",
    "read_video",
    "size_hw",
    "write_image",
    "write_video",
    "write_wav",
]

_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg"}
_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
_WAV_SUBTYPES = ("PCM_16", "FLOAT")
# write_video's fixed settings, so that the same frames give the same bytes on any machine: the
# colour conversion (tagged in the stream, so decoders invert the same matrix), one x264 thread
# (x264 otherwise picks its thread count, and with it its output, from the CPUs it may use), and
# bitexact muxer/encoder flags (no library version strings in the file).
_VIDEO_COLORSPACE = Colorspace.ITU601
_VIDEO_RANGE = ColorRange.MPEG
_X264_OPTIONS = {"preset": "medium", "threads": "1", "flags": "+bitexact"}
_AAC_OPTIONS = {"flags": "+bitexact"}
_MUXER_OPTIONS = {"fflags": "+bitexact"}


class MediaError(ValueError):
    """A media file is missing, unreadable, corrupt or empty; the message names the path."""


class OutputError(OSError):
    """An output file cannot be written (a directory in its place, a read-only file system, a
    full disk, no permission); the message names the path. ``errno`` is the cause's."""

    def __init__(self, path, reason, errno=None):
        super().__init__(f"{path}: cannot write ({reason})")
        self.errno = errno


# OSErrors a writer meets because of where it writes: turned into OutputError naming the file.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                 errno.EDQUOT, errno.EFBIG, errno.EIO, errno.ENAMETOOLONG, errno.EEXIST}


def _output_error(path, error):
    if isinstance(error, OutputError) or not isinstance(error, OSError) or error.errno not in _WRITE_ERRNOS:
        return None
    return OutputError(path, error.strerror or str(error), error.errno)


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path next to ``path``; on success move it onto ``path`` atomically.

    The temporary file is ``.<name>.tmp-<random><suffix>`` in the destination directory (same
    file system, so ``os.replace`` is atomic; same suffix, so encoders that pick a container by
    suffix pick the right one). It exists, empty, when the block starts; the block writes it.
    On leaving the block normally the file is flushed to disk and replaces ``path``. On any
    exception the temporary file is removed and ``path`` is left untouched. The destination
    directory is created if missing. Permissions follow the umask, as for a plain ``open``.

    ``path`` being a directory, and an OSError of the file system (read-only, full, no
    permission: ``EROFS``, ``ENOSPC``, ``EACCES``, ...) raised while creating, writing or
    renaming, raise :class:`OutputError` naming ``path``; other exceptions pass unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "it is a directory; give a file name", errno.EISDIR)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}{path.suffix}")
            try:
                os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue
    except OSError as error:
        raise OutputError(path, error.strerror or str(error), error.errno) from None
    try:
        mode = stat.S_IMODE(os.stat(temp).st_mode)   # 0o666 less the umask
        yield temp
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        # a writer that recreated the file (safetensors does, as 0o600) gets the umask's mode back
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        wrapped = _output_error(path, error)
        if wrapped is not None:
            raise wrapped from error
        raise


def _require_file(path):
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if not path.is_file():
        raise MediaError(f"{path}: not a regular file")
    return path


def size_hw(size, name="size"):
    """``None`` -> None, ``int`` -> (size, size), ``(h, w)`` -> (h, w); positive ints only."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"{name} must be None, an int or a pair (height, width) of ints, got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return hw


def _resize(rgb, hw):
    """Resize a float32 (H, W, 3) array in [0, 1] to ``hw`` with Pillow's antialiased bicubic."""
    if hw is None or rgb.shape[:2] == hw:
        return rgb
    height, width = hw
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c]), mode="F")
                   .resize((width, height), Image.Resampling.BICUBIC))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def _pil_to_rgb_float(image):
    """Any Pillow mode -> float32 (H, W, 3) in [0, 1]; alpha is composited over white."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + (1.0 - alpha)
    if image.mode.startswith("I"):
        # 16-bit grayscale (PNG opens as I;16 or I): full scale is 65535.
        gray = np.asarray(image, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=-1)
    if image.mode == "F":
        gray = np.asarray(image, dtype=np.float32)
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def read_image(path, size=None):
    """Read an image file as a float32 tensor (3, H, W) in [0, 1].

    Every Pillow mode is converted to RGB: grayscale (1, L, I;16, I, F: 16-bit scaled by 65535,
    float clipped to [0, 1]), palette, CMYK, YCbCr; an alpha channel or a transparency key is
    composited over white. ``size`` (an int for a square, or ``(height, width)``) resizes with
    Pillow's antialiased bicubic filter, per channel in float precision.

    An image of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (about 89 Mpixel, Pillow's
    decompression-bomb limit; 12 bytes a pixel once in float) is refused with a
    :class:`MediaError`, from its header alone, before anything is decoded: downscale it first.
    """
    path = _require_file(path)
    hw = size_hw(size)
    try:
        with Image.open(path) as image:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and image.width * image.height > limit:
                raise MediaError(f"{path}: image is {image.width}x{image.height} pixels, more than the "
                                 f"{limit:,} this reader decodes (Pillow's decompression-bomb limit); "
                                 f"downscale it first")
            image.load()
            rgb = _pil_to_rgb_float(image)
    except MediaError:
        raise
    except Image.DecompressionBombError as error:
        raise MediaError(f"{path}: image refused as too large to decode ({error}); downscale it first") from error
    except UnidentifiedImageError as error:
        raise MediaError(f"{path}: not an image Pillow can read") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise MediaError(f"{path}: truncated or corrupt image ({error})") from error
    if rgb.size == 0:
        raise MediaError(f"{path}: image has no pixels")
    return torch.from_numpy(np.ascontiguousarray(_resize(rgb, hw).transpose(2, 0, 1)))


def _check_frame(frame, name):
    """Validate one (3, H, W) float tensor; return it as uint8 (H, W, 3) (values clamped)."""
    if not isinstance(frame, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(frame).__name__}")
    if not frame.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor in [0, 1], got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[0] != 3:
        raise ValueError(f"{name} must have shape (3, H, W), got {tuple(frame.shape)}")
    if frame.shape[1] == 0 or frame.shape[2] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(frame.shape)}")
    if not torch.isfinite(frame).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    pixels = frame.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round_()
    return pixels.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def write_image(path, image):
    """Write a (3, H, W) float tensor in [0, 1] as PNG or JPEG (chosen by suffix), atomically.

    Values are clamped to [0, 1] and rounded to 8 bits; JPEG is written at quality 95.
    """
    path = Path(path)
    image_format = _IMAGE_FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"path {path}: suffix must be one of {sorted(_IMAGE_FORMATS)}")
    pixels = _check_frame(image, "image")
    options = {"quality": 95} if image_format == "JPEG" else {}
    with atomic_output(path) as temp:
        Image.fromarray(pixels, mode="RGB").save(temp, format=image_format, **options)


def read_video(path, size=None, max_frames=None):
    """Decode the first video stream of ``path``: (frames (T, 3, H, W) float32 in [0, 1], fps).

    ``size`` (int or ``(height, width)``) resizes every frame as :func:`read_image` does;
    ``max_frames`` stops after that many frames. fps is the stream's average frame rate. The whole
    clip is held in memory: :func:`iter_video` decodes one frame at a time.
    """
    frames, rate = iter_video(path, size=size, max_frames=max_frames)
    return torch.stack(list(frames)), rate


def iter_video(path, size=None, max_frames=None):
    """Open the first video stream of ``path`` for decoding frame by frame: (frames, fps).

    ``frames`` is an iterator of (3, H, W) float32 tensors in [0, 1], decoded only as they are
    taken (one frame in memory at a time); ``size`` and ``max_frames`` as for :func:`read_video`.
    The file, its video stream and its frame rate are checked before this returns; a file that
    turns out corrupt while decoding, or whose stream holds no frame, raises :class:`MediaError`
    from the iterator. The file is closed when the iterator is exhausted or closed.
    """
    path = _require_file(path)
    hw = size_hw(size)
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer))
                                   or max_frames < 1):
        raise ValueError(f"max_frames must be None or a positive int, got {max_frames!r}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise MediaError(f"{path}: cannot decode video ({error})") from error
    try:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise MediaError(f"{path}: the video stream has no frame rate")
    except BaseException:
        container.close()
        raise
    return _decode_video(path, container, stream, hw, max_frames), float(rate)


def _decode_video(path, container, stream, hw, max_frames):
    count = 0
    try:
        with container:
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0
                yield torch.from_numpy(np.ascontiguousarray(_resize(rgb, hw).transpose(2, 0, 1)))
                count += 1
                if max_frames is not None and count == max_frames:
                    return
    except av.FFmpegError as error:
        raise MediaError(f"{path}: cannot decode video ({error})") from error
    if count == 0:
        raise MediaError(f"{path}: the video stream has no frames")


def _check_audio(audio, sample_rate):
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D (mono) array, got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise TypeError(f"audio must be a float array in [-1, 1], got dtype {audio.dtype}")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite values")
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    return audio.astype(np.float32, copy=False)


def _frame_stream(frames):
    """(first uint8 frame, iterator of later uint8 frames); the first is validated eagerly."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must have shape (T, 3, H, W), got {tuple(frames.shape)}")
        if frames.shape[0] == 0:
            raise ValueError("frames is empty: T = 0")
        if frames.is_floating_point() and not torch.isfinite(frames).all():
            raise ValueError("frames contains NaN or infinite values")
    iterator = iter(frames)
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("frames is empty: the iterable yielded no frame") from None
    first = _check_frame(first, "frames[0]")
    height, width = first.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(
            f"frames must have even height and width for H.264 yuv420p, got {height}x{width}")

    def rest():
        for index, frame in enumerate(iterator, start=1):
            pixels = _check_frame(frame, f"frames[{index}]")
            if pixels.shape[:2] != (height, width):
                raise ValueError(f"frames[{index}] is {pixels.shape[0]}x{pixels.shape[1]}, "
                                 f"frames[0] is {height}x{width}")
            yield pixels

    return first, rest()


def write_video(path, frames, fps=25, audio=None, sample_rate=16000, crf=18):
    """Encode frames as H.264 (libx264, yuv420p, ``crf``) in an mp4, with AAC audio if given.

    ``frames``: a float tensor (T, 3, H, W) in [0, 1] or any iterable of (3, H, W) float tensors
    (frames are encoded as they arrive, so a long video need not be held in memory). Values are
    clamped to [0, 1]. Height and width must be even (yuv420p subsamples chroma by 2); odd sizes
    raise ``ValueError`` rather than being padded. ``audio``: a 1-D float array at
    ``sample_rate``, muxed as mono AAC as given (neither cut nor padded to the video's length),
    interleaved with the video frame by frame. A tensor's frames, the first frame of an iterable
    and the audio are validated before any file is created; a later bad frame raises and, as
    with any failure, no file is left behind.

    The output is reproducible: the same frames and audio give the same bytes on any machine
    (frames converted to yuv420p here, BT.601 limited range, tagged in the stream; one x264
    thread; bitexact flags, so no library version strings in the file).
    """
    path = Path(path)
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction, np.number)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
        raise ValueError(f"crf must be an int in [0, 51], got {crf!r}")
    if audio is not None:
        audio = _check_audio(audio, sample_rate)
    first, rest = _frame_stream(frames)
    rate = fps if isinstance(fps, Fraction) else Fraction(float(fps)).limit_denominator(1001)
    with (atomic_output(path) as temp,
          av.open(str(temp), mode="w", format="mp4", container_options=_MUXER_OPTIONS) as container):
        video = container.add_stream("libx264", rate=rate)
        video.height, video.width = first.shape[:2]
        video.pix_fmt = "yuv420p"
        video.colorspace, video.color_range = _VIDEO_COLORSPACE, _VIDEO_RANGE
        video.options = {"crf": str(int(crf)), **_X264_OPTIONS}
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=int(sample_rate))
            sound.layout = "mono"
            sound.options = dict(_AAC_OPTIONS)
        samples_written = 0
        for index, pixels in enumerate(itertools.chain([first], rest)):
            frame = _to_yuv420p(pixels)
            frame.pts = index
            container.mux(video.encode(frame))
            if sound is not None:
                end = min(len(audio), round((index + 1) / rate * sample_rate))
                if end > samples_written:
                    _encode_audio(container, sound, audio[samples_written:end], sample_rate, samples_written)
                    samples_written = end
        container.mux(video.encode(None))
        if sound is not None:
            if len(audio) > samples_written:
                _encode_audio(container, sound, audio[samples_written:], sample_rate, samples_written)
            container.mux(sound.encode(None))


def _to_yuv420p(pixels):
    """uint8 (H, W, 3) RGB -> a yuv420p frame: BT.601 matrix, limited range, converted here with
    swscale's bit-exact C arithmetic on one thread (not left to ``encode()``, whose automatic
    conversion picks SIMD paths and threads by machine)."""
    return av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(
        format="yuv420p", src_colorspace=_VIDEO_COLORSPACE, dst_colorspace=_VIDEO_COLORSPACE,
        src_color_range=ColorRange.JPEG, dst_color_range=_VIDEO_RANGE,
        interpolation=Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT,
        threads=1)


def _encode_audio(container, stream, samples, sample_rate, pts):
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None]), format="fltp", layout="mono")
    frame.sample_rate = int(sample_rate)
    frame.pts = pts
    container.mux(stream.encode(frame))


def _resample(audio, from_rate, to_rate):
    """Resample mono float32 audio with libswresample (PyAV's AudioResampler)."""
    if from_rate == to_rate or audio.size == 0:
        return audio
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None]), format="flt", layout="mono")
    frame.sample_rate = from_rate
    pieces = [out.to_ndarray()[0] for out in resampler.resample(frame) + resampler.resample(None)]
    return np.concatenate(pieces).astype(np.float32, copy=False)


def has_audio(path):
    """Whether the container at ``path`` holds an audio stream (files soundfile reads always do)."""
    path = _require_file(path)
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        return True
    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except av.FFmpegError as error:
        raise MediaError(f"{path}: cannot open ({error})") from error


def read_audio(path, sample_rate=16000):
    """Read audio as mono float32 at ``sample_rate``.

    wav, flac and ogg are read with soundfile; anything else (mp3, m4a, the audio track of an
    mp4, ...) with PyAV, first audio stream. Channels are averaged to mono, then the signal is
    resampled with libswresample (PyAV's ``AudioResampler``). A file with zero samples gives an
    empty array; a container without an audio stream raises :class:`MediaError`.
    """
    path = _require_file(path)
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError) as error:
            raise MediaError(f"{path}: cannot read audio ({error})") from error
        mono = data.mean(axis=1, dtype=np.float32)
    else:
        mono, rate = _decode_audio(path)
    return _resample(np.ascontiguousarray(mono, dtype=np.float32), int(rate), int(sample_rate))


def _decode_audio(path):
    """Decode the first audio stream with PyAV: (mono float32, native sample rate)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            rate = stream.sample_rate
            pieces = []
            converter = None
            for frame in container.decode(stream):
                if converter is None:
                    converter = av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.sample_rate)
                    rate = frame.sample_rate
                pieces.extend(out.to_ndarray().mean(axis=0) for out in converter.resample(frame))
            if converter is not None:
                pieces.extend(out.to_ndarray().mean(axis=0) for out in converter.resample(None))
    except av.FFmpegError as error:
        raise MediaError(f"{path}: cannot decode audio ({error})") from error
    if not rate:
        raise MediaError(f"{path}: the audio stream has no sample rate")
    mono = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return mono.astype(np.float32, copy=False), rate


def write_wav(path, audio, sample_rate, subtype="PCM_16"):
    """Write mono audio as a wav file, atomically: 16-bit PCM (clipped to [-1, 1]) or 32-bit float.

    ``subtype`` is ``"PCM_16"`` or ``"FLOAT"``.
    """
    audio = _check_audio(audio, sample_rate)
    if subtype not in _WAV_SUBTYPES:
        raise ValueError(f"subtype must be one of {_WAV_SUBTYPES}, got {subtype!r}")
    if subtype == "PCM_16":
        audio = np.clip(audio, -1.0, 1.0)
    with atomic_output(path) as temp:
        soundfile.write(str(temp), audio, int(sample_rate), subtype=subtype, format="WAV")
