"""CPU microbenchmarks of the Mamba block's other ops and of the block itself (d_model 256,
expand 2, d_state 16, d_conv 4): the fast path against the reference path of each op, in one run.

pytest-benchmark prints each group's times with the ratio to the fastest in parentheses.
"""
import pytest
import torch

from kernels import Mamba, causal_conv1d, selective_state_update
from kernels.causal_conv1d.inputs import make_inputs as make_conv_inputs
from kernels.selective_state_update.inputs import make_inputs as make_state_update_inputs

BATCH, D_MODEL, D_INNER, STATE, WIDTH, LENGTH = 2, 256, 512, 16, 4, 400
PATHS = ["reference", "fast"]


def _generator():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("backend", PATHS)
def test_state_update(benchmark, backend):
    benchmark.group = f"selective_state_update batch={BATCH} dim={D_INNER} N={STATE}"
    inputs = make_state_update_inputs(BATCH, D_INNER, STATE, seed=0)
    out = benchmark(selective_state_update, *inputs, True, backend=backend)
    assert out.shape == (BATCH, D_INNER) and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", PATHS)
def test_causal_conv1d(benchmark, backend):
    benchmark.group = f"causal_conv1d forward+backward batch={BATCH} dim={D_INNER} L={LENGTH}"
    x, weight, bias = make_conv_inputs(BATCH, D_INNER, LENGTH, WIDTH, seed=0, requires_grad=True)

    def step():
        out = causal_conv1d(x, weight, bias, activation="silu", backend=backend)
        return torch.autograd.grad(out.sum(), (x, weight, bias))

    grads = benchmark(step)
    assert all(torch.isfinite(t).all() for t in grads)


@pytest.mark.parametrize("backend", PATHS)
def test_mamba_block_forward_backward(benchmark, backend):
    benchmark.group = f"Mamba block forward+backward batch={BATCH} L={LENGTH} d_model={D_MODEL}"
    torch.manual_seed(0)
    block = Mamba(D_MODEL, d_state=STATE, d_conv=WIDTH, backend=backend)
    hidden = torch.randn(BATCH, LENGTH, D_MODEL, generator=_generator())

    def step():
        out = block(hidden)
        return torch.autograd.grad(out.square().mean(), list(block.parameters()))

    grads = benchmark.pedantic(step, rounds=3, warmup_rounds=1) if backend == "reference" \
        else benchmark(step)
    assert all(torch.isfinite(t).all() for t in grads)
