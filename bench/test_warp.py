"""CPU microbenchmarks of the 3-D warp ops: grid_sample_3d and region_softmax_warp, the torch path
against the reference of each, forward and forward+backward, in one run.

Shape: a quarter of the base model's volume (frames B = 2, C = 32 channels, S_d = 16 depth layers,
32 × 32, λ = 10 regions; feature batch 1 shared by the frames), so a round takes well under a
second on 2 cores. pytest-benchmark prints each group's ratio to the fastest in parentheses.
"""
import pytest
import torch

from kernels import grid_sample_3d, region_softmax_warp

FRAMES, CHANNELS, REGIONS, DEPTH, SIDE = 2, 32, 10, 16, 32
PATHS = ["reference", "torch"]


def _warp_inputs(requires_grad):
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(1, CHANNELS, DEPTH, SIDE, SIDE, generator=g)
    logits = torch.randn(FRAMES, REGIONS, DEPTH, SIDE, SIDE, generator=g)
    displacement = torch.randn(FRAMES, REGIONS, 3, DEPTH, SIDE, SIDE, generator=g) * 0.1
    mask = torch.rand(FRAMES, 1, DEPTH, SIDE, SIDE, generator=g)
    return [t.requires_grad_(requires_grad) for t in (feature, logits, displacement, mask)]


def _sample_inputs(requires_grad):
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(FRAMES, CHANNELS, DEPTH, SIDE, SIDE, generator=g)
    grid = torch.rand(FRAMES, DEPTH, SIDE, SIDE, 3, generator=g) * 2.2 - 1.1
    return [t.requires_grad_(requires_grad) for t in (volume, grid)]


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
