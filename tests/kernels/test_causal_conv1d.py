"""causal_conv1d and causal_conv1d_update against their float64 reference, on every backend."""
import importlib
import types

import pytest
import torch

from kernels import causal_conv1d, causal_conv1d_update
from kernels.causal_conv1d import causal_conv1d_reference, causal_conv1d_update_reference
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

conv_op = importlib.import_module("kernels.causal_conv1d.op")  # the package name is shadowed by the function

# (batch, dim, L, W): L shorter than the padding, W = 1, odd sizes.
SHAPES = [(2, 5, 17, 4), (1, 3, 2, 4), (3, 8, 33, 1), (2, 7, 9, 3), (1, 4, 1, 2)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# "triton" on CPU tensors is the torch path (no CUDA package): it must agree all the same.
BACKENDS = ["torch", "triton"]


def _inputs(batch, dim, length, width, dtype, bias=True):
    x = torch.randn(batch, dim, length)
    weight = torch.randn(dim, width) / width ** 0.5
    b = torch.randn(dim) if bias else None
    return [t.to(dtype).requires_grad_() if t is not None else None for t in (x, weight, b)]


def _reference(inputs, activation, grad):
    ref_inputs = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    out = causal_conv1d_reference(*ref_inputs, activation=activation)
    wrt = [t for t in ref_inputs if t is not None]
    return out, torch.autograd.grad(out, wrt, grad.double())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation,bias", [(None, True), ("silu", True), ("swish", False)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_reference(shape, dtype, activation, bias, backend, poisoned_empty):
    inputs = _inputs(*shape, dtype, bias=bias)
    out = causal_conv1d(*inputs, activation=activation, backend=backend)
    assert out.dtype == dtype and out.shape == shape[:3]
    grad = torch.randn(out.shape).to(dtype)
    wrt = [t for t in inputs if t is not None]
    grads = torch.autograd.grad(out, wrt, grad)
    ref_out, ref_grads = _reference(inputs, activation, grad)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[dtype])
    for name, g, r in zip(("grad_x", "grad_weight", "grad_bias"), grads, ref_grads):
        assert g.dtype == dtype
        assert_close(name, g, r, GRADIENT_TOLERANCE[dtype])


def test_reference_is_the_causal_convolution():
    """Spot values: out[t] sees x[t−W+1..t] only, zeros before the start."""
    x = torch.arange(1.0, 6.0).reshape(1, 1, 5)
    weight = torch.tensor([[1.0, 10.0, 100.0]])
    out = causal_conv1d_reference(x, weight, torch.tensor([0.5]))
    assert out.flatten().tolist() == [100.5, 210.5, 321.5, 432.5, 543.5]


def test_reference_gradcheck():
    inputs = [t.detach().double().requires_grad_() for t in _inputs(2, 3, 6, 3, torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d_reference(*a, activation="silu"), inputs)


def test_torch_path_gradcheck_float64():
    inputs = [t.detach().double().requires_grad_() for t in _inputs(2, 3, 6, 3, torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a, activation="silu", backend="torch"), inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sum_backward_with_stride_zero_gradient(backend):
    inputs = _inputs(2, 5, 11, 4, torch.float32)
    causal_conv1d(*inputs, activation="silu", backend=backend).sum().backward()
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    causal_conv1d_reference(*ref_inputs, activation="silu").sum().backward()
    for name, t, r in zip(("x", "weight", "bias"), inputs, ref_inputs):
        assert_close(f"grad_{name}", t.grad, r.grad, GRADIENT_TOLERANCE[torch.float32])


def test_non_contiguous_input():
    """x as one half of a (batch, 2·dim, L) projection, as kernels.Mamba passes it."""
    xz = torch.randn(2, 12, 9)
    x = xz.chunk(2, dim=1)[1]
    weight, bias = torch.randn(6, 4), torch.randn(6)
    ref = causal_conv1d_reference(x.double(), weight.double(), bias.double(), "silu")
    for backend in ("reference", "torch", "triton"):
        assert_close(backend, causal_conv1d(x, weight, bias, "silu", backend=backend), ref,
                     FORWARD_TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("state_extra", [0, -1, 2], ids=["S=W", "S=W-1", "S=W+2"])
@pytest.mark.parametrize("width,bias,activation", [(4, True, "silu"), (3, False, None), (1, True, "swish")])
def test_stepping_reproduces_the_sequence(width, bias, activation, state_extra, backend):
    batch, dim, length = 2, 5, 9
    x, weight, b = (t.detach() if t is not None else None
                    for t in _inputs(batch, dim, length, width, torch.float32, bias=bias))
    state_len = max(0, width + state_extra)
    conv_state = torch.zeros(batch, dim, state_len)
    outs = [causal_conv1d_update(x[:, :, t], conv_state, weight, b, activation, backend=backend)
            for t in range(length)]
    ref = causal_conv1d_reference(x.double(), weight.double(), b.double() if b is not None else None,
                                  activation)
    assert_close("stepped", torch.stack(outs, dim=-1), ref, FORWARD_TOLERANCE[torch.float32])
    kept = min(state_len, length)
    assert torch.equal(conv_state[:, :, state_len - kept:], x[:, :, length - kept:])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_update_matches_float64_reference_from_a_full_state(dtype):
    x, weight, b = (t.detach() for t in _inputs(3, 7, 1, 4, dtype))
    x = x[:, :, 0]
    conv_state = torch.randn(3, 7, 4).to(dtype)
    ref_state = conv_state.double()
    ref = causal_conv1d_update_reference(x.double(), ref_state, weight.double(), b.double(), "silu")
    out = causal_conv1d_update(x, conv_state, weight, b, "silu", backend="torch")
    assert out.dtype == dtype
    assert_close("out", out, ref, FORWARD_TOLERANCE[dtype])
    assert torch.equal(conv_state.double(), ref_state)


def test_update_gradients_on_the_torch_path():
    x, weight, b = (t.detach().requires_grad_() for t in _inputs(2, 3, 1, 3, torch.float64))
    x = x[:, :, 0]
    state = torch.randn(2, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda *a: causal_conv1d_update(a[0], state.clone(), *a[1:], activation="silu", backend="torch"),
        (x, weight, b))


def test_empty_inputs():
    for batch, dim, length in ((0, 3, 5), (2, 0, 5), (2, 3, 0)):
        x, weight = torch.randn(batch, dim, length), torch.randn(dim, 3)
        for backend in ("reference", "torch"):
            assert causal_conv1d(x, weight, activation="silu", backend=backend).shape == (batch, dim, length)
    state = torch.zeros(0, 3, 3)
    assert causal_conv1d_update(torch.randn(0, 3), state, torch.randn(3, 3)).shape == (0, 3)


class _FakePackage:
    """Stands in for the ``causal_conv1d`` CUDA package: the reference, recording its calls."""

    def __init__(self):
        self.calls = []

    def causal_conv1d_fn(self, x, weight, bias=None, activation=None):
        self.calls.append(("fn", weight.shape, activation))
        return causal_conv1d_reference(x, weight, bias, activation)

    def causal_conv1d_update(self, x, conv_state, weight, bias=None, activation=None):
        self.calls.append(("update", conv_state.shape, activation))
        return causal_conv1d_update_reference(x, conv_state, weight, bias, activation)


def test_gpu_path_calls_the_cuda_package_when_it_can(monkeypatch):
    package = _FakePackage()
    monkeypatch.setattr(conv_op, "_cuda_package", lambda: package)
    monkeypatch.setattr(conv_op, "_package_supports", lambda x, weight, bias: True)
    x, weight, bias = torch.randn(2, 4, 6), torch.randn(4, 3), torch.randn(4)
    causal_conv1d(x, weight, bias, "swish", backend="triton")
    causal_conv1d(x, weight, bias, "swish", backend="torch")
    causal_conv1d_update(x[:, :, 0], torch.zeros(2, 4, 3), weight, bias, "silu", backend="triton")
    causal_conv1d_update(x[:, :, 0], torch.zeros(2, 4, 2), weight, bias, "silu", backend="triton")
    causal_conv1d_update(x[:, :, 0].requires_grad_(), torch.zeros(2, 4, 3), weight, bias, backend="triton")
    assert package.calls == [("fn", (4, 3), "silu"), ("update", (2, 4, 3), "silu")]


def test_cuda_package_support_rules(monkeypatch):
    monkeypatch.setattr(conv_op, "_cuda_package", lambda: types.SimpleNamespace())
    x, weight = torch.randn(1, 4, 5), torch.randn(4, 3)
    assert not conv_op._package_supports(x, weight, None)  # a CPU tensor
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert conv_op._package_supports(x, weight, None)
    assert not conv_op._package_supports(x, torch.randn(4, 5), None)
    assert not conv_op._package_supports(x.double(), weight, None)
    monkeypatch.setattr(conv_op, "_cuda_package", lambda: None)
    assert not conv_op._package_supports(x, weight, None)


def test_compiles_without_graph_break():
    torch._dynamo.reset()

    def block(x, weight, bias):
        return causal_conv1d(x.tanh(), weight, bias, "silu", backend="torch") * 2

    x, weight, bias = (t.detach() for t in _inputs(2, 5, 7, 4, torch.float32))
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    assert_close("compiled", compiled(x, weight, bias), block(x, weight, bias), FORWARD_TOLERANCE[torch.float32])


def _good():
    return torch.randn(2, 4, 6), torch.randn(4, 3), torch.randn(4)


BAD_INPUTS = [
    ("x must be 3-D", lambda x, w, b: (x[0], w, b), ValueError),
    ("weight must be 2-D", lambda x, w, b: (x, w[:, None], b), ValueError),
    ("weight must be 2-D", lambda x, w, b: (x, w[:3], b), ValueError),
    ("weight must be 2-D", lambda x, w, b: (x, w[:, :0], b), ValueError),
    ("bias must have shape", lambda x, w, b: (x, w, b[:2]), ValueError),
    ("x must have a floating dtype", lambda x, w, b: (x.long(), w, b), TypeError),
    ("weight must be a torch.Tensor", lambda x, w, b: (x, w.numpy(), b), TypeError),
    ("bias is on meta", lambda x, w, b: (x, w, b.to("meta")), ValueError),
    ("weight is on meta", lambda x, w, b: (x, w.to("meta"), b), ValueError),
]


@pytest.mark.parametrize("message,corrupt,error", BAD_INPUTS,
                         ids=[b[0][:20] + str(i) for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_is_named(message, corrupt, error):
    with pytest.raises(error, match=message):
        causal_conv1d(*corrupt(*_good()))


def test_bad_activation_is_named():
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv1d(*_good(), activation="relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv1d_update(torch.randn(2, 4), torch.zeros(2, 4, 3), torch.randn(4, 3), activation=True)


BAD_UPDATES = [
    ("x must be 2-D", lambda x, s, w: (x[..., None], s, w), ValueError),
    ("conv_state must have shape", lambda x, s, w: (x, s[:, :, :1], w), ValueError),
    ("conv_state must have shape", lambda x, s, w: (x, s[:1], w), ValueError),
    ("conv_state must have shape", lambda x, s, w: (x, s[0], w), ValueError),
    ("conv_state has dtype", lambda x, s, w: (x, s.double(), w), TypeError),
    ("conv_state is on meta", lambda x, s, w: (x, s.to("meta"), w), ValueError),
    ("weight must be 2-D", lambda x, s, w: (x, s, w[:2]), ValueError),
]


@pytest.mark.parametrize("message,corrupt,error", BAD_UPDATES,
                         ids=[b[0][:20] + str(i) for i, b in enumerate(BAD_UPDATES)])
def test_bad_update_input_is_named(message, corrupt, error):
    x, state, weight = torch.randn(2, 4), torch.zeros(2, 4, 3), torch.randn(4, 3)
    with pytest.raises(error, match=message):
        causal_conv1d_update(*corrupt(x, state, weight))
