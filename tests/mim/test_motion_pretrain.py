"""Supervised warm start of the motion encoder (mim.train.motion_pretrain, not in the paper): only
the motion encoder changes, the result is a loadable stage-1 checkpoint, the fit improves on the
labels, runs are reproducible, bad input is refused."""

import json

import pytest
import torch

from mim.checkpoint import CheckpointError, read_metadata, renderer_from_checkpoint, save_checkpoint
from mim.cli import main
from mim.config import config_to_dict, get_config
from mim.models import Renderer
from mim.train.motion_pretrain import pretrain_motion_encoder


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    config = get_config("tiny")
    torch.manual_seed(0)
    renderer = Renderer(config.renderer)
    path = str(tmp_path_factory.mktemp("start") / "renderer.safetensors")
    save_checkpoint(path, kind="stage1", step=7, config=config_to_dict(config),
                    modules={"renderer": renderer}, with_rng=False)
    return path, renderer


def test_only_the_motion_encoder_changes_and_the_fit_improves(start, tmp_path):
    path, original = start
    out = str(tmp_path / "pre.safetensors")
    history = pretrain_motion_encoder(path, out, steps=64, clips=4, frames_per_clip=12, batch_size=8,
                                      lr=1e-3, eval_every=8, heldout_clips=1, progress=False)
    assert [row["step"] for row in history] == list(range(8, 65, 8))
    losses = [row["loss"] for row in history]
    # MSE of standardized labels: about 1 + MOUTH_WEIGHT for a constant guess
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    assert all(-1.0 <= row["heldout_mouth_r"] <= 1.0 for row in history)
    meta = read_metadata(out)
    assert meta["kind"] == "stage1" and meta["step"] == 0
    assert meta["extra"]["motion_pretrain"]["steps"] == 64
    tuned = renderer_from_checkpoint(out)
    changed = []
    for key, value in original.state_dict().items():
        if key.startswith("motion_encoder."):
            changed.append(not torch.equal(tuned.state_dict()[key], value))
        else:
            torch.testing.assert_close(tuned.state_dict()[key], value, rtol=0, atol=0)
    assert changed and all(changed)


def test_the_same_seed_gives_the_same_encoder(start, tmp_path):
    path, _ = start
    outs = [str(tmp_path / f"{name}.safetensors") for name in ("a", "b", "c")]
    for out, seed in zip(outs, (0, 0, 1)):
        pretrain_motion_encoder(path, out, steps=3, clips=2, frames_per_clip=6, batch_size=4,
                                eval_every=3, heldout_clips=1, seed=seed, progress=False)
    a, b, c = (renderer_from_checkpoint(out).motion_encoder.state_dict() for out in outs)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[key], c[key]) for key in a)


def test_bad_input_is_refused(start, tmp_path):
    path, _ = start
    with pytest.raises(ValueError, match="steps"):
        pretrain_motion_encoder(path, str(tmp_path / "x.safetensors"), steps=0)
    with pytest.raises(CheckpointError, match="does not exist"):
        pretrain_motion_encoder(str(tmp_path / "missing.safetensors"), str(tmp_path / "x.safetensors"), steps=1)
    assert not (tmp_path / "x.safetensors").exists()


def test_command_line(start, tmp_path, capsys):
    path, _ = start
    out = tmp_path / "cli.safetensors"
    assert main(["train", "motion-encoder", "--init", path, "--out", str(out), "--steps", "2",
                 "--clips", "2", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["history"][-1]["step"] == 2 and out.exists()
