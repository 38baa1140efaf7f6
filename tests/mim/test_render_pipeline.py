"""Renderer.render_window: the one render window that Renderer.render, mim.profile and mim.export
run; its stages, its default profiler ranges, and its traceable form (a replaced warp)."""

import functools

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from kernels.region_softmax_warp import region_softmax_warp_reference
from mim.config import get_config
from mim.models import Renderer
from mim.models.renderer import RENDER_STAGES


@pytest.fixture(scope="module")
def renderer():
    torch.manual_seed(0)
    renderer = Renderer(get_config("tiny").renderer).eval()
    with torch.no_grad():   # zero-initialized heads would give the identity warp
        for parameter in renderer.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05)
    return renderer


def inputs(renderer, batch, frames, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        state = renderer.encode_source(torch.rand(batch, 3, 64, 64, generator=generator))
        motion = renderer.encode_motion(torch.rand(batch, frames, 3, 64, 64, generator=generator))
    return state, motion


def test_stages_run_in_order_once_per_window(renderer):
    state, motion = inputs(renderer, 1, 5)
    entered = []

    def stage(name):
        entered.append(name)
        return torch.autograd.profiler.record_function(name)

    with torch.no_grad():
        frames = renderer.render(state, motion, window=2, stage=stage)
        expected = renderer.render(state, motion, window=2)
    assert entered == list(RENDER_STAGES) * 3          # windows of 2, 2 and 1 frames
    assert torch.equal(frames, expected)


def test_default_stage_is_a_profiler_range(renderer):
    state, motion = inputs(renderer, 1, 2)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        renderer.render(state, motion)
    names = {event.name for event in prof.events()}
    assert {f"mim.{name}" for name in RENDER_STAGES} <= names


@pytest.mark.parametrize("batch,frames", [(1, 1), (1, 4), (2, 1), (2, 3)])
def test_a_replaced_warp_gives_the_renderers_frames(renderer, batch, frames):
    """The traceable form (F_id expanded to every frame, one warp call, as mim.export traces it)
    computes what the shared-F_id form does, for both samplers of the reference warp."""
    state, motion = inputs(renderer, batch, frames, seed=batch * 10 + frames)
    warp = renderer.warp
    with torch.no_grad():
        expected = renderer.render_window(state, motion)
        for sampler in ("grid_sample", "gather"):
            replaced = functools.partial(region_softmax_warp_reference, beta=warp.beta,
                                         padding_mode=warp.padding_mode,
                                         align_corners=warp.align_corners, sampler=sampler)
            got = renderer.render_window(state, motion, warp=replaced)
            for key in ("frames", "warped", "mask"):
                assert got[key].shape == expected[key].shape, key
                error = (got[key] - expected[key]).norm() / expected[key].norm()
                assert error <= 1e-5, (sampler, key, error.item())
