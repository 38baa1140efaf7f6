"""Memory independent of input length: the audio is featurized and encoded a chunk at a time
(Mamba-g carrying its state) with the whole-clip result, and reenact decodes and renders the
driving video a render window at a time."""

import numpy as np
import pytest
import torch

import mim.reenact
from kernels.testing import FORWARD_TOLERANCE, assert_close
from mim.animate import Animator
from mim.audio import audio_features, local_windows_range, log_mel, log_mel_range, num_video_frames
from mim.cli import main
from mim.config import MotionConfig, get_config
from mim.data import make_clip, speech_like_audio, write_clip
from mim.io import iter_video, read_video, write_image
from mim.models.motion import MambaGlobalExtractor

TOL = FORWARD_TOLERANCE[torch.float32]


def small_config():
    return MotionConfig(window=25, audio_dim=24, global_layers=2, local_layers=1, d_state=4,
                        width=32, layers=1, heads=2)


@pytest.mark.parametrize("sizes", [(37,), (1, 2, 50, 33), (13, 13, 11)])
def test_mamba_g_in_chunks_equals_the_whole_clip(sizes):
    """Chunks of 1 and 2 frames are shorter than the conv window (d_conv - 1 = 3) it carries."""
    extractor = MambaGlobalExtractor(small_config()).eval()
    mel = torch.randn(2, sum(sizes), 80)
    with torch.no_grad():
        chunked = extractor.forward_chunks(iter(mel.split(list(sizes), dim=1)))
        reference = extractor.double()(mel.double())
    assert_close("F_ag from chunks vs float64 whole clip", chunked, reference, TOL)
    # token by token too: the stack's outputs, chunk after chunk, are the whole sequence's
    extractor.float()
    with torch.no_grad():
        states, pieces = None, []
        for piece in mel.split(list(sizes), dim=1):
            out, states = extractor.stack.forward_chunk(piece, states)
            pieces.append(out)
        whole = extractor.stack.double()(mel.double())
    assert_close("Mamba-g tokens from chunks", torch.cat(pieces, dim=1), whole, TOL)


def test_mamba_g_chunks_bad_input_is_named():
    extractor = MambaGlobalExtractor(small_config()).eval()
    with pytest.raises(ValueError, match="no mel chunk"):
        extractor.forward_chunks(iter([]))
    with pytest.raises(ValueError, match=r"mel chunk 1 must have shape \(B, l, 80\) = \(2, '\?', 80\), got \(3, 5, 80\)"):
        extractor.forward_chunks(iter([torch.randn(2, 5, 80), torch.randn(3, 5, 80)]))
    with pytest.raises(ValueError, match="mel chunk 0 holds no mel frame"):
        extractor.forward_chunks(iter([torch.randn(1, 0, 80)]))


@pytest.mark.parametrize("samples", [257, 4321, 16000 + 640 * 3])   # the last: N a multiple of 640
def test_log_mel_range_is_the_slice_of_log_mel(samples):
    audio = speech_like_audio(samples / 16000 + 0.01, seed=4)[0][:samples] + np.float32(1e-3)
    whole = log_mel(audio)
    total = whole.shape[0]
    for start, stop in [(0, total), (0, 1), (total - 1, total), (1, min(total, 6)), (total // 3, total)]:
        assert_close(f"log_mel_range({start}, {stop})", log_mel_range(audio, start, stop),
                     whole[start:stop].double(), TOL)


def test_log_mel_range_bad_input_is_named():
    audio = np.zeros(1000, np.float32)
    with pytest.raises(ValueError, match=r"0 <= start < stop <= 7"):
        log_mel_range(audio, 3, 8)
    with pytest.raises(ValueError, match="start, stop"):
        log_mel_range(audio, 2, 2)
    with pytest.raises(TypeError, match="audio must be a 1-D float numpy array"):
        log_mel_range(torch.zeros(1000), 0, 1)
    bad = audio.copy()
    bad[500] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        log_mel_range(bad, 0, 7)


@pytest.mark.parametrize("samples, context", [(16000 * 2 + 640 * 2, 2), (4321, 0), (9000, 3)])
def test_local_windows_of_a_range_equal_those_of_the_whole_clip(samples, context):
    audio = speech_like_audio(samples / 16000 + 0.01, seed=5)[0][:samples]
    frames = num_video_frames(samples)
    whole = audio_features(audio, frames).local_windows(context)
    for start, stop in [(0, frames), (0, 1), (frames - 1, frames), (2, min(frames, 9))]:
        part = local_windows_range(audio, frames, start, stop, context)
        assert_close(f"windows [{start}, {stop})", part, whole[start:stop].double(), TOL)


def test_local_windows_range_bad_input_is_named():
    audio = np.zeros(4000, np.float32)
    with pytest.raises(ValueError, match=r"0 <= start < stop <= num_frames = 7"):
        local_windows_range(audio, 7, 3, 8)
    with pytest.raises(ValueError, match="start, stop"):
        local_windows_range(audio, 7, 2, 2)
    with pytest.raises(ValueError, match="num_frames must be an int >= 1"):
        local_windows_range(audio, 0, 0, 1)
    with pytest.raises(ValueError, match="context must be an int >= 0"):
        local_windows_range(audio, 7, 0, 1, context=-1)
    with pytest.raises(TypeError, match="audio must be a 1-D float numpy array"):
        local_windows_range(torch.zeros(4000), 7, 0, 1)


def test_local_windows_range_past_the_clip_is_silence():
    """Video frames asked for beyond the audio's mel frames read silence, as the whole clip's do."""
    audio = speech_like_audio(0.2, seed=6)[0]
    frames = num_video_frames(audio.size) + 6
    whole = audio_features(audio, frames).local_windows(1)
    part = local_windows_range(audio, frames, frames - 3, frames, 1)
    assert_close("windows past the clip", part, whole[frames - 3:].double(), TOL)


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_stage2):
    """A random tiny stage-2 checkpoint, a portrait, a driving clip."""
    root = tmp_path_factory.mktemp("streaming")
    tiny_stage2(root / "stage2.safetensors")
    write_image(str(root / "portrait.png"), make_clip(1, num_frames=1, size=64)["frames"][0])
    write_clip(make_clip(2, num_frames=21, size=64), str(root / "driving.mp4"))
    return root


def test_animator_encodes_the_audio_in_chunks_as_a_whole(media, monkeypatch):
    """3.1 s of audio one motion window (25 video frames) at a time: Mamba-g reads each window's
    new mel frames (100, the first 108: its slices read local_context = 2 frames ahead), Mamba-l
    its 25 frames' slices, and F_ag, F_al are the whole clip's."""
    animator = Animator.from_pretrained(media / "stage2.safetensors", device="cpu")
    seen = {"mamba_g": [], "mamba_l": []}
    stack_chunk = animator.motion.mamba_g.stack.forward_chunk
    local_forward = animator.motion.mamba_l.forward
    monkeypatch.setattr(animator.motion.mamba_g.stack, "forward_chunk",
                        lambda mel, states: seen["mamba_g"].append(mel.shape[1]) or stack_chunk(mel, states))
    monkeypatch.setattr(animator.motion.mamba_l, "forward",
                        lambda windows: seen["mamba_l"].append(windows.shape[1]) or local_forward(windows))
    audio = speech_like_audio(3.1, seed=6)[0]
    with torch.no_grad():
        audio_global, audio_local = animator._encode_audio(audio)
    assert seen["mamba_g"] == [108, 100, 100, 3] and sum(seen["mamba_g"]) == len(audio) // 160 + 1
    assert seen["mamba_l"] == [25, 25, 25, 3] and sum(seen["mamba_l"]) == num_video_frames(len(audio))
    monkeypatch.undo()
    features = audio_features(audio)
    motion = animator.motion.double()
    with torch.no_grad():
        reference = motion.encode_audio(features.mel[None].double(),
                                        features.local_windows(animator.config.motion.local_context)[None].double())
    motion.float()
    assert_close("F_ag", audio_global, reference[0], TOL)
    assert_close("F_al", audio_local, reference[1], TOL)


def test_iter_video_decodes_lazily_what_read_video_reads(media):
    frames, fps = iter_video(media / "driving.mp4", size=(32, 48), max_frames=9)
    first = next(frames)
    assert first.shape == (3, 32, 48) and fps == 25.0
    whole, _ = read_video(media / "driving.mp4", size=(32, 48), max_frames=9)
    assert torch.equal(torch.stack([first, *frames]), whole)
    with pytest.raises(ValueError, match="max_frames must be None or a positive int"):
        iter_video(media / "driving.mp4", max_frames=0)


def test_reenact_holds_one_render_window_of_driving_frames(media, monkeypatch, tmp_path):
    """Frames are decoded as they are rendered: never more than render_window + 1 driving frames
    decoded ahead of the encoder (21 frames, windows of 16)."""
    log = []
    real_iter_video, real_write_video = mim.reenact.iter_video, mim.reenact.write_video

    def counting_iter_video(*args, **kwargs):
        frames, fps = real_iter_video(*args, **kwargs)

        def counted():
            for frame in frames:
                log.append("decoded")
                yield frame
        return counted(), fps

    def counting_write_video(path, frames, **kwargs):
        def counted():
            for frame in frames:
                log.append("written")
                yield frame
        return real_write_video(path, counted(), **kwargs)

    monkeypatch.setattr(mim.reenact, "iter_video", counting_iter_video)
    monkeypatch.setattr(mim.reenact, "write_video", counting_write_video)
    out = tmp_path / "out.mp4"
    assert main(["reenact", "--crop", "center", "--driving-crop", "center", "--image", str(media / "portrait.png"), "--driving", str(media / "driving.mp4"),
                 "--checkpoint", str(media / "stage2.safetensors"), "--out", str(out), "--no-progress"]) == 0
    ahead = np.cumsum([1 if event == "decoded" else -1 for event in log])
    assert log.count("decoded") == log.count("written") == 21
    assert ahead.max() <= get_config("tiny").renderer.render_window + 1
    assert read_video(out)[0].shape == (21, 3, 64, 64)
