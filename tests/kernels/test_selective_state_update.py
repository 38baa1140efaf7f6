"""selective_state_update (one recurrence step) against its float64 reference and against
selective_scan, on every backend."""
import itertools

import pytest
import torch

from kernels import SelectiveStateUpdate, selective_state_update
from kernels.selective_scan import selective_scan
from kernels.selective_state_update import selective_state_update_reference
from kernels.selective_scan.inputs import make_inputs as make_scan_inputs
from kernels.selective_state_update import triton_kernels
from kernels.selective_state_update.inputs import make_inputs
from kernels.testing import FORWARD_TOLERANCE, assert_close

# (batch, dim, N, G): dim straddling BLOCK_D, N = 1, odd N, N > 128 (8 warps); G None = (batch, N).
SHAPES = [(2, 40, 16, None), (3, 37, 5, None), (1, 5, 1, None), (2, 36, 7, 3), (1, 24, 33, 4),
          (2, 6, 130, 2)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["fast", "triton"]
STATE_TOLERANCE = FORWARD_TOLERANCE[torch.float32]  # the state is fp32 whatever x's dtype


NAMES = ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias")


def _inputs(batch, dim, N, G, dtype, D=True, z=True, dt_bias=True):
    return dict(zip(NAMES, make_inputs(batch, dim, N, groups=G, dtype=dtype, D=D, z=z,
                                       dt_bias=dt_bias)))


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


@pytest.mark.parametrize("backend", ["reference", "fast", "triton"])
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


@pytest.mark.parametrize("backend", ["reference", "fast", "triton"])
@pytest.mark.parametrize("groups", [None, 2])
def test_stepping_reproduces_selective_scan(backend, groups):
    """Token by token from an initial state: the outputs are the scan's, the state its last."""
    batch, dim, N, length = 2, 10, 7, 6
    u, delta, A, B, C, D, z, delta_bias, initial = make_scan_inputs(
        batch, dim, length, N, groups=groups, initial_state=True)
    ref_out, ref_last = selective_scan(
        *(t.double() for t in (u, delta, A, B, C, D, z)), delta_bias=delta_bias.double(),
        delta_softplus=True, return_last_state=True, initial_state=initial.double(), backend="reference")
    state = initial.clone()
    outs = [selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                   delta_bias, dt_softplus=True, backend=backend)
            for t in range(length)]
    assert_close("out", torch.stack(outs, dim=-1), ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("last state", state, ref_last, STATE_TOLERANCE)


@pytest.mark.parametrize("backend", ["fast", "triton"])
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


@pytest.mark.parametrize("backend", ["reference", "fast", "triton"])
def test_float64_on_reference_and_torch_paths(backend):
    inputs = {k: v.double() if v is not None else None
              for k, v in _inputs(2, 9, 4, None, torch.float64).items()}
    if backend == "triton":
        with pytest.raises(TypeError, match="x must be float16, bfloat16 or float32 on the triton path"):
            _run(inputs, True, backend)
        return
    out, state = _run(inputs, True, backend)
    ref_out, ref_state = _reference(inputs, True)
    assert out.dtype == torch.float64
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float64])
    assert_close("state", state, ref_state, FORWARD_TOLERANCE[torch.float64])


@pytest.mark.parametrize("backend", ["reference", "fast", "triton"])
def test_empty_batch_and_channels(backend):
    for batch, dim in ((0, 8), (2, 0)):
        inputs = _inputs(batch, dim, 4, None, torch.float32)
        out, state = _run(inputs, True, backend)
        assert out.shape == (batch, dim) and state.shape == (batch, dim, 4)


def test_triton_under_autograd_is_a_clear_error():
    inputs = _inputs(2, 8, 4, None, torch.float32)
    inputs["A"].requires_grad_()
    with pytest.raises(RuntimeError, match="no backward on the triton path.*A require grad.*"
                                           "backend='fast'"):
        selective_state_update(**inputs, backend="triton")
    with torch.no_grad():
        assert selective_state_update(**inputs, backend="triton").shape == (2, 8)
    with torch.inference_mode():
        assert selective_state_update(**{k: v.clone() if v is not None else None
                                         for k, v in inputs.items()}, backend="triton").shape == (2, 8)


def test_triton_limits_are_clear_errors():
    inputs = _inputs(1, 4, triton_kernels.MAX_STATE + 1, None, torch.float32)
    with pytest.raises(ValueError, match="N <= 256; use backend='fast'"):
        selective_state_update(**inputs, backend="triton")
    inputs = _inputs(1, 4, 3, None, torch.float32)
    inputs["state"] = inputs["state"].double()
    with pytest.raises(TypeError, match="state must be float16, bfloat16 or float32 on the triton path"):
        selective_state_update(**inputs, backend="triton")


def test_every_launch_config_is_registered():
    from kernels import registered_kernels
    (entry,) = [e for e in registered_kernels() if e.op == "selective_state_update"]
    pairs = {tuple(dict(d)[k] for k in ("dtype", "state_dtype")) for d in entry.dtypes}
    assert pairs == set(triton_kernels.DTYPE_PAIRS)
    for x_dtype in ("fp32", "fp16", "bf16"):  # every input dtype with an fp32 and its own state
        assert {(x_dtype, "fp32"), (x_dtype, x_dtype)} <= pairs
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


@pytest.mark.parametrize("backend", ["fast", "triton"])
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
    (r"x must be 2-D \(batch, dim\) or 3-D", _with(x=lambda t: t[None, None]), ValueError),
    ("dt must have the shape of x", _with(dt=lambda t: t[:, :5]), ValueError),
    ("z must have the shape of x", _with(z=lambda t: t[:1]), ValueError),
    (r"A must be \(dim, N\) = \(8, N\)", _with(A=lambda t: t[:, 0]), ValueError),
    (r"A must be \(dim, N\) = \(8, N\)", _with(A=lambda t: t[:5]), ValueError),
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
    ("state must have a floating dtype", _with(state=lambda t: t.int()), TypeError),
    ("dt must have a floating dtype", _with(dt=lambda t: t.long()), TypeError),
    ("a larger state cache takes state_batch_indices", _with(state=lambda t: t.repeat(2, 1, 1)),
     ValueError),
    ("x must have a floating dtype", _with(x=lambda t: t.long()), TypeError),
    ("C must be a torch.Tensor", _with(C=lambda t: t.cpu().numpy()), TypeError),
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


# --- mamba_ssm parity: low-precision states, mixed dtypes, the heads layout, state_batch_indices,
# gradients ------------------------------------------------------------------------------------

ALL_BACKENDS = ["reference", "fast", "triton"]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("state_dtype,x_dtype", [(torch.bfloat16, torch.bfloat16),
                                                 (torch.float16, torch.float16),
                                                 (torch.bfloat16, torch.float32),
                                                 (torch.float16, torch.bfloat16)], ids=str)
def test_low_precision_state(state_dtype, x_dtype, backend):
    """A bf16/fp16 state (mamba_ssm's inference cache in the model's dtype) is read, advanced in
    float32 and written back in its own dtype."""
    inputs = _inputs(3, 37, 5, None, x_dtype)
    inputs["state"] = inputs["state"].to(state_dtype)
    out, state = _run(inputs, True, backend)
    ref_out, ref_state = _reference(inputs, True)
    assert out.dtype == x_dtype and state.dtype == state_dtype
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.bfloat16])
    assert_close("state", state, ref_state, FORWARD_TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("x_dtype,dt_dtype,bc_dtype,z_dtype", [
    (torch.bfloat16, torch.bfloat16, torch.float32, torch.bfloat16),  # fp32 B, C (mamba_ssm's)
    (torch.float16, torch.float32, torch.float32, torch.float16),
    (torch.float32, torch.bfloat16, torch.float16, torch.float32)], ids=str)
def test_mixed_input_dtypes(x_dtype, dt_dtype, bc_dtype, z_dtype, backend):
    inputs = _inputs(2, 36, 7, 3, torch.float32)
    for key, dtype in (("x", x_dtype), ("dt", dt_dtype), ("B", bc_dtype), ("C", bc_dtype),
                       ("z", z_dtype)):
        inputs[key] = inputs[key].to(dtype)
    out, state = _run(inputs, True, backend)
    ref_out, ref_state = _reference(inputs, True)
    assert out.dtype == x_dtype and state.dtype == torch.float32
    tolerance = FORWARD_TOLERANCE[torch.bfloat16]
    assert_close("out", out, ref_out, tolerance)
    assert_close("state", state, ref_state, tolerance)


def _heads_inputs(batch, heads, headdim, N, G, dtype=torch.float32, broadcast=True):
    """The Mamba-2 layout as mamba_ssm's Mamba2.step builds it: A, dt, D, dt_bias per head,
    expanded over headdim with stride 0 (``broadcast``, else contiguous copies), B and C per
    group of heads."""
    return dict(zip(NAMES, make_inputs(batch, heads, N, headdim=headdim, groups=G, dtype=dtype,
                                       per_head_views=broadcast)))


# (batch, nheads, headdim, N, G): headdim 1, groups of several heads, N straddling BLOCK_N.
HEAD_SHAPES = [(2, 6, 5, 7, 3), (1, 4, 3, 16, None), (3, 2, 1, 5, 2), (2, 4, 9, 17, 1)]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("broadcast", [True, False])
@pytest.mark.parametrize("shape", HEAD_SHAPES, ids=str)
def test_heads_layout(shape, broadcast, backend):
    inputs = _heads_inputs(*shape, broadcast=broadcast)
    out, state = _run(inputs, True, backend)
    assert out.shape == shape[:3] and state.shape == shape[:4]
    ref_out, ref_state = _reference(inputs, True)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("state", state, ref_state, STATE_TOLERANCE)


def test_reference_heads_layout_is_mamba1_on_flattened_channels():
    """Groups of heads are groups of channels head·headdim + j: the reference's two layouts
    agree (in float64, to rounding)."""
    batch, heads, headdim, N, G = 2, 6, 4, 5, 3
    inputs = {k: v.double() for k, v in _heads_inputs(batch, heads, headdim, N, G).items()}
    heads_state = inputs["state"].clone()
    out = selective_state_update_reference(**dict(inputs, state=heads_state), dt_softplus=True)
    flat = {k: inputs[k].flatten(1) for k in ("x", "dt", "z")}
    flat.update(A=inputs["A"].flatten(0, 1), D=inputs["D"].flatten(), dt_bias=inputs["dt_bias"].flatten(),
                B=inputs["B"], C=inputs["C"], state=inputs["state"].flatten(1, 2).clone())
    flat_out = selective_state_update_reference(**flat, dt_softplus=True)
    torch.testing.assert_close(out.flatten(1), flat_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(heads_state.flatten(1, 2), flat["state"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["fast", "triton"])
def test_heads_layout_state_that_is_not_a_view_of_channels(backend):
    """A state whose (nheads, headdim) cannot be viewed as one channel axis (headdim-major
    memory) is updated through a copy that is written back."""
    inputs = _heads_inputs(2, 3, 4, 5, None)
    inputs["state"] = torch.randn(2, 4, 3, 5).transpose(1, 2)
    out, state = _run(inputs, True, backend)
    ref_out, ref_state = _reference(inputs, True)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("state", state, ref_state, STATE_TOLERANCE)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("layout", ["mamba1", "heads"])
def test_state_batch_indices_update_their_rows_only(layout, index_dtype, backend):
    inputs = (_inputs(3, 19, 6, None, torch.float32) if layout == "mamba1"
              else _heads_inputs(3, 4, 3, 6, 2))
    rows = torch.tensor([4, 0, 2], dtype=index_dtype)
    cache = torch.randn(6, *inputs["state"].shape[1:])
    before = cache.clone()
    inputs["state"] = cache
    ref_cache = cache.double().clone()
    ref_inputs = {k: v.double() for k, v in inputs.items()}
    ref_out = selective_state_update_reference(**dict(ref_inputs, state=ref_cache[rows.long()]),
                                               dt_softplus=True)
    ref_rows = ref_inputs["state"][rows.long()].clone()
    selective_state_update_reference(**dict(ref_inputs, state=ref_rows), dt_softplus=True)
    out = selective_state_update(**inputs, dt_softplus=True, state_batch_indices=rows, backend=backend)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("updated rows", cache[rows.long()], ref_rows, STATE_TOLERANCE)
    for untouched in (1, 3, 5):
        assert torch.equal(cache[untouched], before[untouched])


def _step_outputs(backend, layout, with_indices):
    """A function of the inputs giving (out, new state) of one step, then a second step's out,
    for gradcheck: the state is stepped through a clone, as a caller would."""
    def run(state, x, dt, A, B, C, D, z, dt_bias):
        state = state.clone()
        kwargs = {}
        if with_indices:
            kwargs["state_batch_indices"] = torch.tensor([2, 0], dtype=torch.int32)
        args = (x, dt, A, B, C, D, z, dt_bias)
        out = selective_state_update(state, *args, dt_softplus=True, backend=backend, **kwargs)
        second = selective_state_update(state, *args, dt_softplus=True, backend=backend, **kwargs)
        return out, state, second
    return run


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("layout,with_indices", [("mamba1", False), ("heads", False),
                                                 ("mamba1", True)])
def test_gradients_in_float64(layout, with_indices, backend):
    """With grad mode on the step is differentiable in every input, the state before it included,
    and gradients flow from the state after it (through a second step)."""
    if layout == "mamba1":
        inputs = _inputs(2, 6, 3, 2, torch.float64)
    else:
        inputs = _heads_inputs(2, 4, 2, 3, 2, broadcast=False)
    if with_indices:
        inputs["state"] = torch.randn(3, *inputs["state"].shape[1:])
    names = ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias")
    args = [inputs[k].double().detach().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(_step_outputs(backend, layout, with_indices), args)


def test_torch_path_gradients_match_reference_in_float32():
    inputs = _heads_inputs(2, 4, 3, 5, 2)
    names = ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias")
    grads = {}
    for backend in ("reference", "fast"):
        args = [inputs[k].detach().clone().requires_grad_() for k in names]
        out, state, second = _step_outputs(backend, "heads", False)(*args)
        (out.square().sum() + state.sin().sum() + second.sum()).backward()
        grads[backend] = [a.grad for a in args]
    for name, got, want in zip(names, grads["fast"], grads["reference"]):
        assert_close(f"grad {name}", got, want, 1e-4)


def test_leaf_state_requiring_grad_is_a_clear_error():
    inputs = _inputs(2, 8, 4, None, torch.float32)
    inputs["state"].requires_grad_()
    for backend in ALL_BACKENDS:
        with pytest.raises(RuntimeError, match="state is a leaf tensor that requires grad.*clone"):
            selective_state_update(**inputs, backend=backend)


def _good_heads():
    return _heads_inputs(2, 4, 3, 5, 2)


def _indices(values, dtype=torch.int64, device=None):
    return lambda inputs: dict(inputs, state_batch_indices=torch.tensor(values, dtype=dtype,
                                                                         device=device))


BAD_HEADS_INPUTS = [
    ("dt must have the shape of x", _with(dt=lambda t: t[:, :, :2])),
    (r"A must be \(nheads, headdim, N\) = \(4, 3, N\)", _with(A=lambda t: t[:, 0])),
    (r"state must have shape \(batch, nheads, headdim, N\) = \(2, 4, 3, 5\)",
     _with(state=lambda t: t[:, :, :2])),
    ("B has 3 groups, which do not divide nheads=4",
     _with(B=lambda t: t[:, :1].expand(2, 3, 5), C=lambda t: t[:, :1].expand(2, 3, 5))),
    (r"D must have shape \(nheads, headdim\) = \(4, 3\)", _with(D=lambda t: t[:, 0])),
    (r"dt_bias must have shape \(nheads, headdim\)", _with(dt_bias=lambda t: t.flatten())),
]


@pytest.mark.parametrize("message,corrupt", BAD_HEADS_INPUTS,
                         ids=[b[0][:24] + str(i) for i, b in enumerate(BAD_HEADS_INPUTS)])
def test_bad_heads_input_is_named(message, corrupt):
    with pytest.raises(ValueError, match=message):
        selective_state_update(**corrupt(_good_heads()))


BAD_INDICES = [
    ("state_batch_indices must be int32 or int64", _indices([0.0, 1.0], torch.float32), TypeError),
    (r"state_batch_indices must have shape \(batch,\) = \(2,\)", _indices([0, 1, 2]), ValueError),
    (r"state_batch_indices must lie in \[0, 2\).*from 0 to 2", _indices([0, 2]), ValueError),
    (r"state_batch_indices must lie in \[0, 2\).*from -1 to 0", _indices([-1, 0]), ValueError),
    ("state_batch_indices must not repeat an index", _indices([1, 1]), ValueError),
    ("state_batch_indices is on meta", _indices([0, 1], device="meta"), ValueError),
    ("state_batch_indices must be a torch.Tensor", lambda i: dict(i, state_batch_indices=[0, 1]),
     TypeError),
]


@pytest.mark.parametrize("message,corrupt,error", BAD_INDICES,
                         ids=[b[0][20:44] + str(i) for i, b in enumerate(BAD_INDICES)])
def test_bad_state_batch_indices_are_named(message, corrupt, error):
    with pytest.raises(error, match=message):
        selective_state_update(**corrupt(_good()))


def test_module_is_the_op_with_its_settings():
    inputs = _inputs(2, 6, 4, 2, torch.float32)
    module = SelectiveStateUpdate(dt_softplus=True, backend="fast")
    module_inputs = dict(inputs, state=inputs["state"].clone())
    out = module(*(module_inputs[k] for k in NAMES))
    ref_out, ref_state = _run(inputs, True, "fast")
    assert torch.equal(out, ref_out) and torch.equal(module_inputs["state"], ref_state)
    assert "dt_softplus=True" in repr(module) and list(module.parameters()) == []
