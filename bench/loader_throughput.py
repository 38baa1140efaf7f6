"""Stage-1 loader throughput: the shard stream against today's folder loader, on the same clips.

Run from the repository root::

    python -m bench.loader_throughput [--clips 16] [--frames 100] [--size 256] [--batch 8]
                                      [--batches 6] [--min-seconds 20] [--workers 0 2]
                                      [--threads 1] [--out FILE] [--smoke]

Writes ``--clips`` procedural clips of ``--frames`` frames at ``--size``² twice: as an mp4
folder (read by ``VideoFolderDataset`` + ``SourceDrivingPairs``, a DataLoader over the pairs,
shuffled, as a folder run of stage 1 would read them) and as shards of 2 clips each (read by
``Stage1Stream`` through ``shard_loader``). For each loader and worker count it times at least
``--batches`` batches of ``--batch`` pairs (num_driving 2) and ``--min-seconds``, after the
first batch (worker start-up and first fill excluded), and reports the frames delivered per
second (3 per pair: the source and 2 driving frames) and the frames decoded per second (the
folder loader decodes the whole clip for each pair; the stream decodes only the delivered
frames). Results go to
``bench/results/cpu/loader_throughput.json`` with the machine, the date and its load average
(the 1-minute figure after each row too). This process runs with ``--threads`` torch threads
(default 1, as DataLoader workers do: on a shared 2-core machine more threads in the loading
process spin against each other and the other jobs, which measures the machine, not the loader).
``--smoke``: 4 clips of 12 frames at 64², 2 batches of 2 (for tests; its figures mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from mim.data import (SourceDrivingPairs, Stage1Stream, VideoFolderDataset, make_clip, shard_loader,
                      write_clip)
from mim.data.shards import encode_sample, sample_key
from mim.io import atomic_output
from mim.runinfo import run_metadata

RESULTS = Path(__file__).resolve().parent / "results" / "cpu" / "loader_throughput.json"
NUM_DRIVING = 2


def write_data(root: Path, clips: int, frames: int, size: int):
    """The same clips as an mp4 folder and as shards of 2 clips; returns (folder, shard urls)."""
    folder, shard_dir = root / "clips", root / "shards"
    folder.mkdir()
    shard_dir.mkdir()
    urls = []
    writer = None
    for index in range(clips):
        clip = make_clip(index, num_frames=frames, size=size)
        write_clip(clip, str(folder / f"clip{index:03d}.mp4"))
        if index % 2 == 0:
            if writer is not None:
                writer.close()
            urls.append(str(shard_dir / f"shard-{index // 2:06d}.tar"))
            writer = wds.TarWriter(urls[-1])
        pixels = (clip["frames"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        writer.write(encode_sample(sample_key(f"clip{index:03d}.mp4", 0), pixels, clip["audio"], {
            "source": f"clip{index:03d}.mp4", "segment": 0, "start": 0.0, "end": frames / 25,
            "boxes": [[0, 0, size]] * frames, "detector": "procedural"}))
    writer.close()
    return folder, urls


def folder_loader(folder: Path, size: int, batch: int, workers: int):
    pairs = SourceDrivingPairs(VideoFolderDataset(folder, size=size), num_driving=NUM_DRIVING, seed=0)
    options = {"persistent_workers": True, "prefetch_factor": 2} if workers else {}
    sampler = torch.utils.data.RandomSampler(pairs, replacement=True, num_samples=10 ** 6,
                                             generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(pairs, batch_size=batch, sampler=sampler, num_workers=workers, **options)


def measure(loader, batches: int, min_seconds: float, decoded_per_pair: int):
    """Frames delivered and decoded per second over at least ``batches`` batches and
    ``min_seconds`` after the first batch."""
    iterator = iter(loader)
    next(iterator)
    began = time.perf_counter()
    pairs = count = 0
    while count < batches or time.perf_counter() - began < min_seconds:
        batch = next(iterator)
        frames = [batch["source"], batch["driving"]]
        if frames[0].dtype == torch.uint8:   # the stream's frames: to [0, 1] as the trainer does
            frames = [f.float().div_(255.0) for f in frames]
        pairs += frames[1].shape[0]
        count += 1
    seconds = time.perf_counter() - began
    del iterator
    return {"batches": count, "pairs": pairs, "frames": pairs * (1 + NUM_DRIVING), "seconds": seconds,
            "frames_per_second": pairs * (1 + NUM_DRIVING) / seconds,
            "decoded_frames_per_second": pairs * decoded_per_pair / seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--min-seconds", type=float, default=20.0, help="time each loader at least this long")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process (DataLoader workers always run with 1)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.clips, args.frames, args.size, args.batch, args.batches, args.min_seconds = 4, 12, 64, 2, 2, 0.0
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, urls = write_data(Path(tmp), args.clips, args.frames, args.size)
        for workers in args.workers:
            loaders = [
                ("folder", folder_loader(folder, args.size, args.batch, workers), args.frames),
                ("shards", shard_loader(Stage1Stream(urls, args.batch, args.size, num_driving=NUM_DRIVING,
                                                     pairs_per_segment=4, seed=0), workers), 1 + NUM_DRIVING),
            ]
            for name, loader, decoded in loaders:
                row = {"loader": name, "workers": workers, **measure(loader, args.batches, args.min_seconds, decoded),
                       "load_average": os.getloadavg()[0]}
                rows.append(row)
                print(f"{name:7s} workers={workers}: {row['frames_per_second']:8.1f} frames/s delivered, "
                      f"{row['decoded_frames_per_second']:8.1f} decoded/s", file=sys.stderr)
    result = {**run_metadata(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "threads": torch.get_num_threads(),
              "setup": {"clips": args.clips, "frames": args.frames, "size": args.size, "batch": args.batch,
                        "batches": args.batches, "min_seconds": args.min_seconds, "num_driving": NUM_DRIVING,
                        "smoke": args.smoke},
              "rows": rows}
    with atomic_output(args.out) as path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
    folder_rate = {r["workers"]: r["frames_per_second"] for r in rows if r["loader"] == "folder"}
    print("| loader | workers | frames/s delivered | frames/s decoded | shards / folder |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        ratio = r["frames_per_second"] / folder_rate[r["workers"]]
        print(f"| {r['loader']} | {r['workers']} | {r['frames_per_second']:.1f} | "
              f"{r['decoded_frames_per_second']:.1f} | {ratio:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
