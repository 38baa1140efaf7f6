"""Stage-2 training on top of a stage-1 checkpoint: windows and their conditions, exact resume,
the checkpoint holds the whole pipeline."""

import os

import pytest
import torch
from safetensors.torch import load_file

from mim.checkpoint import CheckpointError, latest_checkpoint, read_metadata, save_checkpoint
from mim.config import config_to_dict, get_config
from mim.models import Renderer
from mim.train.stage2 import Stage2Trainer, load_stage1_renderer, train_stage2


def small_config():
    config = get_config("tiny")
    m, t = config.motion, config.stage2
    m.window, m.layers, m.sample_steps = 8, 1, 2
    t.train_clips, t.heldout_clips, t.frames_per_clip = 2, 1, 12
    t.batch_size, t.log_every, t.checkpoint_every, t.lr_schedule = 2, 1, 2, "constant"
    return config


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    config = small_config()
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("s1") / "stage1.safetensors")
    save_checkpoint(path, kind="stage1", step=0, config=config_to_dict(config),
                    modules={"renderer": Renderer(config.renderer)})
    return path, config


def test_windows_and_their_conditions(stage1, tmp_path):
    path, config = stage1
    renderer, config = load_stage1_renderer(path, config)
    trainer = Stage2Trainer(config, renderer, str(tmp_path), progress=False)
    every = torch.cat([c["motion"] for c in trainer.clips])
    torch.testing.assert_close(trainer.generator.motion_mean, every.mean(0))
    assert trainer.clips[0]["motion"].shape == (12, config.renderer.motion_dim)
    assert trainer.clips[0]["local"].shape == (12, 4 * (2 * config.motion.local_context + 1), 80)
    seen_start = seen_middle = False
    for step in range(12):
        batch = trainer.batch(step, 0)
        assert batch["motion"].shape == (2, 8, config.renderer.motion_dim)
        for i in range(2):
            clip = next(c for c in trainer.clips
                        if any(torch.equal(batch["motion"][i], c["motion"][s:s + 8]) for s in range(5)))
            start = next(s for s in range(5) if torch.equal(batch["motion"][i], clip["motion"][s:s + 8]))
            expected = torch.zeros(4, config.renderer.motion_dim)
            if start:
                expected[4 - min(start, 4):] = trainer.generator.normalize(clip["motion"][max(0, start - 4):start])
            torch.testing.assert_close(batch["prev_motion"][i], expected)
            torch.testing.assert_close(batch["local"][i], clip["local"][start:start + 8])
            seen_start |= start == 0
            seen_middle |= start >= 4
    assert seen_start and seen_middle


def test_resume_is_bitwise_and_the_checkpoint_holds_the_pipeline(stage1, tmp_path):
    path, config = stage1
    train_stage2(path, str(tmp_path / "full"), steps=4, config=config, progress=False)
    train_stage2(path, str(tmp_path / "split"), steps=2, config=config, progress=False)
    train_stage2(path, str(tmp_path / "split"), steps=4, config=config, progress=False, resume=True)
    a = load_file(latest_checkpoint(str(tmp_path / "full" / "checkpoints")))
    b = load_file(latest_checkpoint(str(tmp_path / "split" / "checkpoints")))
    assert a.keys() == b.keys()
    for key in a:
        if not key.startswith("rng."):
            assert torch.equal(a[key], b[key]), key
    assert any(k.startswith("renderer.") for k in a) and any(k.startswith("motion.denoiser.") for k in a)
    assert read_metadata(latest_checkpoint(str(tmp_path / "full" / "checkpoints")))["kind"] == "stage2"
    initial = Renderer(config.renderer).state_dict()
    frozen = load_file(path)
    for key in initial:   # the renderer is frozen: stage 2 does not change it
        assert torch.equal(a["renderer." + key], frozen["renderer." + key])
    lines = open(tmp_path / "split" / "log.csv").read().splitlines()
    assert lines[0].startswith("step,total,simple") and len(lines) == 5


def test_refuses_a_renderer_of_another_config(stage1, tmp_path):
    path, config = stage1
    other = small_config()
    other.renderer.regions = 3
    with pytest.raises(CheckpointError, match="renderer.regions"):
        train_stage2(path, str(tmp_path), steps=1, config=other, progress=False)
    with pytest.raises(CheckpointError, match="not a renderer"):
        bogus = str(tmp_path / "b.safetensors")
        save_checkpoint(bogus, kind="other", step=0, config={}, modules={})
        load_stage1_renderer(bogus)
    assert not os.path.exists(tmp_path / "checkpoints")


def test_cli_train_stage2(stage1, tmp_path, capsys):
    from mim.cli import main
    from mim.config import save_config

    path, config = stage1
    config_path = str(tmp_path / "c.yaml")
    save_config(config, config_path)
    out = str(tmp_path / "run")
    assert main(["train", "stage2", "--stage1", path, "--config", config_path, "--steps", "1",
                 "--out", out, "--no-progress"]) == 0
    assert read_metadata(latest_checkpoint(os.path.join(out, "checkpoints")))["step"] == 1
    assert main(["train", "stage2", "--stage1", str(tmp_path / "missing.safetensors"), "--steps", "1",
                 "--out", out, "--no-progress"]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
