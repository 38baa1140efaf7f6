"""mim.data.stream: naming shards, the rank/worker split, stage-1 pairs and stage-2 windows drawn
from shards, exact resume by skipping, held-out clips, bad input."""

import logging
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from mim.audio import audio_features
from mim.data import (ShardClips, Stage1Stream, Stage2Stream, expand_shards, heldout_split, is_shard_spec,
                      make_clip, shard_loader, split_shards, usable_workers)
from mim.data.shards import ShardFormatError, decode_audio, decode_frames, encode_sample, sample_key
from mim.data import stream as stream_module
from mim.data.stream import expand_braces, read_shard

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_shards(folder, shards=4, per_shard=3, frames=12, size=32, silent=(1,)):
    """``shards`` tars of ``per_shard`` procedural segments each; segment numbers in ``silent``
    have no audio. Returns (urls, {key: (frames uint8 (T, S, S, 3), audio or None)})."""
    os.makedirs(folder, exist_ok=True)
    urls, truth, number = [], {}, 0
    for s in range(shards):
        url = os.path.join(folder, f"shard-{s:06d}.tar")
        with wds.TarWriter(url) as writer:
            for _ in range(per_shard):
                clip = make_clip(number, num_frames=frames, size=size)
                pixels = (clip["frames"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
                audio = None if number in silent else clip["audio"]
                key = sample_key(f"talks/v{number}.mp4", 0)
                writer.write(encode_sample(key, pixels, audio, {
                    "source": f"talks/v{number}.mp4", "segment": 0, "start": 0.0, "end": frames / 25,
                    "boxes": [[0, 0, size]] * frames, "detector": "test"}))
                truth[key] = (pixels, audio)
                number += 1
        urls.append(url)
    return urls, truth


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("shards"))
    return (folder, *write_shards(folder))


def unit(frames):
    """A stream's uint8 frames in [0, 1], as the trainers convert them."""
    return frames.float().div_(255.0)


def drawn(batches):
    return [(k, int(s), int(d)) for b in batches
            for k, s, d in zip(b["key"], b["source_frame"], b["driving_start"])]


def test_naming_shards(shards, tmp_path):
    folder, urls, _ = shards
    assert expand_braces("a{0..2}b") == ["a0b", "a1b", "a2b"]
    assert expand_braces("s{008..010}-{x,y}") == ["s008-x", "s008-y", "s009-x", "s009-y", "s010-x", "s010-y"]
    assert expand_shards(folder) == urls
    assert expand_shards(os.path.join(folder, "*.tar")) == urls
    assert expand_shards(os.path.join(folder, "shard-{000001..000002}.tar")) == urls[1:3]
    assert is_shard_spec(folder) and is_shard_spec("x/{0..3}.tar") and is_shard_spec("x/*.tar")
    assert not is_shard_spec("synthetic") and not is_shard_spec(str(tmp_path))
    (tmp_path / ".shard-000009.tar").write_bytes(b"")         # a writer's hidden temporary file
    assert not is_shard_spec(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"2 of 5 named files do not exist \(first: .*shard-000004.tar\)"):
        expand_shards(os.path.join(folder, "shard-{000001..000005}.tar"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_shards(os.path.join(folder, "*.tgz"))
    with pytest.raises(ValueError, match="runs backwards"):
        expand_braces("s{3..1}")
    with pytest.raises(ValueError, match="neither a range"):
        expand_braces("s{3}")


def test_split_is_disjoint_and_covering_per_epoch():
    urls = [f"s{i}.tar" for i in range(11)]
    orders = []
    for epoch in range(3):
        parts = [split_shards(urls, 5, epoch, r, 2, k, 3) for r in range(2) for k in range(3)]
        every = [u for part in parts for u in part]
        assert sorted(every) == sorted(urls) and all(parts)
        orders.append(every)
    assert orders[0] != orders[1] != orders[2]
    assert split_shards(urls, 5, 1, 1, 2, 2, 3) == split_shards(urls, 5, 1, 1, 2, 2, 3)
    with pytest.raises(ValueError, match=r"1 shard\(s\) for 2 ranks: each rank needs at least one"):
        split_shards(urls[:1], 0, 0, 0, 2)
    assert usable_workers(5, 2, 4) == 2 and usable_workers(8, 2, 2) == 2 and usable_workers(3, 1, 0) == 0


def test_stage1_pairs_are_the_shards_frames(shards):
    _, urls, truth = shards
    stream = Stage1Stream(urls, 5, 32, num_driving=3, pairs_per_segment=2, seed=3, epochs=1, shuffle_buffer=4)
    batches = list(stream)
    items = drawn(batches)
    assert len(items) == 4 * 3 * 2 and sorted({k for k, _, _ in items}) == sorted(truth)
    assert len({(k, s, d) for k, s, d in items}) > 12          # draws differ between a segment's pairs
    assert [len(b["key"]) for b in batches] == [5, 5, 5, 5, 4]
    batch = batches[0]
    assert batch["source"].shape == (5, 3, 32, 32) and batch["driving"].shape == (5, 3, 3, 32, 32)
    for i, key in enumerate(batch["key"]):
        sample = next(s for u in urls for s in read_shard(u) if s["__key__"] == key)
        s, d = int(batch["source_frame"][i]), int(batch["driving_start"][i])
        assert torch.equal(unit(batch["source"][i]), decode_frames(sample, [s])[0])
        assert torch.equal(unit(batch["driving"][i]), decode_frames(sample, range(d, d + 3)))
        # of the segment's frames as written, frame s is the one the JPEG-decoded source is closest to
        written = torch.from_numpy(truth[key][0]).permute(0, 3, 1, 2).float()
        error = (batch["source"][i].float() - written).abs().mean(dim=(1, 2, 3))
        assert float(error[s]) == float(error.min()) and float(error[s]) < 8.0
    # the same (seed, epoch) draws the same; the order depends on the buffer, the pairs do not
    again = Stage1Stream(urls, 5, 32, num_driving=3, pairs_per_segment=2, seed=3, epochs=1, shuffle_buffer=9)
    assert drawn(list(again)) != items and sorted(drawn(list(again))) == sorted(items)
    resized = next(iter(Stage1Stream(urls, 2, 16, seed=3, epochs=1)))
    assert resized["driving"].shape == (2, 2, 3, 16, 16) and resized["driving"].dtype == torch.uint8
    assert batch["source"].dtype == torch.uint8


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_skips_to_the_same_batches_without_decoding(shards, workers, monkeypatch):
    _, urls, _ = shards
    options = dict(num_driving=2, pairs_per_segment=3, seed=1, epochs=2, shuffle_buffer=5)
    full = list(shard_loader(Stage1Stream(urls, 3, 32, **options), workers))
    decoded = []
    if workers == 0:   # in this process: count the decodes
        original = Stage1Stream.decode
        monkeypatch.setattr(Stage1Stream, "decode", lambda self, item: decoded.append(1) or original(self, item))
    resumed = list(shard_loader(Stage1Stream(urls, 3, 32, start_batch=5, **options), workers))
    assert len(full) == 2 * 4 * 3 * 3 // 3 and drawn(resumed) == drawn(full[5:])
    assert all(torch.equal(a["driving"], b["driving"]) for a, b in zip(resumed, full[5:]))
    if workers == 0:
        assert len(decoded) == 3 * len(resumed)
    # the two workers read disjoint shards in each epoch
    if workers == 2:
        first_epoch = full[:len(full) // 2]
        by_worker = [{u for b in first_epoch[w::2] for u in b["url"]} for w in range(2)]
        assert not by_worker[0] & by_worker[1]


def test_resume_past_an_epoch_reads_only_its_json(shards, monkeypatch):
    """Epoch 0 (12 segments x 3 pairs = 12 batches of 3) is skipped by counting its items from
    the JSON members; only epoch 1's shards are read whole."""
    _, urls, _ = shards
    options = dict(num_driving=2, pairs_per_segment=3, seed=4, epochs=2, shuffle_buffer=7)
    full = list(Stage1Stream(urls, 3, 32, **options))
    read = []
    original = stream_module.read_shard
    monkeypatch.setattr(stream_module, "read_shard", lambda url: read.append(url) or original(url))
    resumed = list(Stage1Stream(urls, 3, 32, start_batch=14, **options))
    assert len(full) == 24 and drawn(resumed) == drawn(full[14:])
    assert len(read) == 4 and set(read) == set(urls)
    assert [m["num_frames"] for _, m in stream_module.shard_metadata(urls[0])] == [12, 12, 12]


def test_ranks_read_disjoint_shards(shards):
    _, urls, truth = shards
    seen = []
    for rank in range(2):
        batches = list(Stage1Stream(urls, 4, 32, seed=0, rank=rank, world_size=2, epochs=1, pairs_per_segment=1))
        seen.append({(u, k) for b in batches for u, k in zip(b["url"], b["key"])})
    assert not {u for u, _ in seen[0]} & {u for u, _ in seen[1]}
    assert sorted(k for s in seen for _, k in s) == sorted(truth)


def test_stage2_windows_and_audio(shards, caplog):
    _, urls, truth = shards
    stream = Stage2Stream(urls, 4, 32, window=5, prev_frames=4, local_context=2, windows_per_segment=3,
                          seed=2, epochs=1)
    with caplog.at_level(logging.WARNING, logger="mim.data"):
        batches = list(stream)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == [f"segment talks_v1_mp4-0000 of {urls[0]} skipped: no audio"]
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == 11 * 3 and "talks_v1_mp4-0000" not in keys
    starts = set()
    for batch in batches:
        assert batch["frames"].shape[1:] == (9, 3, 32, 32) and batch["local"].shape[1:] == (5, 20, 80)
        for i, key in enumerate(batch["key"]):
            sample = next(s for u in urls for s in read_shard(u) if s["__key__"] == key)
            start, context = int(batch["start"][i]), int(batch["context"][i])
            starts.add(start)
            assert context == min(start, 4)
            assert not batch["frames"][i, :4 - context].any()
            window = decode_frames(sample, range(start - context, start + 5))
            assert torch.equal(unit(batch["frames"][i, 4 - context:]), window)
            assert torch.equal(unit(batch["first_frame"][i]), decode_frames(sample, [0])[0])
            # the features of the shard's audio (16-bit PCM of the written audio) for the whole segment
            features = audio_features(decode_audio(sample), num_frames=12)
            length = int(batch["mel_lengths"][i])
            assert length == features.mel.shape[0]
            assert torch.equal(batch["mel"][i, :length], features.mel) and not batch["mel"][i, length:].any()
            assert torch.equal(batch["local"][i], features.local_windows(2)[start:start + 5])
            written = audio_features(truth[key][1], num_frames=12)
            torch.testing.assert_close(batch["mel"][i, :length], written.mel, atol=0.1, rtol=0)
    assert 0 in starts and max(starts) >= 4


def test_heldout_clips_and_split(shards):
    _, urls, truth = shards
    clips = ShardClips(urls[-1:], 16, max_clips=2, max_frames=5)
    assert len(clips) == 2
    item = clips[1]
    assert item["frames"].shape == (5, 3, 16, 16) and item["audio"].shape == (3200,)
    assert item["key"] in truth and item["fps"] == 25.0
    assert heldout_split(urls, 2) == (urls[:-1], urls[-1:]) and heldout_split(urls, 0) == (urls, [])
    with pytest.raises(ValueError, match="the last shard is held out for evaluation, so at least 2"):
        heldout_split(urls[:1], 1)


def test_bad_input(shards, tmp_path):
    _, urls, _ = shards
    broken = tmp_path / "broken.tar"
    broken.write_bytes(open(urls[0], "rb").read()[:3000] + b"\x00garbage" * 100)
    with pytest.raises(ShardFormatError, match=r"broken.tar: .*(cut short|no json member)"):
        list(Stage1Stream([str(broken)], 2, 32, epochs=1))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(open(urls[0], "rb").read()[:30000])
    with pytest.raises(ShardFormatError, match="cut.tar: not a readable tar"):
        list(read_shard(str(cut)))
    loose = tmp_path / "loose.tar"
    with tarfile.open(loose, "w") as tar:
        tar.add(__file__, arcname="README")
    with pytest.raises(ShardFormatError, match=r"loose.tar: member 'README' has no suffix"):
        list(read_shard(str(loose)))
    with pytest.raises(ValueError, match=r"worker 2 of 3 on rank 0 of 2 has no shard \(4 shards\): use at most 2"):
        next(Stage1Stream(urls, 2, 32, world_size=2)._drawn(0, 2, 3))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        Stage1Stream(urls, 0, 32)
    with pytest.raises(ValueError, match="pairs_per_segment must be an int >= 1"):
        Stage1Stream(urls, 2, 32, pairs_per_segment=0)
    with pytest.raises(ValueError, match="epochs must be None"):
        Stage2Stream(urls, 2, 32, window=5, epochs=0)
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        shard_loader(Stage1Stream(urls, 2, 32), -1)
    short = Stage2Stream(urls[:1], 2, 32, window=40, epochs=1)
    with pytest.raises(ValueError, match="gave no usable segment"):
        list(short)


def test_throughput_bench_smoke(tmp_path):
    out = tmp_path / "throughput.json"
    done = subprocess.run([sys.executable, "-m", "bench.loader_throughput", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    rows = json.loads(out.read_text())["rows"]
    assert {(r["loader"], r["workers"]) for r in rows} == {(l, w) for l in ("shards", "folder") for w in (0, 2)}
    assert all(r["frames_per_second"] > 0 and r["frames"] > 0 for r in rows)
