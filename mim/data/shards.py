"""The training-shard format: WebDataset tar files written by ``mim prepare``.

A shard is a plain tar (readable by ``webdataset.WebDataset``, ``tar tf`` or :mod:`tarfile`) whose
members are grouped into samples by their key (the member name up to its first dot). One sample
is one clip segment: a stretch of one source video in which one face was tracked without a cut.
Its members, for key ``K``:

- ``K.json``: UTF-8 JSON, :data:`SHARD_FORMAT` in ``"format"``, and ``"source"`` (the video's path
  relative to the prepared folder), ``"segment"`` (its index within that video), ``"start"`` and
  ``"end"`` (seconds in the source), ``"fps"`` (always 25.0 after resampling), ``"num_frames"``
  (T), ``"size"`` (S: frames are S × S), ``"sample_rate"`` (16000), ``"audio_samples"``,
  ``"boxes"`` (T crop squares ``[x0, y0, size]`` in source pixels, one per frame), and
  ``"detector"``;
- ``K.fNNNN.jpg`` (NNNN = 0000 .. T-1, zero-padded to at least 4 digits): frame NNNN as an
  S × S RGB JPEG (:data:`JPEG_QUALITY`), so a reader decodes only the frames it uses;
- ``K.wav``: the segment's audio, 16-bit PCM mono at 16 kHz, exactly
  ``round(T / fps * sample_rate)`` samples, aligned with frame 0 (a video without audio gives
  no ``K.wav`` member; ``"audio_samples"`` is then 0).

Keys hold no dots (so the grouping is unambiguous) and are unique within a shard.
"""
import io
import json
import re

import numpy as np
import soundfile
import torch
from PIL import Image

__all__ = ["SHARD_FORMAT", "JPEG_QUALITY", "ShardFormatError", "decode_audio", "decode_frames",
           "decode_frames_uint8",
           "encode_sample", "frame_field", "sample_key", "sample_metadata"]

SHARD_FORMAT = 1
JPEG_QUALITY = 95
_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")


class ShardFormatError(ValueError):
    """A shard sample does not follow the format above; the message names the sample and field."""


def sample_key(source: str, segment: int) -> str:
    """The sample key of ``segment`` of the video at relative path ``source``: the path with
    every character other than letters, digits, ``_`` and ``-`` replaced by ``_``, then
    ``-`` and the segment as 4+ digits (``talks/a.b.mp4``, 2 -> ``talks_a_b_mp4-0002``)."""
    if isinstance(segment, bool) or not isinstance(segment, (int, np.integer)) or segment < 0:
        raise ValueError(f"segment must be an int >= 0, got {segment!r}")
    stem = re.sub(r"[^A-Za-z0-9_\-]", "_", str(source)) or "_"
    return f"{stem}-{int(segment):04d}"


def frame_field(index: int) -> str:
    """The member suffix of frame ``index`` (``f0007.jpg``)."""
    return f"f{int(index):04d}.jpg"


def encode_sample(key: str, frames: np.ndarray, audio, metadata: dict) -> dict:
    """The members of one sample as ``{"__key__": key, field: bytes}`` (the dict
    ``webdataset.TarWriter.write`` takes). ``frames``: (T, S, S, 3) uint8; ``audio``: 1-D float
    array at 16 kHz of ``round(T / 25 * 16000)`` samples, or None; ``metadata``: the JSON fields
    other than format, num_frames, size, sample_rate, audio_samples (filled in here)."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ShardFormatError(f"sample key {key!r}: use letters, digits, '_' and '-' only")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[1] != frames.shape[2]:
        raise ShardFormatError(f"sample {key}: frames must be (T, S, S, 3) uint8, got "
                               f"{tuple(frames.shape)} {frames.dtype}")
    if frames.shape[0] < 1:
        raise ShardFormatError(f"sample {key}: no frames")
    meta = dict(metadata)
    fps = float(meta.get("fps", 25.0))
    meta.update(format=SHARD_FORMAT, num_frames=int(frames.shape[0]), size=int(frames.shape[1]),
                sample_rate=16000, fps=fps)
    sample = {"__key__": key}
    for index, frame in enumerate(frames):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        sample[frame_field(index)] = buffer.getvalue()
    if audio is None:
        meta["audio_samples"] = 0
    else:
        audio = np.asarray(audio, dtype=np.float32)
        expected = round(frames.shape[0] / fps * 16000)
        if audio.ndim != 1 or len(audio) != expected:
            raise ShardFormatError(f"sample {key}: audio must be 1-D with {expected} samples "
                                   f"(T = {frames.shape[0]} at {fps} fps), got {audio.shape}")
        buffer = io.BytesIO()
        soundfile.write(buffer, np.clip(audio, -1.0, 1.0), 16000, subtype="PCM_16", format="WAV")
        sample["wav"] = buffer.getvalue()
        meta["audio_samples"] = expected
    sample["json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
    return sample


def sample_metadata(sample: dict) -> dict:
    """The parsed, checked ``json`` member of a raw sample (members as bytes, keyed by suffix,
    with ``__key__``, as webdataset's tar iterators yield them)."""
    key = sample.get("__key__", "?")
    raw = sample.get("json")
    if raw is None:
        raise ShardFormatError(f"sample {key}: no json member")
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ShardFormatError(f"sample {key}: json member is not JSON ({error})") from None
    if meta.get("format") != SHARD_FORMAT:
        raise ShardFormatError(f"sample {key}: shard format {meta.get('format')!r}, this reader "
                               f"knows {SHARD_FORMAT}")
    missing = [f for f in ("num_frames", "size", "fps", "sample_rate", "audio_samples") if f not in meta]
    if missing:
        raise ShardFormatError(f"sample {key}: json lacks {', '.join(missing)}")
    return meta


def decode_frames_uint8(sample: dict, indices, size=None) -> torch.Tensor:
    """Frames ``indices`` of a raw sample as (n, 3, S, S) uint8: the JPEGs decoded and, when
    ``size`` is given and differs from theirs, resized to size × size (PIL bicubic, antialiased
    when shrinking)."""
    key = sample.get("__key__", "?")
    out = []
    for index in indices:
        raw = sample.get(frame_field(index))
        if raw is None:
            raise ShardFormatError(f"sample {key}: no member {frame_field(index)}")
        with Image.open(io.BytesIO(raw)) as image:
            image = image.convert("RGB")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.BICUBIC)
            pixels = np.asarray(image)
        out.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
    return torch.stack(out)


def decode_frames(sample: dict, indices) -> torch.Tensor:
    """Frames ``indices`` of a raw sample as (len(indices), 3, S, S) float32 in [0, 1]."""
    return decode_frames_uint8(sample, indices).float().div_(255.0)


def decode_audio(sample: dict) -> np.ndarray:
    """The raw sample's audio as 1-D float32 at 16 kHz (empty when the segment has none)."""
    raw = sample.get("wav")
    if raw is None:
        return np.zeros(0, np.float32)
    audio, rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=False)
    if rate != 16000 or audio.ndim != 1:
        raise ShardFormatError(f"sample {sample.get('__key__', '?')}: wav must be mono 16 kHz, "
                               f"got {rate} Hz, shape {audio.shape}")
    return audio
