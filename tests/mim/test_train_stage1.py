"""Stage-1 training: exact resume (in process and after SIGKILL), DDP = single process, bad input."""

import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file
import torch

from mim.checkpoint import (CheckpointError, check_same_renderer, latest_checkpoint, load_checkpoint,
                            renderer_from_checkpoint)
from mim.cli import main
from mim.config import config_to_dict, get_config, save_config
from mim.train.stage1 import train_stage1

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_config(**train):
    config = get_config("tiny")
    t = config.train
    t.train_clips, t.heldout_clips, t.frames_per_clip = 3, 2, 6
    t.batch_size, t.num_driving, t.log_every, t.checkpoint_every = 2, 2, 1, 2
    for key, value in train.items():
        setattr(t, key, value)
    config.loss.adversarial_start_step = 1     # the GAN terms are exercised from step 1
    return config


def final_parameters(out):
    path = latest_checkpoint(os.path.join(out, "checkpoints"))
    return {k: v for k, v in load_file(path).items()
            if k.startswith(("renderer.", "discriminator.", "opt_g.", "opt_d."))}


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_is_bitwise(tmp_path):
    """A 2-step run continued to 4 equals a 4-step run (constant learning rate: with a cosine
    schedule the rate depends on --steps, so a continued run must keep the same --steps, which
    the SIGKILL test below does)."""
    config = small_config(lr_schedule="constant")
    train_stage1(config, str(tmp_path / "full"), steps=4, progress=False, evaluate=False)
    train_stage1(config, str(tmp_path / "split"), steps=2, progress=False, evaluate=False)
    result = train_stage1(config, str(tmp_path / "split"), steps=4, resume=True, progress=False,
                          evaluate=False)
    assert_bitwise(final_parameters(str(tmp_path / "full")), final_parameters(str(tmp_path / "split")))
    lines = open(tmp_path / "split" / "log.csv").read().splitlines()
    assert lines[0].startswith("step,loss,l1") and [l.split(",")[0] for l in lines[1:]] == ["1", "2", "3", "4"]
    assert result["train"]["discriminator"] > 0


def _env():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return env


@pytest.fixture
def one_thread():
    """The killed child runs with OMP_NUM_THREADS=1; CPU kernels' results depend on the thread
    count, so the in-process runs compared with it bitwise use one thread too."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_sigkill_after_a_checkpoint_then_resume(tmp_path, one_thread):
    config = small_config(checkpoint_every=1)
    path = str(tmp_path / "config.yaml")
    save_config(config, path)
    steps = 12
    killed = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "mim", "train", "stage1", "--config", path, "--steps", str(steps),
           "--out", killed, "--no-progress", "--no-eval", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt_dir = os.path.join(killed, "checkpoints")
    deadline = time.time() + 120
    while time.time() < deadline and (latest_checkpoint(ckpt_dir) is None
                                      or latest_checkpoint(ckpt_dir).endswith("0000001.safetensors")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = load_checkpoint(latest_checkpoint(ckpt_dir), kind="stage1", modules={})["step"]
    assert 2 <= interrupted_at < steps
    # every complete checkpoint file is loadable: nothing half-written under a checkpoint name
    for name in os.listdir(ckpt_dir):
        if not name.startswith("."):
            load_checkpoint(os.path.join(ckpt_dir, name), kind="stage1", modules={})
    train_stage1(config, killed, steps=steps, resume=True, progress=False, evaluate=False, device="cpu")
    assert not [n for n in os.listdir(ckpt_dir) if n.startswith(".")], "stale temporary files left"
    train_stage1(config, str(tmp_path / "full"), steps=steps, progress=False, evaluate=False, device="cpu")
    assert_bitwise(final_parameters(str(tmp_path / "full")), final_parameters(killed))


def test_torchrun_two_processes_match_one(tmp_path):
    """float64: in float32 the reduction-order noise of a 2-way split flips L_pg's thresholded
    mask and Adam's sign-like first updates, which is not what this test is about. The run has
    the mouth-opening read-out on, so its head (outside DDP, gradients averaged by hand) is
    checked too; the renderer and discriminator go through DDP either way (one run of ~25 s
    instead of one with and one without the read-out)."""
    config = small_config(checkpoint_every=0, dtype="float64")
    config.recipe.name, config.recipe.alpha_mouth_open = "custom", 1.0
    path = str(tmp_path / "config.yaml")
    save_config(config, path)
    ddp = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mim", "train", "stage1", "--config", path, "--steps", "2", "--out", ddp,
           "--no-progress", "--no-eval", "--device", "cpu"]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    train_stage1(config, str(tmp_path / "single"), steps=2, progress=False, evaluate=False, device="cpu")
    a, b = final_parameters(ddp), final_parameters(str(tmp_path / "single"))
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith(("renderer.", "discriminator.")) and a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-7, atol=1e-8)
    head = load_file(latest_checkpoint(os.path.join(ddp, "checkpoints")))["mouth_head.weight"]
    single = load_file(latest_checkpoint(os.path.join(tmp_path, "single", "checkpoints")))["mouth_head.weight"]
    torch.testing.assert_close(head, single, rtol=1e-7, atol=1e-8)
    changed = [k for k in a if k.startswith("renderer.") and a[k].is_floating_point()
               and not torch.equal(a[k], load_initial(config)[k[len("renderer."):]])]
    assert changed, "training did not change any parameter"


def load_initial(config):
    from mim.models import Renderer
    torch.manual_seed(config.train.seed)
    return Renderer.from_config(config).double().state_dict()


def test_cosine_learning_rate(tmp_path):
    from mim.train.stage1 import Stage1Trainer

    trainer = Stage1Trainer(small_config(), str(tmp_path), progress=False)
    factors = [trainer.lr_factor(step, 10) for step in range(10)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(trainer.config.train.lr_min_factor)
    assert all(a > b for a, b in zip(factors, factors[1:]))
    trainer.config.train.lr_schedule = "constant"
    assert trainer.lr_factor(7, 10) == 1.0


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """Without the GAN: spectral norm advances its power iteration once per discriminator
    forward, so 2 micro-batches run 2 iterations where one batch runs 1 (as in any SN-GAN)."""
    one = small_config(batch_size=2, checkpoint_every=0, dtype="float64")
    two = small_config(batch_size=1, grad_accumulation=2, checkpoint_every=0, dtype="float64")
    one.loss.adversarial_start_step = two.loss.adversarial_start_step = 10
    train_stage1(one, str(tmp_path / "one"), steps=2, progress=False, evaluate=False)
    train_stage1(two, str(tmp_path / "two"), steps=2, progress=False, evaluate=False)
    a, b = final_parameters(str(tmp_path / "one")), final_parameters(str(tmp_path / "two"))
    for key in a:
        if key.startswith(("renderer.", "discriminator.")) and a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-7, atol=1e-8)


def test_a_checkpoint_older_than_a_renderer_field_reads_as_its_default():
    """A saved config without a renderer field added later matches a config holding that
    field's default, and is refused against any other value; the recipe's decoder FiLM is part
    of the renderer's shape, also where a format-1 config kept it (renderer.decoder_motion_film)."""
    config = get_config("tiny")
    saved = config_to_dict(config)
    del saved["renderer"]["learn_beta"]
    check_same_renderer(saved, config, "old.safetensors")
    config.renderer.learn_beta = True
    with pytest.raises(CheckpointError, match=r"renderer.learn_beta: checkpoint False vs config True"):
        check_same_renderer(saved, config, "old.safetensors")
    config = get_config("tiny")
    config.recipe.name, config.recipe.decoder_motion_film = "custom", True
    with pytest.raises(CheckpointError, match=r"recipe.decoder_motion_film: checkpoint False vs config True"):
        check_same_renderer(saved, config, "old.safetensors")
    flat = config_to_dict(get_config("tiny"))
    del flat["recipe"]
    flat["renderer"]["decoder_motion_film"] = True
    check_same_renderer(flat, config, "old.safetensors")


def test_resume_with_another_config_is_refused(tmp_path, capsys):
    config = small_config()
    out = str(tmp_path / "run")
    train_stage1(config, out, steps=1, progress=False, evaluate=False)
    other = small_config()
    other.renderer.regions = 3
    with pytest.raises(CheckpointError, match=r"renderer.regions: checkpoint 4 vs config 3"):
        train_stage1(other, out, steps=2, resume=True, progress=False, evaluate=False)
    ckpt = latest_checkpoint(os.path.join(out, "checkpoints"))
    with pytest.raises(CheckpointError, match="another renderer config"):
        renderer_from_checkpoint(ckpt, config=other)
    assert renderer_from_checkpoint(ckpt).config.regions == 4
    path = str(tmp_path / "other.yaml")
    save_config(other, path)
    code = main(["train", "stage1", "--config", path, "--steps", "2", "--out", out, "--resume",
                 "--no-progress", "--no-eval"])
    assert code == 2 and "renderer.regions" in capsys.readouterr().err
    assert latest_checkpoint(os.path.join(out, "checkpoints")).endswith("step_0000001.safetensors")


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["train", "stage1", "--config", "nope", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "neither a known name" in capsys.readouterr().err
    assert main(["train", "stage1", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    assert main(["train", "stage1", "--data", str(tmp_path / "none"), "--steps", "1",
                 "--out", str(tmp_path / "o")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_evaluate_command_and_baseline(tmp_path, capsys):
    import json

    from mim.data import SyntheticTalkingHeads
    from mim.metrics import psnr

    config = small_config()
    out = str(tmp_path / "run")
    train_stage1(config, out, steps=1, progress=False, evaluate=False)
    ckpt = latest_checkpoint(os.path.join(out, "checkpoints"))
    report = str(tmp_path / "eval.json")
    assert main(["evaluate", "--checkpoint", ckpt, "--clips", "1", "--json", report, "--no-progress"]) == 0
    result = json.load(open(report))
    assert set(result) >= {"l1", "psnr", "ssim", "baseline_l1", "baseline_psnr", "baseline_ssim", "frames"}
    frames = SyntheticTalkingHeads(1, num_frames=config.train.frames_per_clip, size=64,
                                   seed=config.train.seed, split="heldout")[0]["frames"]
    expected = psnr(frames[:1].expand_as(frames[1:]), frames[1:]).mean()
    assert result["frames"] == frames.shape[0] - 1
    assert result["baseline_psnr"] == pytest.approx(float(expected), rel=1e-6)
    assert 0 < result["l1"] < 1 and result["psnr"] < result["baseline_psnr"]   # 1 step: not yet useful


def test_mouth_crop_loss(tmp_path):
    """The mouth term (alpha_mouth 1) is the perceptual loss of the mouth crops, weighted into the
    total; it is off without boxes (folder data) and with alpha_mouth = 0."""
    from mim.losses import crop_boxes
    from mim.train.stage1 import Stage1Trainer

    config = small_config(dtype="float64")
    config.loss.adversarial_start_step = 10
    config.recipe.name, config.recipe.alpha_mouth = "custom", 1.0
    trainer = Stage1Trainer(config, str(tmp_path / "run"), progress=False)
    source, driving, boxes, _ = trainer.batch(0, 0)
    assert boxes.shape == (2, 2, 4)
    loss, terms, pred, target = trainer.generator_loss(source, driving, False, boxes)
    cfg = config.recipe
    expected = trainer.perceptual(crop_boxes(pred, boxes.flatten(0, 1), cfg.mouth_crop, cfg.mouth_margin),
                                  crop_boxes(target, boxes.flatten(0, 1), cfg.mouth_crop, cfg.mouth_margin))
    assert cfg.alpha_mouth == 1.0 and terms["mouth"].item() > 0
    torch.testing.assert_close(terms["mouth"], expected)
    without, terms_without, _, _ = trainer.generator_loss(source, driving, False, None)
    assert terms_without["mouth"].item() == 0
    torch.testing.assert_close(loss, without + cfg.alpha_mouth * expected)
    trainer.config.recipe.alpha_mouth = 0.0
    off, terms_off, _, _ = trainer.generator_loss(source, driving, False, boxes)
    torch.testing.assert_close(off, without)


def test_mouth_opening_read_out(tmp_path):
    """recipe.alpha_mouth_open: a linear head reads the driving frames' mouth opening (the clips'
    labels) from their standardized M; its squared error, weighted, joins the loss; the head
    trains, is saved with the checkpoint and resumes; without labels the term is off."""
    from mim.models import standardize_motion
    from mim.train.stage1 import Stage1Trainer

    config = small_config(dtype="float64")
    config.loss.adversarial_start_step = 10
    config.recipe.name, config.recipe.alpha_mouth_open = "custom", 2.0
    out = str(tmp_path / "run")
    trainer = Stage1Trainer(config, out, progress=False)
    source, driving, boxes, opening = trainer.batch(0, 0)
    item = trainer._sample(0)
    clip = trainer.pairs.clips[item["clip"]]
    start = item["driving_start"]
    torch.testing.assert_close(opening[0], clip["mouth_open"][start:start + 2].double())
    loss, terms, _, _ = trainer.generator_loss(source, driving, False, boxes, opening)
    with torch.no_grad():
        read = trainer.mouth_head(standardize_motion(trainer.renderer.encode_motion(driving), config.renderer.eps))[..., 0]
    expected = (read - opening).pow(2).mean()
    assert expected.item() > 0
    torch.testing.assert_close(terms["mouth_open"], expected)
    without, terms_without, _, _ = trainer.generator_loss(source, driving, False, boxes, None)
    assert terms_without["mouth_open"].item() == 0
    torch.testing.assert_close(loss, without + 2.0 * expected)
    before = trainer.mouth_head.weight.detach().clone()
    trainer.run(2)
    assert not torch.equal(before, trainer.mouth_head.weight)
    saved = final_parameters(out)
    tensors = load_file(latest_checkpoint(os.path.join(out, "checkpoints")))
    torch.testing.assert_close(tensors["mouth_head.weight"], trainer.mouth_head.weight.detach())
    assert saved
    resumed = Stage1Trainer(config, out, resume=True, progress=False)
    assert resumed.step == 2
    torch.testing.assert_close(resumed.mouth_head.weight, trainer.mouth_head.weight)


def test_fine_tuning_starts_from_a_checkpoints_renderer(tmp_path, capsys):
    """--init: the renderer starts as the checkpoint's (the step, optimizer and discriminator
    fresh); a branch the checkpoint lacks (the recipe's decoder_motion_film) starts at zero, so the first frames
    equal the checkpoint renderer's; another renderer config is refused, naming the field."""
    from mim.train.stage1 import Stage1Trainer

    config = small_config()
    first = str(tmp_path / "first")
    train_stage1(config, first, steps=2, progress=False, evaluate=False)
    ckpt = latest_checkpoint(os.path.join(first, "checkpoints"))
    tuned = small_config()
    tuned.recipe.name = "custom"
    tuned.recipe.decoder_motion_film = True
    tuned.recipe.alpha_mouth_open = 1.0
    trainer = Stage1Trainer(tuned, str(tmp_path / "tuned"), progress=False)
    trainer.initialize_from(ckpt)
    assert trainer.step == 0 and trainer.renderer.decoder.needs_motion
    original = renderer_from_checkpoint(ckpt)
    for key, value in original.state_dict().items():
        torch.testing.assert_close(trainer.renderer.state_dict()[key], value, rtol=0, atol=0)
    source, driving, _, _ = trainer.batch(0, 0)
    with torch.no_grad():
        torch.testing.assert_close(trainer.renderer.eval()(source, driving)["frames"],
                                   original(source, driving)["frames"], rtol=0, atol=0)
    other = small_config()
    other.renderer.regions = 3
    with pytest.raises(CheckpointError, match="renderer.regions"):
        Stage1Trainer(other, str(tmp_path / "other"), progress=False).initialize_from(ckpt)
    code = main(["train", "stage1", "--config", "tiny", "--steps", "1", "--out", str(tmp_path / "cli"),
                 "--init", ckpt, "--batch-size", "2", "--no-progress", "--no-eval"])
    assert code == 0
    log = open(os.path.join(tmp_path, "cli", "log.csv")).read().splitlines()
    assert log[0].startswith("step,") and log[1].startswith("1,")


def test_frozen_parts_keep_their_weights_and_the_rest_trains(tmp_path):
    """recipe.freeze: the named renderer parts keep their weights through training steps (and get
    no optimizer state); the other parts change; an unknown part is refused, naming it, and
    --freeze on the command line sets it."""
    from mim.train.stage1 import Stage1Trainer

    config = small_config()
    config.recipe.name = "custom"
    config.recipe.freeze = ("image_encoder", "appearance_extractor", "motion_encoder", "dit", "lmdd")
    trainer = Stage1Trainer(config, str(tmp_path / "frozen"), progress=False)
    before = {k: v.clone() for k, v in trainer.renderer.state_dict().items()}
    trainer.run(2)
    after = trainer.renderer.state_dict()
    frozen = [k for k in before if k.split(".")[0] in config.recipe.freeze]
    trained = [k for k in before if k.startswith("decoder.") and before[k].is_floating_point()]
    assert frozen and trained
    for key in frozen:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert any(not torch.equal(after[key], before[key]) for key in trained)
    optimized = {id(p) for group in trainer.opt_g.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in trainer.renderer.decoder.parameters()}

    bad = small_config()
    bad.recipe.name = "custom"
    bad.recipe.freeze = ("decoder", "warp_field")
    with pytest.raises(ValueError, match="recipe.freeze.*warp_field"):
        bad.validate()
    out = tmp_path / "cli"
    assert main(["train", "stage1", "--config", "tiny", "--steps", "1", "--out", str(out), "--batch-size", "2",
                 "--freeze", "image_encoder, lmdd", "--no-progress", "--no-eval"]) == 0
    from mim.config import load_config
    saved = load_config(str(out / "config.yaml")).recipe
    assert saved.freeze == ("image_encoder", "lmdd") and saved.name == "custom"
