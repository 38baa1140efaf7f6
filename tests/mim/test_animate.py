"""mim animate / mim.animate: T = ceil(25 · duration) frames from a portrait and speech, a playable
mp4 with the audio, the same video for the same seed, bad input refused without touching the
output."""

import math
import os

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import mim.animate
from mim.animate import Animator
from mim.audio import audio_features, num_video_frames
from mim.cli import main
from mim.config import config_to_dict, get_config
from mim.data import make_clip, speech_like_audio
from mim.io import MediaError, write_image, write_wav
from mim.models import Renderer
from mim.reenact import square_resize
from mim.checkpoint import CheckpointError, save_checkpoint

RATE = 16000


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_stage2):
    """A random tiny stage-2 checkpoint (2 DDIM steps), a stage-1 one, a portrait, speech."""
    root = tmp_path_factory.mktemp("animate")
    stage2 = str(root / "stage2.safetensors")
    config, renderer, _ = tiny_stage2(stage2, wake_zero_heads=True)
    stage1 = str(root / "stage1.safetensors")
    save_checkpoint(stage1, kind="stage1", step=0, config=config_to_dict(config),
                    modules={"renderer": renderer})
    portrait = make_clip(1, num_frames=1, size=64)["frames"][0]
    write_image(str(root / "portrait.png"), portrait)
    speech, _ = speech_like_audio(2.2, seed=1)
    write_wav(str(root / "speech.wav"), speech[:round(1.01 * RATE)], RATE)
    write_wav(str(root / "short.wav"), speech[:round(0.3 * RATE)], RATE)
    return {"root": root, "stage2": stage2, "stage1": stage1, "portrait": portrait, "speech": speech}


@pytest.fixture(scope="module")
def animator(media):
    return Animator.from_pretrained(media["stage2"], device="cpu")


@pytest.fixture(scope="module")
def short_video(media, animator):
    """0.3 s of speech (shorter than one motion window of 25 frames), seed 0."""
    return animator.animate(media["portrait"], media["speech"][:round(0.3 * RATE)], seed=0, crop="center")


def decode(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio
        frames = sum(1 for _ in container.decode(video=0))
        fps = float(video.average_rate)
        size = (video.codec_context.width, video.codec_context.height)
        seconds = float(audio[0].duration * audio[0].time_base) if audio else None
    return frames, fps, size, seconds


def test_short_audio_gives_ceil_25_duration_frames(short_video):
    assert short_video.shape == (8, 3, 64, 64)   # ceil(0.3 · 25) = ceil(7.5)
    assert short_video.dtype == torch.float32 and torch.isfinite(short_video).all()
    assert short_video.min() >= 0 and short_video.max() <= 1


def test_audio_over_several_motion_windows(media, animator):
    frames = animator.animate(media["portrait"], media["speech"][:round(2.2 * RATE)], seed=0, crop="center")
    assert frames.shape == (55, 3, 64, 64)       # windows of 25, 25 and 5 motion frames
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1


def test_same_seed_same_video_other_seed_another(media, animator, short_video):
    audio = media["speech"][:round(0.3 * RATE)]
    again = animator.animate(media["portrait"], audio, seed=0, crop="center")
    assert torch.equal(again, short_video)
    other = animator.animate(media["portrait"], audio, seed=1, crop="center")
    assert other.shape == short_video.shape and not torch.equal(other, short_video)


def test_is_the_two_stages_in_turn(media, animator, short_video):
    """Source encoded once, motion sampled from the speech with F_A and the seeded generator,
    rendered: the same frames as calling the stages by hand."""
    audio = media["speech"][:round(0.3 * RATE)]
    config = animator.config
    with torch.no_grad():
        state = animator.renderer.encode_source(square_resize(media["portrait"], 64)[None])
        features = audio_features(audio)
        audio_global, audio_local = animator.motion.encode_audio(
            features.mel[None], features.local_windows(config.motion.local_context)[None])
        motion = animator.motion.generate(audio_global, audio_local, state.appearance,
                                          generator=torch.Generator().manual_seed(0))
        frames = animator.renderer.render(state, motion)[0].clamp(0, 1)
    assert motion.shape == (1, num_video_frames(len(audio)), config.renderer.motion_dim)
    torch.testing.assert_close(short_video, frames, rtol=0, atol=1e-6)


def test_cli_writes_mp4_with_the_audio(media, tmp_path, capsys):
    out = tmp_path / "talking.mp4"
    code = main(["animate", "--image", str(media["root"] / "portrait.png"), "--crop", "center",
                 "--audio", str(media["root"] / "speech.wav"), "--out", str(out),
                 "--checkpoint", media["stage2"], "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() == str(out)
    frames, fps, size, seconds = decode(out)
    assert (frames, fps, size) == (math.ceil(25 * 1.01), 25.0, (64, 64))
    assert seconds == pytest.approx(1.01, abs=0.064)      # AAC codes whole 1024-sample frames
    assert os.listdir(tmp_path) == ["talking.mp4"]


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grey_and_rgba_portraits(media, animator, tmp_path, mode):
    rgb = (media["portrait"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(rgb, mode="RGB").convert(mode).resize((48, 64))   # not square either
    image.save(tmp_path / f"portrait_{mode}.png")
    out = tmp_path / "talking.mp4"
    assert animator.animate_to_file(tmp_path / f"portrait_{mode}.png", media["root"] / "short.wav",
                                    out, progress=False, crop="center") == 8
    assert decode(out)[:3] == (8, 25.0, (64, 64))


@pytest.mark.parametrize("what", ["image", "audio", "empty-wav", "foreign-checkpoint",
                                  "stage1-checkpoint", "missing-default-checkpoint"])
def test_bad_input_names_it_and_keeps_the_old_output(media, tmp_path, capsys, monkeypatch, what):
    args = {"--image": str(media["root"] / "portrait.png"), "--audio": str(media["root"] / "short.wav"),
            "--checkpoint": media["stage2"]}
    if what in ("image", "audio"):
        named = tmp_path / ("broken.png" if what == "image" else "broken.wav")
        named.write_bytes(b"not a media file at all" * 10)
        args["--" + what] = str(named)
    elif what == "empty-wav":
        named = tmp_path / "empty.wav"
        write_wav(str(named), np.zeros(0, np.float32), RATE)
        args["--audio"] = str(named)
    elif what == "foreign-checkpoint":
        named = tmp_path / "foreign.safetensors"
        save_file({"w": torch.zeros(2)}, str(named))
        args["--checkpoint"] = str(named)
    elif what == "stage1-checkpoint":
        named = media["stage1"]
        args["--checkpoint"] = named
    else:
        named = tmp_path / "demo" / "mim_tiny.safetensors"
        monkeypatch.setattr(mim.animate, "DEFAULT_CHECKPOINT", named)
        del args["--checkpoint"]
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    before = sorted(os.listdir(tmp_path))
    argv = ["animate", "--out", str(out), "--no-progress", "--crop", "center"] + [x for pair in args.items() for x in pair]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mim: error:") and str(named) in err, err
    assert out.read_bytes() == b"previous result"
    assert sorted(os.listdir(tmp_path)) == before
    if what == "stage1-checkpoint":
        assert "no motion generator" in err and "stage 2" in err
    if what == "missing-default-checkpoint":
        assert "--checkpoint" in err and "make demo" in err


def test_missing_default_checkpoint_from_python(tmp_path, monkeypatch):
    monkeypatch.setattr(mim.animate, "DEFAULT_CHECKPOINT", tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="absent.safetensors"):
        Animator.from_pretrained()


@pytest.mark.parametrize("image, message", [
    (torch.rand(4, 64, 64), r"image must have shape \(3, H, W\)"),
    (torch.rand(2, 3, 64, 64), r"image must have shape \(3, H, W\)"),
    (torch.rand(3, 64, 64) * 2, r"image values must lie in \[0, 1\]"),
])
def test_bad_image_tensor_is_named(media, animator, image, message):
    with pytest.raises(ValueError, match=message):
        animator.animate(image, media["speech"][:RATE // 2], crop="center")


@pytest.mark.parametrize("audio, error, message", [
    (np.zeros(0, np.float32), ValueError, "audio is empty"),
    (np.zeros((2, 8000), np.float32), ValueError, r"audio must be a 1-D \(mono\) array"),
    (np.zeros(8000, np.int16), TypeError, "audio must be a float array"),
    (np.zeros(100, np.float32), ValueError, "audio has 100 samples; at least 257"),
])
def test_bad_audio_array_is_named(media, animator, audio, error, message):
    with pytest.raises(error, match=message):
        animator.animate(media["portrait"], audio, crop="center")


@pytest.mark.parametrize("option, message", [
    ({"steps": 0}, r"steps must be None or an int in \[1, diffusion_steps = 1000\]"),
    ({"steps": 2.5}, "steps must be None or an int"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be None or a finite number"),
    ({"seed": "zero"}, "seed must be an int"),
])
def test_bad_sampling_option_is_named(media, animator, option, message):
    with pytest.raises((ValueError, TypeError), match=message):
        animator.animate(media["portrait"], media["speech"][:RATE // 2], crop="center", **option)


def test_silence_is_valid_audio(media, animator):
    frames = animator.animate(media["portrait"], np.zeros(RATE // 10, np.float32), crop="center")
    assert frames.shape == (3, 3, 64, 64) and torch.isfinite(frames).all()


def test_too_short_audio_file_names_the_file(media, animator, tmp_path):
    path = tmp_path / "click.wav"
    write_wav(str(path), np.zeros(100, np.float32), RATE)
    with pytest.raises(MediaError, match="click.wav"):
        animator.animate(media["portrait"], path, crop="center")


class _OracleAnimator:
    """Returns a clip's true frames for its own audio, and the frames time-reversed (the mouth
    out of step with the sound) for any other audio."""

    def __init__(self, clip, renderer):
        self.clip, self.renderer, self.device = clip, renderer, torch.device("cpu")

    def animate(self, source, audio, steps=None, seed=0, crop="face"):
        assert crop == "center"   # the clip's frame is the model's size: nothing to detect
        assert torch.equal(source, self.clip["frames"][:1])
        if np.array_equal(audio, self.clip["audio"]):
            return self.clip["frames"]
        return self.clip["frames"].flip(0)


def test_evaluate_lipsync_scores_sync_against_the_shuffled_control(media):
    from mim.evaluate import evaluate_lipsync
    from mim.sync import sync_correlation

    clip = make_clip(3, num_frames=75, size=64)   # not seed 4: dark skin behind glasses, the metric reads it at r 0.63 over 75 frames
    oracle = _OracleAnimator(clip, Renderer(get_config("tiny").renderer).eval())
    result = evaluate_lipsync(oracle, [clip])
    truth = sync_correlation(clip["frames"], clip["audio"])
    assert truth > 0.8
    assert result["sync"] == result["sync_truth"] == pytest.approx(truth)
    assert result["sync_shuffled"] == pytest.approx(sync_correlation(clip["frames"].flip(0), clip["audio"]))
    assert result["sync_shuffled"] < 0.5
    assert result["psnr"] == float("inf") or result["psnr"] > 60
    assert result["ssim"] == pytest.approx(1.0)
    assert result["num_clips"] == 1 and result["frames"] == 75 and len(result["clips"]) == 1
    with pytest.raises(ValueError, match="at least one clip"):
        evaluate_lipsync(oracle, [])


def test_evaluate_lipsync_traces_and_their_plot(tmp_path):
    from mim.evaluate import evaluate_lipsync, plot_lipsync
    from mim.sync import audio_envelope_per_frame, mouth_opening, pearson

    clip = make_clip(3, num_frames=75, size=64)
    oracle = _OracleAnimator(clip, Renderer(get_config("tiny").renderer).eval())
    result = evaluate_lipsync(oracle, [clip, clip, clip], traces=True)
    traces = result["clips"][0]["traces"]
    assert set(traces) == {"envelope", "animated", "shuffled", "truth", "reconstruction"}
    assert all(len(values) == 75 for values in traces.values())
    assert traces["envelope"] == pytest.approx(audio_envelope_per_frame(clip["audio"], 16000, 75).tolist())
    assert traces["truth"] == pytest.approx(mouth_opening(clip["frames"]).tolist())
    assert traces["shuffled"] == pytest.approx(mouth_opening(clip["frames"].flip(0)).tolist())
    assert pearson(np.array(traces["shuffled"]), np.array(traces["envelope"])) == \
        pytest.approx(result["clips"][0]["sync_shuffled"])
    # the means leave the traces out
    assert "traces" not in result and result["sync"] == pytest.approx(result["clips"][0]["sync"])

    path = tmp_path / "sync.png"
    path.write_bytes(b"old")
    plot_lipsync(result, str(path))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sync.png"]     # no temporary left
    without = evaluate_lipsync(oracle, [clip])
    with pytest.raises(ValueError, match="traces=True"):
        plot_lipsync(without, str(tmp_path / "other.png"))
    assert not (tmp_path / "other.png").exists()


def test_evaluate_lipsync_command(media, tmp_path, capsys):
    import json

    out, plot = tmp_path / "sync.json", tmp_path / "sync.png"
    assert main(["evaluate", "--checkpoint", media["stage2"], "--lipsync", "--clips", "1",
                 "--json", str(out), "--plot", str(plot), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["num_clips"] == 1 and result["frames"] == 100
    assert "traces" not in result["clips"][0]      # the plot's traces stay out of the JSON
    with Image.open(plot) as image:
        assert image.format == "PNG"
    for key in ("sync", "sync_shuffled", "sync_truth", "sync_reconstruction"):
        assert -1 <= result[key] <= 1
    assert result["sync_truth"] > 0.8
    assert main(["evaluate", "--checkpoint", media["stage2"], "--lipsync", "--data", str(tmp_path)]) == 2
    assert "procedural clips only" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", media["stage2"], "--plot", str(tmp_path / "p.png")]) == 2
    assert "needs --lipsync" in capsys.readouterr().err and not (tmp_path / "p.png").exists()


def test_the_package_exports_the_animator_lazily():
    import subprocess
    import sys

    import mim
    from mim.animate import Animator as Direct

    assert mim.Animator is Direct
    with pytest.raises(AttributeError, match="no attribute 'Animater'"):
        mim.Animater
    code = "import sys, mim.config; print('mim.animate' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
