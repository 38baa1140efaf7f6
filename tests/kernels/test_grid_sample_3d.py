"""grid_sample_3d (trilinear F.grid_sample) against its float64 gather reference, on every backend."""
import pytest
import torch
import torch.nn.functional as F

from kernels import grid_sample_3d
from kernels.grid_sample_3d import grid_sample_3d_reference
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

# (N, C, D, H, W, Do, Ho, Wo): odd sizes, C straddling the channel block, P straddling BLOCK_P.
SHAPES = [(2, 5, 3, 9, 10, 2, 5, 7), (1, 1, 1, 4, 6, 3, 9, 5), (1, 3, 4, 1, 5, 1, 1, 3)]
MODES = [(padding, align) for padding in ("zeros", "border") for align in (False, True)]
MODE_IDS = [f"{p}-align{int(a)}" for p, a in MODES]


def _inputs(N, C, D, H, W, Do, Ho, Wo, dtype):
    volume = torch.randn(N, C, D, H, W)
    grid = torch.rand(N, Do, Ho, Wo, 3) * 2.6 - 1.3  # reaches outside [-1, 1]
    return volume.to(dtype).requires_grad_(), grid.to(dtype).requires_grad_()


def _reference(volume, grid, grad, padding, align):
    ref_inputs = [t.detach().double().requires_grad_() for t in (volume, grid)]
    out = grid_sample_3d_reference(*ref_inputs, padding, align)
    return out, torch.autograd.grad(out, ref_inputs, grad.double())


def _check(fn, shape, dtype, padding, align):
    volume, grid = _inputs(*shape, dtype)
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
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_reference(shape, backend, dtype, padding, align, poisoned_empty):
    _check(lambda v, g, p, a: grid_sample_3d(v, g, p, a, backend=backend), shape, dtype, padding, align)


@pytest.mark.parametrize("padding,align", MODES, ids=MODE_IDS)
def test_reference_matches_f_grid_sample(padding, align):
    """The reference (a gather written out) and PyTorch's own kernel agree."""
    _check(lambda v, g, p, a: F.grid_sample(v, g, mode="bilinear", padding_mode=p, align_corners=a),
           SHAPES[0], torch.float32, padding, align)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sum_backward_with_stride_zero_gradient(backend):
    """out.sum().backward() hands backward an expanded (stride-0) gradient."""
    volume, grid = _inputs(*SHAPES[0], torch.float32)
    grid_sample_3d(volume, grid, "border", backend=backend).sum().backward()
    ref_inputs = [t.detach().double().requires_grad_() for t in (volume, grid)]
    grid_sample_3d_reference(*ref_inputs, "border").sum().backward()
    for name, t, r in zip(("input", "grid"), (volume, grid), ref_inputs):
        assert_close(f"grad_{name}", t.grad, r.grad, GRADIENT_TOLERANCE[torch.float32])


def test_one_gradient_only():
    """Only the gradient asked for is computed; grid alone needs no atomics."""
    volume, grid = _inputs(*SHAPES[2], torch.float32)
    for needs in ((True, False), (False, True)):
        v, g = volume.detach().requires_grad_(needs[0]), grid.detach().requires_grad_(needs[1])
        out = grid_sample_3d(v, g, backend="triton")
        (grad,) = torch.autograd.grad(out.square().sum(), v if needs[0] else g)
        ref_inputs = [t.detach().double().requires_grad_() for t in (v, g)]
        ref = torch.autograd.grad(grid_sample_3d_reference(*ref_inputs).square().sum(), ref_inputs)
        assert_close("grad", grad, ref[0 if needs[0] else 1], GRADIENT_TOLERANCE[torch.float32])


def test_deterministic_mode_raises_for_input_gradient():
    volume, grid = _inputs(*SHAPES[2], torch.float32)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out = grid_sample_3d(volume, grid, backend="triton")
        with pytest.raises(RuntimeError, match="use_deterministic_algorithms.*backend='torch'"):
            out.sum().backward()
        # grad_grid alone has no atomics and is allowed
        out = grid_sample_3d(volume.detach(), grid, backend="triton")
        (grad_grid,) = torch.autograd.grad(out.sum(), grid)
        assert torch.isfinite(grad_grid).all()
    finally:
        torch.use_deterministic_algorithms(previous)


def test_torch_compile_fullgraph_matches_eager():
    class Warp(torch.nn.Module):
        def forward(self, volume, grid):
            return grid_sample_3d(volume, grid, "border", True, backend="triton") * 2

    module = Warp()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    volume, grid = _inputs(1, 2, 3, 4, 5, 2, 3, 2, torch.float32)
    out = compiled(volume, grid)
    grads = torch.autograd.grad(out.sum(), (volume, grid))
    eager = module(volume, grid)
    eager_grads = torch.autograd.grad(eager.sum(), (volume, grid))
    assert_close("compiled", out, eager, 1e-6)
    for g, e in zip(grads, eager_grads):
        assert_close("compiled grad", g, e, 1e-6)


@pytest.mark.parametrize("padding,align", MODES, ids=MODE_IDS)
def test_reference_gradcheck(padding, align):
    volume = torch.randn(1, 2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    # random points: none on an integer source index, where the weights have kinks
    grid = (torch.rand(1, 2, 2, 1, 3, dtype=torch.float64) * 2.4 - 1.2)
    grid.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, g: grid_sample_3d_reference(v, g, padding, align), (volume, grid))


def test_empty_batch_and_grid():
    for volume, grid in ((torch.randn(0, 2, 3, 4, 5), torch.randn(0, 2, 2, 2, 3)),
                         (torch.randn(1, 2, 3, 4, 5), torch.randn(1, 0, 2, 2, 3))):
        out = grid_sample_3d(volume, grid, backend="triton")
        assert out.shape == (volume.shape[0], 2, *grid.shape[1:4])


def _good():
    return torch.randn(2, 3, 4, 5, 6), torch.rand(2, 2, 3, 4, 3) * 2 - 1


BAD_INPUTS = [
    ("input must be 5-D", lambda v, g: (v[0], g), {}, ValueError),
    ("grid must be 5-D", lambda v, g: (v, g[0]), {}, ValueError),
    ("grid must be 5-D", lambda v, g: (v, g[..., :2]), {}, ValueError),
    ("grid has batch 1 but input has batch 2", lambda v, g: (v, g[:1]), {}, ValueError),
    ("grid has dtype", lambda v, g: (v, g.double()), {}, TypeError),
    ("input must have a floating dtype", lambda v, g: (v.long(), g.long()), {}, TypeError),
    ("grid must have a floating dtype", lambda v, g: (v, g.int()), {}, TypeError),
    ("grid must be a torch.Tensor", lambda v, g: (v, g.numpy()), {}, TypeError),
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


def test_triton_rejects_float64_clearly():
    with pytest.raises(TypeError, match="input must have a floating dtype"):
        grid_sample_3d(*(t.double() for t in _good()), backend="triton")
