"""deviation_adanorm (paper eq. 2) against its float64 reference, on every backend."""
import pytest
import torch

from kernels import DeviationAdaNorm, deviation_adanorm
from kernels.deviation_adanorm import deviation_adanorm_reference
from kernels.deviation_adanorm import triton_kernels
from kernels.deviation_adanorm.inputs import make_inputs
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

# (B, T, R, G): G odd / not a power of two / straddling the block; N = T - 1 = 1; R = 1 and 10.
SHAPES = [(2, 3, 1, 97), (1, 2, 10, 768), (2, 4, 10, 1000), (3, 2, 3, 1), (1, 3, 2, 17)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["fast", "triton"]


def _reference(inputs, grad):
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    out = deviation_adanorm_reference(*ref_inputs)
    grads = torch.autograd.grad(out, ref_inputs, grad.double())
    return out, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_reference(shape, dtype, backend, poisoned_empty):
    inputs = make_inputs(*shape, dtype=dtype, requires_grad=True)
    out = deviation_adanorm(*inputs, backend=backend)
    assert out.dtype == dtype and out.shape == (shape[0], shape[1] - 1, shape[2], shape[3])
    grad = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, inputs, grad)
    ref_out, ref_grads = _reference(inputs, grad)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[dtype])
    for name, g, r in zip(("grad_v", "grad_scale", "grad_shift"), grads, ref_grads):
        assert g.dtype == dtype
        assert_close(name, g, r, GRADIENT_TOLERANCE[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sum_backward_with_stride_zero_gradient(backend):
    """y.sum().backward() hands backward an expanded (stride-0) gradient."""
    inputs = make_inputs(2, 4, 3, 45, dtype=torch.float32, requires_grad=True)
    deviation_adanorm(*inputs, backend=backend).sum().backward()
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    deviation_adanorm_reference(*ref_inputs).sum().backward()
    for name, t, r in zip(("v", "scale", "shift"), inputs, ref_inputs):
        assert_close(f"grad_{name}", t.grad, r.grad, GRADIENT_TOLERANCE[torch.float32])


def test_triton_backward_is_deterministic():
    inputs = make_inputs(2, 6, 4, 33, dtype=torch.float32, requires_grad=True)
    out = deviation_adanorm(*inputs, backend="triton")
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, inputs, grad, retain_graph=True)
    second = torch.autograd.grad(out, inputs, grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_reference_gradcheck():
    inputs = make_inputs(2, 3, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(deviation_adanorm_reference, inputs)


def test_fast_path_gradcheck_float64():
    inputs = make_inputs(2, 3, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: deviation_adanorm(*a, backend="fast"), inputs)


def test_constant_deviation_row_is_finite():
    """A frame equal to the source has var = 0: Δ = shift exactly, gradients finite."""
    v = torch.randn(1, 1, 64).repeat(1, 3, 1).requires_grad_()
    scale = torch.randn(1, 2, 2, 64, requires_grad=True)
    shift = torch.randn(1, 2, 2, 64, requires_grad=True)
    for backend in BACKENDS:
        out = deviation_adanorm(v, scale, shift, backend=backend)
        assert torch.equal(out, shift.detach())
        grads = torch.autograd.grad(out.square().sum(), (v, scale, shift))
        assert all(torch.isfinite(g).all() for g in grads)


def test_module_wrapper_matches_function():
    module = DeviationAdaNorm(eps=1e-3, backend="triton")
    inputs = make_inputs(1, 3, 2, 50, dtype=torch.float32, requires_grad=True)
    assert_close("module", module(*inputs), deviation_adanorm(*inputs, eps=1e-3, backend="reference"),
                 FORWARD_TOLERANCE[torch.float32])
    assert "eps=0.001" in repr(module) and list(module.parameters()) == []


def test_make_inputs_builds_the_op_arguments():
    v, scale, shift = make_inputs(2, 5, 3, 7, dtype=torch.bfloat16, requires_grad=True, seed=4)
    assert (v.shape, scale.shape, shift.shape) == ((2, 5, 7), (2, 4, 3, 7), (2, 4, 3, 7))
    assert all(t.dtype == torch.bfloat16 and t.is_leaf and t.requires_grad for t in (v, scale, shift))
    again = make_inputs(2, 5, 3, 7, dtype=torch.bfloat16, seed=4)
    assert all(torch.equal(a, b) and not b.requires_grad for a, b in zip((v, scale, shift), again))
    assert not torch.equal(make_inputs(seed=1)[0], make_inputs(seed=2)[0])


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("B,R", [(0, 3), (2, 0)], ids=["batch0", "regions0"])
def test_empty_inputs_give_empty_outputs_and_gradients(B, R, backend):
    inputs = make_inputs(B, 3, R, 8, dtype=torch.float32, requires_grad=True)
    out = deviation_adanorm(*inputs, backend=backend)
    assert out.shape == (B, 2, R, 8) and out.numel() == 0
    grads = torch.autograd.grad(out.sum(), inputs)
    for g, t in zip(grads, inputs):
        assert g.shape == t.shape and not g.any()


def _good():
    return make_inputs(2, 4, 5, 16)


BAD_INPUTS = [
    ("v must be 3-D", lambda v, s, h: (v[0], s, h), ValueError),
    ("v must be 3-D", lambda v, s, h: (v[None], s, h), ValueError),
    ("T >= 2", lambda v, s, h: (v[:, :1], s[:, :0], h[:, :0]), ValueError),
    ("scale must have shape", lambda v, s, h: (v, s[:, :2], h), ValueError),
    ("scale must have shape", lambda v, s, h: (v, s[..., :8], h), ValueError),
    ("scale must have shape", lambda v, s, h: (v, s[0], h), ValueError),
    ("shift must have the shape", lambda v, s, h: (v, s, h[:, :, :4]), ValueError),
    ("scale has dtype", lambda v, s, h: (v, s.double(), h), TypeError),
    ("shift has dtype", lambda v, s, h: (v, s, h.half()), TypeError),
    ("v must have a floating dtype", lambda v, s, h: (v.long(), s, h), TypeError),
    ("scale must have a floating dtype", lambda v, s, h: (v, s.int(), h), TypeError),
    ("shift must be a torch.Tensor", lambda v, s, h: (v, s, h.cpu().numpy()), TypeError),
    ("shift is on meta", lambda v, s, h: (v, s, h.to("meta")), ValueError),
]


@pytest.mark.parametrize("message,corrupt,error", BAD_INPUTS, ids=[b[0] + str(i) for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_is_named(message, corrupt, error):
    with pytest.raises(error, match=message):
        deviation_adanorm(*corrupt(*_good()))


@pytest.mark.parametrize("eps,error", [(0.0, ValueError), (-1e-5, ValueError), (float("nan"), ValueError),
                                       ("1e-5", TypeError), (True, TypeError)])
def test_bad_eps(eps, error):
    with pytest.raises(error, match="eps"):
        deviation_adanorm(*_good(), eps=eps)


def test_triton_limits_are_clear_errors():
    with pytest.raises(TypeError, match="v must have a floating dtype"):
        deviation_adanorm(*(t.double() for t in _good()), backend="triton")
    G = triton_kernels.MAX_G + 1
    v, s = torch.randn(1, 2, G), torch.randn(1, 1, 1, G)
    with pytest.raises(ValueError, match="use backend='fast'"):
        deviation_adanorm(v, s, s, backend="triton")
