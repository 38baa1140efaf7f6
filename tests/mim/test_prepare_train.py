"""Raw videos to trained checkpoints through the command line (issue 19): ``mim prepare`` on a
folder of generated 30 fps videos with audio (a real face moving inside a larger frame — the
astronaut of scikit-image — three times, one video without a face, one corrupt file), then
``mim train stage1`` and ``mim train stage2`` for two steps each, streaming the shards.

The procedural heads of :mod:`mim.data.synthetic` are not used here: they are not faces to a face
detector (dlib's HOG finds none), so the moving face is a photo's."""
import json

import numpy as np
import pytest
import torch
import webdataset
from skimage import data

from mim.cli import main
from mim.data import speech_like_audio
from mim.data.shards import decode_audio, decode_frames, sample_metadata
from mim.io import write_video


def _frames(count, width, height, start, velocity, face):
    """``count`` frames (3, H, W) of ``face`` (h, w, 3 uint8) moving ``velocity`` px a frame
    from ``start`` over a grey background."""
    h, w = face.shape[:2]
    for index in range(count):
        frame = np.full((height, width, 3), 96, np.uint8)
        x, y = (int(round(s + v * index)) for s, v in zip(start, velocity))
        frame[y:y + h, x:x + w] = face
        yield torch.from_numpy(frame).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    videos = tmp_path_factory.mktemp("raw")
    face = data.astronaut()[20:240, 110:330].copy()          # 220 px around the ~90 px face
    for index in range(3):
        audio, _ = speech_like_audio(2.0, 16000, seed=index)
        write_video(videos / f"speaker{index}.mp4",
                    _frames(60, 400, 300, (30 + 20 * index, 20), (1.5, 0.5), face), fps=30, audio=audio)
    rng = np.random.default_rng(1)
    write_video(videos / "no_face.mp4", torch.from_numpy(rng.random((30, 3, 120, 160), np.float32)),
                fps=30, audio=speech_like_audio(1.0, 16000, seed=9)[0])
    (videos / "corrupt.mp4").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    out = tmp_path_factory.mktemp("shards")
    assert main(["prepare", str(videos), "--out", str(out), "--config", "tiny", "--shard-size", "0.35",
                 "--no-progress"]) == 0
    return out


def test_prepare_writes_shards_and_a_report_naming_what_it_skipped(shards):
    report = json.loads((shards / "report.json").read_text())
    text = json.dumps(report)
    assert "no_face.mp4" in text and "corrupt.mp4" in text
    tars = sorted(shards.glob("shard-*.tar"))
    assert len(tars) >= 2
    samples = list(webdataset.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False))
    assert sorted(sample_metadata(s)["source"] for s in samples) == ["speaker0.mp4", "speaker1.mp4",
                                                                     "speaker2.mp4"]
    for sample in samples:
        meta = sample_metadata(sample)
        assert meta["fps"] == 25.0 and meta["size"] == 64 and 45 <= meta["num_frames"] <= 50
        assert decode_frames(sample, [0, meta["num_frames"] - 1]).shape == (2, 3, 64, 64)
        assert len(decode_audio(sample)) == round(meta["num_frames"] / 25 * 16000)


def test_stage1_then_stage2_train_from_the_shards(shards, tmp_path):
    run1, run2 = tmp_path / "stage1", tmp_path / "stage2"
    assert main(["train", "stage1", "--config", "tiny", "--data", str(shards), "--steps", "2",
                 "--batch-size", "2", "--out", str(run1), "--no-eval", "--device", "cpu",
                 "--no-progress"]) == 0
    checkpoint = run1 / "checkpoints" / "step_0000002.safetensors"
    assert checkpoint.is_file()
    rows = (run1 / "log.csv").read_text().splitlines()
    assert rows[-1].startswith("2,") and all(np.isfinite(float(v)) for v in rows[-1].split(",")[1:3])
    assert main(["train", "stage2", "--stage1", str(checkpoint), "--config", "tiny",
                 "--data", str(shards / "shard-*.tar"),
                 "--steps", "2", "--batch-size", "2", "--workers", "0", "--out", str(run2),
                 "--device", "cpu", "--no-progress"]) == 0
    assert (run2 / "checkpoints" / "step_0000002.safetensors").is_file()
