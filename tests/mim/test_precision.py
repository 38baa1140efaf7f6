"""--precision bf16: the flag on the commands, bf16 frames close to fp32 ones, what must stay fp32
is fp32 under autocast, the kernels take bf16 on the CPU backends, training autocasts on the CPU."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.testing import FORWARD_TOLERANCE, assert_close
from mim.animate import Animator
from mim.cli import build_parser, main
from mim.config import get_config
from mim.data import make_clip, speech_like_audio
from mim.io import write_image, write_wav
from mim.models.motion import MotionGenerator
from mim.precision import (PRECISIONS, Bf16ThroughFp32, autocast, check_precision, native_bf16_cpu,
                           training_autocast_enabled)

RATE = 16000
# PSNR of bf16 frames against fp32 frames of the same micro random model, seed and audio: 50.1 dB
# measured on this CPU; the floor keeps a margin (the tiny demo model's figures: bench/NOTES.md).
PSNR_FLOOR_DB = 45.0


def micro_config():
    """``tiny`` made smaller still (32², narrow layers): bf16 convolutions run ~30x slower than
    fp32 on a CPU without native bf16 (this one: slow_conv3d), so the tests use small ones."""
    config = get_config("tiny")
    r, m = config.renderer, config.motion
    r.image_size, r.volume_size, r.feature_channels, r.depth_layers = 32, 16, 4, 2
    r.encoder_channels, r.motion_channels, r.appearance_dim = 8, 8, 16
    r.dit_channels, r.lmdd_channels, r.decoder_channels, r.resnet3d_blocks, r.render_window = 16, 8, 16, 1, 4
    m.width, m.layers, m.heads, m.window, m.audio_dim, m.sample_steps = 32, 1, 2, 8, 16, 2
    config.loss.discriminator_channels = 8
    return config.validate()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A random micro stage-2 checkpoint (its zero-initialized heads woken with small noise, as
    tests/mim/conftest.py's tiny one), a 32² portrait, 0.4 s of speech (10 frames)."""
    from mim.checkpoint import save_checkpoint
    from mim.config import config_to_dict
    from mim.models import Renderer

    root = tmp_path_factory.mktemp("precision")
    checkpoint = str(root / "stage2.safetensors")
    config = micro_config()
    torch.manual_seed(0)
    renderer = Renderer(config.renderer)
    motion = MotionGenerator(config.motion, config.renderer.motion_dim, config.renderer.appearance_dim)
    with torch.no_grad():
        for parameter in [*renderer.parameters(), *motion.parameters()]:
            if not parameter.any():
                parameter.normal_(0, 0.05)
    save_checkpoint(checkpoint, kind="stage2", step=0, config=config_to_dict(config),
                    modules={"renderer": renderer, "motion": motion})
    portrait = make_clip(1, num_frames=1, size=32)["frames"][0]
    write_image(str(root / "portrait.png"), portrait)
    speech, _ = speech_like_audio(0.5, seed=1)
    speech = speech[:round(0.4 * RATE)]
    write_wav(str(root / "speech.wav"), speech, RATE)
    return {"root": root, "checkpoint": checkpoint, "portrait": portrait, "speech": speech}


def test_check_precision_names_the_argument():
    assert PRECISIONS == ("fp32", "bf16")
    assert check_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        check_precision("fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        Animator.from_pretrained(None, device="cpu", precision="half")


def test_training_autocast_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training_autocast_enabled(None, True, cuda) and not training_autocast_enabled(None, True, cpu)
    assert not training_autocast_enabled(None, False, cuda)
    assert training_autocast_enabled("bf16", False, cpu) and not training_autocast_enabled("fp32", True, cuda)


def test_the_flag_parses_on_every_command():
    parser = build_parser()
    common = {"animate": ["animate", "--image", "a.png", "--audio", "a.wav", "--out", "o.mp4"],
              "reenact": ["reenact", "--image", "a.png", "--driving", "d.mp4", "--checkpoint", "c", "--out", "o.mp4"],
              "stage1": ["train", "stage1", "--steps", "1", "--out", "r"],
              "stage2": ["train", "stage2", "--stage1", "c", "--steps", "1", "--out", "r"],
              "evaluate": ["evaluate", "--checkpoint", "c", "--lipsync"]}
    for name, argv in common.items():
        assert parser.parse_args(argv + ["--precision", "bf16"]).precision == "bf16", name
        default = parser.parse_args(argv).precision
        assert default == (None if name.startswith("stage") else "fp32"), name
    with pytest.raises(SystemExit):
        parser.parse_args(common["animate"] + ["--precision", "fp16"])


def test_cli_animate_bf16_at_tiny(media, capsys):
    out = str(media["root"] / "bf16.mp4")
    assert main(["animate", "--image", str(media["root"] / "portrait.png"),
                 "--audio", str(media["root"] / "speech.wav"), "--checkpoint", media["checkpoint"],
                 "--out", out, "--crop", "center", "--steps", "2", "--device", "cpu",
                 "--no-progress", "--precision", "bf16"]) == 0
    assert capsys.readouterr().out.strip() == out and os.path.getsize(out) > 0


def test_bf16_frames_are_close_to_fp32(media):
    animator = Animator.from_pretrained(media["checkpoint"], device="cpu")
    fp32 = animator.animate(media["portrait"], media["speech"], steps=2, seed=0, crop="center")
    bf16 = animator.animate(media["portrait"], media["speech"], steps=2, seed=0, crop="center",
                            precision="bf16")
    assert bf16.dtype == fp32.dtype == torch.float32 and bf16.shape == fp32.shape == (10, 3, 32, 32)
    assert not torch.equal(bf16, fp32)   # bf16 did run
    print(f"PSNR bf16 vs fp32: {psnr(bf16, fp32):.2f} dB")
    assert psnr(bf16, fp32) >= PSNR_FLOOR_DB


def test_what_stays_fp32_under_bf16(media, monkeypatch):
    """The sampler's x_t, ε̂ and result, the schedule, the audio features, the scan state, eq. 2 and
    the source encoding are fp32 (eq. 2 and the warp, which accumulates in fp32, outside autocast)
    while the convolutions run in bf16."""
    import mim.models.motion as motion_module

    animator = Animator.from_pretrained(media["checkpoint"], device="cpu", precision="bf16")
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen.setdefault(name, []).append((tuple(a.dtype for a in args if torch.is_tensor(a)),
                                              output.dtype if torch.is_tensor(output) else None,
                                              torch.is_autocast_enabled("cpu")))
        return hook

    motion, renderer = animator.motion, animator.renderer
    hooks = [motion.register_forward_hook(record("sampler model")),
             motion.denoiser.register_forward_hook(record("denoiser")),
             motion.mamba_g.stack.input.register_forward_hook(record("audio input")),
             renderer.dit.adanorm.register_forward_hook(record("adanorm")),
             renderer.warp.register_forward_hook(record("warp")),
             renderer.lmdd.logits.register_forward_hook(record("lmdd conv3d")),
             renderer.image_encoder.register_forward_hook(record("image encoder"))]
    states = []
    scan = motion_module.selective_scan

    def recording_scan(*args, **kwargs):
        result = scan(*args, **kwargs)
        if kwargs.get("return_last_state"):
            states.append(result[1].dtype)
        return result

    monkeypatch.setattr(motion_module, "selective_scan", recording_scan)
    try:
        frames = animator.animate(media["portrait"], media["speech"], steps=2, seed=0, crop="center")
    finally:
        for hook in hooks:
            hook.remove()
    assert frames.dtype == torch.float32
    assert motion.schedule.alpha_bars.dtype == torch.float64
    assert {args[0] for args, _, _ in seen["sampler model"]} == {torch.float32}          # x_t
    assert {out for _, out, _ in seen["sampler model"]} == {torch.float32}               # ε̂
    assert {out for _, out, on in seen["denoiser"]} == {torch.bfloat16}                  # autocast ran
    assert {args for args, _, _ in seen["audio input"]} == {(torch.float32,)}            # log-mel
    assert states and set(states) == {torch.float32}                                     # scan state h
    assert seen["adanorm"] and all(args == (torch.float32,) * 3 and out == torch.float32 and not on
                                   for args, out, on in seen["adanorm"])
    assert {out for _, out, on in seen["image encoder"]} == {torch.float32}              # source: fp32, once
    # the warp: outside autocast, F_id stored in bf16 and the LMDD's outputs in bf16
    assert seen["warp"] and all(args == (torch.bfloat16,) * 4 and not on for args, _, on in seen["warp"])
    assert {out for _, out, on in seen["lmdd conv3d"]} == {torch.bfloat16}


def test_generate_keeps_the_sampler_fp32_even_from_bf16_conditions():
    config = get_config("tiny")
    config.motion.layers, config.motion.window = 1, 6
    torch.manual_seed(0)
    model = MotionGenerator(config.motion, config.renderer.motion_dim, config.renderer.appearance_dim).eval()
    audio_global = torch.randn(1, config.motion.audio_dim, dtype=torch.bfloat16)
    audio_local = torch.randn(1, 8, config.motion.audio_dim, dtype=torch.bfloat16)
    appearance = torch.randn(1, config.renderer.appearance_dim, dtype=torch.bfloat16)
    with torch.no_grad(), autocast("bf16", "cpu"):
        out = model.generate(audio_global, audio_local, appearance, steps=2, guidance_scale=2.0,
                             generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("make", [
    lambda: (F.group_norm, (50 + torch.randn(2, 16, 9, 11)).bfloat16(), (4,)),
    lambda: (F.layer_norm, (50 + torch.randn(3, 7, 96)).bfloat16(), ((96,),)),
    lambda: (lambda x: torch.softmax(x, dim=-1), (10 * torch.randn(5, 300)).bfloat16(), ()),
], ids=["group_norm", "layer_norm", "softmax"])
def test_norm_and_softmax_statistics_are_fp32_for_bf16_inputs(make):
    """On values far from zero (mean 50, spread 1) statistics summed in bf16 would be off by
    whole units; the bf16 result is the fp32 result rounded to bf16 (half an ulp, 2^-9)."""
    fn, x, extra = make()
    out = fn(x, *extra)
    expected = fn(x.float(), *extra)
    assert out.dtype == torch.bfloat16
    error = (out.float() - expected).abs() / expected.abs().clamp_min(1e-3)
    assert float(error.max()) <= 2.0 ** -8


OPS_BF16 = {
    "grid_sample_3d": lambda inputs, backend: kernels.grid_sample_3d(*inputs, backend=backend),
    "region_softmax_warp": lambda inputs, backend: kernels.region_softmax_warp(*inputs, backend=backend),
    "deviation_adanorm": lambda inputs, backend: kernels.deviation_adanorm(*inputs, backend=backend),
    "selective_scan": lambda inputs, backend: kernels.selective_scan(*inputs, delta_softplus=True,
                                                                     backend=backend),
    "selective_state_update": lambda inputs, backend: kernels.selective_state_update(
        inputs[0].clone(), *inputs[1:], dt_softplus=True, backend=backend),
    "causal_conv1d": lambda inputs, backend: kernels.causal_conv1d(*inputs, activation="silu",
                                                                   backend=backend),
}


def _bf16_inputs(op):
    """The op's make_inputs in bf16 at its tiny default shape (selective_state_update keeps its
    state fp32, the engine's layout; selective_scan its A, D and Δ bias)."""
    from importlib import import_module

    return import_module(f"kernels.{op}.inputs").make_inputs(dtype=torch.bfloat16, seed=1)


def _float64(inputs):
    return tuple(t.double() if torch.is_tensor(t) and t.is_floating_point() else t for t in inputs)


@pytest.mark.parametrize("under_autocast", [False, True], ids=["bf16", "bf16-autocast"])
@pytest.mark.parametrize("backend", ["reference", "fast", "triton"])
@pytest.mark.parametrize("op", list(OPS_BF16))
def test_kernels_take_bf16_on_the_cpu_backends(op, backend, under_autocast):
    """bf16 inputs (tiny shapes; triton in its interpreter) give the float64 reference of the same
    bf16 values within the bf16 tolerance, plain and inside a bf16 autocast region."""
    assert set(OPS_BF16) == set(kernels.OPS)
    inputs = _bf16_inputs(op)
    expected = OPS_BF16[op](_float64(inputs), "reference")
    with autocast("bf16" if under_autocast else "fp32", "cpu"):
        out = OPS_BF16[op](inputs, backend)
    assert out.dtype == inputs[0 if op != "selective_state_update" else 1].dtype
    assert_close(f"{op}/{backend}", out, expected, FORWARD_TOLERANCE[torch.bfloat16])


def _stage1_config():
    config = micro_config()
    t = config.train
    t.train_clips, t.heldout_clips, t.frames_per_clip = 2, 1, 4
    t.batch_size, t.num_driving, t.log_every, t.checkpoint_every = 1, 2, 1, 0
    config.loss.adversarial_start_step = 1
    return config


def test_stage1_trains_two_steps_in_bf16_on_the_cpu(tmp_path, monkeypatch):
    from mim.train.stage1 import Stage1Trainer

    monkeypatch.delenv("MIM_BF16_CPU", raising=False)
    routed = []   # what mim.precision.Bf16ThroughFp32 ran in fp32 (a CPU without bf16 only)
    original = Bf16ThroughFp32.__torch_dispatch__

    def recording(self, func, types, args=(), kwargs=None):
        routed.append(str(func))
        return original(self, func, types, args, kwargs)
    monkeypatch.setattr(Bf16ThroughFp32, "__torch_dispatch__", recording)
    trainer = Stage1Trainer(_stage1_config(), str(tmp_path), device="cpu", progress=False,
                            precision="bf16")
    assert trainer.amp
    seen = []
    hook = trainer.renderer.decoder.out.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    values = trainer.run(2)
    hook.remove()
    if not native_bf16_cpu():   # the forward's and the backward's convolutions took the route
        assert {"aten.convolution.default", "aten.convolution_backward.default"} <= set(routed)
    else:
        assert routed == []
    assert trainer.step == 2 and all(math.isfinite(v) for v in values.values())
    assert seen and set(seen) == {torch.bfloat16}                          # the forward autocast
    for module in (trainer.renderer, trainer.discriminator):                # fp32 master weights
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    state = trainer.opt_g.state[next(iter(trainer.renderer.parameters()))]
    assert state["exp_avg"].dtype == torch.float32


def test_cli_train_stage2_in_bf16(tmp_path, capsys):
    import json

    from mim.checkpoint import save_checkpoint
    from mim.config import config_to_dict, save_config
    from mim.models import Renderer

    config = micro_config()
    t = config.stage2
    t.train_clips, t.heldout_clips, t.frames_per_clip = 2, 1, 12
    t.batch_size, t.log_every, t.checkpoint_every = 2, 1, 0
    torch.manual_seed(0)
    stage1 = str(tmp_path / "stage1.safetensors")
    save_checkpoint(stage1, kind="stage1", step=0, config=config_to_dict(config),
                    modules={"renderer": Renderer(config.renderer)})
    config_path = str(tmp_path / "c.yaml")
    save_config(config, config_path)
    assert main(["train", "stage2", "--stage1", stage1, "--config", config_path, "--steps", "2",
                 "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu",
                 "--precision", "bf16"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["step"] == 2 and np.isfinite(printed["train"]["total"])


@pytest.mark.parametrize("backend", ["fast", "triton"])
def test_channels_last_3d_renders_the_same_frames(backend):
    """The 3-D convolutions' weights in channels_last_3d (bench/precision.py's layout comparison)
    give the frames of the contiguous layout, with the fused ops after them."""
    from mim.models import Renderer
    from mim.precision import conv3d_memory_format

    config = micro_config()
    torch.manual_seed(0)
    renderer = Renderer(config.renderer, backend=backend).eval()
    with torch.no_grad():
        for parameter in renderer.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05)
        source, motion = torch.rand(1, 3, 32, 32), torch.randn(1, 3, config.renderer.motion_dim)
        expected = renderer.render(renderer.encode_source(source), motion)
        conv3d_memory_format(renderer, torch.channels_last_3d)
        weight = renderer.lmdd.logits.weight
        assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()
        assert renderer.decoder.out.weight.is_contiguous()                   # 2-D convs untouched
        channels_last = renderer.render(renderer.encode_source(source), motion)
    assert_close("frames", channels_last, expected, 1e-5)
