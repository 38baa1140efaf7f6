"""CUDA-graph capture of the sampling loop and of the render window (issue 20, item 2), on a GPU.

``mim.graphs.CapturedWindows`` captures a whole DDIM window of the motion generator (every step,
the unconditional call of the guidance and the noise of η > 0 included) and a render window of
the renderer (DIT, LMDD, the Triton warp, decoder) once per input shape, after a warm-up on a
side stream, and replays them. A replay gives what eager gives on the same inputs; a replay with
new inputs reads them; ``Animator.use_graphs("cuda-graphs")`` gives the eager animation. tiny
config, random weights (the zero-initialized heads filled with noise so every input matters).
"""
import numpy as np
import pytest
import torch

from kernels.testing import assert_close
from mim.animate import Animator
from mim.config import get_config
from mim.data import speech_like_audio
from mim.diffusion import ddim_draws
from mim.graphs import CapturedWindows
from mim.models import Renderer
from mim.models.motion import MotionGenerator

pytestmark = pytest.mark.gpu

CONFIG = get_config("tiny")
# A replay runs the kernels of the eager call on the same data; cuBLAS may pick another
# algorithm for a captured matmul, so float32 rounding differences are allowed, no more.
TOLERANCE = 1e-5


def _wake(*modules):
    with torch.no_grad():
        for module in modules:
            for parameter in module.parameters():
                if not parameter.any():
                    parameter.normal_(0, 0.05)


def _models():
    torch.manual_seed(0)
    renderer = Renderer(CONFIG.renderer).cuda().eval()
    motion = MotionGenerator(CONFIG.motion, CONFIG.renderer.motion_dim,
                             CONFIG.renderer.appearance_dim).cuda().eval()
    _wake(renderer, motion)
    return renderer, motion


def test_captured_ddim_window_replays_eager():
    _, motion = _models()
    sampler = motion.window_sampler(steps=4, eta=0.5, guidance_scale=2.0)
    plan = sampler.keywords["plan"]
    m = CONFIG.motion

    def inputs(seed, frames):
        generator = torch.Generator("cuda").manual_seed(seed)
        x_T, noises = ddim_draws(plan, (1, frames, motion.motion_dim), generator, torch.float32,
                                 "cuda")
        cond = [torch.randn(shape, generator=generator, device="cuda")
                for shape in ((1, m.audio_dim), (1, frames, m.audio_dim),
                              (1, m.prev_frames, motion.motion_dim), (1, motion.appearance_dim))]
        return (x_T, noises, *cond)

    captured = CapturedWindows(sampler)
    first, second, short = inputs(0, m.window), inputs(1, m.window), inputs(2, 7)
    with torch.no_grad():
        replayed = [captured(*args) for args in (first, second, short)]
        eager = [sampler(*args) for args in (first, second, short)]
    assert captured.captures == 2                 # the full window and the short last one
    for name, out, ref in zip(("first", "second", "short"), replayed, eager):
        assert_close(f"DDIM window replay ({name} inputs)", out, ref, TOLERANCE)
    assert not torch.allclose(replayed[0], replayed[1]), "the replay did not read the new inputs"


def test_captured_render_window_replays_eager():
    renderer, _ = _models()
    window = CONFIG.renderer.render_window
    with torch.no_grad():
        state = renderer.encode_source(torch.rand(1, 3, 64, 64, device="cuda"))
        captured = CapturedWindows(renderer.window_frames)
        motions = [state.motion[:, None] + 0.3 * torch.randn(1, n, CONFIG.renderer.motion_dim,
                                                             device="cuda")
                   for n in (window, window, 5)]
        replayed = [captured(state.feature, state.appearance, state.motion, m) for m in motions]
        eager = [renderer.render(state, m) for m in motions]
    assert captured.captures == 2
    for k, (out, ref) in enumerate(zip(replayed, eager)):
        assert out.shape == ref.shape
        assert_close(f"render window replay {k}", out, ref, TOLERANCE)
    assert not torch.allclose(replayed[0], replayed[1]), "the replay did not read the new motion"


def test_animate_with_cuda_graphs_matches_eager():
    """1.2 s of speech: 30 frames, motion windows of 25 and 5 frames, render windows of 16 and
    14: two captures each, replayed."""
    renderer, motion = _models()
    animator = Animator(renderer, motion, CONFIG, device="cuda")
    portrait = torch.rand(3, 64, 64)
    audio = np.asarray(speech_like_audio(1.2, seed=1)[0], dtype=np.float32)
    eager = animator.animate(portrait, audio, steps=2, crop="center")
    graphed = animator.use_graphs("cuda-graphs").animate(portrait, audio, steps=2, crop="center")
    assert graphed.shape == eager.shape == (30, 3, 64, 64)
    assert_close("animated frames", graphed, eager, 1e-4)
    again = animator.animate(portrait, audio, steps=2, crop="center")   # replays the same graphs
    assert torch.equal(again, graphed)
