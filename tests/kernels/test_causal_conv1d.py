"""causal_conv1d and causal_conv1d_update against their float64 reference on every backend (the
Triton kernels run under the interpreter here), the CausalConv1d module, the registry entries and
the cost model."""
import importlib
import math
import types

import pytest
import torch
import torch.nn.functional as F

from kernels import CausalConv1d, causal_conv1d, causal_conv1d_update, registered_kernels
from kernels.causal_conv1d import causal_conv1d_reference, causal_conv1d_update_reference
from kernels.causal_conv1d.cost import fused_traffic, minimum_traffic, package_traffic, traffic_cases
from kernels.causal_conv1d.inputs import make_inputs, make_update_inputs
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

conv_op = importlib.import_module("kernels.causal_conv1d.op")  # the package name is shadowed by the function
conv_kernels = importlib.import_module("kernels.causal_conv1d.triton_kernels")

# (batch, dim, L, W): L shorter than the padding, W = 1, odd sizes; the last straddles the
# channel-first tile (16 channels × 128 steps) on both axes.
SHAPES = [(2, 5, 17, 4), (1, 3, 2, 4), (3, 8, 33, 1), (2, 7, 9, 3), (1, 4, 1, 2), (1, 17, 130, 4)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["fast", "triton"]


def _inputs(batch, dim, length, width, dtype, bias=True, channel_last=False, sequences=0):
    return list(make_inputs(batch, dim, length, width, dtype=dtype, requires_grad=True, bias=bias,
                            channel_last=channel_last, sequences=sequences))


def _reference(inputs, activation, grad, seq_idx=None):
    ref_inputs = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    out = causal_conv1d_reference(*ref_inputs, activation=activation, seq_idx=seq_idx)
    wrt = [t for t in ref_inputs if t is not None]
    return out, torch.autograd.grad(out, wrt, grad.double())


def _check_against_reference(inputs, activation, backend, dtype, seq_idx=None):
    out = causal_conv1d(*inputs, activation=activation, backend=backend, seq_idx=seq_idx)
    assert out.dtype == dtype and out.shape == inputs[0].shape
    grad = torch.randn(out.shape).to(dtype)
    wrt = [t for t in inputs if t is not None]
    grads = torch.autograd.grad(out, wrt, grad)
    ref_out, ref_grads = _reference(inputs, activation, grad, seq_idx)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[dtype])
    for name, g, r in zip(("grad_x", "grad_weight", "grad_bias"), grads, ref_grads):
        assert g.dtype == dtype and g.shape == r.shape
        assert_close(name, g, r, GRADIENT_TOLERANCE[dtype])
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation,bias", [(None, True), ("silu", True), ("swish", False)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_reference(shape, dtype, activation, bias, backend, poisoned_empty):
    _check_against_reference(_inputs(*shape, dtype, bias=bias), activation, backend, dtype)


@pytest.mark.parametrize("activation,bias", [(None, True), ("silu", False)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_channel_last_matches_reference(dtype, activation, bias, poisoned_empty):
    """x of (batch, L, dim) memory: the channel-last tile (64 channels × 32 steps), straddled on
    both axes; out keeps x's layout."""
    inputs = _inputs(2, 65, 33, 4, dtype, bias=bias, channel_last=True)
    assert conv_kernels.is_channel_last(inputs[0])
    out = _check_against_reference(inputs, activation, "triton", dtype)
    assert out.stride(1) == 1


@pytest.mark.parametrize("channel_last", [False, True], ids=["channel_first", "channel_last"])
@pytest.mark.parametrize("width,activation,bias", [(4, "silu", True), (2, None, True), (3, "silu", False)])
def test_triton_with_seq_idx_matches_reference(width, activation, bias, channel_last, poisoned_empty):
    """Packed sequences straddling the tiles: no tap, forward or backward, crosses a boundary."""
    x, weight, b, seq_idx = _inputs(2, 18, 70, width, torch.float32, bias=bias,
                                    channel_last=channel_last, sequences=6)
    assert bool((seq_idx[:, 1:] != seq_idx[:, :-1]).any())
    _check_against_reference([x, weight, b], activation, "triton", torch.float32, seq_idx)


@pytest.mark.parametrize("backend", ["fast", "triton"])
def test_strided_input_goes_through_a_copy(backend):
    """x with unit stride along neither axis (every other step of a longer sequence)."""
    x = torch.randn(2, 6, 21)[:, :, ::2]
    weight, bias = torch.randn(6, 4), torch.randn(6)
    ref = causal_conv1d_reference(x.double(), weight.double(), bias.double(), "silu")
    assert_close(backend, causal_conv1d(x, weight, bias, "silu", backend=backend), ref,
                 FORWARD_TOLERANCE[torch.float32])


def test_reference_is_the_causal_convolution():
    """Spot values: out[t] sees x[t−W+1..t] only, zeros before the start."""
    x = torch.arange(1.0, 6.0).reshape(1, 1, 5)
    weight = torch.tensor([[1.0, 10.0, 100.0]])
    out = causal_conv1d_reference(x, weight, torch.tensor([0.5]))
    assert out.flatten().tolist() == [100.5, 210.5, 321.5, 432.5, 543.5]


def test_reference_gradcheck():
    inputs = [t.detach().double().requires_grad_() for t in _inputs(2, 3, 6, 3, torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d_reference(*a, activation="silu"), inputs)


def test_fast_path_gradcheck_float64():
    inputs = [t.detach().double().requires_grad_() for t in _inputs(2, 3, 6, 3, torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a, activation="silu", backend="fast"), inputs)


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
    for backend in ("reference", "fast", "triton"):
        assert_close(backend, causal_conv1d(x, weight, bias, "silu", backend=backend), ref,
                     FORWARD_TOLERANCE[torch.float32])


def test_triton_takes_weights_of_another_dtype():
    """fp32 x with bf16 weight and bias (read in fp32); the gradients come back in their dtypes."""
    x, weight, bias = _inputs(2, 5, 13, 4, torch.float32)
    weight = weight.detach().bfloat16().requires_grad_()
    bias = bias.detach().bfloat16().requires_grad_()
    _check = causal_conv1d(x, weight, bias, "silu", backend="triton")
    ref = causal_conv1d_reference(x.double(), weight.double(), bias.double(), "silu")
    assert_close("out", _check, ref, FORWARD_TOLERANCE[torch.float32])
    grad_weight, grad_bias = torch.autograd.grad(_check.sum(), (weight, bias))
    assert grad_weight.dtype == grad_bias.dtype == torch.bfloat16


def test_triton_rejects_float64_x():
    x, weight, bias = (t.detach().double() for t in _inputs(1, 3, 5, 4, torch.float32))
    with pytest.raises(TypeError, match="x has dtype torch.float64; the triton backend takes"):
        causal_conv1d(x, weight, bias, backend="triton")
    with pytest.raises(TypeError, match="x has dtype torch.float64; the triton backend takes"):
        causal_conv1d_update(x[:, :, 0], torch.zeros(1, 3, 4, dtype=torch.float64), weight,
                             backend="triton")


@pytest.mark.parametrize("backend", ["reference", "fast", "triton"])
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_update_matches_float64_reference_from_a_full_state(dtype, backend, poisoned_empty):
    """260 channels straddle the step kernel's 256-channel block; S = 6 takes two chunks of 4."""
    x, conv_state, weight, b = make_update_inputs(3, 260, 4, 6, dtype=dtype)
    ref_state = conv_state.double()
    ref = causal_conv1d_update_reference(x.double(), ref_state, weight.double(), b.double(), "silu")
    out = causal_conv1d_update(x, conv_state, weight, b, "silu", backend=backend)
    assert out.dtype == dtype
    assert_close("out", out, ref, FORWARD_TOLERANCE[dtype])
    assert torch.equal(conv_state.double(), ref_state)


def test_triton_update_on_strided_state_and_input():
    """x a slice of a (batch, 2·dim) projection (as Mamba.step passes it) and a state whose S axis
    is strided (written back through a copy)."""
    xz, weight, b = torch.randn(2, 14), torch.randn(7, 4), torch.randn(7)
    x = xz.chunk(2, dim=-1)[0]
    conv_state = torch.randn(2, 4, 7).transpose(1, 2)
    ref_state = conv_state.double()
    ref = causal_conv1d_update_reference(x.double(), ref_state, weight.double(), b.double(), None)
    out = causal_conv1d_update(x, conv_state, weight, b, backend="triton")
    assert_close("out", out, ref, FORWARD_TOLERANCE[torch.float32])
    assert torch.equal(conv_state.double(), ref_state)


@pytest.mark.parametrize("backend", ["fast", "triton"])
def test_update_gradients_take_the_fast_path(backend):
    x, conv_state, weight, b = (t.double() for t in make_update_inputs(2, 3, 3))
    x, weight, b = (t.requires_grad_() for t in (x, weight, b))
    assert torch.autograd.gradcheck(
        lambda *a: causal_conv1d_update(a[0], conv_state.clone(), *a[1:], activation="silu",
                                        backend="fast"),
        (x, weight, b))
    xf, wf, bf = (t.detach().float().requires_grad_() for t in (x, weight, b))
    out = causal_conv1d_update(xf, conv_state.float().clone(), wf, bf, "silu", backend=backend)
    grads = torch.autograd.grad(out.sum(), (xf, wf, bf))
    ref = causal_conv1d_update_reference(x, conv_state.clone(), weight, b, "silu")
    ref_grads = torch.autograd.grad(ref.sum(), (x, weight, b))
    for name, g, r in zip(("x", "weight", "bias"), grads, ref_grads):
        assert_close(f"grad_{name}", g, r, GRADIENT_TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", ["reference", "fast", "triton"])
def test_empty_inputs(backend):
    for batch, dim, length in ((0, 3, 5), (2, 0, 5), (2, 3, 0)):
        x = torch.randn(batch, dim, length, requires_grad=True)
        weight = torch.randn(dim, 3, requires_grad=True)
        out = causal_conv1d(x, weight, activation="silu", backend=backend)
        assert out.shape == (batch, dim, length)
        grad_x, grad_weight = torch.autograd.grad(out.sum(), (x, weight), allow_unused=True)
        assert grad_weight is None or torch.equal(grad_weight, torch.zeros_like(weight))
    state = torch.zeros(0, 3, 3)
    assert causal_conv1d_update(torch.randn(0, 3), state, torch.randn(3, 3), backend=backend).shape == (0, 3)


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
    """The package takes the calls it supports; the step with S != W or with a gradient does not
    (the first runs the Triton step kernel, the second the fast path)."""
    package = _FakePackage()
    monkeypatch.setattr(conv_op, "_cuda_package", lambda: package)
    monkeypatch.setattr(conv_op, "package_supports", lambda x, weight, bias: True)
    x, weight, bias = torch.randn(2, 4, 6), torch.randn(4, 3), torch.randn(4)
    causal_conv1d(x, weight, bias, "swish", backend="triton")
    causal_conv1d(x, weight, bias, "swish", backend="fast")
    causal_conv1d_update(x[:, :, 0], torch.zeros(2, 4, 3), weight, bias, "silu", backend="triton")
    causal_conv1d_update(x[:, :, 0], torch.zeros(2, 4, 2), weight, bias, "silu", backend="triton")
    causal_conv1d_update(x[:, :, 0].requires_grad_(), torch.zeros(2, 4, 3), weight, bias, backend="triton")
    assert package.calls == [("fn", (4, 3), "silu"), ("update", (2, 4, 3), "silu")]


def test_without_the_package_triton_runs_the_project_kernels(monkeypatch):
    """No package: backend "triton" launches the project's forward kernel (seen by a recorder
    wrapped around the launcher)."""
    monkeypatch.setattr(conv_op, "_cuda_package", lambda: None)
    launched = []
    launcher = conv_kernels.causal_conv1d_forward_triton
    monkeypatch.setattr(conv_kernels, "causal_conv1d_forward_triton",
                        lambda *a: launched.append(a[0].shape) or launcher(*a))
    x, weight, bias = make_inputs(2, 4, 6, 3)
    out = causal_conv1d(x, weight, bias, "silu", backend="triton")
    assert launched == [(2, 4, 6)]
    assert_close("out", out, causal_conv1d_reference(x.double(), weight.double(), bias.double(), "silu"),
                 FORWARD_TOLERANCE[torch.float32])


def test_cuda_package_support_rules(monkeypatch):
    """CPU tensors on every device (the rules are read off CPU tensors, then ones faking CUDA)."""
    monkeypatch.setattr(conv_op, "_cuda_package", lambda: types.SimpleNamespace())
    x, weight = torch.randn(1, 4, 5, device="cpu"), torch.randn(4, 3, device="cpu")
    assert not conv_op.package_supports(x, weight, None)  # a CPU tensor
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert conv_op.package_supports(x, weight, None)
    assert not conv_op.package_supports(x, torch.randn(4, 5, device="cpu"), None)
    assert not conv_op.package_supports(x.double(), weight, None)
    monkeypatch.setattr(conv_op, "_cuda_package", lambda: None)
    assert not conv_op.package_supports(x, weight, None)


@pytest.mark.parametrize("backend", ["fast", "triton"])
def test_compiles_without_graph_break(backend):
    torch._dynamo.reset()

    def block(x, weight, bias):
        return causal_conv1d(x.tanh(), weight, bias, "silu", backend=backend) * 2

    inputs = _inputs(2, 5, 7, 4, torch.float32)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(*inputs)
    assert_close("compiled", out, block(*inputs), FORWARD_TOLERANCE[torch.float32])
    grads = torch.autograd.grad(out.sum(), inputs)
    expected = torch.autograd.grad(block(*inputs).sum(), inputs)
    for g, e in zip(grads, expected):
        assert_close("compiled grad", g, e, GRADIENT_TOLERANCE[torch.float32])


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias,activation", [(True, "silu"), (False, None)])
def test_module_is_the_causal_part_of_a_depthwise_conv1d(bias, activation):
    module = CausalConv1d(6, width=3, bias=bias, activation=activation, backend="triton")
    conv = torch.nn.Conv1d(6, 6, 3, groups=6, padding=2, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(module.weight[:, None, :])
        if bias:
            conv.bias.copy_(module.bias)
    x = torch.randn(2, 6, 11)
    expected = conv(x)[..., :11]
    expected = F.silu(expected) if activation else expected
    assert_close("module", module(x), expected, FORWARD_TOLERANCE[torch.float32])
    assert (module.bias is None) == (not bias)


def test_module_gradients_reach_its_parameters():
    module = CausalConv1d(5, activation="silu", backend="triton")
    x = torch.randn(2, 5, 9, requires_grad=True)
    seq_idx = torch.tensor([[0] * 4 + [1] * 5, [0] * 9], dtype=torch.int32)
    module(x, seq_idx).square().sum().backward()
    weight, bias, xd = (t.detach().double().requires_grad_() for t in (module.weight, module.bias, x))
    causal_conv1d_reference(xd, weight, bias, "silu", seq_idx).square().sum().backward()
    for name, got, ref in (("x", x, xd), ("weight", module.weight, weight), ("bias", module.bias, bias)):
        assert_close(f"grad_{name}", got.grad, ref.grad, GRADIENT_TOLERANCE[torch.float32])


def test_module_step_reproduces_forward():
    module = CausalConv1d(7, width=4, activation="silu", backend="triton")
    x = torch.randn(2, 7, 6)
    state = torch.zeros(2, 7, 4)
    with torch.no_grad():
        stepped = torch.stack([module.step(x[:, :, t], state) for t in range(6)], dim=-1)
        assert_close("stepped", stepped, module(x), FORWARD_TOLERANCE[torch.float32])


def test_module_initialization_and_settings():
    module = CausalConv1d(64, width=4, dtype=torch.float64)
    assert module.weight.shape == (64, 4) and module.bias.shape == (64,)
    assert module.weight.dtype == torch.float64
    bound = 1 / math.sqrt(4)
    assert float(module.weight.detach().abs().max()) <= bound
    assert float(module.bias.detach().abs().max()) <= bound
    assert "width=4" in repr(module)
    with pytest.raises(ValueError, match="activation must be one of"):
        CausalConv1d(4, activation="relu")
    with pytest.raises(ValueError, match="dim and width must be >= 1"):
        CausalConv1d(4, width=0)


# ---------------------------------------------------------------------------------------------
# Registry and cost model
# ---------------------------------------------------------------------------------------------


def test_every_launch_config_is_registered():
    entries = {e.name: e for e in registered_kernels() if e.op == "causal_conv1d"}
    assert set(entries) == {"_causal_conv1d_fwd_kernel", "_causal_conv1d_bwd_kernel",
                            "_causal_conv1d_update_kernel"}
    for entry in entries.values():
        assert entry.dtypes == ("fp32", "fp16", "bf16")
        assert set(entry.signature) | set(entry.configs[0].constexprs) == set(entry.kernel.arg_names)
    for channel_last in (False, True):
        for name, backward in (("_causal_conv1d_fwd_kernel", False), ("_causal_conv1d_bwd_kernel", True)):
            assert conv_kernels.launch_config(channel_last, backward) in entries[name].configs
    assert conv_kernels.UPDATE_CONFIG in entries["_causal_conv1d_update_kernel"].configs


def test_cost_model():
    batch, dim, length, width = 2, 512, 2048, 4
    fused, minimum = fused_traffic(batch, dim, length, width, 4), minimum_traffic(batch, dim, length, width, 4)
    sequence = batch * dim * length * 4
    assert fused["fwd"] == minimum["fwd"]
    assert minimum["bwd"].bytes == 3 * sequence + 2 * dim * (width + 1) * 4
    partials = batch * math.ceil(length / 128) * (width + 1) * dim * 4
    assert fused["bwd"].bytes == minimum["bwd"].bytes + 2 * partials and fused["bwd"].launches == 2
    package = package_traffic(batch, dim, length, width, 2)
    assert (package.launches, package.bytes_read, package.bytes_written) == (
        1, batch * dim * length * 2 + dim * (width + 1) * 2, batch * dim * length * 2)
    (case,) = traffic_cases()
    x, weight, bias = case.make_inputs()
    assert x.shape == (batch, dim, length) and weight.shape == (dim, width) and bias.shape == (dim,)
    assert set(case.eager_paths) == {"reference", "fast"} and case.fused == fused


def test_make_inputs_options():
    x, weight, bias, seq_idx = make_inputs(2, 3, 40, 4, seed=1, channel_last=True, bias=False,
                                           sequences=5, dtype=torch.bfloat16)
    assert x.shape == (2, 3, 40) and x.stride(1) == 1 and x.dtype == torch.bfloat16
    assert bias is None and weight.shape == (3, 4)
    assert seq_idx.dtype == torch.int32 and bool((seq_idx[:, 1:] >= seq_idx[:, :-1]).all())
    again = make_inputs(2, 3, 40, 4, seed=1, channel_last=True, bias=False, sequences=5,
                        dtype=torch.bfloat16)
    assert torch.equal(x, again[0]) and torch.equal(seq_idx, again[3])


def _good():
    return torch.randn(2, 4, 6), torch.randn(4, 3), torch.randn(4)


BAD_INPUTS = [
    ("x must be 3-D", lambda x, w, b: (x[0], w, b), ValueError),
    ("weight must be 2-D", lambda x, w, b: (x, w[:, None], b), ValueError),
    ("weight must be 2-D", lambda x, w, b: (x, w[:3], b), ValueError),
    ("weight must be 2-D", lambda x, w, b: (x, w[:, :0], b), ValueError),
    ("bias must have shape", lambda x, w, b: (x, w, b[:2]), ValueError),
    ("x must have a floating dtype", lambda x, w, b: (x.long(), w, b), TypeError),
    ("weight must be a torch.Tensor", lambda x, w, b: (x, w.cpu().numpy(), b), TypeError),
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
