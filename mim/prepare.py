"""``mim prepare``: raw talking-head videos -> training shards (the format of :mod:`mim.data.shards`).

Per video: decode (PyAV), resample to 25 fps by timestamps, track the face
(:class:`mim.face.FaceTracker`), cut the video into segments where the track is cut, crop each
frame to the model's size around the tracked square, take the segment's audio (16 kHz mono,
aligned to its first frame), and write one shard sample per segment. docs/datasets.md describes
the options, the resume rule and the report.

- :func:`find_videos`: the videos under a folder (or one file), in path order.
- :func:`prepare_video`: one video -> its encoded samples and its report entry.
- :func:`prepare`: the whole run (workers, shards of bounded size, manifest, report).
- :func:`summarize`: the report as a few lines of text.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import shutil
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import av
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mim.data.shards import encode_sample, sample_key
from mim.face import (DEFAULT_CROP_SCALE, DEFAULT_CROP_SHIFT_UP, DEFAULT_DETECTOR, CropBox, Face,
                      FaceTracker, available_detectors, make_detector)
from mim.io import MediaError, atomic_output, read_audio
from mim.portrait import crop_resized

__all__ = ["FPS", "SAMPLE_RATE", "VIDEO_SUFFIXES", "FRAME_SUFFIXES", "MANIFEST", "REPORT",
           "PrepareOptions", "VideoSource", "VideoResult", "find_videos", "prepare_video",
           "prepare", "summarize", "crop_frame", "resample_times", "ScaledDetector",
           "make_prepare_detector"]

FPS = 25
SAMPLE_RATE = 16000
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST = "manifest.json"
REPORT = "report.json"
MANIFEST_FORMAT = 1
_MB = 1_000_000
_TAR_BLOCK, _TAR_RECORD = 512, 10240
_SHARD_NAME = "shard-{:06d}.tar"
_SPOOL = ".spool"
_PARTIAL = ".partial"


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides what the shards hold (``workers`` and the progress bar do not).

    ``size``: S of the S × S crops (a config's ``renderer.image_size``); ``detector``: a
    registered face detector; ``detect_every``, ``smoothing``, ``max_jump``, ``max_missed``,
    ``cut_threshold``: :class:`mim.face.FaceTracker`'s; ``crop_scale``: the crop square's side
    in face-box sides; ``min_frames``: shorter segments are dropped; ``max_frames_per_segment``:
    longer tracks are split into samples of this many frames; ``shard_size``: bound on each
    shard's size in MB (10^6 bytes); ``detect_side``: frames whose longer side exceeds it are
    scaled down to it (area-averaged) for detection only, boxes scaled back (talking-head faces
    are large: with dlib-hog a face must then be about 40 px at that scale, 80 px in a 1280-wide
    frame)."""
    size: int
    detector: str = DEFAULT_DETECTOR
    detect_every: int = 5
    crop_scale: float = DEFAULT_CROP_SCALE
    smoothing: float = 0.6
    max_jump: float = 0.5
    max_missed: int = 2
    cut_threshold: float = 0.12
    min_frames: int = 25
    max_frames_per_segment: int = 250
    shard_size: float = 256.0
    detect_side: int = 640

    def __post_init__(self):
        for name in ("size", "detect_every", "max_missed", "min_frames", "max_frames_per_segment",
                     "detect_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}")
        if self.max_frames_per_segment < self.min_frames:
            raise ValueError(f"max_frames_per_segment ({self.max_frames_per_segment}) must be at least "
                             f"min_frames ({self.min_frames})")
        if self.detector not in available_detectors():
            raise ValueError(f"unknown face detector {self.detector!r}; available: "
                             f"{', '.join(available_detectors())}")
        if not (isinstance(self.shard_size, (int, float)) and self.shard_size > 0):
            raise ValueError(f"shard_size must be a positive number of MB, got {self.shard_size!r}")
        # the tracker checks the rest of its options
        FaceTracker(_NoDetector(), detect_every=self.detect_every, smoothing=self.smoothing,
                    max_jump=self.max_jump, max_missed=self.max_missed,
                    cut_threshold=self.cut_threshold, crop_scale=self.crop_scale)

    def to_dict(self) -> dict:
        return asdict(self)


class _NoDetector:
    name = "none"

    def detect(self, image):
        return []


class ScaledDetector:
    """``detector`` run on frames scaled down so that their longer side is at most ``max_side``
    (area-averaged), its boxes and landmarks scaled back to the frame's pixels."""

    def __init__(self, detector, max_side: int):
        self.detector, self.max_side = detector, int(max_side)
        self.name = detector.name

    def detect(self, image: np.ndarray) -> List[Face]:
        height, width = image.shape[:2]
        scale = self.max_side / max(height, width)
        if scale >= 1:
            return self.detector.detect(image)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        sx, sy = width / size[0], height / size[1]
        return [Face(box=(f.box[0] * sx, f.box[1] * sy, f.box[2] * sx, f.box[3] * sy), score=f.score,
                     landmarks=None if f.landmarks is None else f.landmarks * np.array([sx, sy]))
                for f in self.detector.detect(small)]


def make_prepare_detector(options: "PrepareOptions"):
    """The detector :func:`prepare` uses: ``options.detector`` behind :class:`ScaledDetector`."""
    return ScaledDetector(make_detector(options.detector), options.detect_side)


@dataclass(frozen=True)
class VideoSource:
    """One input: ``path`` on disk, ``relative`` (its path under the prepared folder, posix, the
    name it has in keys, metadata and the report), ``kind`` ``"file"`` or ``"frames"`` (a folder of
    images, at most one wav, optionally ``fps.txt``)."""
    path: Path
    relative: str
    kind: str


@dataclass
class VideoResult:
    """What :func:`prepare_video` made of one video: its report entry and its encoded samples
    (``encode_sample`` dicts, in segment order), or what its ``sink`` returned for each."""
    entry: dict
    samples: list


# ---------------------------------------------------------------------------------------------
# Finding the inputs
# ---------------------------------------------------------------------------------------------

def _frame_files(directory: Path) -> List[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith("."))


def find_videos(videos, exclude=None) -> List[VideoSource]:
    """The inputs under ``videos``, sorted by relative path: video files (``*.mp4, *.mov, *.mkv,
    *.avi, *.webm``, any case) at any depth, and folders holding image frames directly (a frame
    folder is one video; nothing below it is searched). Names starting with a dot and the folder
    ``exclude`` (the output, when it lies inside) are passed over. ``videos`` may be one file."""
    root = Path(videos)
    if root.is_file():
        return [VideoSource(root, root.name, "file")]
    if not root.is_dir():
        raise MediaError(f"{root}: no such file or directory")
    exclude = Path(exclude).resolve() if exclude is not None else None
    found = []

    def walk(directory: Path):
        if exclude is not None and directory.resolve() == exclude:
            return
        if directory != root and _frame_files(directory):
            found.append(VideoSource(directory, directory.relative_to(root).as_posix(), "frames"))
            return
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                walk(entry)
            elif entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
                found.append(VideoSource(entry, entry.relative_to(root).as_posix(), "file"))

    walk(root)
    if not found and _frame_files(root):
        found.append(VideoSource(root, root.name, "frames"))
    return sorted(found, key=lambda s: s.relative)


# ---------------------------------------------------------------------------------------------
# Decoding: timed frames, resampled to 25 fps
# ---------------------------------------------------------------------------------------------

def resample_times(timed_frames, frame_duration: Fraction, fps: int = FPS) -> Iterator[Tuple[int, object]]:
    """(k, frame) for the instants t0 + k / fps, where t0 is the first frame's time: frame k is
    the latest source frame whose time is at or before that instant (so dropped, duplicated or
    irregular timestamps need nothing special). ``timed_frames`` yields (time as a Fraction,
    frame) in presentation order; a frame whose time is not after the previous one's replaces
    it. The last frame lasts ``frame_duration``: instants before its time + that are emitted."""
    previous = None
    start, index = None, 0
    for time, frame in timed_frames:
        if previous is None:
            start, previous = time, (time, frame)
            continue
        if time <= previous[0]:
            previous = (previous[0], frame)
            continue
        while start + Fraction(index, fps) < time:
            yield index, previous[1]
            index += 1
        previous = (time, frame)
    if previous is None:
        return
    end = previous[0] + frame_duration
    while start + Fraction(index, fps) < end:
        yield index, previous[1]
        index += 1


def _container_frames(container, stream, path) -> Iterator[Tuple[Fraction, np.ndarray]]:
    rate = stream.average_rate or stream.guessed_rate or FPS
    for count, frame in enumerate(container.decode(stream)):
        if frame.pts is not None and frame.time_base is not None:
            time = Fraction(frame.pts) * Fraction(frame.time_base)
        else:
            time = Fraction(count) / Fraction(rate)
        yield time, frame.to_ndarray(format="rgb24")


def _read_frame(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise MediaError(f"{path}: not a readable image ({error})") from None


def _folder_fps(directory: Path) -> Fraction:
    fps_file = directory / "fps.txt"
    if not fps_file.is_file():
        return Fraction(FPS)
    text = fps_file.read_text().strip()
    try:
        fps = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise MediaError(f"{fps_file}: expected a frame rate, got {text!r}") from None
    if fps <= 0:
        raise MediaError(f"{fps_file}: frame rate must be positive, got {text!r}")
    return fps


# ---------------------------------------------------------------------------------------------
# Cropping
# ---------------------------------------------------------------------------------------------

def crop_frame(frame: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """The (size, size, 3) uint8 crop of an (H, W, 3) uint8 frame over ``box``
    (:func:`mim.portrait.crop_resized`: edges repeated outside the frame, antialiased)."""
    if not frame.flags.writeable:   # torch wraps only writable arrays (a decoded image may be read-only)
        frame = frame.copy()
    crop = crop_resized(torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1), box, size)
    return crop.mul_(255).round_().to(torch.uint8).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------------
# One video
# ---------------------------------------------------------------------------------------------

def _entry(source: VideoSource) -> dict:
    return {"source": source.relative, "status": "skipped", "reason": None, "detail": None,
            "segments": 0, "frames": 0, "seconds": 0.0, "decoded_frames": 0, "source_fps": None,
            "audio": False, "cuts": {"lost": 0, "jump": 0, "cut": 0}, "dropped_short": 0,
            "notes": [], "shards": []}


def _open(source: VideoSource, entry: dict):
    """(timed frames iterator, last frame's duration, audio or None, audio start time, closer)."""
    if source.kind == "frames":
        files = _frame_files(source.path)
        fps = _folder_fps(source.path)
        wavs = sorted(p for p in source.path.glob("*.wav") if not p.name.startswith("."))
        if len(wavs) > 1:
            raise MediaError(f"{source.path}: more than one .wav ({', '.join(w.name for w in wavs)}); "
                             f"expected at most one")
        audio = read_audio(wavs[0], SAMPLE_RATE) if wavs else None
        entry["source_fps"] = float(fps)
        timed = ((Fraction(i) / fps, _read_frame(f)) for i, f in enumerate(files))
        return timed, 1 / fps, audio, Fraction(0), lambda: None
    try:
        container = av.open(str(source.path))
    except (av.FFmpegError, OSError) as error:
        raise MediaError(f"{source.path}: cannot open ({error})") from None
    try:
        if not container.streams.video:
            raise _Skip("no video stream", "the file holds no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        entry["source_fps"] = float(rate) if rate else None
        duration = 1 / Fraction(rate) if rate else Fraction(1, FPS)
        audio, audio_start = None, Fraction(0)
        if container.streams.audio:
            audio_stream = container.streams.audio[0]
            if audio_stream.start_time is not None and audio_stream.time_base is not None:
                audio_start = Fraction(audio_stream.start_time) * Fraction(audio_stream.time_base)
            try:
                audio = read_audio(source.path, SAMPLE_RATE)
            except MediaError as error:
                entry["notes"].append(f"audio unreadable, prepared without it ({error})")
    except BaseException:
        container.close()
        raise
    return _container_frames(container, stream, source.path), duration, audio, audio_start, container.close


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _segment_audio(audio, audio_start: Fraction, start: Fraction, num_frames: int):
    if audio is None:
        return None
    count = round(Fraction(num_frames, FPS) * SAMPLE_RATE)
    offset = round((start - audio_start) * SAMPLE_RATE)
    out = np.zeros(count, np.float32)
    lo, hi = max(0, offset), min(len(audio), offset + count)
    if hi > lo:
        out[lo - offset:hi - offset] = audio[lo:hi]
    return out


def prepare_video(source: VideoSource, options: PrepareOptions, detector=None,
                  sink: Optional[Callable[[dict], object]] = None) -> VideoResult:
    """One video -> :class:`VideoResult`. A video that cannot be read (corrupt, no video stream,
    no frames, an unreadable frame image) or yields no segment (no face, every tracked stretch
    shorter than ``min_frames``) is skipped with its reason; other exceptions propagate.
    ``detector`` defaults to :func:`make_prepare_detector`'s. ``sink(sample)``, when given,
    takes each encoded sample as soon as it is made and returns what the result keeps in its
    place (:func:`prepare` spools samples to disk, so that a long video is never held whole)."""
    entry = _entry(source)
    detector = detector if detector is not None else make_prepare_detector(options)
    try:
        samples = _prepare(source, options, detector, entry, sink)
    except _Skip as skip:
        entry.update(reason=skip.reason, detail=skip.detail, segments=0, frames=0)
        return VideoResult(entry, [])
    except (MediaError, av.FFmpegError) as error:   # samples made before the error are dropped
        entry.update(reason="unreadable", detail=str(error), segments=0, frames=0)
        return VideoResult(entry, [])
    if not samples:
        entry.update(segments=0, frames=0)
        tracked = entry["dropped_short"] > 0
        entry.update(reason="too short" if tracked else "no face",
                     detail=(f"every tracked stretch is shorter than {options.min_frames} frames"
                             if tracked else "no face found in any frame tested"))
        return VideoResult(entry, [])
    entry["status"] = "prepared"
    return VideoResult(entry, samples)


def _prepare(source: VideoSource, options: PrepareOptions, detector, entry: dict, sink) -> list:
    timed, duration, audio, audio_start, close = _open(source, entry)
    entry["audio"] = audio is not None
    if audio is None:
        entry["notes"].append("no audio: prepared without a wav member (fit for stage 1, not stage 2)")
    tracker = FaceTracker(detector, detect_every=options.detect_every, smoothing=options.smoothing,
                          max_jump=options.max_jump, max_missed=options.max_missed,
                          cut_threshold=options.cut_threshold, crop_scale=options.crop_scale,
                          shift_up=DEFAULT_CROP_SHIFT_UP)
    samples: list = []
    current: List[Tuple[int, CropBox, np.ndarray]] = []
    gaps: List[Fraction] = []
    first_time: List[Fraction] = []

    def watched():
        previous = None
        for time, frame in timed:
            if previous is None:
                first_time.append(time)
            elif time > previous:
                gaps.append(time - previous)
            previous = time
            yield time, frame

    def flush(frames):
        if len(frames) < options.min_frames:
            if frames:
                entry["dropped_short"] += 1
            return
        start = first_time[0] + Fraction(frames[0][0], FPS)
        relative_start = Fraction(frames[0][0], FPS)
        key = sample_key(source.relative, len(samples))
        metadata = {"source": source.relative, "segment": len(samples),
                    "start": float(relative_start), "end": float(relative_start + Fraction(len(frames), FPS)),
                    "fps": float(FPS), "detector": options.detector,
                    "boxes": [[round(b.x0, 2), round(b.y0, 2), round(b.size, 2)] for _, b, _ in frames]}
        pixels = np.stack([crop for _, _, crop in frames])
        sample = encode_sample(key, pixels, _segment_audio(audio, audio_start, start, len(frames)), metadata)
        entry["segments"] += 1
        entry["frames"] += len(frames)
        samples.append(sink(sample) if sink is not None else sample)

    decoded = 0
    try:
        for index, frame in resample_times(watched(), duration):
            decoded += 1
            step = tracker.update(frame)
            if step.cut_reason is not None:
                entry["cuts"][step.cut_reason] += 1
                flush(current[:len(current) - step.trim])
                current = []
            if step.box is None:
                continue
            current.append((index, step.box, crop_frame(frame, step.box, options.size)))
            confirmed = len(current) - tracker.unconfirmed
            if confirmed >= options.max_frames_per_segment:
                flush(current[:options.max_frames_per_segment])
                current = current[options.max_frames_per_segment:]
        flush(current[:len(current) - tracker.unconfirmed])
    finally:
        close()
    if decoded == 0:
        raise _Skip("no frames", "the video stream holds no frame")
    entry["decoded_frames"] = decoded
    entry["seconds"] = round(decoded / FPS, 3)
    if gaps and max(gaps) > Fraction(3, 2) * min(gaps):
        entry["notes"].append(f"variable frame rate (frame gaps {float(min(gaps)) * 1000:.1f}-"
                              f"{float(max(gaps)) * 1000:.1f} ms), resampled by timestamps")
    return samples


# ---------------------------------------------------------------------------------------------
# The run: shards, manifest, report
# ---------------------------------------------------------------------------------------------

def _tar_writer(fileobj):
    import webdataset
    return webdataset.TarWriter(fileobj, mtime=0.0, user="mim", group="mim")


def _sample_tar_bytes(sample: dict) -> int:
    """Bytes the sample's members take in a tar (headers, data, padding to 512)."""
    writer = _tar_writer(io.BytesIO())
    writer.write(sample)
    return writer.tarstream.offset


def _closed_tar_bytes(offset: int) -> int:
    """A tar's size once closed: two zero blocks, then padding to a 10240-byte record."""
    return math.ceil((offset + 2 * _TAR_BLOCK) / _TAR_RECORD) * _TAR_RECORD


class _Shard:
    """A shard being written: ``.shard-NNNNNN.tar.partial`` (hidden, and not ``*.tar``, so no
    shard reader takes it), flushed to disk and renamed to ``shard-NNNNNN.tar`` when complete."""

    def __init__(self, out: Path, index: int):
        self.name = _SHARD_NAME.format(index)
        self.keys: List[str] = []
        self.videos: List[str] = []
        self._path = out / self.name
        self._temp = out / f".{self.name}{_PARTIAL}"
        self._file = open(self._temp, "wb")
        self._writer = _tar_writer(self._file)

    @property
    def offset(self) -> int:
        return self._writer.tarstream.offset

    def write(self, sample: dict, source: str) -> None:
        self._writer.write(sample)
        self.keys.append(sample["__key__"])
        if not self.videos or self.videos[-1] != source:
            self.videos.append(source)

    def finish(self) -> int:
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        size = os.path.getsize(self._temp)
        os.replace(self._temp, self._path)
        return size

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._temp)


def _write_json(path: Path, data) -> None:
    with atomic_output(path) as temp:
        Path(temp).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _load_manifest(out: Path, options: PrepareOptions) -> dict:
    path = out / MANIFEST
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "options": options.to_dict(), "shards": [], "videos": {}}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not a readable manifest ({error}); remove the folder to start over") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}")
    recorded = manifest.get("options", {})
    wanted = options.to_dict()
    differ = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
    if differ:
        raise ValueError(f"--out {out}: these shards were prepared with other options ("
                         + ", ".join(f"{k}: {recorded.get(k)!r} there, {wanted.get(k)!r} now" for k in differ)
                         + "); give another --out or the same options")
    for shard in manifest["shards"]:
        shard_path = out / shard["name"]
        if not shard_path.is_file() or shard_path.stat().st_size != shard["bytes"]:
            raise ValueError(f"{shard_path}: listed in {path} with {shard['bytes']} bytes but missing or of "
                             f"another size; remove the folder to start over")
    return manifest


class _Spool:
    """Samples handed from the video workers to the shard writer through files in a hidden
    folder of the output (pickles this run writes and reads back once, then deletes)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def __call__(self, sample: dict) -> str:
        path = self.directory / f"{sample['__key__']}.pkl"
        with open(path, "wb") as file:
            pickle.dump(sample, file, protocol=pickle.HIGHEST_PROTOCOL)
        return str(path)

    @staticmethod
    def take(path: str) -> dict:
        with open(path, "rb") as file:
            sample = pickle.load(file)
        os.unlink(path)
        return sample


_WORKER: Dict[str, object] = {}


def _init_worker(options: PrepareOptions, spool: Path) -> None:
    torch.set_num_threads(1)
    _WORKER["options"] = options
    _WORKER["detector"] = make_prepare_detector(options)
    _WORKER["sink"] = _Spool(spool)


def _work(source: VideoSource) -> VideoResult:
    return prepare_video(source, _WORKER["options"], _WORKER["detector"], _WORKER["sink"])


def prepare(videos, out, options: PrepareOptions, workers: int = 1, progress: bool = True,
            on_video: Optional[Callable[[dict], None]] = None) -> dict:
    """Prepare every input under ``videos`` (a folder or one file) into shards in ``out``; return
    the report (also written to ``out/report.json``).

    Videos are processed in path order, by ``workers`` processes (1: in this process); this
    process writes their samples, in that order, into ``out/shard-NNNNNN.tar`` (each written under
    a temporary name and renamed when complete, at most ``options.shard_size`` MB: a shard is
    closed before a sample that would pass the bound). ``out/manifest.json`` (rewritten
    atomically after each shard) lists the finished shards with their sample keys and the
    finished videos with their report entries. A rerun with the same options skips finished
    videos, writes no key a finished shard holds, and goes on at the next shard number: with the
    same inputs the shards come out byte for byte as one uninterrupted run's.
    ``on_video(entry)`` is called in this process after each video's samples are written."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give a folder for the shards")
    sources = find_videos(videos, exclude=out)
    if not sources:
        raise MediaError(f"{videos}: no videos found (looked for {', '.join('*' + s for s in VIDEO_SUFFIXES)} "
                         f"and folders of {'/'.join('*' + s for s in FRAME_SUFFIXES)} frames)")
    out.mkdir(parents=True, exist_ok=True)
    for pattern in (f".shard-*.tar{_PARTIAL}", f".{MANIFEST}.tmp-*", f".{REPORT}.tmp-*"):
        for stale in out.glob(pattern):      # left by a run that was killed
            stale.unlink()
    spool = out / _SPOOL
    shutil.rmtree(spool, ignore_errors=True)
    manifest = _load_manifest(out, options)
    bound = int(options.shard_size * _MB)
    written = {key for shard in manifest["shards"] for key in shard["samples"]}
    done: Dict[str, dict] = manifest["videos"]
    for source, first in _name_clashes(sources).items():
        if source.relative not in done:
            entry = _entry(source)
            entry.update(reason="name clash", detail=f"its sample keys would be those of {first.relative} "
                                                      f"(keys keep only letters, digits, _ and -); rename it")
            done[source.relative] = entry
    todo = [s for s in sources if s.relative not in done]
    pending: List[dict] = []          # finished videos whose samples are in the open shard
    shard: Optional[_Shard] = None

    def save_manifest():
        _write_json(out / MANIFEST, manifest)

    def finish_shard():
        nonlocal shard
        size = shard.finish()
        manifest["shards"].append({"name": shard.name, "bytes": size, "samples": shard.keys,
                                   "videos": shard.videos})
        shard = None
        for entry in pending:
            done[entry["source"]] = entry
        pending.clear()
        save_manifest()

    spool.mkdir()
    pool = None
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (options, spool))
        results = pool.imap(_work, todo, chunksize=1)
    else:
        detector, sink = make_prepare_detector(options), _Spool(spool)
        results = (prepare_video(source, options, detector, sink) for source in todo)
    threads = torch.get_num_threads()
    try:
        # many tiny tensor ops per frame: one thread is several times faster than a contended pool
        torch.set_num_threads(1)
        from tqdm import tqdm
        for result in tqdm(results, total=len(todo), unit="video", disable=not progress, desc="prepare"):
            entry = result.entry
            for spooled in result.samples:
                sample = _Spool.take(spooled)
                key = sample["__key__"]
                if key in written:
                    continue
                need = _sample_tar_bytes(sample)
                if _closed_tar_bytes(need) > bound:
                    raise ValueError(f"{entry['source']}: sample {key} needs {_closed_tar_bytes(need) / _MB:.2f} MB, "
                                     f"more than --shard-size {options.shard_size} MB; raise --shard-size or "
                                     f"lower --max-frames-per-segment")
                if shard is not None and _closed_tar_bytes(shard.offset + need) > bound:
                    finish_shard()
                if shard is None:
                    shard = _Shard(out, len(manifest["shards"]))
                shard.write(sample, entry["source"])
                written.add(key)
            pending.append(entry)
            if shard is None:          # nothing of this video waits in an open shard
                for finished in pending:
                    done[finished["source"]] = finished
                pending.clear()
            if on_video is not None:
                on_video(entry)
        if shard is not None:
            finish_shard()
        for entry in pending:
            done[entry["source"]] = entry
        pending.clear()
        save_manifest()
    except BaseException:
        if shard is not None:
            shard.abort()
        raise
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(spool, ignore_errors=True)
    report = _report(sources, manifest, options)
    _write_json(out / REPORT, report)
    return report


def _name_clashes(sources: List[VideoSource]) -> Dict[VideoSource, VideoSource]:
    """Each source whose sample keys would equal an earlier source's, with that source."""
    first: Dict[str, VideoSource] = {}
    clashes = {}
    for source in sources:
        stem = sample_key(source.relative, 0)
        if stem in first:
            clashes[source] = first[stem]
        else:
            first[stem] = source
    return clashes


def _report(sources: List[VideoSource], manifest: dict, options: PrepareOptions) -> dict:
    holders: Dict[str, List[str]] = {}
    for shard in manifest["shards"]:
        for source in shard["videos"]:
            holders.setdefault(source, []).append(shard["name"])
    entries = []
    for source in sources:
        entry = dict(manifest["videos"][source.relative])
        entry["shards"] = holders.get(source.relative, [])
        entries.append(entry)
    prepared = [e for e in entries if e["status"] == "prepared"]
    return {
        "options": options.to_dict(),
        "shards": [{"name": s["name"], "bytes": s["bytes"], "samples": len(s["samples"])}
                   for s in manifest["shards"]],
        "totals": {"videos": len(entries), "prepared": len(prepared),
                   "skipped": len(entries) - len(prepared),
                   "segments": sum(e["segments"] for e in prepared),
                   "frames": sum(e["frames"] for e in prepared),
                   "without_audio": sum(1 for e in prepared if not e["audio"])},
        "videos": entries,
    }


def summarize(report: dict) -> str:
    """A few lines for the terminal: totals, then each skipped video and each note."""
    totals = report["totals"]
    lines = [f"prepared {totals['prepared']} of {totals['videos']} videos: {totals['segments']} segments, "
             f"{totals['frames']} frames ({totals['frames'] / FPS:.1f} s at {FPS} fps) in "
             f"{len(report['shards'])} shards"]
    for entry in report["videos"]:
        if entry["status"] != "prepared":
            lines.append(f"  skipped {entry['source']}: {entry['reason']} ({entry['detail']})")
    for entry in report["videos"]:
        for note in entry["notes"]:
            lines.append(f"  note {entry['source']}: {note}")
    return "\n".join(lines)
