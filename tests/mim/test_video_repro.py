"""Reproducible mp4s: the same frames give the same bytes whatever the machine's CPUs, and two
`mim animate` (and `mim reenact`) runs with the same inputs and seed give identical files."""

import hashlib
import os

import av
import pytest
import torch

from mim.cli import main
from mim.data import make_clip, speech_like_audio, write_clip
from mim.io import read_video, write_image, write_video, write_wav


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def smooth_frames(count, size):
    """A moving colour gradient (what video codecs keep well), (count, 3, size, size) in [0, 1]."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([torch.stack([0.8 * xs + 0.2 * t / count, ys, 0.5 + 0.4 * torch.sin(3 * xs + t) * ys])
                        for t in range(count)]).clamp(0, 1)


def test_same_frames_same_bytes_on_one_cpu_or_all(tmp_path):
    """x264 picks its thread count, and with it its output, from the CPUs it may run on; the
    writer fixes it. 256×256 is large enough for x264 to use 2 threads where it may."""
    frames = torch.rand(8, 3, 256, 256)
    audio = speech_like_audio(0.4, seed=0)[0]
    cpus = os.sched_getaffinity(0)
    write_video(tmp_path / "all.mp4", frames, audio=audio)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        write_video(tmp_path / "one.mp4", frames, audio=audio)
    finally:
        os.sched_setaffinity(0, cpus)
    assert digest(tmp_path / "all.mp4") == digest(tmp_path / "one.mp4")


def test_tagged_colours_round_trip_and_no_version_strings(tmp_path):
    frames = smooth_frames(6, 64)
    write_video(tmp_path / "out.mp4", frames)
    with av.open(str(tmp_path / "out.mp4")) as container:
        frame = next(container.decode(video=0))
        assert (frame.colorspace, frame.color_range) == (5, 1)   # BT.601 (bt470bg), limited range
    assert b"Lavf" not in (tmp_path / "out.mp4").read_bytes()   # bitexact: no muxer version
    decoded, fps = read_video(tmp_path / "out.mp4")
    assert fps == 25.0 and decoded.shape == frames.shape
    error = (decoded - frames).abs()
    assert float(error.mean()) < 3 / 255 and float(error.max()) < 20 / 255   # chroma is subsampled


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_stage2):
    """A random tiny stage-2 checkpoint (2 DDIM steps), a portrait, 0.5 s of speech, a driving clip."""
    root = tmp_path_factory.mktemp("repro")
    tiny_stage2(root / "stage2.safetensors", wake_zero_heads=True)
    write_image(str(root / "portrait.png"), make_clip(1, num_frames=1, size=64)["frames"][0])
    write_wav(str(root / "speech.wav"), speech_like_audio(0.5, seed=2)[0], 16000)
    write_clip(make_clip(2, num_frames=5, size=64), str(root / "driving.mp4"))
    return root


def animate(root, out, seed):
    assert main(["animate", "--image", str(root / "portrait.png"), "--crop", "center", "--audio", str(root / "speech.wav"),
                 "--checkpoint", str(root / "stage2.safetensors"), "--out", str(out), "--seed", str(seed),
                 "--device", "cpu", "--no-progress"]) == 0


def test_animate_twice_same_seed_same_bytes(media, tmp_path):
    animate(media, tmp_path / "a.mp4", seed=3)
    animate(media, tmp_path / "b.mp4", seed=3)
    animate(media, tmp_path / "c.mp4", seed=4)
    assert digest(tmp_path / "a.mp4") == digest(tmp_path / "b.mp4")
    assert digest(tmp_path / "a.mp4") != digest(tmp_path / "c.mp4")   # the seed reaches the file


def test_reenact_twice_same_bytes(media, tmp_path):
    outs = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for out in outs:
        assert main(["reenact", "--crop", "center", "--driving-crop", "center", "--image", str(media / "portrait.png"), "--driving", str(media / "driving.mp4"),
                     "--checkpoint", str(media / "stage2.safetensors"), "--out", str(out),
                     "--device", "cpu", "--no-progress"]) == 0
    assert digest(outs[0]) == digest(outs[1])
    assert read_video(outs[0])[0].shape == (5, 3, 64, 64)
