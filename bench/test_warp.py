"""CPU microbenchmarks of the 3-D warp ops: grid_sample_3d and region_softmax_warp, the fast path
against the reference of each, forward and forward+backward, in one run.

Shape: a quarter of the base model's volume (frames B = 2, C = 32 channels, S_d = 16 depth layers,
32 × 32, λ = 10 regions; feature batch 1 shared by the frames), so a round takes well under a
second on 2 cores. pytest-benchmark prints each group's ratio to the fastest in parentheses.
"""
import pytest
import torch

from kernels import grid_sample_3d, region_softmax_warp
from kernels.grid_sample_3d.inputs import make_inputs as make_sample_inputs
from kernels.region_softmax_warp.inputs import make_inputs as make_warp_inputs

FRAMES, CHANNELS, REGIONS, DEPTH, SIDE = 2, 32, 10, 16, 32
PATHS = ["reference", "fast"]


def _warp_inputs(requires_grad):
    """F_id of batch 1 shared by the frames; β passed as a float, as the model does."""
    return make_warp_inputs(FRAMES, CHANNELS, REGIONS, DEPTH, SIDE, SIDE, feature_batch=1,
                            requires_grad=requires_grad, seed=0, beta=None)


def _sample_inputs(requires_grad):
    return make_sample_inputs(FRAMES, CHANNELS, DEPTH, SIDE, SIDE, requires_grad=requires_grad,
                              seed=0)


@pytest.mark.parametrize("backend", PATHS)
def test_region_softmax_warp_forward(benchmark, backend):
    benchmark.group = "region_softmax_warp forward"
    inputs = _warp_inputs(False)
    out = benchmark(region_softmax_warp, *inputs, 0.2, backend=backend)
    assert out.shape == (FRAMES, CHANNELS, DEPTH, SIDE, SIDE) and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", PATHS)
def test_region_softmax_warp_forward_backward(benchmark, backend):
    benchmark.group = "region_softmax_warp forward+backward"
    inputs = _warp_inputs(True)

    def step():
        out = region_softmax_warp(*inputs, 0.2, backend=backend)
        return torch.autograd.grad(out.square().sum(), inputs)

    grads = benchmark(step)
    assert all(torch.isfinite(t).all() for t in grads)


@pytest.mark.parametrize("backend", PATHS)
def test_grid_sample_3d_forward_backward(benchmark, backend):
    benchmark.group = "grid_sample_3d forward+backward"
    inputs = _sample_inputs(True)

    def step():
        out = grid_sample_3d(*inputs, padding_mode="border", backend=backend)
        return torch.autograd.grad(out.square().sum(), inputs)

    grads = benchmark(step)
    assert all(torch.isfinite(t).all() for t in grads)
