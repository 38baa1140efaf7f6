"""Issue 16 §1: every failure a user can cause is one line ``mim: error: ...`` naming the file or
the config key, with exit status 2, and leaves an existing output byte-identical (no traceback,
no temporary file)."""

import errno
import json
import math
import os
import struct
import types
import zlib

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import mim.animate
import mim.config
import mim.io
import mim.checkpoint as ckpt
from mim.cli import main
from mim.config import check_memory, estimate_memory, get_config
from mim.data import make_clip, speech_like_audio
from mim.io import MediaError, OutputError, read_image, write_image, write_wav
from mim.models import Renderer
from mim.models.motion import MotionGenerator
from mim.checkpoint import (CheckpointError, checkpoint_path, load_checkpoint, read_metadata,
                                  save_checkpoint)
from mim.train.stage1 import Stage1Trainer

RATE = 16000
PREVIOUS = b"previous result, must survive"


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_stage2):
    """A random tiny stage-2 checkpoint (2 DDIM steps), a portrait and 0.3 s of speech."""
    root = tmp_path_factory.mktemp("cli_errors")
    stage2 = root / "stage2.safetensors"
    config, _, _ = tiny_stage2(stage2)
    write_image(str(root / "portrait.png"), make_clip(1, num_frames=1, size=64)["frames"][0])
    speech, _ = speech_like_audio(0.3, seed=1)
    write_wav(str(root / "speech.wav"), speech[:round(0.3 * RATE)], RATE)
    return {"root": root, "stage2": stage2, "config": config}


def run_failing(argv, capsys, *named):
    """main(argv) must return 2 with one stderr line 'mim: error: ...' containing every ``named``."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("mim: error: ") and err.count("\n") == 1, err
    for name in named:
        assert str(name) in err, err
    return err


def previous_output(path):
    path.write_bytes(PREVIOUS)
    return sorted(os.listdir(path.parent))


def assert_untouched(path, listing):
    assert path.read_bytes() == PREVIOUS
    assert sorted(os.listdir(path.parent)) == listing      # no temporary file left behind


def animate_argv(media, out, **replace):
    args = {"--image": media["root"] / "portrait.png", "--audio": media["root"] / "speech.wav",
            "--checkpoint": media["stage2"], "--out": out}
    args.update(replace)
    return (["animate", "--no-progress", "--device", "cpu", "--backend", "torch", "--crop", "center"]
            + [x for pair in args.items() for x in pair])


# -- outputs that cannot be written --------------------------------------------------------------

def test_out_is_an_existing_directory(media, tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    run_failing(animate_argv(media, tmp_path / "videos"), capsys, tmp_path / "videos", "directory")
    assert os.listdir(tmp_path / "videos") == []
    run_failing(["config", "save", "tiny", tmp_path / "videos"], capsys, tmp_path / "videos", "directory")


def test_atomic_output_refuses_a_directory(tmp_path):
    with pytest.raises(OutputError, match="directory"):
        with mim.io.atomic_output(tmp_path):
            pass


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A folder where creating a file fails with EROFS, as on a read-only mount. (chmod cannot
    stop root, who runs these tests here, so file creation in it is made to fail instead.)"""
    folder = tmp_path / "readonly"
    folder.mkdir()
    real_open = os.open

    def guarded(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and os.path.dirname(os.path.abspath(path)) == str(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)
    return folder


def test_config_save_into_a_read_only_folder(read_only_dir, capsys):
    target = read_only_dir / "my.yaml"
    with open(target, "wb") as handle:     # plain open: not os.open, so the guard lets it through
        handle.write(PREVIOUS)
    listing = sorted(os.listdir(read_only_dir))
    err = run_failing(["config", "save", "tiny", target], capsys, target)
    assert "Read-only file system" in err
    assert_untouched(target, listing)


def test_animate_onto_a_read_only_file_system(media, read_only_dir, capsys):
    out = read_only_dir / "talking.mp4"
    with open(out, "wb") as handle:
        handle.write(PREVIOUS)
    listing = sorted(os.listdir(read_only_dir))
    err = run_failing(animate_argv(media, out), capsys, out)
    assert "Read-only file system" in err
    assert_untouched(out, listing)


class _FullDiskContainer:
    """An output container whose every mux fails as libav does on a full disk."""

    def __init__(self, container):
        self._container = container

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        self._container.__enter__()
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def mux(self, packets):
        raise av.error.OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_the_mp4(media, tmp_path, capsys, monkeypatch):
    def open_full(path, mode="r", **kwargs):
        container = av.open(path, mode, **kwargs)
        return _FullDiskContainer(container) if mode == "w" else container

    fake_av = types.ModuleType("av")
    fake_av.__dict__.update(vars(av))
    fake_av.open = open_full
    monkeypatch.setattr(mim.io, "av", fake_av)
    out = tmp_path / "talking.mp4"
    listing = previous_output(out)
    err = run_failing(animate_argv(media, out), capsys, out)
    assert "No space left on device" in err
    assert_untouched(out, listing)


def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    path = checkpoint_path(str(tmp_path), 1)
    save_checkpoint(path, kind="test", step=1, config={}, modules={"m": model})
    before = open(path, "rb").read()

    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(OutputError, match=f"{path}: cannot write.*No space left"):
        save_checkpoint(path, kind="test", step=1, config={}, modules={"m": model})
    assert os.listdir(tmp_path) == [os.path.basename(path)] and open(path, "rb").read() == before


def test_disk_full_while_training_writes_a_checkpoint(tmp_path, capsys, monkeypatch):
    def full(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(ckpt, "save_file", full)
    monkeypatch.setattr(Stage1Trainer, "train_step", _fake_step(diverges_at=None))
    out = tmp_path / "run"
    run_failing(["train", "stage1", "--config", _tiny_run_config(tmp_path), "--steps", "1", "--out", out,
                 "--no-eval", "--no-progress"], capsys,
                os.path.join(out, "checkpoints", "step_0000001.safetensors"), "cannot write", "StorageFull")
    assert os.listdir(out / "checkpoints") == []


@pytest.mark.parametrize("flag, given", [("--image", "portrait.png"), ("--audio", "speech.wav"),
                                         ("--checkpoint", "stage2.safetensors")])
def test_animate_out_equal_to_an_input_is_refused(media, capsys, flag, given):
    path = media["root"] / given
    before = path.read_bytes()
    run_failing(animate_argv(media, path), capsys, path, flag, "same file")
    assert path.read_bytes() == before


def test_reenact_out_equal_to_driving_is_refused(media, tmp_path, capsys):
    driving = tmp_path / "driving.mp4"
    driving.write_bytes(PREVIOUS)           # refused before the video is read
    alias = tmp_path / "." / "driving.mp4"
    run_failing(["reenact", "--crop", "center", "--driving-crop", "center", "--image", media["root"] / "portrait.png", "--driving", driving,
                 "--checkpoint", media["stage2"], "--out", alias], capsys, "--driving", "same file")
    assert driving.read_bytes() == PREVIOUS


# -- inputs ----------------------------------------------------------------------------------------

def _png_header_only(path, width, height):
    """A PNG whose header declares width × height RGB (its pixel data is a stub: never decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_14000_square_png_is_refused(media, tmp_path, capsys):
    huge = tmp_path / "huge.png"
    _png_header_only(huge, 14000, 14000)
    out = tmp_path / "talking.mp4"
    listing = previous_output(out)
    run_failing(animate_argv(media, out, **{"--image": huge}), capsys, huge, "downscale it first")
    assert_untouched(out, listing)


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    """Between 1× and 2× Pillow's limit Pillow only warns; the reader refuses from the header."""
    path = tmp_path / "wide.png"
    Image.new("RGB", (120, 50)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)     # 6000 pixels: 1.5× the limit
    with pytest.raises(MediaError, match=r"wide.png: image is 120x50 pixels, more than the 4,000"), \
            pytest.warns(Image.DecompressionBombWarning):
        read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)
    assert read_image(path).shape == (3, 50, 120)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_in_a_wav(media, tmp_path, capsys, bad):
    audio = np.full(RATE // 2, 0.1, np.float32)
    audio[RATE // 4] = bad
    wav = tmp_path / "bad.wav"
    soundfile.write(str(wav), audio, RATE, subtype="FLOAT")
    out = tmp_path / "talking.mp4"
    listing = previous_output(out)
    run_failing(animate_argv(media, out, **{"--audio": wav}), capsys, wav, "NaN or infinite")
    assert_untouched(out, listing)


# -- configs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("section, key, value", [
    ("renderer", "dit_heads", 0),
    ("renderer", "volume_size", 0),
    ("motion", "heads", 0),
    ("renderer", "image_size", 1048576),
    ("renderer", "encoder_channels", -4),
    ("train", "lr", float("nan")),
    ("stage2", "lr", float("inf")),
    ("train", "log_every", 0),
    ("renderer", "dit_heads", 3),          # does not divide dit_channels = 32
    ("motion", "heads", 5),                # does not divide width = 128
    ("train", "betas", [0.5, "x"]),
    ("loss", "perceptual_scales", []),
    ("", "name", ["tiny"]),
])
def test_bad_config_values_name_the_key(tmp_path, capsys, section, key, value):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "tiny", section: {key: value}} if section else {key: value}))
    run_failing(["config", "show", path], capsys, f"{section}.{key}" if section else f"key {key}")


def test_memory_estimate_names_the_fields_and_spares_the_shipped_configs(monkeypatch):
    config = get_config("tiny")
    config.renderer.image_size = 1048576
    with pytest.raises(ValueError, match=r"needs at least .* GiB.*comes from renderer.image_size = 1048576"):
        config.validate()
    config = get_config("tiny")
    config.motion.width, config.motion.heads = 400000, 1
    with pytest.raises(ValueError, match=r"comes from the widths .*motion.width = 400000"):
        config.validate()
    for name in ("tiny", "base"):                      # a 24 GiB machine runs both
        assert estimate_memory(get_config(name))["bytes"] < 24 * 2 ** 30
    monkeypatch.setattr(mim.config, "machine_memory", lambda: 24 * 2 ** 30)
    check_memory(get_config("base"))
    monkeypatch.setattr(mim.config, "machine_memory", lambda: 2 ** 20)
    with pytest.raises(ValueError, match="this machine has 0.0 GiB"):
        check_memory(get_config("tiny"))


@pytest.mark.parametrize("name, flags", [("tiny", True), ("base", False)])
def test_memory_estimate_counts_the_weights(name, flags):
    """The layer-by-layer count agrees with the models as built within 2%."""
    config = get_config(name)
    if flags:   # the recipe's decoder FiLM, the one optional branch of the renderer
        config.recipe.name, config.recipe.decoder_motion_film = "custom", True
    modules = [Renderer.from_config(config),
               MotionGenerator(config.motion, config.renderer.motion_dim, config.renderer.appearance_dim)]
    built = sum(p.numel() for m in modules for p in m.parameters())
    assert math.isclose(estimate_memory(config)["parameters"], built, rel_tol=0.02)


# -- checkpoints ---------------------------------------------------------------------------------

def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def _rewrite(source, target, tensors=None, **metadata):
    """A copy of ``source`` with some tensors and metadata fields replaced (None: removed)."""
    meta = dict(_metadata(source))
    for key, value in metadata.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_file(dict(load_file(str(source)), **(tensors or {})), str(target), metadata=meta)
    return target


@pytest.mark.parametrize("change, named", [
    ({"kind": None}, "'kind'"),
    ({"step": "seven"}, "'step'"),
    ({"config": "{not json"}, "'config'"),
    ({"config": json.dumps({"name": "tiny", "renderer": {"dit_heads": 0}})}, "renderer.dit_heads"),
    ({"config": json.dumps({"name": "tiny", "renderer": {"image_size": 1048576}})}, "renderer.image_size"),
])
@pytest.mark.parametrize("command", ["evaluate", "animate", "profile"])
def test_bad_checkpoint_metadata(media, tmp_path, capsys, change, named, command):
    bad = _rewrite(media["stage2"], tmp_path / "bad.safetensors", **change)
    out = tmp_path / ("out.mp4" if command == "animate" else "out.json")
    listing = previous_output(out)
    if command == "evaluate":
        argv = ["evaluate", "--checkpoint", bad, "--no-progress", "--json", out]
    elif command == "profile":
        argv = ["profile", "--checkpoint", bad, "--device", "cpu", "--json", out]
    else:
        argv = animate_argv(media, out, **{"--checkpoint": bad})
    run_failing(argv, capsys, bad, named)
    assert_untouched(out, listing)


def test_nan_weights_are_found_on_loading(media, tmp_path, capsys, monkeypatch):
    weights = load_file(str(media["stage2"]))
    key = next(k for k in weights if k.startswith("motion.") and weights[k].is_floating_point())
    poisoned = weights[key].clone()
    poisoned.view(-1)[0] = float("nan")
    bad = _rewrite(media["stage2"], tmp_path / "nan.safetensors", {key: poisoned})
    monkeypatch.setattr(mim.animate.Animator, "_prepare",
                        lambda *a, **k: pytest.fail("the weights must be checked before any compute"))
    run_failing(animate_argv(media, tmp_path / "out.mp4", **{"--checkpoint": bad}), capsys, bad, key, "NaN")


def test_tensor_shape_and_dtype_are_checked_from_the_header(media, tmp_path):
    weights = load_file(str(media["stage2"]))
    key = "renderer.decoder.out.weight"
    renderer = Renderer(media["config"].renderer)
    wrong = _rewrite(media["stage2"], tmp_path / "shape.safetensors", {key: torch.zeros(3, 1)})
    with pytest.raises(CheckpointError, match=f"wrong shape: {key[len('renderer.'):]}"):
        load_checkpoint(str(wrong), kind="stage2", modules={"renderer": renderer})
    integer = _rewrite(media["stage2"], tmp_path / "dtype.safetensors",
                       {key: torch.zeros(weights[key].shape, dtype=torch.int64)})
    with pytest.raises(CheckpointError, match="wrong dtype"):
        load_checkpoint(str(integer), kind="stage2", modules={"renderer": renderer})


def test_read_metadata_names_the_field(media, tmp_path):
    bad = _rewrite(media["stage2"], tmp_path / "s.safetensors", step="-1")
    with pytest.raises(CheckpointError, match=r"s.safetensors.*'step' must be an integer >= 0, got '-1'"):
        read_metadata(str(bad))


# -- training that diverges ------------------------------------------------------------------------

def _tiny_run_config(tmp_path, **train):
    path = tmp_path / "run.yaml"
    settings = {"batch_size": 1, "num_driving": 1, "train_clips": 2, "heldout_clips": 1,
                "frames_per_clip": 3, "log_every": 1, "checkpoint_every": 1, **train}
    path.write_text(json.dumps({"name": "tiny", "train": settings,
                                "loss": {"alpha_adversarial": 0.0, "perceptual_scales": [1.0]}}))
    return path


def _fake_step(diverges_at):
    """A training step without compute (the loop, its checkpoints and messages run as they are);
    its loss is NaN at step ``diverges_at``."""
    def step(self, total_steps=0):
        self.step += 1
        return {"loss": float("nan") if self.step == diverges_at else 1.0, "l1": 0.5, "lr": 1e-3}
    return step


@pytest.mark.parametrize("diverges_at, last_good", [(3, "step_0000001.safetensors"), (1, None)])
def test_divergence_names_the_step_and_the_last_good_checkpoint(tmp_path, capsys, monkeypatch,
                                                                diverges_at, last_good):
    """A non-finite loss stops the run with one line: the step, and the newest checkpoint older
    than the weights that gave it (step 3's loss comes from step 2's weights: step 1 is named)."""
    monkeypatch.setattr(Stage1Trainer, "train_step", _fake_step(diverges_at))
    out = tmp_path / "run"
    named = [os.path.join(out, "checkpoints", last_good)] if last_good else ["no checkpoint was written"]
    err = run_failing(["train", "stage1", "--config", _tiny_run_config(tmp_path), "--steps", "5",
                       "--out", out, "--no-eval", "--no-progress"], capsys,
                      f"step {diverges_at} gave a non-finite loss", "loss = nan", "train.lr", *named)
    assert "Traceback" not in err and "TrainingDiverged" not in err
