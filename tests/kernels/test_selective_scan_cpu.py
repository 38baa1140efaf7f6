"""selective_scan's fast (CPU, numba) path against its float64 reference: outputs, the last state
and every gradient, including the initial state's and the one flowing from the last state."""
import pytest
import torch

from kernels.selective_scan import fast_path, selective_scan, selective_scan_reference
from kernels.selective_scan.inputs import make_inputs
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

TENSORS_ON_CPU = True  # the numba path reads CPU memory only (other devices take the reference)
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LENGTHS = [1, 63, 200, fast_path.CHUNK + 1]
ALL = dict(groups=3, D=True, z=True, delta_bias=True, delta_softplus=True, initial_state=True)
# Each optional piece switched off once, the ungrouped (batch, N, L) B/C, and none of them.
FEATURES = {
    "all": ALL,
    "ungrouped": {**ALL, "groups": None},
    "no_D": {**ALL, "D": False},
    "no_z": {**ALL, "z": False},
    "no_delta_bias": {**ALL, "delta_bias": False},
    "no_softplus": {**ALL, "delta_softplus": False},
    "bias_no_softplus": {**ALL, "delta_softplus": False, "delta_bias": True},
    "no_initial_state": {**ALL, "initial_state": False},
    "bare": dict(groups=None, D=False, z=False, delta_bias=False, delta_softplus=False,
                 initial_state=False),
}


def _inputs(batch, dim, state, length, dtype, groups, D, z, delta_bias, delta_softplus,
            initial_state):
    """Fresh leaf inputs in ``dtype`` (every one: A, D, delta_bias too), the nine of NAMES with
    None where switched off, and the softplus flag."""
    inputs = make_inputs(batch, dim, length, state, dtype=dtype, param_dtype=dtype,
                         requires_grad=True, groups=groups, D=D, z=z, delta_bias=delta_bias,
                         delta_softplus=delta_softplus, initial_state=initial_state)
    return list(inputs) + ([] if initial_state else [None]), delta_softplus


def _run(scan, inputs, softplus, grad_out, grad_last):
    """(out, last, gradients of every present input) for random output gradients."""
    u, delta, A, B, C, D, z, delta_bias, initial_state = inputs
    out, last = scan(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state)
    present = [t for t in inputs if t is not None]
    grads = torch.autograd.grad((out, last), present,
                                (grad_out.to(out.dtype), grad_last.to(last.dtype)))
    return out, last, grads


def _fast_path(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state):
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state=True,
                          initial_state=initial_state, backend="fast")


def _reference(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state):
    return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, softplus,
                                    return_last_state=True, initial_state=initial_state)


def _check_against_reference(inputs, softplus):
    dtype = inputs[0].dtype
    ref_inputs = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    batch, dim, length = inputs[0].shape
    grad_out = torch.randn(batch, dim, length, dtype=torch.float64)
    grad_last = torch.randn(batch, dim, inputs[2].shape[1], dtype=torch.float64)
    out, last, grads = _run(_fast_path, inputs, softplus, grad_out, grad_last)
    ref_out, ref_last, ref_grads = _run(_reference, ref_inputs, softplus, grad_out, grad_last)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == dtype and out.shape == (batch, dim, length)
    assert last.dtype == compute and last.shape == (batch, dim, inputs[2].shape[1])
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[dtype])
    assert_close("last_state", last, ref_last, FORWARD_TOLERANCE[compute])
    names = [n for n, t in zip(NAMES, inputs) if t is not None]
    present = [t for t in inputs if t is not None]
    for name, t, g, r in zip(names, present, grads, ref_grads):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert_close(f"grad_{name}", g, r, GRADIENT_TOLERANCE[dtype])


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_float64_reference(dtype, length, poisoned_empty):
    inputs, softplus = _inputs(2, 6, 5, length, dtype, **ALL)
    _check_against_reference(inputs, softplus)


@pytest.mark.parametrize("features", list(FEATURES.values()), ids=list(FEATURES))
def test_optional_inputs_match_reference(features, poisoned_empty):
    inputs, softplus = _inputs(2, 6, 5, fast_path.CHUNK + 1, torch.float32, **features)
    _check_against_reference(inputs, softplus)


@pytest.mark.parametrize("slices", [1, 3, 7])
def test_channel_slices_do_not_change_gradients(monkeypatch, slices, poisoned_empty):
    """Backward splits a group's channels into slices (by thread count); any split, even or not,
    gives the reference gradients."""
    monkeypatch.setattr(fast_path, "_channel_slices", lambda *args: slices)
    inputs, softplus = _inputs(1, 7, 3, 70, torch.float32, **{**ALL, "groups": None})
    _check_against_reference(inputs, softplus)


def test_sum_backward_with_stride_zero_gradient():
    """out.sum().backward() hands backward an expanded (stride-0) gradient; the last state is
    unused, so its gradient arrives as zeros."""
    inputs, softplus = _inputs(2, 6, 5, 70, torch.float32, **ALL)
    u, delta, A, B, C, D, z, delta_bias, h0 = inputs
    selective_scan(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state=h0,
                   backend="fast").sum().backward()
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    _reference(*ref_inputs[:8], softplus, ref_inputs[8])[0].sum().backward()
    for name, t, r in zip(NAMES, inputs, ref_inputs):
        assert_close(f"grad_{name}", t.grad, r.grad, GRADIENT_TOLERANCE[torch.float32])


def test_chunked_scan_carries_state_and_gradient():
    """Scanning [0, L) in two calls, the first's last state passed as the second's initial state,
    equals one call, forward and backward."""
    inputs, softplus = _inputs(1, 4, 3, 90, torch.float64, **{**ALL, "groups": None,
                                                             "initial_state": False})
    u, delta, A, B, C, D, z, delta_bias, _ = inputs
    whole = _fast_path(u, delta, A, B, C, D, z, delta_bias, softplus, None)[0]
    cut = 37
    parts = [x[..., :cut] for x in (u, delta, B, C, z)], [x[..., cut:] for x in (u, delta, B, C, z)]
    first, state = _fast_path(*parts[0][:2], A, *parts[0][2:4], D, parts[0][4], delta_bias,
                               softplus, None)
    second, _ = _fast_path(*parts[1][:2], A, *parts[1][2:4], D, parts[1][4], delta_bias,
                            softplus, state)
    joined = torch.cat([first, second], dim=-1)
    assert_close("out", joined, whole, FORWARD_TOLERANCE[torch.float64])
    grad = torch.randn_like(whole)
    present = [u, delta, A, B, C, D, z, delta_bias]
    for name, a, b in zip(NAMES, torch.autograd.grad(joined, present, grad),
                          torch.autograd.grad(whole, present, grad)):
        assert_close(f"grad_{name}", a, b, GRADIENT_TOLERANCE[torch.float64])


def test_empty_sequence_returns_initial_state():
    inputs, softplus = _inputs(2, 6, 3, 0, torch.float32, **ALL)
    u, delta, A, B, C, D, z, delta_bias, h0 = inputs
    out, last = _fast_path(*inputs[:8], softplus, h0)
    assert out.shape == (2, 6, 0)
    assert torch.equal(last, h0)
    grad_last = torch.randn_like(last)
    (grad_h0,) = torch.autograd.grad(last, h0, grad_last)
    assert torch.equal(grad_h0, grad_last)


def test_no_grad_forward_matches():
    inputs, softplus = _inputs(2, 6, 5, 100, torch.float32, **ALL)
    out, last = _fast_path(*inputs[:8], softplus, inputs[8])
    with torch.no_grad():
        out_ng, last_ng = _fast_path(*inputs[:8], softplus, inputs[8])
    assert torch.equal(out, out_ng) and torch.equal(last, last_ng)


def test_gradcheck_float64():
    """The path has its own backward; gradcheck proves it (across a checkpoint boundary)."""
    inputs, softplus = _inputs(1, 2, 2, fast_path.CHUNK + 2, torch.float64,
                               **{**ALL, "groups": 2})

    def scan(*tensors):
        return _fast_path(*tensors[:8], softplus, tensors[8])

    assert torch.autograd.gradcheck(scan, inputs)


def test_other_devices_run_the_reference():
    """numba cannot read non-CPU memory: such tensors go through the reference recurrence
    (shown on the meta device, which has no data)."""
    inputs, softplus = _inputs(2, 6, 5, 9, torch.float32, **ALL)
    meta = [t.detach().to("meta") for t in inputs]
    out, last = _fast_path(*meta[:8], softplus, meta[8])
    assert out.device.type == "meta" and out.shape == (2, 6, 9) and last.shape == (2, 6, 5)


def test_compiles_without_graph_break():
    torch._dynamo.reset()
    inputs, softplus = _inputs(2, 6, 5, 70, torch.float32, **ALL)

    def scan(*tensors):
        out, last = _fast_path(*tensors[:8], softplus, tensors[8])
        return out.tanh(), last

    compiled = torch.compile(scan, fullgraph=True, backend="aot_eager")
    out, last = compiled(*inputs)
    ref_out, ref_last = scan(*inputs)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("last_state", last, ref_last, FORWARD_TOLERANCE[torch.float32])
    grads = torch.autograd.grad(out.sum() + last.sum(), inputs)
    ref_grads = torch.autograd.grad(ref_out.sum() + ref_last.sum(), inputs)
    for name, g, r in zip(NAMES, grads, ref_grads):
        assert_close(f"grad_{name}", g, r, GRADIENT_TOLERANCE[torch.float32])


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "seq_idx"])
def test_cpu_tensors_stay_on_cpu_whatever_the_default_device(packed):
    """The fast path allocates its outputs and scratch on the CPU, where numba reads them, even
    when torch's default device is another one (``meta`` stands in for CUDA here)."""
    u, delta, A, B, C, D, z, delta_bias = make_inputs(2, 6, 24, 4, dtype=torch.float32,
                                                      device="cpu", requires_grad=True)
    seq_idx = (torch.arange(24) >= 10).to(torch.int32).expand(2, 24).contiguous() if packed else None
    expected = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True,
                              seq_idx=seq_idx, backend="fast")
    torch.set_default_device("meta")
    try:
        out = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True,
                             seq_idx=seq_idx, backend="fast")
        grads = torch.autograd.grad(out.sum(), (u, delta, A, B, C))
    finally:
        torch.set_default_device(None)
    assert out.device.type == "cpu" and all(g.device.type == "cpu" for g in grads)
    assert_close("out", out, expected, FORWARD_TOLERANCE[torch.float32])
