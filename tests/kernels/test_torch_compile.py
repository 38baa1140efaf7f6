"""A small module using each op compiles with torch.compile(fullgraph=True) and matches eager."""
import pytest
import torch

from kernels import DeviationAdaNorm
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close


class _DeviationBlock(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.proj = torch.nn.Linear(24, 24)
        self.norm = DeviationAdaNorm(backend=backend)

    def forward(self, v, scale, shift):
        return self.norm(self.proj(v), scale, shift).tanh()


@pytest.mark.parametrize("backend,compiler", [("fast", "aot_eager"), ("triton", "aot_eager"),
                                               ("fast", "inductor")])
def test_deviation_adanorm_compiles_without_graph_break(backend, compiler):
    torch._dynamo.reset()
    module = _DeviationBlock(backend)
    v = torch.randn(2, 4, 24, requires_grad=True)
    scale, shift = torch.randn(2, 3, 5, 24), torch.randn(2, 3, 5, 24)
    compiled = torch.compile(module, fullgraph=True, backend=compiler)
    out = compiled(v, scale, shift)
    (grad_v,) = torch.autograd.grad(out.square().sum(), v)
    ref = module(v, scale, shift)
    (ref_grad_v,) = torch.autograd.grad(ref.square().sum(), v)
    assert_close("out", out, ref, FORWARD_TOLERANCE[torch.float32])
    assert_close("grad_v", grad_v, ref_grad_v, GRADIENT_TOLERANCE[torch.float32])
