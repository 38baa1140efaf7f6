"""Launch-free sampling (issue 20, item 2), proven the way a CPU can.

The denoiser step (``mim.diffusion.ddim_update`` on the motion generator, guidance included), a
whole DDIM window (``MotionGenerator.window_sampler``) and a render window
(``Renderer.window_frames``) trace into one graph with no break: ``torch._dynamo.explain`` counts
none, with the kernels' fast and reference backends. ``torch.compile(fullgraph=True)`` with
inductor (what ``--compile`` uses) compiles the DDIM window (its steps) and the render window of
``mim animate --compile`` and matches eager; the step alone is compiled with aot_eager (inductor
costs about 2 s of g++ per kernel on 2 cores: each unit goes through it once). A graph without a break reads
no tensor value on the host and depends on no value for its control flow or shapes: what a
CUDA-graph capture needs too (``tests/gpu/test_capture_gpu.py`` replays the captures on a GPU).
"""
import dataclasses

import pytest
import torch

from kernels.testing import FORWARD_TOLERANCE, assert_close
from mim.animate import Animator
from mim.cli import main
from mim.config import get_config
from mim.data import make_clip, speech_like_audio
from mim.diffusion import ddim_draws, ddim_noise_count, ddim_plan, ddim_update
from mim.graphs import CapturedWindows, check_graph_mode, window_wrapper
from mim.io import write_image, write_wav
from mim.models import Renderer
from mim.models.motion import MotionGenerator
from mim.models.renderer import SourceState

CONFIG = get_config("tiny")
RATE = 16000
# Inductor fuses and reorders float32 arithmetic: a few ulps per op, over a 2-step DDIM run and
# a render window of convolutions.
COMPILED_TOLERANCE = 1e-4
FRAMES = 8   # 0.3 s of speech at 25 fps: the animation below has one motion and one render window


def _wake(*modules):
    """Fill the zero-initialized parameters (the denoiser's head, ...) with small noise, so every
    input reaches the output."""
    with torch.no_grad():
        for module in modules:
            for parameter in module.parameters():
                if not parameter.any():
                    parameter.normal_(0, 0.05)


def _motion(prediction="v"):
    torch.manual_seed(0)
    model = MotionGenerator(dataclasses.replace(CONFIG.motion, prediction=prediction),
                            CONFIG.renderer.motion_dim, CONFIG.renderer.appearance_dim).eval()
    _wake(model)
    return model


def _condition(model, frames):
    """(F_ag, F_al, the preceding frames, F_A) for one clip of ``frames`` frames."""
    m = model.config
    return (torch.randn(1, m.audio_dim), torch.randn(1, frames, m.audio_dim),
            torch.randn(1, m.prev_frames, model.motion_dim), torch.randn(1, model.appearance_dim))


def _explain(fn, *args):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    return explanation.graph_count, explanation.graph_break_count, explanation.break_reasons


@pytest.fixture(scope="module")
def renderer():
    torch.manual_seed(1)
    model = Renderer(CONFIG.renderer).eval()
    _wake(model)
    return model


@pytest.fixture(scope="module")
def render_inputs(renderer):
    with torch.no_grad():
        state = renderer.encode_source(torch.rand(1, 3, 64, 64))
    motion = state.motion[:, None] + 0.3 * torch.randn(1, CONFIG.renderer.render_window,
                                                       CONFIG.renderer.motion_dim)
    return state.feature, state.appearance, state.motion, motion


# --- the denoiser step -----------------------------------------------------------------------

@pytest.mark.parametrize("prediction,eta", [("v", 0.0), ("eps", 0.5)])
def test_denoiser_step_traces_without_graph_break(prediction, eta):
    """One DDIM step with guidance (two denoiser calls): one graph, and
    ``torch.compile(fullgraph=True)`` of it matches eager. The backend here is aot_eager (the
    graph and its functionalization, run by aten): whether a graph breaks is decided by dynamo,
    before any backend; inductor compiles this step's code as part of the DDIM window in
    ``test_animate_compile_matches_eager_on_the_cpu`` (on 2 cores each inductor kernel costs
    about 2 s of g++, so each unit is compiled by inductor once in this file)."""
    model = _motion(prediction)
    plan = ddim_plan(model.schedule, 2, eta=eta)
    assert (plan[0].sigma > 0) == (eta > 0)       # with η > 0 the step reads its z draw
    cond = _condition(model, FRAMES)

    def step(x, noise, audio_global, audio_local, prev_motion, appearance):
        condition = {"audio_global": audio_global, "audio_local": audio_local,
                     "prev_motion": prev_motion, "appearance": appearance}
        uncond = dict(condition, audio_global=torch.zeros_like(audio_global),
                      audio_local=torch.zeros_like(audio_local))
        return ddim_update(model, x, plan[0], condition, uncond, 2.0, noise)

    x, noise = torch.randn(2, 1, FRAMES, model.motion_dim).unbind(0)
    with torch.no_grad():
        graphs, breaks, reasons = _explain(step, x, noise, *cond)
        assert (graphs, breaks) == (1, 0), reasons
        torch._dynamo.reset()
        out = torch.compile(step, fullgraph=True, backend="aot_eager")(x, noise, *cond)
        ref = step(x, noise, *cond)
    assert not torch.equal(ref, x)
    assert_close("DDIM step", out, ref, FORWARD_TOLERANCE[torch.float32])


def test_ddim_update_is_the_eager_sampler_bit_for_bit():
    """generate's windows run ddim_window over the plan: the same bits as ddim_sample (which
    itself runs ddim_window), from the same draws; the plan's draws are ddim_sample's."""
    from mim.diffusion import ddim_sample

    model = _motion()
    audio_global, audio_local, previous, appearance = _condition(model, 25)
    cond = {"audio_global": audio_global, "audio_local": audio_local, "prev_motion": previous,
            "appearance": appearance}
    uncond = dict(cond, audio_global=torch.zeros_like(audio_global),
                  audio_local=torch.zeros_like(audio_local))
    shape = (1, 25, model.motion_dim)
    sample = ddim_sample(model, shape, model.schedule, steps=3, eta=0.5, cond=cond, uncond=uncond,
                         guidance_scale=2.0, generator=torch.Generator().manual_seed(3))
    sampler = model.window_sampler(steps=3, eta=0.5, guidance_scale=2.0)
    x_T, noises = ddim_draws(sampler.keywords["plan"], shape, torch.Generator().manual_seed(3))
    assert noises.shape == (ddim_noise_count(sampler.keywords["plan"]), *shape) == (2, *shape)
    with torch.no_grad():
        assert torch.equal(sampler(x_T, noises, audio_global, audio_local, previous, appearance),
                           sample)


# --- one whole DDIM window -------------------------------------------------------------------

def test_ddim_window_traces_as_one_graph():
    """Both steps, the conditional and the unconditional calls and the noise of η > 0: one
    graph."""
    model = _motion()
    sampler = model.window_sampler(steps=2, eta=0.5, guidance_scale=2.0)
    x_T, noises = ddim_draws(sampler.keywords["plan"], (1, 25, model.motion_dim),
                             torch.Generator().manual_seed(0))
    with torch.no_grad():
        graphs, breaks, reasons = _explain(sampler, x_T, noises, *_condition(model, 25))
    assert (graphs, breaks) == (1, 0), reasons


# --- one render window -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["fast", "reference"])   # "torch" is "fast"'s alias
def test_render_window_traces_as_one_graph(renderer, render_inputs, backend):
    """DIT, LMDD, the warp (a custom op on the fast path, plain torch on the reference one) and
    the decoder: one graph, with the profiler ranges of the stages inside it."""
    renderer.set_backend(backend)
    try:
        with torch.no_grad():
            graphs, breaks, reasons = _explain(renderer.window_frames, *render_inputs)
            frames = renderer.window_frames(*render_inputs)
            state = SourceState(*render_inputs[:3])
            assert torch.equal(frames, renderer.render(state, render_inputs[3]))
    finally:
        renderer.set_backend(None)
    assert (graphs, breaks) == (1, 0), reasons
    assert frames.shape == (1, CONFIG.renderer.render_window, 3, 64, 64)


# --- the modes as the product uses them ------------------------------------------------------

@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_stage2):
    root = tmp_path_factory.mktemp("capture")
    stage2 = str(root / "stage2.safetensors")
    tiny_stage2(stage2, wake_zero_heads=True)
    write_image(str(root / "portrait.png"), make_clip(1, num_frames=1, size=64)["frames"][0])
    speech, _ = speech_like_audio(0.4, seed=2)
    write_wav(str(root / "speech.wav"), speech[:round(0.3 * RATE)], RATE)
    return {"root": root, "stage2": stage2}


def test_animate_compile_matches_eager_on_the_cpu(media):
    """``Animator.use_graphs("compile")`` (``mim animate --compile``): 0.3 s of speech, 2 DDIM
    steps with guidance, one motion window and one render window (8 frames each), each
    compiled with inductor (fullgraph=True, mode="reduce-overhead") and matching eager."""
    portrait, audio = str(media["root"] / "portrait.png"), str(media["root"] / "speech.wav")
    animator = Animator.from_pretrained(media["stage2"], device="cpu")
    eager = animator.animate(portrait, audio, steps=2, crop="center")
    torch._dynamo.reset()
    fast = animator.use_graphs("compile").animate(portrait, audio, steps=2, crop="center")
    assert animator.graphs == "compile"
    assert fast.shape == eager.shape == (8, 3, 64, 64)
    assert_close("animated frames", fast, eager, COMPILED_TOLERANCE)
    eager_again = animator.use_graphs("eager").animate(portrait, audio, steps=2, crop="center")
    assert torch.equal(eager_again, eager)


def test_cuda_graphs_without_cuda_is_a_clear_error(media, capsys):
    with pytest.raises(ValueError, match="--cuda-graphs .* needs a CUDA device"):
        check_graph_mode("cuda-graphs", torch.device("cpu"))
    with pytest.raises(ValueError, match="graphs must be one of"):
        window_wrapper("graphs", torch.device("cpu"))
    portrait, audio = str(media["root"] / "portrait.png"), str(media["root"] / "speech.wav")
    out = media["root"] / "never.mp4"
    code = main(["animate", "--image", portrait, "--audio", audio, "--out", str(out),
                 "--checkpoint", media["stage2"], "--device", "cpu", "--cuda-graphs",
                 "--crop", "center", "--no-progress"])
    assert code == 2 and not out.exists()
    assert "--cuda-graphs captures CUDA graphs and needs a CUDA device" in capsys.readouterr().err
    code = main(["reenact", "--image", portrait, "--driving", audio, "--out", str(out),
                 "--checkpoint", media["stage2"], "--device", "cpu", "--cuda-graphs",
                 "--no-progress"])
    assert code == 2 and not out.exists()
    assert "needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["animate", "--image", portrait, "--audio", audio, "--out", str(out),
              "--cuda-graphs", "--compile"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_captured_windows_take_cuda_tensors_only():
    windows = CapturedWindows(lambda x: x * 2)
    with pytest.raises(ValueError, match="CUDA tensors only; input 0 is a cpu tensor"):
        windows(torch.ones(3))
    assert windows.captures == 0
    with pytest.raises(TypeError, match="fn must be callable"):
        CapturedWindows(3)
