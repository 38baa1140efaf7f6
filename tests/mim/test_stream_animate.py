"""Animator.stream and mim animate --stream: frames out as each motion window's audio arrives, the
same frames whatever the chunks, animate's frames where the global feature is the same, state
carried window to window, bounded memory, resampling, bad input named, the CLI's incremental and
atomic output (a killed run leaves no file at --out)."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from kernels.testing import FORWARD_TOLERANCE, assert_close
from mim.animate import Animator
from mim.audio import audio_features, num_video_frames
from mim.cli import main
from mim.data import speech_like_audio
from mim.io import read_audio, write_wav
from mim.stream import AudioWindows

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_precision import media  # noqa: E402,F401  (the micro checkpoint fixture)

RATE = 16000
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stream_media(media):  # noqa: F811  (the fixture imported above)
    """test_precision's random micro stage-2 checkpoint (motion windows of 8 frames, render windows
    of 4, local_context 2) and 32² portrait, with 0.9 s of speech (23 frames: windows of 8, 8, 7)
    and 6 s of it."""
    speech = speech_like_audio(6.0, seed=1)[0]
    write_wav(str(media["root"] / "stream.wav"), speech[:round(0.9 * RATE)], RATE)
    write_wav(str(media["root"] / "long.wav"), speech, RATE)
    return {"root": media["root"], "checkpoint": media["checkpoint"], "speech": speech[:round(0.9 * RATE)],
            "portrait": str(media["root"] / "portrait.png")}


@pytest.fixture(scope="module")
def animator(stream_media):
    return Animator.from_pretrained(stream_media["checkpoint"], device="cpu")


def chunked(samples, size):
    return [samples[start:start + size] for start in range(0, len(samples), size)]


def streamed(animator, stream_media, chunks, **options):
    return torch.stack(list(animator.stream(stream_media["portrait"], chunks, crop="center", **options)))


@pytest.fixture(scope="module")
def whole(animator, stream_media):
    return streamed(animator, stream_media, [stream_media["speech"]])


def test_chunk_sizes_do_not_matter(animator, stream_media, whole):
    speech = stream_media["speech"]
    assert whole.shape == (23, 3, 32, 32)
    for size in (1, 320, 3200):
        assert torch.equal(streamed(animator, stream_media, chunked(speech, size)), whole), size
    # empty chunks anywhere, torch chunks, float64 chunks: the same samples
    mixed = [speech[:1000], np.zeros(0, np.float32), torch.from_numpy(speech[1000:5000]), speech[5000:].astype(np.float64)]
    assert torch.equal(streamed(animator, stream_media, mixed), whole)


def test_equals_animate_where_the_global_feature_is_the_same(animator, stream_media):
    """With the denoiser's F_ag projection zeroed F_ag has no effect, and the stream gives animate's
    frames bit for bit over three windows (features, draws, carried motion, render windows)."""
    deaf = Animator(animator.renderer, copy.deepcopy(animator.motion), animator.config, "cpu")
    with torch.no_grad():
        deaf.motion.denoiser.global_in.weight.zero_()
        deaf.motion.denoiser.global_in.bias.zero_()
    reference = deaf.animate(stream_media["portrait"], stream_media["speech"], crop="center")
    assert torch.equal(streamed(deaf, stream_media, chunked(stream_media["speech"], 320)), reference)


def test_one_window_clip_equals_animate(animator, stream_media):
    """A clip of one motion window (0.25 s: 7 frames) is sampled at the stream's end, where F_ag is
    the clip's mean: animate's frames exactly."""
    clip = stream_media["speech"][:4000]
    reference = animator.animate(stream_media["portrait"], clip, crop="center")
    assert reference.shape[0] == 7
    assert torch.equal(streamed(animator, stream_media, chunked(clip, 333)), reference)


def test_causal_global_feature_is_the_running_mean(animator, stream_media):
    """Window k's F_ag is Mamba-g's mean over mel frames 0 … 4((k+1)·8 + 2) − 1 (the last window:
    all of them), the whole clip's Mamba-g tokens averaged over that prefix."""
    speech = stream_media["speech"]
    front = AudioWindows(animator.motion, torch.device("cpu"))
    windows = [w for chunk in chunked(speech, 500) for w in front.push(chunk)]
    assert [w.index for w in windows] == [0, 1]
    windows += list(front.finish())
    assert [(w.start, w.stop, w.mel_frames) for w in windows] == [(0, 8, 40), (8, 16, 72), (16, 23, 91)]
    mel = audio_features(speech).mel[None].double()
    stack = copy.deepcopy(animator.motion.mamba_g.stack).double()
    with torch.no_grad():
        tokens = stack(mel)
    for window in windows:
        assert_close(f"F_ag of window {window.index}", window.audio_global,
                     tokens[:, :window.mel_frames].mean(dim=1), FORWARD_TOLERANCE[torch.float32])


def test_frames_come_as_soon_as_their_window_is_in(animator, stream_media):
    """Window k (8 frames, render windows of 4) needs 640·((k+1)·8 + 2) + 96 samples: window 0's
    frames come right after the chunk holding sample 6496 (chunk 20 of 320), window 1's after
    sample 11616 (chunk 36), the last window's at the end; state goes from window to window."""
    pulled = []

    def chunks():
        for index, chunk in enumerate(chunked(stream_media["speech"], 320)):
            pulled.append(index)
            yield chunk

    seen = [len(pulled) for _ in animator.stream(stream_media["portrait"], chunks(), crop="center")]
    assert seen == [21] * 8 + [37] * 8 + [45] * 7


def test_memory_does_not_grow_with_the_stream(animator):
    """20 s through the front end in 320-sample chunks: never more than W + 2c + 1 video frames of
    samples, the STFT's 96 and one chunk held."""
    front = AudioWindows(animator.motion, torch.device("cpu"))
    audio = speech_like_audio(20.0, seed=3)[0]
    held, windows = [], 0
    for chunk in chunked(audio, 320):
        windows += len(list(front.push(chunk)))
        held.append(front.samples_held)
    windows += len(list(front.finish()))
    assert windows == -(-num_video_frames(audio.size) // 8)
    assert max(held) <= 640 * (8 + 2 * 2 + 1) + 96 + 320


def test_other_sample_rates_are_resampled_in_chunks(animator, stream_media, tmp_path):
    """44.1 kHz chunks go through libswresample chunk by chunk: the frames of the same audio read
    from a file (resampled whole on reading, as animate's files are)."""
    speech = stream_media["speech"]
    fine = np.interp(np.arange(round(len(speech) * 44100 / RATE)) * RATE / 44100, np.arange(len(speech)),
                     speech).astype(np.float32)
    path = tmp_path / "speech44k.wav"
    write_wav(str(path), fine, 44100, subtype="FLOAT")
    reference = streamed(animator, stream_media, [read_audio(path, RATE)])
    assert torch.equal(streamed(animator, stream_media, chunked(fine, 441), sample_rate=44100), reference)
    assert torch.equal(streamed(animator, stream_media, chunked(fine, 17), sample_rate=44100), reference)


@pytest.mark.parametrize("chunks, message", [
    ([np.zeros((2, 100), np.float32)], r"audio chunk 0 must be 1-D \(mono samples\), got shape \(2, 100\)"),
    ([np.zeros(10, np.float32), np.array([0.0, np.nan], np.float32)], "audio chunk 1 contains NaN or infinite"),
    ([np.zeros(100, np.int16)], "audio chunk 0 must be a 1-D float array of samples in \\[-1, 1\\], got dtype int16"),
    ([np.array(["a", "b"])], "audio chunk 0 must be a 1-D float array"),
    ([[0.0, 0.1]], "audio chunk 0 must be a 1-D float numpy array or tensor of samples, got list"),
    ([torch.zeros(10, dtype=torch.int32)], "audio chunk 0 must be a 1-D float array .* torch.int32"),
    ([], "the audio stream is empty: no samples arrived"),
    ([np.zeros(0, np.float32)] * 3, "the audio stream is empty"),
    ([np.zeros(100, np.float32)], "the audio stream holds 100 samples; at least 257"),
])
def test_bad_chunks_are_named(animator, stream_media, chunks, message):
    with pytest.raises(ValueError, match=message):
        list(animator.stream(stream_media["portrait"], iter(chunks), crop="center"))


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, True, "16k", 999, 400000])
def test_bad_sample_rate_is_named_on_the_call(animator, stream_media, rate):
    with pytest.raises(ValueError, match=r"sample_rate must be an int in \[1000, 384000\]"):
        animator.stream(stream_media["portrait"], [stream_media["speech"]], sample_rate=rate, crop="center")


def decode(path):
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        has_audio = bool(container.streams.audio)
        size = (container.streams.video[0].codec_context.width, container.streams.video[0].codec_context.height)
    return frames, size, has_audio


def test_cli_stream_writes_the_video_and_reports(stream_media, tmp_path, capsys):
    out = tmp_path / "live.mp4"
    argv = ["animate", "--stream", "--chunk-ms", "100", "--image", stream_media["portrait"], "--crop", "center",
            "--audio", str(stream_media["root"] / "stream.wav"), "--out", str(out), "--checkpoint", stream_media["checkpoint"],
            "--device", "cpu"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith("mim: chunk 4 (audio to 0.50 s): 8 frames, latency") and "real-time factor" in lines[0]
    assert lines[-1].startswith("mim: streamed 23 frames of 0.90 s of audio") and "frames/s" in lines[-1]
    assert decode(out) == (23, (32, 32), True)
    assert os.listdir(tmp_path) == ["live.mp4"]
    assert main(argv + ["--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    assert main(argv + ["--chunk-ms", "0"]) == 2
    assert "chunk_ms must be a number in (0, 60000]" in capsys.readouterr().err


def test_a_killed_stream_leaves_no_file_at_out(stream_media, tmp_path):
    """6 s of speech streamed live, stopped once frames are out: SIGTERM removes the temporary file
    and exits 130; SIGKILL leaves only the hidden temporary; never a file at --out."""
    runs = {}
    for name in ("SIGTERM", "SIGKILL"):
        folder = tmp_path / name
        folder.mkdir()
        command = [sys.executable, "-m", "mim", "animate", "--stream", "--image", stream_media["portrait"], "--crop", "center",
                   "--audio", str(stream_media["root"] / "long.wav"), "--out", str(folder / "live.mp4"),
                   "--checkpoint", stream_media["checkpoint"], "--device", "cpu"]
        runs[name] = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)})
    for name, run in runs.items():
        line = run.stderr.readline()
        assert line.startswith("mim: chunk "), line          # frames are being written
        time.sleep(0.3)
        run.send_signal(getattr(signal, name))
    for name, run in runs.items():
        rest = run.stderr.read()
        code = run.wait(timeout=60)
        left = sorted(os.listdir(tmp_path / name))
        if name == "SIGTERM":
            assert code == 130 and "interrupted (SIGTERM)" in rest and "no video written" in rest, rest
            assert left == []
        else:
            assert code == -signal.SIGKILL
            assert len(left) == 1 and left[0].startswith(".live.mp4.tmp-"), left
