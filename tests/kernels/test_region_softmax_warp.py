"""region_softmax_warp (warp + blend + leaky activation) against its float64 reference, on every
backend."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from kernels import RegionSoftmaxWarp, region_softmax_warp
from kernels.region_softmax_warp import region_softmax_warp_reference
from kernels.region_softmax_warp.inputs import make_inputs
from kernels.region_softmax_warp.reference import identity_grid
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

BACKENDS = ["fast", "triton"]
NAMES = ("feature", "logits", "displacement", "mask", "beta")
B, C, D, H, W = 2, 5, 3, 9, 10  # 540 voxels: 5 blocks of 128, the last one partial


def _inputs(feature_batch, R, dtype, shape=(B, C, D, H, W), scale=0.8):
    """Large logits and displacements: sharp region weights, grid points leaving the volume."""
    b, c, d, h, w = shape
    return list(make_inputs(b, c, R, d, h, w, feature_batch, dtype=dtype, requires_grad=True,
                            logit_scale=2.0, displacement_scale=scale))


def _reference(inputs, grad, **options):
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    out = region_softmax_warp_reference(*ref_inputs, **options)
    return out, torch.autograd.grad(out, ref_inputs, grad.double())


def _grid_leaves_the_volume(logits, displacement, align_corners):
    weights = torch.softmax(logits.detach().double(), dim=1)
    flow = torch.einsum("brdhw,brkdhw->bdhwk", weights, displacement.detach().double())
    grid = identity_grid(*logits.shape[2:], align_corners, torch.float64, logits.device) + flow
    return bool((grid.abs() > 1).any())


def _check_against_reference(inputs, backend, dtype, padding_mode, align_corners):
    options = dict(padding_mode=padding_mode, align_corners=align_corners)
    out = region_softmax_warp(*inputs, backend=backend, **options)
    feature, logits = inputs[0], inputs[1]
    assert out.dtype == dtype and out.shape == (logits.shape[0],) + tuple(feature.shape[1:])
    grad = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, inputs, grad)
    ref_out, ref_grads = _reference(inputs, grad, **options)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[dtype])
    for name, g, r, t in zip(NAMES, grads, ref_grads, inputs):
        assert g.dtype == t.dtype and g.shape == t.shape
        assert_close(f"grad_{name}", g, r, GRADIENT_TOLERANCE[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("feature_batch", [1, B], ids=lambda n: f"feature_batch{n}")
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [False, True], ids=lambda a: f"align{a}")
def test_matches_float64_reference(align_corners, padding_mode, feature_batch, dtype, backend,
                                   poisoned_empty):
    inputs = _inputs(feature_batch, 4, dtype)
    assert _grid_leaves_the_volume(inputs[1], inputs[2], align_corners)
    _check_against_reference(inputs, backend, dtype, padding_mode, align_corners)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("regions", [1, 10])
@pytest.mark.parametrize("feature_batch", [1, 3])
def test_region_counts(regions, feature_batch, backend, poisoned_empty):
    inputs = _inputs(feature_batch, regions, torch.float32, shape=(3, 2, 2, 7, 5), scale=1.5)
    _check_against_reference(inputs, backend, torch.float32, "border", False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sum_backward_with_stride_zero_gradient(backend):
    """out.sum().backward() hands backward an expanded (stride-0) gradient."""
    inputs = _inputs(1, 3, torch.float32)
    region_softmax_warp(*inputs[:4], inputs[4], backend=backend).sum().backward()
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    region_softmax_warp_reference(*ref_inputs).sum().backward()
    for name, t, r in zip(NAMES, inputs, ref_inputs):
        assert_close(f"grad_{name}", t.grad, r.grad, GRADIENT_TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_grid_maps_voxels_onto_themselves(align_corners, backend):
    """Zero displacement and mask 1: the warp is the identity, so out = activation(F_id)."""
    device = torch.get_default_device()
    assert torch.allclose(identity_grid(D, H, W, align_corners, torch.float32, device),
                          F.affine_grid(torch.eye(3, 4)[None], (1, 1, D, H, W), align_corners)[0],
                          atol=1e-6)
    feature = torch.randn(1, C, D, H, W)
    logits = torch.randn(B, 4, D, H, W)
    displacement = torch.zeros(B, 4, 3, D, H, W)
    mask = torch.ones(B, 1, D, H, W)
    for padding_mode in ("zeros", "border"):
        out = region_softmax_warp(feature, logits, displacement, mask, 0.1, padding_mode,
                                  align_corners, backend=backend)
        expected = torch.where(feature > 0, feature, 0.1 * feature).expand(B, -1, -1, -1, -1)
        assert_close("identity warp", out, expected, FORWARD_TOLERANCE[torch.float32])


def _saved_bytes(fn, inputs):
    """Distinct bytes of the tensors autograd saves for backward while fn runs."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(storages.values())


def test_fast_path_saves_only_its_inputs():
    """The model's channel and region counts (C = 32, R = 10) with a shared F_id, small volume."""
    inputs = _inputs(1, 10, torch.float32, shape=(2, 32, 4, 8, 8))
    input_bytes = sum(t.untyped_storage().nbytes() for t in inputs)
    fast_bytes = _saved_bytes(lambda *a: region_softmax_warp(*a, backend="fast"), inputs)
    reference_bytes = _saved_bytes(region_softmax_warp_reference, inputs)
    assert fast_bytes == input_bytes
    assert reference_bytes > 2 * fast_bytes


@pytest.fixture
def deterministic_mode():
    """Sets torch.use_deterministic_algorithms(True, warn_only=...) and restores it."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    yield lambda warn_only: torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def test_triton_backward_raises_in_deterministic_mode(deterministic_mode):
    inputs = _inputs(1, 2, torch.float32, shape=(1, 2, 2, 3, 4))
    out = region_softmax_warp(*inputs, backend="triton")
    deterministic_mode(False)
    with pytest.raises(RuntimeError, match="use_deterministic_algorithms.*backend='fast'"):
        out.sum().backward()


def test_triton_backward_warns_in_warn_only_deterministic_mode(deterministic_mode):
    inputs = _inputs(1, 2, torch.float32, shape=(1, 2, 2, 3, 4))
    out = region_softmax_warp(*inputs, backend="triton")
    grad = torch.randn(out.shape)
    deterministic_mode(True)
    with pytest.warns(UserWarning, match="not deterministic.*backend='fast'"):
        grads = torch.autograd.grad(out, inputs, grad)
    _, ref_grads = _reference(inputs, grad)
    for name, g, r in zip(NAMES, grads, ref_grads):
        assert_close(f"grad_{name}", g, r, GRADIENT_TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_feature_gradient_is_deterministic_and_matches(backend, deterministic_mode):
    """A feature that needs no gradient: the atomics are skipped, so deterministic mode neither
    raises nor warns, and the other gradients still match."""
    inputs = _inputs(2, 3, torch.float32, shape=(2, 3, 2, 5, 4))
    inputs[0] = inputs[0].detach()
    out = region_softmax_warp(*inputs, padding_mode="zeros", backend=backend)
    grad = torch.randn(out.shape)
    deterministic_mode(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads = torch.autograd.grad(out, inputs[1:], grad)
    _, ref_grads = _reference(inputs, grad, padding_mode="zeros")
    for name, g, r in zip(NAMES[1:], grads, ref_grads[1:]):
        assert_close(f"grad_{name}", g, r, GRADIENT_TOLERANCE[torch.float32])


# (feature batch, B, C, R, D, H, W) with a size-0 batch, channel, depth or width
EMPTY_SHAPES = [(1, 0, 3, 2, 2, 3, 4), (0, 0, 3, 2, 2, 3, 4), (2, 2, 0, 2, 2, 3, 4),
                (2, 2, 3, 2, 0, 3, 4), (1, 2, 3, 2, 2, 3, 0)]


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
def test_empty_inputs_give_empty_outputs_and_gradients(shape, backend):
    feature_batch, b, c, regions, d, h, w = shape
    inputs = _inputs(feature_batch, regions, torch.float32, shape=(b, c, d, h, w))
    out = region_softmax_warp(*inputs, backend=backend)
    assert out.shape == (b, c, d, h, w) and out.numel() == 0
    # materialize_grads: the reference's empty volume skips grid_sample, so logits and
    # displacement are unused there; the ops return zero gradients of every input
    grads = torch.autograd.grad(out.sum(), inputs, allow_unused=backend == "reference",
                                materialize_grads=backend == "reference")
    for g, t in zip(grads, inputs):
        assert g.shape == t.shape and not g.any()


NON_FINITE = (float("nan"), float("inf"), float("-inf"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [False, True], ids=lambda a: f"align{a}")
def test_non_finite_displacement_behaves_as_grid_sample(align_corners, padding_mode, backend):
    """NaN and ±inf displacements make NaN/±inf grid points: out and the gradients of feature,
    mask, β and Δ match the float64 reference (F.grid_sample); grad_logits is NaN exactly where
    the reference's is (0 · inf in Δ_r − flow) and matches elsewhere."""
    inputs = _inputs(1, 3, torch.float32, shape=(2, 3, 2, 5, 4))
    displacement = inputs[2].detach().clone()
    flat = displacement.view(-1)
    for k, at in enumerate(torch.randperm(flat.numel())[:12]):
        flat[at] = NON_FINITE[k % 3]
    inputs[2] = displacement.requires_grad_()
    options = dict(padding_mode=padding_mode, align_corners=align_corners)
    out = region_softmax_warp(*inputs, backend=backend, **options)
    grad = torch.randn(out.shape)
    grads = torch.autograd.grad(out, inputs, grad)
    ref_out, ref_grads = _reference(inputs, grad, **options)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    for name, g, r in zip(NAMES, grads, ref_grads):
        if name == "logits":
            assert torch.equal(g.isnan(), r.isnan()) and r.isnan().any()
            g, r = g.nan_to_num(0.0), r.nan_to_num(0.0)
        assert_close(f"grad_{name}", g, r, GRADIENT_TOLERANCE[torch.float32])


class _Warp(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.beta = torch.nn.Parameter(torch.tensor(0.2))
        self.backend = backend

    def forward(self, feature, logits, displacement, mask):
        return region_softmax_warp(feature, logits, displacement, mask, self.beta,
                                   backend=self.backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    module = _Warp(backend)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    inputs = _inputs(1, 3, torch.float32, shape=(2, 3, 2, 5, 4))[:4]
    eager_out = module(*inputs)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), inputs + [module.beta])
    out = compiled(*inputs)
    grads = torch.autograd.grad(out.square().sum(), inputs + [module.beta])
    assert_close("compiled out", out, eager_out, FORWARD_TOLERANCE[torch.float32])
    for name, g, e in zip(NAMES, grads, eager_grads):
        assert_close(f"compiled grad_{name}", g, e, GRADIENT_TOLERANCE[torch.float32])


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_reference_gradcheck(padding_mode):
    inputs = _inputs(1, 2, torch.float64, shape=(2, 2, 2, 3, 3))
    assert torch.autograd.gradcheck(
        lambda *a: region_softmax_warp_reference(*a, padding_mode=padding_mode), inputs)


def test_fast_path_gradcheck_float64():
    inputs = _inputs(2, 2, torch.float64, shape=(2, 2, 2, 3, 3))
    assert all(t.dtype == torch.float64 for t in inputs)
    assert torch.autograd.gradcheck(
        lambda *a: region_softmax_warp(*a, align_corners=True, backend="fast"), inputs)


def test_module_learns_beta():
    module = RegionSoftmaxWarp(beta=0.3, learn_beta=True, backend="fast")
    inputs = make_inputs(2, 3, 4, 2, 5, 6, beta=None)
    out = module(*inputs)
    ref = region_softmax_warp(*inputs, 0.3, backend="reference")
    assert_close("module", out, ref, FORWARD_TOLERANCE[torch.float32])
    (grad_beta,) = torch.autograd.grad(out.sum(), module.beta)
    assert torch.isfinite(grad_beta) and grad_beta != 0
    assert [name for name, _ in module.named_parameters()] == ["beta"]
    assert "beta=learned" in repr(module)


def test_module_with_a_fixed_beta_has_no_parameters():
    module = RegionSoftmaxWarp(beta=0.1, padding_mode="zeros", align_corners=True, backend="triton")
    inputs = make_inputs(2, 3, 2, 2, 3, 4, feature_batch=2, beta=None)
    assert_close("module", module(*inputs),
                 region_softmax_warp(*inputs, 0.1, "zeros", True, backend="reference"),
                 FORWARD_TOLERANCE[torch.float32])
    assert list(module.parameters()) == [] and "beta=0.1" in repr(module)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_make_inputs_builds_the_op_arguments(dtype):
    feature, logits, displacement, mask, beta = make_inputs(
        3, 4, 5, 2, 6, 7, feature_batch=1, dtype=dtype, requires_grad=True, seed=2, beta=0.5)
    assert (feature.shape, logits.shape) == ((1, 4, 2, 6, 7), (3, 5, 2, 6, 7))
    assert (displacement.shape, mask.shape) == ((3, 5, 3, 2, 6, 7), (3, 1, 2, 6, 7))
    assert all(t.dtype == dtype and t.is_leaf and t.requires_grad
               for t in (feature, logits, displacement, mask))
    assert beta.dim() == 0 and beta.item() == 0.5 and beta.requires_grad
    assert beta.dtype == torch.promote_types(dtype, torch.float32)
    assert 0 <= mask.min() and mask.max() <= 1
    again = make_inputs(3, 4, 5, 2, 6, 7, dtype=dtype, seed=2, beta=None)
    assert len(again) == 4 and all(torch.equal(a, b) for a, b in
                                   zip((feature, logits, displacement, mask), again))


def _good():
    return make_inputs(2, 3, 4, 2, 4, 5, feature_batch=2, beta=None)


BAD_INPUTS = [
    ("feature must be 5-D", lambda f, l, d, m: (f[0], l, d, m), ValueError),
    ("logits must be 5-D", lambda f, l, d, m: (f, l[0], d, m), ValueError),
    ("displacement must be 6-D", lambda f, l, d, m: (f, l, d[:, :, 0], m), ValueError),
    ("mask must be 5-D", lambda f, l, d, m: (f, l, d, m[:, 0]), ValueError),
    ("feature must have spatial shape", lambda f, l, d, m: (f[..., :3], l, d, m), ValueError),
    ("displacement must have shape", lambda f, l, d, m: (f, l, d[..., :3], m), ValueError),
    ("mask must have shape", lambda f, l, d, m: (f, l, d, m[:, :, :1]), ValueError),
    ("displacement must have shape", lambda f, l, d, m: (f, l, d[:, :3], m), ValueError),
    ("displacement must have shape", lambda f, l, d, m: (f, l, d[:, :, :2], m), ValueError),
    ("mask must have shape", lambda f, l, d, m: (f, l, d, m.expand(2, 2, 2, 4, 5)), ValueError),
    ("feature must have batch 1", lambda f, l, d, m: (f.repeat(2, 1, 1, 1, 1)[:3], l, d, m),
     ValueError),
    ("logits must hold R >= 1", lambda f, l, d, m: (f, l[:, :0], d[:, :0], m), ValueError),
    ("logits has dtype", lambda f, l, d, m: (f, l.double(), d, m), TypeError),
    ("mask has dtype", lambda f, l, d, m: (f, l, d, m.half()), TypeError),
    ("feature must have a floating dtype", lambda f, l, d, m: (f.long(), l, d, m), TypeError),
    ("displacement must have a floating dtype", lambda f, l, d, m: (f, l, d.int(), m), TypeError),
    ("mask must be a torch.Tensor", lambda f, l, d, m: (f, l, d, m.cpu().numpy()), TypeError),
    ("displacement is on meta", lambda f, l, d, m: (f, l, d.to("meta"), m), ValueError),
]


@pytest.mark.parametrize("message,corrupt,error", BAD_INPUTS,
                         ids=[b[0] + str(i) for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_is_named(message, corrupt, error):
    with pytest.raises(error, match=message):
        region_softmax_warp(*corrupt(*_good()), 0.2)


@pytest.mark.parametrize("beta,error", [
    (float("nan"), ValueError), (float("inf"), ValueError), (torch.tensor(float("-inf")), ValueError),
    (torch.tensor([0.2]), ValueError), (torch.tensor(1), TypeError), ("0.2", TypeError),
    (True, TypeError)])
def test_bad_beta(beta, error):
    with pytest.raises(error, match="beta"):
        region_softmax_warp(*_good(), beta)


def test_bad_padding_mode_is_named():
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        region_softmax_warp(*_good(), 0.2, padding_mode="reflection")


def test_triton_rejects_float64():
    with pytest.raises(TypeError, match="feature must have a floating dtype"):
        region_softmax_warp(*(t.double() for t in _good()), 0.2, backend="triton")
