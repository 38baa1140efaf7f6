"""Training items streamed from shard tars (:mod:`mim.data.shards`), split by rank and by worker.

A run's ``--data`` names shards three ways (:func:`expand_shards`): a folder holding ``*.tar``
files, a glob (``shards/*.tar``) or a brace pattern (``shards/shard-{000000..000009}.tar``).

**Split.** In epoch e the shard list is permuted by a generator seeded with (seed, e); rank r of
W takes the strided slice ``perm[r::W]`` and DataLoader worker k of K the slice ``[k::K]`` of
that (:func:`split_shards`), so in every epoch each shard is read by exactly one worker of one
rank. Fewer shards than ranks is an error; fewer than W·K leaves a worker with no shard, so the
trainers use ``min(K, shards // W)`` workers (:func:`usable_workers`).

**Items.** Per clip segment read, :class:`Stage1Stream` draws ``pairs_per_segment`` (source
frame, driving window) pairs and :class:`Stage2Stream` ``windows_per_segment`` windows, from a
generator seeded by (seed, epoch, shard name, key). Only the JSON is parsed and only the drawn
frames' JPEG bytes are kept; items pass a shuffle buffer (seeded by seed, epoch, rank, worker)
still as bytes and are decoded, resized and collated into batches after it. The buffer is
drained at the end of each epoch; epochs follow one another without end (``epochs=None``).

**Resume.** ``start_batch`` = the batches this rank has already consumed. A DataLoader over an
endless iterable hands its batch i to worker i mod K, so batch p of the run comes from the
worker stream ("role") p mod K. A resumed loader's worker k takes role (k + start_batch) mod K
and skips the items of the first ``ceil((start_batch - role) / K)`` batches of that role:
whole epochs by counting their items from the shards' JSON members alone (no frame bytes
read), then, in the epoch where it resumes, by reading and drawing as before but decoding
nothing. The batches that follow are those of the uninterrupted run, given the same shards,
seed, world size, workers, batch size and per-segment draw count.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import random
import re
import tarfile
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from mim.audio import MIN_AUDIO_SAMPLES, audio_features
from mim.data.shards import ShardFormatError, decode_audio, decode_frames_uint8, frame_field, sample_metadata

__all__ = ["ShardClips", "ShardSet", "Stage1Stream", "Stage2Stream", "decode_frames_uint8", "expand_braces",
           "expand_shards", "heldout_split", "is_shard_spec", "read_shard", "shard_loader", "shard_metadata",
           "split_shards", "usable_workers"]

log = logging.getLogger("mim.data")

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> List[str]:
    """Every string a webdataset-style brace pattern names, in order: ``{000..002}`` is a
    numeric range (zero-padded to the first bound's width), ``{a,b}`` a list; several braces
    multiply (``s{0..1}-{a,b}`` gives 4 names)."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    numbers = _RANGE.match(body)
    if numbers:
        first, last = int(numbers.group(1)), int(numbers.group(2))
        if last < first:
            raise ValueError(f"shard pattern {pattern!r}: range {{{body}}} runs backwards")
        width = len(numbers.group(1))
        choices = [f"{n:0{width}d}" for n in range(first, last + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise ValueError(f"shard pattern {pattern!r}: {{{body}}} is neither a range a..b nor a list a,b")
    return [head + choice + rest for choice in choices for rest in expand_braces(tail)]


def is_shard_spec(data: str) -> bool:
    """Whether ``data`` names shards (a brace pattern, a glob, a ``.tar`` file or a folder with
    ``*.tar`` files directly inside, hidden ones not counted) rather than "synthetic" or a folder
    of clips."""
    data = str(data)
    if any(c in data for c in "{*?[") or data.endswith(".tar"):
        return True
    return os.path.isdir(data) and bool(_folder_shards(data))


def _folder_shards(folder: str) -> List[str]:
    """A folder's ``*.tar`` files in name order; hidden ones (``.name.tar``, a writer's
    temporary file) are not shards."""
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.endswith(".tar") and not n.startswith("."))


def expand_shards(data: str) -> List[str]:
    """The shard paths ``data`` names (see :func:`is_shard_spec`): a folder's ``*.tar`` in name
    order, a glob's matches in name order, or a brace pattern's names in pattern order. Every
    named file must exist; none named is an error."""
    data = str(data)
    if os.path.isdir(data):
        urls = _folder_shards(data)
        if not urls:
            raise FileNotFoundError(f"shard folder {data}: no *.tar files in it")
        return urls
    if "{" in data:
        urls = expand_braces(data)
    elif any(c in data for c in "*?["):
        urls = sorted(glob.glob(data))
        if not urls:
            raise FileNotFoundError(f"shard glob {data!r} matches no file")
    else:
        urls = [data]
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        raise FileNotFoundError(f"shards {data!r}: {len(missing)} of {len(urls)} named files do not exist "
                                f"(first: {missing[0]})")
    return urls


class ShardSet:
    """The training shards of a run (what :func:`mim.train.stage1.build_stage1_data` returns in
    place of a clip dataset when ``--data`` names shards)."""

    def __init__(self, urls: Sequence[str]):
        self.urls = list(urls)
        if not self.urls:
            raise ValueError("a shard set needs at least one shard")

    def __repr__(self):
        return f"ShardSet({len(self.urls)} shards: {self.urls[0]} ...)"


def read_shard(url: str) -> Iterator[Dict]:
    """The raw samples of one shard tar, in file order: ``{"__key__", "__url__", suffix: bytes}``
    with members grouped by key (the member name up to the first dot of its base name)."""
    sample: Optional[Dict] = None
    try:
        with tarfile.open(url, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, base = os.path.split(member.name)
                if "." not in base:
                    raise ShardFormatError(f"shard {url}: member {member.name!r} has no suffix")
                stem, suffix = base.split(".", 1)
                key = os.path.join(folder, stem) if folder else stem
                if sample is None or sample["__key__"] != key:
                    if sample is not None:
                        yield sample
                    sample = {"__key__": key, "__url__": url}
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise ShardFormatError(f"shard {url}: member {member.name!r} is cut short "
                                           f"({len(data)} of {member.size} bytes)")
                sample[suffix] = data
    except tarfile.TarError as error:
        raise ShardFormatError(f"shard {url}: not a readable tar ({error})") from None
    if sample is not None:
        yield sample


def shard_metadata(url: str) -> Iterator:
    """(key, checked metadata) of each sample of one shard, in file order, reading only the JSON
    members: the other members' headers are read and their bytes seeked over."""
    try:
        with tarfile.open(url, mode="r:*") as tar:
            for member in tar:
                folder, base = os.path.split(member.name)
                if not member.isfile() or "." not in base or base.split(".", 1)[1] != "json":
                    continue
                stem = base.split(".", 1)[0]
                key = os.path.join(folder, stem) if folder else stem
                try:
                    meta = sample_metadata({"__key__": key, "json": tar.extractfile(member).read()})
                except ShardFormatError as error:
                    raise ShardFormatError(f"shard {url}: {error}") from None
                yield key, meta
    except tarfile.TarError as error:
        raise ShardFormatError(f"shard {url}: not a readable tar ({error})") from None


def split_shards(urls: Sequence[str], seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 worker: int = 0, num_workers: int = 1) -> List[str]:
    """The shards worker ``worker`` of ``num_workers`` on rank ``rank`` of ``world_size`` reads in
    ``epoch``: the list permuted by (seed, epoch), then ``[rank::world_size]``, then
    ``[worker::num_workers]``. Fewer shards than ranks is an error."""
    if len(urls) < world_size:
        raise ValueError(f"{len(urls)} shard(s) for {world_size} ranks: each rank needs at least one "
                         f"shard of its own; write more, smaller shards (mim prepare) or use fewer ranks")
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"rank {rank} of {world_size}, worker {worker} of {num_workers}: out of range")
    generator = torch.Generator().manual_seed(_seed(seed, epoch))
    order = torch.randperm(len(urls), generator=generator).tolist()
    return [urls[i] for i in order[rank::world_size][worker::num_workers]]


def usable_workers(num_shards: int, world_size: int, workers: int) -> int:
    """The DataLoader workers per rank that each get a shard every epoch: ``min(workers,
    num_shards // world_size)`` (0 stays 0: the main process reads)."""
    if num_shards < world_size:
        raise ValueError(f"{num_shards} shard(s) for {world_size} ranks: each rank needs at least one "
                         f"shard of its own; write more, smaller shards (mim prepare) or use fewer ranks")
    return min(int(workers), num_shards // world_size)


def _seed(*parts) -> int:
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def _name_hash(url: str, key: str) -> List[int]:
    digest = hashlib.blake2b(f"{os.path.basename(url)}/{key}".encode(), digest_size=8).digest()
    return [int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")]


class _ShardStream(torch.utils.data.IterableDataset):
    """The split, draw, shuffle, skip and batch machinery; subclasses say what a segment gives
    (``draw``), how a drawn item is decoded (``decode``) and batched (``collate``)."""

    def __init__(self, urls, batch_size, size, seed=0, rank=0, world_size=1, shuffle_buffer=256,
                 epochs=None, start_batch=0):
        self.urls = list(urls)
        for name, value, low in (("batch_size", batch_size, 1), ("size", size, 1), ("seed", seed, 0),
                                 ("shuffle_buffer", shuffle_buffer, 1), ("start_batch", start_batch, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"epochs must be None (endless) or an int >= 1, got {epochs!r}")
        self.batch_size, self.size, self.seed = int(batch_size), int(size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle_buffer, self.epochs, self.start_batch = int(shuffle_buffer), epochs, int(start_batch)
        usable_workers(len(self.urls), self.world_size, 0)
        self._warned = set()

    def frames(self, sample: Dict, indices) -> torch.Tensor:
        """Frames ``indices`` of a raw sample, decoded and resized to ``size``: (n, 3, size, size)
        uint8 (:func:`decode_frames_uint8`)."""
        return decode_frames_uint8(sample, indices, self.size)

    # The four hooks below are each stream's own (Stage1Stream, Stage2Stream implement them all);
    # this base class is never used by itself.
    def draw(self, sample: Dict, meta: Dict, rng: np.random.Generator) -> List[Dict]:
        """The undecoded items one segment gives (what the shuffle buffer holds)."""
        raise NotImplementedError

    def decode(self, item: Dict) -> Dict:
        """An item as tensors, after the shuffle buffer."""
        raise NotImplementedError

    def collate(self, items: List[Dict]) -> Dict:
        """Decoded items as one batch."""
        raise NotImplementedError

    def skip_segment(self, sample: Dict, reason: str) -> None:
        """One log line per skipped segment (per worker), not one per epoch."""
        name = (sample["__url__"], sample["__key__"])
        if name not in self._warned:
            self._warned.add(name)
            log.warning("segment %s of %s skipped: %s", sample["__key__"], sample["__url__"], reason)

    def draws_per_segment(self, sample: Dict, meta: Dict) -> int:
        """How many items a segment gives (0: it is skipped, and one log line says why)."""
        raise NotImplementedError

    def _epoch_shards(self, epoch: int, worker: int, num_workers: int) -> List[str]:
        shards = split_shards(self.urls, self.seed, epoch, self.rank, self.world_size, worker, num_workers)
        if not shards:
            raise ValueError(f"worker {worker} of {num_workers} on rank {self.rank} of {self.world_size} "
                             f"has no shard ({len(self.urls)} shards): use at most "
                             f"{usable_workers(len(self.urls), self.world_size, num_workers)} workers")
        return shards

    def _epoch_size(self, epoch: int, worker: int, num_workers: int) -> int:
        """The items a worker draws in ``epoch``, counted from the JSON members alone."""
        shards = self._epoch_shards(epoch, worker, num_workers)
        size = sum(self.draws_per_segment({"__key__": key, "__url__": url}, meta)
                   for url in shards for key, meta in shard_metadata(url))
        if not size:
            raise ValueError(f"shards {', '.join(shards)} gave no usable segment (see the warnings)")
        return size

    def _drawn(self, epoch: int, worker: int, num_workers: int) -> Iterator[Dict]:
        """Drawn items (raw bytes) of one epoch for this worker, in shuffled order."""
        shards = self._epoch_shards(epoch, worker, num_workers)
        rng = random.Random(_seed(self.seed, epoch, self.rank, worker))
        buffer: List[Dict] = []
        produced = 0
        for url in shards:
            for sample in read_shard(url):
                try:
                    meta = sample_metadata(sample)
                except ShardFormatError as error:
                    raise ShardFormatError(f"shard {url}: {error}") from None
                draws = np.random.default_rng(np.random.SeedSequence(
                    [self.seed, epoch, *_name_hash(url, sample["__key__"])]))
                for item in self.draw(sample, meta, draws):
                    produced += 1
                    buffer.append(item)
                    if len(buffer) >= self.shuffle_buffer:
                        index = rng.randrange(len(buffer))
                        buffer[index], buffer[-1] = buffer[-1], buffer[index]
                        yield buffer.pop()
        if not produced:
            raise ValueError(f"shards {', '.join(shards)} gave no usable segment (see the warnings)")
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        # a new DataLoader asks worker 0 first: it continues the stream of the worker that
        # produced batch start_batch in the uninterrupted run
        role = (worker + self.start_batch) % num_workers
        skip = max(0, -(-(self.start_batch - role) // num_workers)) * self.batch_size
        epoch = 0
        while skip and (self.epochs is None or epoch < self.epochs):
            size = self._epoch_size(epoch, role, num_workers)
            if size > skip:
                break
            skip, epoch = skip - size, epoch + 1
        pending: List[Dict] = []
        while self.epochs is None or epoch < self.epochs:
            for item in self._drawn(epoch, role, num_workers):
                if skip:
                    skip -= 1
                    continue
                pending.append(item)
                if len(pending) == self.batch_size:
                    yield self.collate([self.decode(it) for it in pending])
                    pending = []
            epoch += 1
        if pending:
            yield self.collate([self.decode(it) for it in pending])

    @staticmethod
    def keep(sample: Dict, indices, audio: bool) -> Dict:
        """The members an item needs: its frames' JPEG bytes, the wav when ``audio``."""
        kept = {"__key__": sample["__key__"], "__url__": sample["__url__"]}
        for index in indices:
            field = frame_field(index)
            if field not in sample:
                raise ShardFormatError(f"sample {sample['__key__']} of {sample['__url__']}: no member {field}")
            kept[field] = sample[field]
        if audio:
            kept["wav"] = sample.get("wav")
        return kept


class Stage1Stream(_ShardStream):
    """Endless batches of stage-1 pairs from shards, for one rank (see the module docstring).

    Per segment of T >= ``num_driving`` frames, ``pairs_per_segment`` draws of a driving window
    start d (uniform over the valid starts) and a source frame s (uniform over the segment), as
    :class:`mim.data.SourceDrivingPairs` draws them from a clip. A batch: ``source`` (B, 3, size,
    size), ``driving`` (B, num_driving, 3, size, size) uint8 (a quarter of float32's bytes
    between processes and to the device; the trainer divides by 255 there), ``source_frame`` and
    ``driving_start`` (B,) int64, ``key`` and ``url`` (lists of B str). Frames of another size
    than ``size`` are resized (:func:`decode_frames_uint8`)."""

    def __init__(self, urls, batch_size, size, num_driving=2, pairs_per_segment=4, **options):
        super().__init__(urls, batch_size, size, **options)
        for name, value in (("num_driving", num_driving), ("pairs_per_segment", pairs_per_segment)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.num_driving, self.pairs_per_segment = int(num_driving), int(pairs_per_segment)

    def draws_per_segment(self, sample, meta):
        if meta["num_frames"] < self.num_driving:
            self.skip_segment(sample, f"{meta['num_frames']} frames, fewer than num_driving = {self.num_driving}")
            return 0
        return self.pairs_per_segment

    def draw(self, sample, meta, rng):
        frames = meta["num_frames"]
        items = []
        for _ in range(self.draws_per_segment(sample, meta)):
            start = int(rng.integers(frames - self.num_driving + 1))
            source = int(rng.integers(frames))
            needed = sorted({source, *range(start, start + self.num_driving)})
            items.append({"sample": self.keep(sample, needed, audio=False), "source": source, "start": start})
        return items

    def decode(self, item):
        indices = [item["source"], *range(item["start"], item["start"] + self.num_driving)]
        frames = self.frames(item["sample"], indices)
        return {"source": frames[0], "driving": frames[1:], "source_frame": item["source"],
                "driving_start": item["start"], "key": item["sample"]["__key__"],
                "url": item["sample"]["__url__"]}

    def collate(self, items):
        return {"source": torch.stack([it["source"] for it in items]),
                "driving": torch.stack([it["driving"] for it in items]),
                "source_frame": torch.tensor([it["source_frame"] for it in items]),
                "driving_start": torch.tensor([it["driving_start"] for it in items]),
                "key": [it["key"] for it in items], "url": [it["url"] for it in items]}


class Stage2Stream(_ShardStream):
    """Endless batches of stage-2 windows from shards, for one rank (see the module docstring).

    Per segment with audio and T >= ``window`` frames, ``windows_per_segment`` draws of a window
    start s (uniform over 0 .. T - window). Segments without audio or shorter than the window
    are skipped with one log line each. A batch (B windows): ``frames`` (B, prev_frames + window,
    3, size, size) uint8, frames s - prev_frames .. s + window - 1, the ones before frame 0 zeros;
    ``context`` (B,) how many of the prev_frames are real (min(s, prev_frames)); ``first_frame``
    (B, 3, size, size) uint8, frame 0 of the segment (for F_A); ``mel`` (B, L, 80) the whole segment's
    log-mel zero-padded to the longest, with ``mel_lengths`` (B,); ``local`` (B, window, 4 (2
    local_context + 1), 80), the window's per-frame audio slices; ``start`` (B,); ``key``,
    ``url``. The audio features are those :func:`mim.audio.audio_features` gives for the whole
    segment, as stage 2's in-memory path computes them per clip."""

    def __init__(self, urls, batch_size, size, window, prev_frames=4, local_context=2,
                 windows_per_segment=2, **options):
        super().__init__(urls, batch_size, size, **options)
        for name, value, low in (("window", window, 1), ("prev_frames", prev_frames, 0),
                                 ("local_context", local_context, 0),
                                 ("windows_per_segment", windows_per_segment, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.window, self.prev_frames = int(window), int(prev_frames)
        self.local_context, self.windows_per_segment = int(local_context), int(windows_per_segment)

    def usable(self, sample, meta) -> bool:
        """Whether a segment gives stage-2 windows (else one log line says why)."""
        if meta["audio_samples"] < MIN_AUDIO_SAMPLES:
            self.skip_segment(sample, "no audio" if not meta["audio_samples"] else
                              f"{meta['audio_samples']} audio samples, fewer than {MIN_AUDIO_SAMPLES}")
            return False
        if meta["num_frames"] < self.window:
            self.skip_segment(sample, f"{meta['num_frames']} frames, fewer than motion.window = {self.window}")
            return False
        return True

    def draws_per_segment(self, sample, meta):
        return self.windows_per_segment if self.usable(sample, meta) else 0

    def draw(self, sample, meta, rng):
        count = self.draws_per_segment(sample, meta)
        if count and "wav" not in sample:
            raise ShardFormatError(f"sample {sample['__key__']} of {sample['__url__']}: json says "
                                   f"{meta['audio_samples']} audio samples but there is no wav member")
        items = []
        for _ in range(count):
            start = int(rng.integers(meta["num_frames"] - self.window + 1))
            needed = sorted({0, *range(max(0, start - self.prev_frames), start + self.window)})
            items.append({"sample": self.keep(sample, needed, audio=True), "start": start,
                          "num_frames": meta["num_frames"]})
        return items

    def decode(self, item):
        sample, start = item["sample"], item["start"]
        context = min(start, self.prev_frames)
        frames = self.frames(sample, [0, *range(start - context, start + self.window)])
        padded = frames.new_zeros(self.prev_frames + self.window, *frames.shape[1:])
        padded[self.prev_frames - context:] = frames[1:]
        features = audio_features(decode_audio(sample), num_frames=item["num_frames"])
        local = features.local_windows(self.local_context)[start:start + self.window]
        return {"frames": padded, "context": context, "first_frame": frames[0], "mel": features.mel,
                "local": local, "start": start, "key": sample["__key__"], "url": sample["__url__"]}

    def collate(self, items):
        lengths = torch.tensor([it["mel"].shape[0] for it in items])
        mel = torch.zeros(len(items), int(lengths.max()), items[0]["mel"].shape[1])
        for i, it in enumerate(items):
            mel[i, :it["mel"].shape[0]] = it["mel"]
        return {"frames": torch.stack([it["frames"] for it in items]),
                "context": torch.tensor([it["context"] for it in items]),
                "first_frame": torch.stack([it["first_frame"] for it in items]),
                "mel": mel, "mel_lengths": lengths,
                "local": torch.stack([it["local"] for it in items]),
                "start": torch.tensor([it["start"] for it in items]),
                "key": [it["key"] for it in items], "url": [it["url"] for it in items]}


def shard_loader(stream: _ShardStream, workers: int, pin_memory: bool = False):
    """A DataLoader over a stream's batches: ``workers`` processes (0: the calling one),
    persistent, 2 batches prefetched per worker; ``pin_memory`` for a CUDA run. Its base seed
    comes from its own generator (seeded by the stream's seed), so opening it leaves the global
    torch RNG, which a checkpoint restores, untouched."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    options = {"prefetch_factor": 2, "persistent_workers": True} if workers else {}
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                       pin_memory=pin_memory,
                                       generator=torch.Generator().manual_seed(stream.seed), **options)


class ShardClips(torch.utils.data.Dataset):
    """The first ``max_clips`` segments of ``urls`` (in file order) as clips, for held-out
    evaluation: item i is ``{"frames": (T, 3, size, size), "audio", "sample_rate": 16000,
    "fps", "key"}`` with at most ``max_frames`` frames (from frame 0) and the audio of those.
    Only those frames' bytes are kept in memory; they are decoded on each access."""

    def __init__(self, urls, size, max_clips=None, max_frames=None):
        self.size = int(size)
        self.max_frames = max_frames
        self.samples = []
        for url in urls:
            for sample in read_shard(url):
                if max_clips is not None and len(self.samples) >= max_clips:
                    return
                meta = sample_metadata(sample)
                count = meta["num_frames"] if max_frames is None else min(meta["num_frames"], max_frames)
                kept = _ShardStream.keep(sample, range(count), audio=True)
                self.samples.append((kept, meta, count))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        sample, meta, count = self.samples[index]
        audio = decode_audio(sample)
        if audio.size:
            audio = audio[:round(count / meta["fps"] * 16000)]
        frames = decode_frames_uint8(sample, range(count), self.size).float().div_(255.0)
        return {"frames": frames, "audio": audio,
                "sample_rate": 16000, "fps": float(meta["fps"]), "key": sample["__key__"]}


def heldout_split(urls: Sequence[str], heldout: int):
    """(training shards, held-out shards) of a sorted shard list: the last shard is held out
    when ``heldout`` (the config's held-out clip count) is > 0; a single shard then is an error."""
    urls = list(urls)
    if heldout <= 0:
        return urls, []
    if len(urls) < 2:
        raise ValueError(f"one shard ({urls[0]}): the last shard is held out for evaluation, so at least "
                         f"2 are needed; write more shards, name held-out shards explicitly, or set "
                         f"heldout_clips to 0")
    return urls[:-1], urls[-1:]

