"""mim reenact: a playable mp4 from a synthetic source and driving clip; bad input refused."""

import os

import av
import pytest
import torch

from mim.cli import main
from mim.config import config_to_dict, get_config
from mim.data import make_clip, write_clip
from mim.io import read_video, write_image
from mim.models import Renderer
from mim.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("reenact")
    config = get_config("tiny")
    torch.manual_seed(0)
    ckpt = str(root / "tiny.safetensors")
    save_checkpoint(ckpt, kind="stage1", step=0, config=config_to_dict(config),
                    modules={"renderer": Renderer(config.renderer)})
    source = make_clip(1, num_frames=1, size=64)["frames"][0]
    write_image(str(root / "source.png"), source)
    write_clip(make_clip(2, num_frames=7, size=64), str(root / "driving.mp4"))
    return root, ckpt


def decode(path):
    with av.open(path) as container:
        video = container.streams.video[0]
        audio = container.streams.audio
        frames = sum(1 for _ in container.decode(video=0))
        fps = float(video.average_rate)
        size = (video.codec_context.width, video.codec_context.height)
        seconds = float(audio[0].duration * audio[0].time_base) if audio else 0.0
    return frames, fps, size, seconds


def test_writes_a_playable_mp4(media, capsys):
    root, ckpt = media
    out = str(root / "out.mp4")
    code = main(["reenact", "--crop", "center", "--driving-crop", "center", "--image", str(root / "source.png"), "--driving", str(root / "driving.mp4"),
                 "--checkpoint", ckpt, "--out", out, "--no-progress"])
    assert code == 0, capsys.readouterr().err
    frames, fps, size, seconds = decode(out)
    assert (frames, fps, size) == (7, 25.0, (64, 64))
    assert seconds == pytest.approx(7 / 25, abs=0.065)   # AAC codes whole 1024-sample frames (64 ms)
    video, _ = read_video(out)
    assert video.shape == (7, 3, 64, 64) and float(video.std()) > 0.05


def test_non_square_inputs_are_cropped(media, tmp_path):
    root, ckpt = media
    clip = make_clip(3, num_frames=4, size=64)
    wide = torch.nn.functional.pad(clip["frames"], (8, 8, 0, 0), value=0.5)      # 64 × 80
    write_image(str(tmp_path / "tall.png"), torch.rand(3, 90, 70))
    from mim.io import write_video
    write_video(str(tmp_path / "wide.mp4"), wide)
    out = str(tmp_path / "out.mp4")
    assert main(["reenact", "--crop", "center", "--driving-crop", "center", "--image", str(tmp_path / "tall.png"), "--driving", str(tmp_path / "wide.mp4"),
                 "--checkpoint", ckpt, "--out", out, "--no-progress", "--absolute"]) == 0
    assert decode(out)[:3] == (4, 25.0, (64, 64))


@pytest.mark.parametrize("what", ["image", "driving", "checkpoint", "foreign-checkpoint"])
def test_bad_input_names_it_and_keeps_the_old_output(media, tmp_path, capsys, what):
    root, ckpt = media
    args = {"image": str(root / "source.png"), "driving": str(root / "driving.mp4"), "checkpoint": ckpt}
    broken = tmp_path / ("broken.safetensors" if "checkpoint" in what else f"broken.{what}")
    if what == "foreign-checkpoint":
        from safetensors.torch import save_file
        save_file({"w": torch.zeros(2)}, str(broken))
        args["checkpoint"] = str(broken)
    else:
        broken.write_bytes(b"not a media file at all" * 10)
        args[what] = str(broken)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    code = main(["reenact", "--crop", "center", "--driving-crop", "center", "--image", args["image"], "--driving", args["driving"],
                 "--checkpoint", args["checkpoint"], "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(broken) in err and err.startswith("mim: error:")
    assert out.read_bytes() == b"previous result"
    assert sorted(os.listdir(tmp_path)) == sorted([broken.name, "out.mp4"])
