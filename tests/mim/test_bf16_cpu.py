"""bf16 on a CPU without bf16 instructions (mim.precision.bf16_compute): convolutions and matmuls
run in fp32 from their bf16 operands and are rounded to bf16. The results match PyTorch's own
bf16 kernels to one bf16 rounding, forward and backward; counters entered inside see the bf16 op
(same records, same bytes); the choice of route follows the precision, device and
MIM_BF16_CPU. (A bf16 training step's route: tests/mim/test_precision.py.)"""

import contextlib
import copy

import pytest
import torch

from kernels.cost import TrafficCounter
from mim import precision as precision_module
from mim.precision import Bf16ThroughFp32, autocast, bf16_compute, native_bf16_cpu


def _emulated(monkeypatch):
    """What Bf16ThroughFp32 handed to fp32 (a list of op names), recorded."""
    seen = []
    original = Bf16ThroughFp32.__torch_dispatch__

    def recording(self, func, types, args=(), kwargs=None):
        if func in self.OPS and not (kwargs or {}).get("out") and precision_module._all_bf16_cpu(args):
            seen.append(str(func))
        return original(self, func, types, args, kwargs)
    monkeypatch.setattr(Bf16ThroughFp32, "__torch_dispatch__", recording)
    return seen


def _assert_rounded_once(got: torch.Tensor, exact: torch.Tensor, what: str):
    """``got`` is ``exact`` (float64 from the same bf16 operands) rounded once to bf16: within
    half a bf16 ulp (2^-9 relative) plus what fp32 sums of the products can add (a floor of
    2^-20 of the largest value, for results that cancel to near zero)."""
    got, exact = got.detach().double(), exact.detach().double()
    bound = exact.abs() * 2.0 ** -8 + 2.0 ** -20 * float(exact.abs().max())
    worst = float(((got - exact).abs() - bound).max())
    assert worst <= 0, f"{what}: exceeds one bf16 rounding by {worst}"


CASES = {
    "conv3d": (lambda: torch.nn.Conv3d(6, 8, 3, padding=1), (2, 6, 4, 9, 9)),
    "conv2d-strided": (lambda: torch.nn.Conv2d(5, 7, 3, stride=2, padding=1), (2, 5, 12, 12)),
    "conv1d-grouped": (lambda: torch.nn.Conv1d(8, 8, 5, padding=2, groups=4), (3, 8, 20)),
    "conv-transpose2d": (lambda: torch.nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1), (2, 6, 7, 7)),
    "linear-3d": (lambda: torch.nn.Linear(24, 16), (3, 5, 24)),
    "linear-2d": (lambda: torch.nn.Linear(24, 16), (7, 24)),
    "linear-no-bias": (lambda: torch.nn.Linear(24, 16, bias=False), (7, 24)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_emulated_ops_are_the_exact_results_rounded_once_forward_and_backward(case):
    """What a GPU's bf16 tensor cores give (bf16 operands, fp32 accumulation, one rounding), for
    the output and every gradient: checked against float64 on the same bf16 operands."""
    make, shape = CASES[case]
    torch.manual_seed(0)
    module = make()
    x = torch.randn(shape, requires_grad=True)
    with Bf16ThroughFp32(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
        assert out.dtype == torch.bfloat16
        grad_out = torch.randn(out.shape).bfloat16()
        grads = torch.autograd.grad(out, [x, *module.parameters()], grad_out)
    exact_module = copy.deepcopy(module).double()
    with torch.no_grad():
        for parameter in exact_module.parameters():
            parameter.copy_(parameter.bfloat16().double())
    exact_x = x.detach().bfloat16().double().requires_grad_(True)
    exact_out = exact_module(exact_x)
    exact_grads = torch.autograd.grad(exact_out, [exact_x, *exact_module.parameters()],
                                      grad_out.double())
    names = ("input grad", *[n + " grad" for n, _ in module.named_parameters()])
    _assert_rounded_once(out, exact_out, f"{case} output")
    for got, exact, name in zip(grads, exact_grads, names):
        assert got.dtype == torch.float32, name      # through autocast's cast to the fp32 leaf
        _assert_rounded_once(got, exact, f"{case} {name}")


def test_bmm_and_baddbmm_are_rounded_once():
    torch.manual_seed(1)
    a = torch.randn(3, 6, 40).bfloat16()
    b = torch.randn(3, 40, 5).bfloat16()
    c = torch.randn(3, 6, 5).bfloat16()
    exact = torch.bmm(a.double(), b.double())
    with Bf16ThroughFp32():
        product = torch.bmm(a, b)
        fused = torch.baddbmm(c, a, b, alpha=0.5)
    assert product.dtype == fused.dtype == torch.bfloat16
    # fp32 sums of exact bf16 products: the result is the exact value rounded once
    assert torch.equal(product, exact.float().bfloat16())
    _assert_rounded_once(fused, c.double() + 0.5 * exact, "baddbmm")


def test_other_ops_and_other_dtypes_pass_through(monkeypatch):
    seen = _emulated(monkeypatch)
    x32 = torch.randn(4, 8)
    w16 = torch.randn(8, 3).bfloat16()
    with Bf16ThroughFp32():
        assert (x32 @ x32.T).dtype == torch.float32              # fp32 matmul: as it is
        assert (x32.bfloat16() + 1).dtype == torch.bfloat16      # not a matmul or convolution
        with pytest.raises(RuntimeError):                        # mixed dtypes fail as they would
            torch.mm(x32, w16)
        out = torch.empty(4, 3, dtype=torch.bfloat16)
        torch.mm(x32.bfloat16(), w16, out=out)                   # out= runs as it is
    assert seen == []


def test_a_counter_inside_sees_the_bf16_op_not_its_fp32_route():
    torch.manual_seed(2)
    conv = torch.nn.Conv3d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 4, 8, 8)
    counted = {}
    for route in ("native", "fp32"):
        with (Bf16ThroughFp32() if route == "fp32" else contextlib.nullcontext()), \
                torch.autocast("cpu", dtype=torch.bfloat16), TrafficCounter() as counter:
            conv(x)
        counted[route] = [(r.name, r.bytes_read, r.bytes_written) for r in counter.records]
    assert counted["fp32"] == counted["native"]
    names = [name for name, _, _ in counted["fp32"]]
    assert "aten.convolution.default" in names
    conv_bytes = next(r for r in counted["fp32"] if r[0] == "aten.convolution.default")
    assert conv_bytes[2] == 1 * 4 * 4 * 8 * 8 * 2                 # a bf16 output written


def test_the_route_follows_precision_device_and_the_environment(monkeypatch):
    monkeypatch.delenv("MIM_BF16_CPU", raising=False)
    assert not isinstance(bf16_compute("fp32", "cpu"), Bf16ThroughFp32)
    assert not isinstance(bf16_compute("bf16", "cuda"), Bf16ThroughFp32)
    expected = not native_bf16_cpu()
    assert isinstance(bf16_compute("bf16", "cpu"), Bf16ThroughFp32) == expected
    with Bf16ThroughFp32():                                       # already active: not twice
        assert not isinstance(bf16_compute("bf16", "cpu"), Bf16ThroughFp32)
    monkeypatch.setenv("MIM_BF16_CPU", "native")
    assert not isinstance(bf16_compute("bf16", "cpu"), Bf16ThroughFp32)
    monkeypatch.setenv("MIM_BF16_CPU", "fast")
    with pytest.raises(ValueError, match="MIM_BF16_CPU must be one of fp32, native, got 'fast'"):
        bf16_compute("bf16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        bf16_compute("fp16", "cpu")


def test_autocast_bf16_takes_the_fp32_route_only_without_bf16_instructions(monkeypatch):
    monkeypatch.delenv("MIM_BF16_CPU", raising=False)
    seen = _emulated(monkeypatch)
    with autocast("bf16", "cpu"):
        y = torch.nn.Linear(8, 8)(torch.randn(2, 8))
    # on a CPU with bf16 instructions PyTorch's own kernels run: nothing is routed
    assert y.dtype == torch.bfloat16
    assert seen == ([] if native_bf16_cpu() else ["aten.addmm.default"])
    seen.clear()
    with autocast("fp32", "cpu"):
        torch.nn.Linear(8, 8)(torch.randn(2, 8))
    assert seen == []
