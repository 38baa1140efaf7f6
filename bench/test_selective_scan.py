"""CPU microbenchmarks of selective_scan at a Mamba block's shape: batch 2, dim 256, N 16,
L 2048, with D, z, delta_bias and softplus (fp32).

The peer, ``kernels.selective_scan.reference.selective_scan_mamba_style``, is written the way mamba_ssm's ``selective_scan_ref`` is
(our own code, same structure): exp(Δ·A) and Δ·B·u precomputed for all steps as
(batch, dim, L, N) float32 tensors by einsum, then one time step per Python iteration with y by
einsum per step, and autograd for the backward. Against it: the fast path
(``backend="fast"``, numba loops with their own backward).

Speed is a ratio within one run: pytest-benchmark prints each group's times with the ratio to the
fastest in parentheses. Run with ``make bench`` (or ``pytest bench --benchmark-only``).

The loop's backward takes minutes at L = 2048: every ``deltaA[:, :, i]`` of the loop is a select
whose backward writes a zero-filled (batch, dim, L, N) gradient (67 MB) and adds it up, so its
cost grows as L². That one case runs a single round, without warm-up; L = 256 is measured as
well, where the loop's backward is short enough for repeated rounds.

``extra_info`` of each forward+backward case holds what autograd keeps for backward, in bytes,
split into the inputs themselves and everything else (``saved_beyond_inputs_bytes``).
"""
import pytest
import torch

from kernels.selective_scan.reference import selective_scan_mamba_style as mamba_style_loop
from kernels.cost import saved_bytes
from kernels.selective_scan import selective_scan
from kernels.selective_scan.inputs import make_inputs

BATCH, DIM, STATE = 2, 256, 16
LENGTHS = [256, 2048]
PATHS = ["mamba_style_loop", "fast"]
SLOW_LENGTH = 2048  # the loop's forward+backward here: one round


def _scan(path):
    if path == "mamba_style_loop":
        return mamba_style_loop

    def fast_path(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                              return_last_state=True, backend="fast")

    return fast_path


def _inputs(length, requires_grad):
    return list(make_inputs(BATCH, DIM, length, STATE, seed=0, requires_grad=requires_grad))


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("path", PATHS)
def test_forward(benchmark, path, length):
    benchmark.group = f"selective_scan forward fp32 L={length}"
    scan, inputs = _scan(path), _inputs(length, False)
    with torch.no_grad():
        scan(*inputs, True)  # numba loads (or compiles) its kernels on the first call
        out, last = benchmark(scan, *inputs, True)
    assert out.shape == (BATCH, DIM, length) and last.shape == (BATCH, DIM, STATE)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("path", PATHS)
def test_forward_backward(benchmark, path, length):
    benchmark.group = f"selective_scan forward+backward fp32 L={length}"
    scan, inputs = _scan(path), _inputs(length, True)
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(BATCH, DIM, length, generator=g)
    grad_last = torch.randn(BATCH, DIM, STATE, generator=g)

    def step():
        out, last = scan(*inputs, True)
        return torch.autograd.grad((out, last), inputs, (grad_out, grad_last))

    inputs_bytes, beyond_bytes = saved_bytes(lambda *a: scan(*a, True), inputs)
    benchmark.extra_info.update(saved_inputs_bytes=inputs_bytes,
                                saved_beyond_inputs_bytes=beyond_bytes)
    if path == "mamba_style_loop" and length == SLOW_LENGTH:
        grads = benchmark.pedantic(step, rounds=1, iterations=1, warmup_rounds=0)
    else:
        step()
        grads = benchmark(step)
    for grad, t in zip(grads, inputs):
        assert grad.shape == t.shape and torch.isfinite(grad).all()
