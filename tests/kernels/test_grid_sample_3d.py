"""grid_sample_3d (trilinear F.grid_sample) against its float64 gather reference, on every backend."""
import pytest
import torch
import torch.nn.functional as F

from kernels import GridSample3d, grid_sample_3d
from kernels.grid_sample_3d import grid_sample_3d_reference
from kernels.grid_sample_3d.inputs import make_inputs
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

# (N, C, D, H, W, Do, Ho, Wo): odd sizes, C straddling the channel block, P straddling BLOCK_P.
SHAPES = [(2, 5, 3, 9, 10, 2, 5, 7), (1, 1, 1, 4, 6, 3, 9, 5), (1, 3, 4, 1, 5, 1, 1, 3)]
MODES = [(padding, align) for padding in ("zeros", "border") for align in (False, True)]
MODE_IDS = [f"{p}-align{int(a)}" for p, a in MODES]


def _inputs(shape, dtype):
    """Points reach outside [-1, 1], where the padding mode matters."""
    return make_inputs(*shape, dtype=dtype, requires_grad=True, reach=1.3)


def _reference(volume, grid, grad, padding, align):
    ref_inputs = [t.detach().double().requires_grad_() for t in (volume, grid)]
    out = grid_sample_3d_reference(*ref_inputs, padding, align)
    return out, torch.autograd.grad(out, ref_inputs, grad.double())


def _check(fn, shape, dtype, padding, align):
    volume, grid = _inputs(shape, dtype)
    out = fn(volume, grid, padding, align)
    assert out.dtype == dtype and out.shape == (*shape[:2], *shape[5:])
    grad = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, (volume, grid), grad)
    ref_out, ref_grads = _reference(volume, grid, grad, padding, align)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[dtype])
    for name, g, r in zip(("grad_input", "grad_grid"), grads, ref_grads):
        assert g.dtype == dtype
        assert_close(name, g, r, GRADIENT_TOLERANCE[dtype])


@pytest.mark.parametrize("padding,align", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["fast", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_reference(shape, backend, dtype, padding, align, poisoned_empty):
    _check(lambda v, g, p, a: grid_sample_3d(v, g, p, a, backend=backend), shape, dtype, padding, align)


@pytest.mark.parametrize("padding,align", MODES, ids=MODE_IDS)
def test_reference_matches_f_grid_sample(padding, align):
    """The reference (a gather written out) and PyTorch's own kernel agree."""
    _check(lambda v, g, p, a: F.grid_sample(v, g, mode="bilinear", padding_mode=p, align_corners=a),
           SHAPES[0], torch.float32, padding, align)


@pytest.mark.parametrize("backend", ["fast", "triton"])
def test_sum_backward_with_stride_zero_gradient(backend):
    """out.sum().backward() hands backward an expanded (stride-0) gradient."""
    volume, grid = _inputs(SHAPES[0], torch.float32)
    grid_sample_3d(volume, grid, "border", backend=backend).sum().backward()
    ref_inputs = [t.detach().double().requires_grad_() for t in (volume, grid)]
    grid_sample_3d_reference(*ref_inputs, "border").sum().backward()
    for name, t, r in zip(("input", "grid"), (volume, grid), ref_inputs):
        assert_close(f"grad_{name}", t.grad, r.grad, GRADIENT_TOLERANCE[torch.float32])


def test_one_gradient_only():
    """Only the gradient asked for is computed; grid alone needs no atomics."""
    volume, grid = _inputs(SHAPES[2], torch.float32)
    for needs in ((True, False), (False, True)):
        v, g = volume.detach().requires_grad_(needs[0]), grid.detach().requires_grad_(needs[1])
        out = grid_sample_3d(v, g, backend="triton")
        (grad,) = torch.autograd.grad(out.square().sum(), v if needs[0] else g)
        ref_inputs = [t.detach().double().requires_grad_() for t in (v, g)]
        ref = torch.autograd.grad(grid_sample_3d_reference(*ref_inputs).square().sum(), ref_inputs)
        assert_close("grad", grad, ref[0 if needs[0] else 1], GRADIENT_TOLERANCE[torch.float32])


def test_deterministic_mode_raises_for_input_gradient():
    volume, grid = _inputs(SHAPES[2], torch.float32)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out = grid_sample_3d(volume, grid, backend="triton")
        with pytest.raises(RuntimeError, match="use_deterministic_algorithms.*backend='fast'"):
            out.sum().backward()
        # grad_grid alone has no atomics and is allowed
        out = grid_sample_3d(volume.detach(), grid, backend="triton")
        (grad_grid,) = torch.autograd.grad(out.sum(), grid)
        assert torch.isfinite(grad_grid).all()
    finally:
        torch.use_deterministic_algorithms(previous)


def test_deterministic_warn_only_warns_and_computes():
    volume, grid = _inputs(SHAPES[2], torch.float32)
    out = grid_sample_3d(volume, grid, backend="triton")
    grad = torch.randn(out.shape)
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with pytest.warns(UserWarning, match="not deterministic.*backend='fast'"):
            grads = torch.autograd.grad(out, (volume, grid), grad)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    _, ref_grads = _reference(volume, grid, grad, "zeros", False)
    for name, g, r in zip(("grad_input", "grad_grid"), grads, ref_grads):
        assert_close(name, g, r, GRADIENT_TOLERANCE[torch.float32])


def test_torch_compile_fullgraph_matches_eager():
    class Warp(torch.nn.Module):
        def forward(self, volume, grid):
            return grid_sample_3d(volume, grid, "border", True, backend="triton") * 2

    module = Warp()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    volume, grid = _inputs((1, 2, 3, 4, 5, 2, 3, 2), torch.float32)
    out = compiled(volume, grid)
    grads = torch.autograd.grad(out.sum(), (volume, grid))
    eager = module(volume, grid)
    eager_grads = torch.autograd.grad(eager.sum(), (volume, grid))
    assert_close("compiled", out, eager, 1e-6)
    for g, e in zip(grads, eager_grads):
        assert_close("compiled grad", g, e, 1e-6)


@pytest.mark.parametrize("padding,align", MODES, ids=MODE_IDS)
def test_reference_gradcheck(padding, align):
    # random points: none on an integer source index, where the weights have kinks
    volume, grid = make_inputs(1, 2, 2, 3, 3, 2, 2, 1, dtype=torch.float64, requires_grad=True,
                               reach=1.2)
    assert torch.autograd.gradcheck(
        lambda v, g: grid_sample_3d_reference(v, g, padding, align), (volume, grid))


def test_module_matches_function():
    module = GridSample3d(padding_mode="border", align_corners=True, backend="triton")
    volume, grid = make_inputs(1, 3, 4, 5, 6, 2, 3, 4, reach=1.2)
    assert_close("module", module(volume, grid),
                 grid_sample_3d(volume, grid, "border", True, backend="reference"),
                 FORWARD_TOLERANCE[torch.float32])
    assert "padding_mode='border'" in repr(module) and list(module.parameters()) == []


def test_make_inputs_builds_the_op_arguments():
    volume, grid = make_inputs(2, 3, 4, 5, 6, dtype=torch.bfloat16, requires_grad=True, seed=3,
                               reach=1.5)
    assert volume.shape == (2, 3, 4, 5, 6) and grid.shape == (2, 4, 5, 6, 3)
    assert all(t.dtype == torch.bfloat16 and t.is_leaf and t.requires_grad for t in (volume, grid))
    assert grid.abs().max() <= 1.5 and grid.abs().max() > 1
    again = make_inputs(2, 3, 4, 5, 6, dtype=torch.bfloat16, seed=3, reach=1.5)
    assert all(torch.equal(a, b) for a, b in zip((volume, grid), again))
    assert make_inputs(1, 1, 2, 2, 2, 3, 1, 4)[1].shape == (1, 3, 1, 4, 3)


# (N, C, D, H, W, Do, Ho, Wo) with a size-0 batch, channel or output depth
EMPTY_SHAPES = [(0, 2, 3, 4, 5, 2, 2, 2), (1, 0, 3, 4, 5, 2, 2, 2), (2, 3, 3, 4, 5, 0, 2, 2)]


@pytest.mark.parametrize("backend", ["reference", "fast", "triton"])
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
def test_empty_inputs_give_empty_outputs_and_gradients(shape, backend):
    volume, grid = _inputs(shape, torch.float32)
    out = grid_sample_3d(volume, grid, "border", backend=backend)
    assert out.shape == (*shape[:2], *shape[5:]) and out.numel() == 0
    grads = torch.autograd.grad(out.sum(), (volume, grid))
    for g, t in zip(grads, (volume, grid)):
        assert g.shape == t.shape and not g.any()


NON_FINITE = (float("nan"), float("inf"), float("-inf"))


def _grid_with_non_finite(N, Do, Ho, Wo):
    """Random points with NaN, +inf and -inf scattered over single coordinates (some points get
    two), the rest inside and around the volume."""
    grid = torch.rand(N, Do, Ho, Wo, 3, dtype=torch.float64) * 2.6 - 1.3
    flat = grid.view(-1)
    for k, at in enumerate(torch.randperm(flat.numel())[: flat.numel() // 3]):
        flat[at] = NON_FINITE[k % 3]
    return grid


@pytest.mark.parametrize("padding,align", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("backend", ["reference", "fast", "triton"])
def test_non_finite_grid_matches_f_grid_sample(backend, padding, align, poisoned_empty):
    """NaN and ±inf coordinates give what F.grid_sample (CPU) gives, forward and backward. D = 1
    makes inf · 0 = NaN in the index with align_corners=True; with "border" a NaN index samples
    the last voxel in forward and passes no gradient (ATen's own asymmetry)."""
    volume = torch.randn(2, 3, 1, 4, 5, dtype=torch.float64)
    grid = _grid_with_non_finite(2, 3, 4, 5)
    assert grid.isnan().any() and grid.isposinf().any() and grid.isneginf().any()
    grad = torch.randn(2, 3, 3, 4, 5, dtype=torch.float64)
    expected_inputs = [t.clone().requires_grad_() for t in (volume, grid)]
    expected = F.grid_sample(*expected_inputs, mode="bilinear", padding_mode=padding,
                             align_corners=align)
    expected_grads = torch.autograd.grad(expected, expected_inputs, grad)
    dtype = torch.float64 if backend == "reference" else torch.float32
    inputs = [t.to(dtype).requires_grad_() for t in (volume, grid)]
    out = grid_sample_3d(*inputs, padding, align, backend=backend)
    grads = torch.autograd.grad(out, inputs, grad.to(dtype))
    assert_close("out", out, expected, FORWARD_TOLERANCE[dtype])
    for name, g, e in zip(("grad_input", "grad_grid"), grads, expected_grads):
        assert_close(name, g, e, GRADIENT_TOLERANCE[dtype])


def test_triton_backward_refuses_channels_of_2_to_the_31_voxels():
    """The backward's corner offsets are int32 within a channel: 2^31 voxels per channel are
    refused before anything is allocated (an expanded view stands in for the 8 GB volume)."""
    from kernels.grid_sample_3d.triton_kernels import grid_sample_3d_backward_triton

    volume = torch.zeros(1).expand(1, 1, 2 ** 11, 2 ** 10, 2 ** 10)
    grid = torch.zeros(1, 1, 1, 2, 3)
    with pytest.raises(ValueError, match="2147483648 voxels per channel.*use backend='fast'"):
        grid_sample_3d_backward_triton(torch.zeros(1, 1, 1, 1, 2), volume, grid, True, False,
                                       True, True)


def _good():
    return make_inputs(2, 3, 4, 5, 6, 2, 3, 4, reach=1.0)


BAD_INPUTS = [
    ("input must be 5-D", lambda v, g: (v[0], g), {}, ValueError),
    ("grid must be 5-D", lambda v, g: (v, g[0]), {}, ValueError),
    ("grid must be 5-D", lambda v, g: (v, g[..., :2]), {}, ValueError),
    ("grid has batch 1 but input has batch 2", lambda v, g: (v, g[:1]), {}, ValueError),
    ("grid has dtype", lambda v, g: (v, g.double()), {}, TypeError),
    ("input must have a floating dtype", lambda v, g: (v.long(), g.long()), {}, TypeError),
    ("grid must have a floating dtype", lambda v, g: (v, g.int()), {}, TypeError),
    ("grid must be a torch.Tensor", lambda v, g: (v, g.cpu().numpy()), {}, TypeError),
    ("grid is on meta", lambda v, g: (v, g.to("meta")), {}, ValueError),
    ("non-empty spatial", lambda v, g: (v[:, :, :0], g), {}, ValueError),
    ("padding_mode must be one of .*reflection", lambda v, g: (v, g), {"padding_mode": "reflection"},
     ValueError),
    ("align_corners must be a bool", lambda v, g: (v, g), {"align_corners": 1}, TypeError),
]


@pytest.mark.parametrize("message,corrupt,kwargs,error", BAD_INPUTS,
                         ids=[b[0][:20] + str(i) for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_is_named(message, corrupt, kwargs, error):
    with pytest.raises(error, match=message):
        grid_sample_3d(*corrupt(*_good()), **kwargs)


def test_triton_refuses_batches_beyond_the_launch_grid():
    volume, grid = torch.randn(65536, 1, 1, 1, 1), torch.zeros(65536, 1, 1, 1, 3)
    with pytest.raises(ValueError, match="batch N=65536.*N <= 65535.*backend='fast'"):
        grid_sample_3d(volume, grid, backend="triton")


def test_triton_rejects_float64_clearly():
    with pytest.raises(TypeError, match="input must have a floating dtype"):
        grid_sample_3d(*(t.double() for t in _good()), backend="triton")
