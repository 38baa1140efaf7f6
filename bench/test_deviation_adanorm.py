"""CPU microbenchmarks of deviation_adanorm at the model's shape (B=4, N=24, R=λ=10, G=768).

Speed is a ratio within one run: pytest-benchmark prints each group's times with the ratio to the
fastest in parentheses. Run with ``make bench`` (or ``pytest bench --benchmark-only``).
"""
import pytest
import torch

from kernels import deviation_adanorm
from kernels.deviation_adanorm.inputs import make_inputs

B, N, R, G = 4, 24, 10, 768
PATHS = ["reference", "fast"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", PATHS)
def test_forward(benchmark, backend, dtype):
    benchmark.group = f"deviation_adanorm forward {str(dtype)[6:]}"
    v, scale, shift = make_inputs(B, N + 1, R, G, dtype=dtype, seed=0)
    with torch.no_grad():
        out = benchmark(deviation_adanorm, v, scale, shift, backend=backend)
    assert out.shape == (B, N, R, G)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", PATHS)
def test_forward_backward(benchmark, backend, dtype):
    benchmark.group = f"deviation_adanorm forward+backward {str(dtype)[6:]}"
    inputs = make_inputs(B, N + 1, R, G, dtype=dtype, requires_grad=True, seed=0)
    grad = torch.randn(B, N, R, G).to(dtype)

    def step():
        out = deviation_adanorm(*inputs, backend=backend)
        return torch.autograd.grad(out, inputs, grad)

    grads = benchmark(step)
    assert all(torch.isfinite(g).all() for g in grads)
