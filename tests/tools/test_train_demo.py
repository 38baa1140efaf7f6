"""tools/train_demo end to end at a toy size: stage 1, the mouth recipe's phases, stage 2, then
the files mim animate needs."""

import os

import pytest
import soundfile
from safetensors import safe_open

from mim.animate import Animator
from mim.checkpoint import FORMAT_VERSION, latest_checkpoint
from mim.io import read_image
from tools.train_demo import MOUTH_RECIPE, main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One toy run of the whole recipe (its work folder and output), shared by the tests."""
    root = tmp_path_factory.mktemp("train_demo")
    assert main(["--stage1-steps", "1", "--stage2-steps", "1", "--clips", "2", "--work",
                 str(root / "work"), "--out", str(root / "demo"), "--no-progress",
                 "--recipe-scale", "0.001"]) == 0
    return root


def test_writes_a_loadable_demo(demo_run):
    tmp_path = demo_run
    out = str(tmp_path / "demo")
    assert sorted(os.listdir(out)) == ["config.yaml", "mim_tiny.safetensors", "portrait.png", "speech.wav",
                                       "stage1_film2_log.csv", "stage1_film_log.csv", "stage1_log.csv",
                                       "stage1_readout_log.csv", "stage2_log.csv"]
    assert os.path.getsize(os.path.join(out, "mim_tiny.safetensors")) < 30 * 2 ** 20
    with safe_open(os.path.join(out, "mim_tiny.safetensors"), framework="pt") as handle:
        assert handle.metadata()["format_version"] == str(FORMAT_VERSION)
    animator = Animator.from_pretrained(os.path.join(out, "mim_tiny.safetensors"), device="cpu")
    assert animator.config.renderer.image_size == 64
    # the recipe's last phase: the decoder's motion FiLM on, only the decoder trained
    assert animator.config.recipe.decoder_motion_film and animator.config.recipe.name == "mouth"
    assert "decoder" not in animator.config.recipe.freeze and "lmdd" in animator.config.recipe.freeze
    for name, (phase, _, _) in zip(("readout", "film", "film2"), MOUTH_RECIPE):
        assert phase == name and os.path.exists(os.path.join(tmp_path, "work", name, "config.yaml"))
    assert os.path.exists(os.path.join(tmp_path, "work", "motion_encoder.safetensors"))
    assert read_image(os.path.join(out, "portrait.png")).shape == (3, 256, 256)
    info = soundfile.info(os.path.join(out, "speech.wav"))
    assert (info.samplerate, info.channels, round(info.duration, 3)) == (16000, 1, 4.0)


def test_a_reused_stage1_checkpoint_brings_its_own_log(demo_run, tmp_path):
    first = demo_run / "work"
    checkpoint = latest_checkpoint(str(first / "stage1" / "checkpoints"))
    out = tmp_path / "b"
    assert main(["--stage1", checkpoint, "--stage2-steps", "1", "--clips", "2", "--work",
                 str(tmp_path / "second"), "--out", str(out), "--no-progress", "--recipe-scale", "0.001"]) == 0
    assert (out / "stage1_log.csv").read_text() == (first / "stage1" / "log.csv").read_text()
    assert not (tmp_path / "second" / "stage1").exists()
