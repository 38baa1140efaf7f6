import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import mim.checkpoint as ckpt
from mim.checkpoint import (FORMAT_VERSION, CheckpointError, checkpoint_config, checkpoint_path, latest_checkpoint,
                            load_checkpoint, prune_checkpoints, read_metadata, renderer_from_checkpoint,
                            save_checkpoint)
from mim.config import config_to_dict, get_config


def _model_and_optimizer(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).square().mean().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_everything(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    path = checkpoint_path(str(tmp_path), 7)
    torch.manual_seed(123), np.random.seed(5), random.seed(9)
    save_checkpoint(path, kind="test", step=7, config={"a": 1}, modules={"m": model},
                    optimizers={"opt": optimizer})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    other, other_opt = _model_and_optimizer(1)
    meta = load_checkpoint(path, kind="test", modules={"m": other}, optimizers={"opt": other_opt},
                           restore_rng=True)
    assert meta["step"] == 7 and meta["config"] == {"a": 1}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = optimizer.state_dict(), other_opt.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(torch.as_tensor(s1["state"][i][k]), torch.as_tensor(s2["state"][i][k]))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    model, optimizer = _model_and_optimizer(0)
    path = checkpoint_path(str(tmp_path), 1)
    save_checkpoint(path, kind="test", step=1, config={}, modules={"m": model})
    before = open(path, "rb").read()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, kind="test", step=2, config={}, modules={"m": model})
    with pytest.raises(OSError):
        save_checkpoint(checkpoint_path(str(tmp_path), 2), kind="test", step=2, config={}, modules={"m": model})
    assert sorted(os.listdir(tmp_path)) == ["step_0000001.safetensors"]
    assert open(path, "rb").read() == before


def test_errors_name_the_problem(tmp_path):
    model, _ = _model_and_optimizer(0)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(str(tmp_path / "missing.safetensors"))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(str(corrupt), kind="test", modules={"m": model})
    path = str(tmp_path / "c.safetensors")
    save_checkpoint(path, kind="stage1", step=0, config={}, modules={"m": model})
    with pytest.raises(CheckpointError, match="holds a 'stage1' model, expected 'stage2'"):
        load_checkpoint(path, kind="stage2", modules={"m": model})
    wider = nn.Sequential(nn.Linear(3, 6), nn.GroupNorm(2, 6), nn.Linear(6, 2))
    with pytest.raises(CheckpointError, match="wrong shape: 0.bias, 0.weight.*another config"):
        load_checkpoint(path, kind="stage1", modules={"m": wider})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(open(path, "rb").read()[:-8])
    with pytest.raises(CheckpointError):
        load_checkpoint(str(truncated), kind="stage1", modules={"m": model})


def test_latest_and_prune(tmp_path):
    model, _ = _model_and_optimizer(0)
    for step in (5, 10, 20, 15):
        save_checkpoint(checkpoint_path(str(tmp_path), step), kind="t", step=step, config={},
                        modules={"m": model}, with_rng=False)
    stale = tmp_path / ".step_0000025.safetensors.tmp-abcd.safetensors"
    stale.write_bytes(b"half")
    assert latest_checkpoint(str(tmp_path)).endswith("step_0000020.safetensors")
    prune_checkpoints(str(tmp_path), keep=2)
    assert sorted(os.listdir(tmp_path)) == ["step_0000015.safetensors", "step_0000020.safetensors"]
    assert latest_checkpoint(str(tmp_path / "none")) is None


def _write_raw(path, model, metadata):
    """A checkpoint as an earlier (or later) version wrote it: the given metadata verbatim."""
    tensors = {f"m.{k}": v.contiguous() for k, v in model.state_dict().items()}
    ckpt.save_file(tensors, str(path), metadata={"format": ckpt.FORMAT, "kind": "stage1", "step": "3",
                                                 **metadata})


def _version_1_config():
    """The tiny config as format 1 stored it: recipe knobs flat, no motion.prediction."""
    data = config_to_dict(get_config("tiny"))
    recipe = data.pop("recipe")
    data["renderer"]["decoder_motion_film"] = True
    data["loss"].update(alpha_mouth=2.0, mouth_crop=recipe["mouth_crop"],
                        mouth_margin=recipe["mouth_margin"], alpha_mouth_open=0.0)
    data["train"]["freeze"] = ["lmdd"]
    del data["motion"]["prediction"]
    return data


def test_every_checkpoint_carries_the_format_version(tmp_path):
    model, _ = _model_and_optimizer(0)
    path = str(tmp_path / "c.safetensors")
    config = config_to_dict(get_config("tiny"))
    save_checkpoint(path, kind="stage1", step=0, config=config, modules={"m": model})
    with safe_open(path, framework="pt") as handle:
        assert handle.metadata()["format_version"] == str(FORMAT_VERSION) == "2"
    assert read_metadata(path)["config"] == config


def test_a_version_1_checkpoint_migrates_on_reading(tmp_path):
    model, _ = _model_and_optimizer(0)
    path = tmp_path / "v1.safetensors"
    _write_raw(path, model, {"config": json.dumps(_version_1_config())})
    before = path.read_bytes()
    meta = read_metadata(str(path))
    assert meta["config"]["recipe"] == {"name": "custom", "decoder_motion_film": True, "alpha_mouth": 2.0,
                                        "mouth_crop": 32, "mouth_margin": 0.25, "alpha_mouth_open": 0.0,
                                        "freeze": ["lmdd"]}
    assert "decoder_motion_film" not in meta["config"]["renderer"]
    config = checkpoint_config(str(path), meta)
    assert config.motion.prediction == "eps" and config.recipe.decoder_motion_film
    load_checkpoint(str(path), kind="stage1", modules={"m": model})
    assert path.read_bytes() == before                     # read, never rewritten


def test_a_newer_or_malformed_format_version_is_refused(tmp_path):
    model, _ = _model_and_optimizer(0)
    path = tmp_path / "future.safetensors"
    _write_raw(path, model, {"format_version": str(FORMAT_VERSION + 1), "config": "{}"})
    with pytest.raises(CheckpointError, match=r"format_version 3, newer than this version of mim reads "
                                              r"\(up to 2\): update mim"):
        read_metadata(str(path))
    _write_raw(path, model, {"format_version": "two", "config": "{}"})
    with pytest.raises(CheckpointError, match="'format_version' must be an integer >= 1, got 'two'"):
        read_metadata(str(path))
    old = _version_1_config()
    old["renderer"]["decoder_motion"] = True               # a removed experiment, switched on
    _write_raw(path, model, {"config": json.dumps(old)})
    with pytest.raises(CheckpointError, match="format_version 1.*renderer.decoder_motion: an experiment removed"):
        read_metadata(str(path))


def test_the_committed_demo_checkpoint_loads_unchanged():
    """examples/demo/mim_tiny.safetensors is a format-1 file: it loads through the migration,
    recipe and v-prediction intact, and is not rewritten."""
    path = Path(__file__).resolve().parents[2] / "examples" / "demo" / "mim_tiny.safetensors"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = read_metadata(str(path))
    with safe_open(str(path), framework="pt") as handle:
        assert "format_version" not in handle.metadata()          # written at version 1
    config = checkpoint_config(str(path), meta)
    assert config.recipe.decoder_motion_film and config.recipe.alpha_mouth == 3.0
    assert config.recipe.freeze == ("image_encoder", "appearance_extractor", "motion_encoder", "dit", "lmdd")
    assert config.motion.prediction == "v"
    renderer = renderer_from_checkpoint(str(path))
    assert renderer.decoder.needs_motion
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
