"""selective_state_update (one recurrence step) against its float64 reference and against
selective_scan, on every backend."""
import itertools

import pytest
import torch

from kernels import selective_state_update
from kernels.selective_scan import selective_scan
from kernels.selective_state_update import selective_state_update_reference
from kernels.selective_state_update import triton_kernels
from kernels.testing import FORWARD_TOLERANCE, assert_close

# (batch, dim, N, G): dim straddling BLOCK_D, N = 1, odd N, N > 128 (8 warps); G None = (batch, N).
SHAPES = [(2, 40, 16, None), (3, 37, 5, None), (1, 5, 1, None), (2, 36, 7, 3), (1, 24, 33, 4),
          (2, 6, 130, 2)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["torch", "triton"]
STATE_TOLERANCE = FORWARD_TOLERANCE[torch.float32]  # the state is fp32 whatever x's dtype


def _inputs(batch, dim, N, G, dtype, D=True, z=True, dt_bias=True):
    bc_shape = (batch, N) if G is None else (batch, G, N)
    return {
        "state": torch.randn(batch, dim, N),
        "x": torch.randn(batch, dim).to(dtype),
        "dt": (torch.rand(batch, dim) - 0.5).to(dtype),
        "A": -torch.rand(dim, N) * 2,
        "B": torch.randn(bc_shape).to(dtype),
        "C": torch.randn(bc_shape).to(dtype),
        "D": torch.randn(dim) if D else None,
        "z": torch.randn(batch, dim).to(dtype) if z else None,
        "dt_bias": torch.rand(dim) if dt_bias else None,
    }


def _reference(inputs, dt_softplus):
    """(out, new state) in float64; ``inputs`` is left untouched."""
    ref = {k: (v.double().clone() if v is not None else None) for k, v in inputs.items()}
    out = selective_state_update_reference(**ref, dt_softplus=dt_softplus)
    return out, ref["state"]


def _run(inputs, dt_softplus, backend):
    """(out, new state); works on a copy of the state."""
    args = dict(inputs, state=inputs["state"].clone())
    out = selective_state_update(**args, dt_softplus=dt_softplus, backend=backend)
    return out, args["state"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_reference(shape, dtype, backend, poisoned_empty):
    inputs = _inputs(*shape, dtype)
    out, state = _run(inputs, True, backend)
    assert out.dtype == dtype and out.shape == shape[:2]
    ref_out, ref_state = _reference(inputs, True)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[dtype])
    assert state.dtype == torch.float32
    assert_close("state", state, ref_state, STATE_TOLERANCE)


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("has_D,has_z,has_dt_bias,dt_softplus",
                         list(itertools.product((False, True), repeat=4)))
def test_every_optional_input_may_be_none(has_D, has_z, has_dt_bias, dt_softplus, backend):
    inputs = _inputs(2, 19, 6, None, torch.float32, D=has_D, z=has_z, dt_bias=has_dt_bias)
    if not dt_softplus:
        inputs["dt"] = inputs["dt"].abs()
    out, state = _run(inputs, dt_softplus, backend)
    ref_out, ref_state = _reference(inputs, dt_softplus)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("state", state, ref_state, STATE_TOLERANCE)


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("groups", [None, 2])
def test_stepping_reproduces_selective_scan(backend, groups):
    """Token by token from an initial state: the outputs are the scan's, the state its last."""
    batch, dim, N, length = 2, 10, 7, 6
    bc = (batch, N, length) if groups is None else (batch, groups, N, length)
    u, delta, z = torch.randn(batch, dim, length), torch.randn(batch, dim, length), torch.randn(batch, dim, length)
    A, B, C = -torch.rand(dim, N) * 2, torch.randn(bc), torch.randn(bc)
    D, delta_bias, initial = torch.randn(dim), torch.rand(dim), torch.randn(batch, dim, N)
    ref_out, ref_last = selective_scan(
        *(t.double() for t in (u, delta, A, B, C, D, z)), delta_bias=delta_bias.double(),
        delta_softplus=True, return_last_state=True, initial_state=initial.double(), backend="reference")
    state = initial.clone()
    outs = [selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                   delta_bias, dt_softplus=True, backend=backend)
            for t in range(length)]
    assert_close("out", torch.stack(outs, dim=-1), ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("last state", state, ref_last, STATE_TOLERANCE)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_strided_views_are_read_and_state_is_written_in_place(backend):
    """x and z as the halves of one projection, B and C as slices of another, the state a batch
    slice of a larger cache (unit stride along N) or a transposed view (strided N)."""
    batch, dim, N = 3, 12, 5
    xz = torch.randn(batch, 2 * dim)
    x_db = torch.randn(batch, 2 + 2 * N)
    x, z = xz.chunk(2, dim=-1)
    B, C = x_db[:, 2:2 + N], x_db[:, 2 + N:]
    dt, A, D = torch.rand(batch, dim), -torch.rand(dim, N), torch.randn(dim)
    cache = torch.randn(batch + 2, dim, N)
    transposed = torch.randn(batch, N, dim).transpose(1, 2)
    for state in (cache[1:1 + batch], transposed):
        before = cache.clone()
        ref_state = state.double().clone()
        ref = selective_state_update_reference(ref_state, x.double(), dt.double(), A.double(), B.double(),
                                               C.double(), D.double(), z.double())
        out = selective_state_update(state, x, dt, A, B, C, D, z, backend=backend)
        assert_close("out", out, ref, FORWARD_TOLERANCE[torch.float32])
        assert_close("state", state, ref_state, STATE_TOLERANCE)
    assert torch.equal(cache[0], before[0]) and torch.equal(cache[-1], before[-1])


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_float64_on_reference_and_torch_paths(backend):
    inputs = {k: v.double() if v is not None else None
              for k, v in _inputs(2, 9, 4, None, torch.float64).items()}
    if backend == "triton":
        with pytest.raises(TypeError, match="x must have a floating dtype"):
            _run(inputs, True, backend)
        return
    out, state = _run(inputs, True, backend)
    ref_out, ref_state = _reference(inputs, True)
    assert out.dtype == torch.float64
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float64])
    assert_close("state", state, ref_state, FORWARD_TOLERANCE[torch.float64])


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_empty_batch_and_channels(backend):
    for batch, dim in ((0, 8), (2, 0)):
        inputs = _inputs(batch, dim, 4, None, torch.float32)
        out, state = _run(inputs, True, backend)
        assert out.shape == (batch, dim) and state.shape == (batch, dim, 4)


def test_inference_only_is_a_clear_error():
    inputs = _inputs(2, 8, 4, None, torch.float32)
    inputs["A"].requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only.*A require grad.*torch.no_grad"):
        selective_state_update(**inputs)
    with torch.no_grad():
        assert selective_state_update(**inputs).shape == (2, 8)
    with torch.inference_mode():
        assert selective_state_update(**{k: v.clone() if v is not None else None
                                         for k, v in inputs.items()}).shape == (2, 8)


def test_triton_limits_are_clear_errors():
    inputs = _inputs(1, 4, triton_kernels.MAX_STATE + 1, None, torch.float32)
    with pytest.raises(ValueError, match="N <= 256; use backend='torch'"):
        selective_state_update(**inputs, backend="triton")
    inputs = _inputs(1, 4, 3, None, torch.float32)
    inputs["state"] = inputs["state"].double()
    with pytest.raises(TypeError, match="state must be float32 on the triton path"):
        selective_state_update(**inputs, backend="triton")


def test_every_launch_config_is_registered():
    from kernels import registered_kernels
    (entry,) = [e for e in registered_kernels() if e.op == "selective_state_update"]
    assert set(entry.dtypes) == {"fp32", "fp16", "bf16"}
    for N in range(1, triton_kernels.MAX_STATE + 1):
        assert triton_kernels.launch_config(N) in entry.configs


class _StreamingStep(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.backend = backend

    def forward(self, state, x, dt, A, B, C, D, z):
        out = selective_state_update(state, self.proj(x), dt, A, B, C, D, z, dt_softplus=True,
                                     backend=self.backend)
        return out.tanh()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiles_without_graph_break(backend):
    torch._dynamo.reset()
    module = _StreamingStep(backend)
    inputs = _inputs(2, 8, 5, None, torch.float32, dt_bias=False)
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C", "D", "z")]
    state, eager_state = inputs["state"].clone(), inputs["state"].clone()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(state, *args)
        ref = module(eager_state, *args)
    assert_close("out", out, ref, FORWARD_TOLERANCE[torch.float32])
    assert_close("state", state, eager_state, STATE_TOLERANCE)


def _good():
    return _inputs(2, 8, 4, None, torch.float32)


def _with(**changes):
    def corrupt(inputs):
        for key, fn in changes.items():
            inputs[key] = fn(inputs[key])
        return inputs
    return corrupt


BAD_INPUTS = [
    ("x must be 2-D", _with(x=lambda t: t[None]), ValueError),
    ("dt must have the shape of x", _with(dt=lambda t: t[:, :5]), ValueError),
    ("z must have the shape of x", _with(z=lambda t: t[:1]), ValueError),
    ("A must be 2-D", _with(A=lambda t: t[:, 0]), ValueError),
    ("A must be 2-D", _with(A=lambda t: t[:5]), ValueError),
    ("state must have shape", _with(state=lambda t: t[:, :, :3]), ValueError),
    ("state must have shape", _with(state=lambda t: t[0]), ValueError),
    ("B must be", _with(B=lambda t: t[:, None, None]), ValueError),
    ("C must have shape", _with(C=lambda t: t[:, :3]), ValueError),
    ("B has 3 groups, which do not divide dim=8",
     _with(B=lambda t: t[:, None].expand(2, 3, 4), C=lambda t: t[:, None].expand(2, 3, 4)), ValueError),
    ("B and C must have the same shape",
     _with(B=lambda t: t[:, None].expand(2, 2, 4)), ValueError),
    ("D must have shape", _with(D=lambda t: t[:3]), ValueError),
    ("dt_bias must have shape", _with(dt_bias=lambda t: t[None]), ValueError),
    ("dt has dtype", _with(dt=lambda t: t.double()), TypeError),
    ("B has dtype", _with(B=lambda t: t.half()), TypeError),
    ("state must be float32", _with(state=lambda t: t.bfloat16()), TypeError),
    ("x must have a floating dtype", _with(x=lambda t: t.long()), TypeError),
    ("C must be a torch.Tensor", _with(C=lambda t: t.numpy()), TypeError),
    ("z is on meta", _with(z=lambda t: t.to("meta")), ValueError),
    ("A is on meta", _with(A=lambda t: t.to("meta")), ValueError),
    ("state is on meta", _with(state=lambda t: t.to("meta")), ValueError),
    ("dt_bias is on meta", _with(dt_bias=lambda t: t.to("meta")), ValueError),
]


@pytest.mark.parametrize("message,corrupt,error", BAD_INPUTS,
                         ids=[b[0][:24] + str(i) for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_is_named(message, corrupt, error):
    with pytest.raises(error, match=message):
        selective_state_update(**corrupt(_good()))
