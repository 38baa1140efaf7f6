"""Packed variable-length sequences (``seq_idx``) in selective_scan, causal_conv1d and Mamba.

Each case packs 1–5 sequences of random lengths into each row (its own packing per row) and
compares the packed call on a backend with separate float64 reference calls on each sequence:
out, the last state (the row's last sequence's) and the gradient of every input, with random
weights on both outputs. The Triton and numba paths run with 8-step chunks, so sequence starts
fall on, just after and just before chunk boundaries."""
import types

import pytest
import torch

from kernels import Mamba
from kernels.causal_conv1d import causal_conv1d, causal_conv1d_reference
from kernels.causal_conv1d import op as conv_op
from kernels.selective_scan import fast_path, selective_scan, selective_scan_reference, triton_kernels
from kernels.selective_scan.inputs import make_inputs
from kernels import LaunchConfig
from kernels._seq_idx import sequence_ordinals
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

SMALL_CHUNK = 8
BACKENDS = ("reference", "fast", "triton")
SCAN_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.fixture
def small_chunks(monkeypatch):
    """8-step chunks on the Triton path (2 channels a program) and the numba path."""
    configs = tuple(LaunchConfig({"BLOCK_D": 2, "N_PAD": pad, "T_CHUNK": SMALL_CHUNK}, 1)
                    for pad in triton_kernels.STATE_PADS)
    monkeypatch.setattr(triton_kernels, "FORWARD_CONFIGS", configs)
    monkeypatch.setattr(triton_kernels, "BACKWARD_CONFIGS", configs)
    monkeypatch.setattr(triton_kernels, "BACKWARD_VARLEN_CONFIGS", configs)
    monkeypatch.setattr(fast_path, "CHUNK", SMALL_CHUNK)


def _randn(*shape, generator):
    """Standard normal values from a seeded CPU generator, on the device under test (torch's
    default device: CUDA where there is one), the same numbers on either."""
    return torch.randn(*shape, generator=generator, device="cpu").to(torch.get_default_device())


def _rand(*shape, generator):
    return torch.rand(*shape, generator=generator, device="cpu").to(torch.get_default_device())


def random_packing(batch, length, generator):
    """(seq_idx int32 (batch, L) on the device under test, per row the [start, stop) of its
    sequences): 1–5 sequences of random lengths per row, labelled by increasing values with
    random gaps, drawn from the CPU ``generator``."""
    seq_idx = torch.empty(batch, length, dtype=torch.int32, device="cpu")
    segments = []
    for b in range(batch):
        count = int(torch.randint(1, min(5, length) + 1, (), generator=generator, device="cpu"))
        order = torch.randperm(length - 1, generator=generator, device="cpu")
        cuts = sorted(order[:count - 1].add(1).tolist())
        bounds = [0, *cuts, length]
        label = int(torch.randint(0, 4, (), generator=generator, device="cpu"))
        row = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            seq_idx[b, start:stop] = label
            label += int(torch.randint(1, 3, (), generator=generator, device="cpu"))
            row.append((start, stop))
        segments.append(row)
    return seq_idx.to(torch.get_default_device()), segments


def _float64(tensors):
    return {k: None if v is None else v.detach().double().requires_grad_() for k, v in tensors.items()}


def _grads(loss, tensors):
    names = [k for k, v in tensors.items() if v is not None and v.requires_grad]
    return dict(zip(names, torch.autograd.grad(loss, [tensors[k] for k in names])))


# ---------------------------------------------------------------------------------------------
# selective_scan
# ---------------------------------------------------------------------------------------------


def _scan_inputs(batch, dim, N, L, groups, full, generator):
    """Leaf inputs by name from ``make_inputs``, seeded from ``generator``; D, z, delta_bias and
    the initial state only when ``full``."""
    seed = int(torch.randint(2 ** 31, (1,), generator=generator, device="cpu"))
    tensors = make_inputs(batch, dim, L, N, groups=groups, seed=seed, requires_grad=True, D=full,
                          z=full, delta_bias=full, initial_state=full)
    return dict(zip(SCAN_NAMES, tensors + ((None,) if not full else ())))


def _scan(t, seq_idx=None, backend="reference", sl=slice(None), rows=slice(None), first=True):
    """selective_scan on rows ``rows`` and time steps ``sl`` of the inputs (initial_state only
    when ``first``, the sequence that starts its row)."""
    def time(x):
        return None if x is None else x[rows][..., sl]
    init = t["initial_state"]
    return selective_scan(time(t["u"]), time(t["delta"]), t["A"], time(t["B"]), time(t["C"]),
                          t["D"], time(t["z"]), t["delta_bias"], delta_softplus=True,
                          return_last_state=True,
                          initial_state=init[rows] if init is not None and first else None,
                          backend=backend, seq_idx=seq_idx)


def _scan_separately(t, segments):
    """out (batch, dim, L) and each row's last state from one reference call per sequence."""
    outs, lasts = [], []
    for b, row in enumerate(segments):
        pieces = [_scan(t, sl=slice(start, stop), rows=slice(b, b + 1), first=i == 0)
                  for i, (start, stop) in enumerate(row)]
        outs.append(torch.cat([out for out, _ in pieces], dim=2))
        lasts.append(pieces[-1][1])
    return torch.cat(outs), torch.cat(lasts)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(3))
def test_selective_scan_packed_equals_separate_calls(backend, case, small_chunks):
    generator = torch.Generator().manual_seed(100 + case)
    batch, dim, N = 2, (3, 4, 3)[case], (4, 5, 3)[case]
    L = int(torch.randint(17, 33, (), generator=generator, device="cpu"))
    groups, full = ((None, True), (2, True), (None, False))[case]
    seq_idx, segments = random_packing(batch, L, generator)
    t = _scan_inputs(batch, dim, N, L, groups, full, generator)
    out, last = _scan(t, seq_idx, backend)
    w_out, w_last = _randn(out.shape, generator=generator), _randn(last.shape, generator=generator)
    got = _grads((out * w_out).sum() + (last * w_last).sum(), t)

    t64 = _float64(t)
    ref_out, ref_last = _scan_separately(t64, segments)
    expected = _grads((ref_out * w_out.double()).sum() + (ref_last * w_last.double()).sum(), t64)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("last state", last, ref_last, FORWARD_TOLERANCE[torch.float32])
    assert set(got) == set(expected)
    for name in expected:
        assert_close(f"grad {name}", got[name], expected[name], GRADIENT_TOLERANCE[torch.float32])


def test_selective_scan_reference_packed_equals_separate_calls_in_float64():
    """The reference's own resets, at float64 precision."""
    generator = torch.Generator().manual_seed(7)
    seq_idx, segments = random_packing(3, 23, generator)
    t = _float64(_scan_inputs(3, 2, 3, 23, None, True, generator))
    out, last = _scan(t, seq_idx)
    ref_out, ref_last = _scan_separately(t, segments)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float64])
    assert_close("last state", last, ref_last, FORWARD_TOLERANCE[torch.float64])


def test_selective_scan_reference_gradcheck_with_seq_idx():
    generator = torch.Generator().manual_seed(3)
    t = _float64(_scan_inputs(2, 2, 2, 6, None, True, generator))
    seq_idx = torch.tensor([[0, 0, 1, 1, 1, 4], [2, 2, 2, 2, 2, 2]], dtype=torch.int32)
    names = [k for k, v in t.items() if v is not None]

    def scan(*values):
        out, last = selective_scan_reference(*values[:5], values[5], values[6], values[7], True,
                                             return_last_state=True, initial_state=values[8],
                                             seq_idx=seq_idx)
        return out, last

    assert torch.autograd.gradcheck(scan, [t[k] for k in names])


def test_selective_scan_seq_idx_of_one_sequence_changes_nothing():
    generator = torch.Generator().manual_seed(5)
    t = _scan_inputs(2, 3, 4, 30, None, True, generator)
    same = torch.full((2, 30), 9, dtype=torch.int32)
    plain_out, plain_last = _scan(t, None, "fast")
    out, last = _scan(t, same, "fast")
    assert torch.equal(out, plain_out) and torch.equal(last, plain_last)


def test_selective_scan_packed_in_bfloat16_on_triton(small_chunks):
    generator = torch.Generator().manual_seed(11)
    seq_idx, segments = random_packing(2, 21, generator)
    t = _scan_inputs(2, 3, 4, 21, None, True, generator)
    for name in ("u", "delta", "B", "C", "z"):
        t[name] = t[name].detach().to(torch.bfloat16).requires_grad_()
    out, last = _scan(t, seq_idx, "triton")
    grad_u, = torch.autograd.grad(out.float().sum() + last.sum(), [t["u"]])
    t64 = _float64(t)
    ref_out, ref_last = _scan_separately(t64, segments)
    ref_grad_u, = torch.autograd.grad(ref_out.sum() + ref_last.sum(), [t64["u"]])
    assert out.dtype == torch.bfloat16
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.bfloat16])
    assert_close("last state", last, ref_last, FORWARD_TOLERANCE[torch.bfloat16])
    assert_close("grad u", grad_u, ref_grad_u, GRADIENT_TOLERANCE[torch.bfloat16])


def test_selective_scan_registers_the_seq_idx_kernels():
    from kernels import registered_kernels

    names = {e.name: e for e in registered_kernels() if e.op == "selective_scan"}
    for plain, packed in (("_selective_scan_fwd_kernel", "_selective_scan_fwd_seq_idx_kernel"),
                          ("_selective_scan_bwd_kernel", "_selective_scan_bwd_seq_idx_kernel")):
        assert "seq_idx_ptr" not in names[plain].signature
        assert names[packed].signature["seq_idx_ptr"] == "*i32:16"
        assert names[packed].configs == names[plain].configs
        assert names[packed].dtypes == names[plain].dtypes
    # The varlen variants: the plain signature plus the ordinals and the (gradient of the)
    # varlen states, every config its launcher may pick, and the same dtypes.
    forward = names["_selective_scan_fwd_varlen_kernel"]
    assert forward.signature == {**names["_selective_scan_fwd_seq_idx_kernel"].signature,
                                 "ordinal_ptr": "*i32:16", "varlen_states_ptr": "*fp32:16"}
    assert forward.configs == triton_kernels.FORWARD_CONFIGS
    backward = names["_selective_scan_bwd_varlen_kernel"]
    assert backward.signature == {**names["_selective_scan_bwd_kernel"].signature,
                                  "ordinal_ptr": "*i32:16", "grad_varlen_states_ptr": "*fp32:16"}
    assert backward.configs == triton_kernels.BACKWARD_VARLEN_CONFIGS
    assert forward.dtypes == backward.dtypes == names["_selective_scan_fwd_kernel"].dtypes


def _varlen_scan(t, seq_idx, backend):
    """(out, last state, varlen states) of the packed call."""
    return selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                          t["delta_bias"], delta_softplus=True, return_last_state=True,
                          initial_state=t["initial_state"], backend=backend,
                          seq_idx=seq_idx, return_varlen_states=True)


def _final_states_separately(t, segments):
    """Every sequence's final state from one reference call per sequence, numbered row by row
    and in position order within a row: (num_sequences, dim, N)."""
    finals = [_scan(t, sl=slice(start, stop), rows=slice(b, b + 1), first=i == 0)[1]
              for b, row in enumerate(segments) for i, (start, stop) in enumerate(row)]
    return torch.cat(finals)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(3))
def test_selective_scan_varlen_states_equal_separate_calls(backend, case, small_chunks):
    """Each packed sequence's final state equals its own call's last state, and the gradient of
    every input under random weights on out, the last state and the varlen states equals that
    of the separate calls (so the varlen states' gradient joins the adjoint at the right step)."""
    generator = torch.Generator().manual_seed(300 + case)
    batch, dim, N = (2, 3, 3)[case], (3, 4, 2)[case], (4, 3, 5)[case]
    L = int(torch.randint(9, 36, (), generator=generator, device="cpu"))
    groups, full = ((None, True), (2, False), (None, True))[case]
    seq_idx, segments = random_packing(batch, L, generator)
    t = _scan_inputs(batch, dim, N, L, groups, full, generator)
    out, last, finals = _varlen_scan(t, seq_idx, backend)
    count = sum(len(row) for row in segments)
    assert finals.shape == (count, dim, N) and finals.dtype == torch.float32
    w_out, w_last, w_finals = (_randn(x.shape, generator=generator)
                               for x in (out, last, finals))
    got = _grads((out * w_out).sum() + (last * w_last).sum() + (finals * w_finals).sum(), t)

    t64 = _float64(t)
    ref_out, ref_last = _scan_separately(t64, segments)
    ref_finals = _final_states_separately(t64, segments)
    expected = _grads((ref_out * w_out.double()).sum() + (ref_last * w_last.double()).sum()
                      + (ref_finals * w_finals.double()).sum(), t64)
    assert_close("varlen states", finals, ref_finals, FORWARD_TOLERANCE[torch.float32])
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("last state", last, ref_last, FORWARD_TOLERANCE[torch.float32])
    assert set(got) == set(expected)
    for name in expected:
        assert_close(f"grad {name}", got[name], expected[name], GRADIENT_TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_selective_scan_varlen_states_alone_carry_the_gradient(backend, small_chunks):
    """A loss on the varlen states only (out and the last state unused): the gradients still
    equal the separate calls', and with return_last_state=False the tuple is (out, states)."""
    generator = torch.Generator().manual_seed(41)
    seq_idx = torch.tensor([[3] * 8 + [5] * 9 + [6] * 2, [0] * 19], dtype=torch.int32)
    segments = [[(0, 8), (8, 17), (17, 19)], [(0, 19)]]
    t = _scan_inputs(2, 3, 4, 19, None, True, generator)
    out, finals = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                 t["delta_bias"], delta_softplus=True,
                                 initial_state=t["initial_state"], backend=backend,
                                 seq_idx=seq_idx, return_varlen_states=True)
    assert out.shape == (2, 3, 19) and finals.shape == (4, 3, 4)
    w = _randn(finals.shape, generator=generator)
    state_inputs = ("u", "delta", "A", "B", "delta_bias", "initial_state")  # not C, D, z
    got = _grads((finals * w).sum(), {k: t[k] for k in state_inputs})
    t64 = _float64(t)
    ref_finals = _final_states_separately(t64, segments)
    expected = _grads((ref_finals * w.double()).sum(), {k: t64[k] for k in state_inputs})
    assert set(got) == set(expected) == set(state_inputs)
    assert_close("varlen states", finals, ref_finals, FORWARD_TOLERANCE[torch.float32])
    for name in expected:
        assert_close(f"grad {name}", got[name], expected[name], GRADIENT_TOLERANCE[torch.float32])


def test_selective_scan_varlen_states_in_bfloat16_on_triton(small_chunks):
    generator = torch.Generator().manual_seed(17)
    seq_idx, segments = random_packing(2, 19, generator)
    t = _scan_inputs(2, 3, 4, 19, None, True, generator)
    for name in ("u", "delta", "B", "C", "z"):
        t[name] = t[name].detach().to(torch.bfloat16).requires_grad_()
    _, _, finals = _varlen_scan(t, seq_idx, "triton")
    grad_u, = torch.autograd.grad(finals.sum(), [t["u"]])
    t64 = _float64(t)
    ref_finals = _final_states_separately(t64, segments)
    ref_grad_u, = torch.autograd.grad(ref_finals.sum(), [t64["u"]])
    assert finals.dtype == torch.float32
    assert_close("varlen states", finals, ref_finals, FORWARD_TOLERANCE[torch.bfloat16])
    assert_close("grad u", grad_u, ref_grad_u, GRADIENT_TOLERANCE[torch.bfloat16])


def test_selective_scan_reference_gradcheck_through_varlen_states():
    generator = torch.Generator().manual_seed(13)
    t = _float64(_scan_inputs(2, 2, 2, 6, None, True, generator))
    seq_idx = torch.tensor([[0, 0, 1, 2, 2, 2], [5, 5, 5, 5, 6, 6]], dtype=torch.int32)
    names = [k for k, v in t.items() if v is not None]

    def scan(*values):
        return selective_scan_reference(*values[:5], values[5], values[6], values[7], True,
                                        initial_state=values[8], seq_idx=seq_idx,
                                        return_varlen_states=True)

    out, finals = scan(*[t[k] for k in names])
    assert finals.shape == (5, 2, 2)
    assert torch.autograd.gradcheck(scan, [t[k] for k in names])


def test_triton_varlen_states_refuse_offsets_past_int32():
    """The varlen kernels' in-chunk offsets are int32: T_CHUNK·dim·N must stay below 2^31."""
    dim, N = 2 ** 20, 64  # broadcast views: no memory behind A, B, C
    u = torch.zeros(1, dim, 1)
    A = torch.zeros(1, N).expand(dim, N)
    B = torch.zeros(1, 1, N, 1)
    seq_idx = torch.zeros(1, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"varlen states take T_CHUNK·dim·N < 2\^31"):
        selective_scan(u, u, A, B, B, seq_idx=seq_idx, return_varlen_states=True,
                       backend="triton")


def test_sequence_ordinals_number_sequences_row_by_row():
    seq_idx = torch.tensor([[4, 4, 7, 7, 9], [0, 0, 0, 0, 0], [1, 2, 2, 3, 3]], dtype=torch.int32)
    ordinals, count = sequence_ordinals(seq_idx)
    assert count == 7 and ordinals.dtype == torch.int32
    assert ordinals.tolist() == [[0, 0, 1, 1, 2], [3, 3, 3, 3, 3], [4, 5, 5, 6, 6]]
    assert sequence_ordinals(torch.zeros(2, 0, dtype=torch.int32))[1] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_selective_scan_varlen_states_need_seq_idx(backend):
    t = _scan_inputs(2, 3, 4, 10, None, False, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="return_varlen_states=True needs seq_idx"):
        selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend=backend,
                       return_varlen_states=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_selective_scan_rejects_bad_seq_idx(backend):
    t = _scan_inputs(2, 3, 4, 10, None, False, torch.Generator().manual_seed(0))
    good = torch.zeros(2, 10, dtype=torch.int32)
    decreasing = good.clone()
    decreasing[1, 6:] = -1
    cases = [(good.long(), TypeError, "seq_idx must have dtype int32"),
             (good.float(), TypeError, "seq_idx must have dtype int32"),
             (good[:, :9], ValueError, r"seq_idx must have shape \(batch, L\) = \(2, 10\)"),
             (good[None], ValueError, r"seq_idx must have shape \(batch, L\)"),
             (good.tolist(), TypeError, "seq_idx must be a torch.Tensor"),
             (good.to("meta"), ValueError, "seq_idx is on meta")]
    if good.device.type == "cpu":  # checked on CPU tensors only (on CUDA it would cost a sync)
        cases.append((decreasing, ValueError, "seq_idx must be non-decreasing along each row; "
                                              "row 1 falls from 0 to -1 at t=6"))
    for seq_idx, error, message in cases:
        with pytest.raises(error, match=message):
            _scan(t, seq_idx, backend)


# ---------------------------------------------------------------------------------------------
# causal_conv1d
# ---------------------------------------------------------------------------------------------


def _conv_inputs(batch, dim, width, L, generator, bias=True):
    g = dict(generator=generator)
    return {"x": _randn(batch, dim, L, **g).requires_grad_(),
            "weight": _randn(dim, width, **g).requires_grad_(),
            "bias": _randn(dim, **g).requires_grad_() if bias else None}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(4))
def test_causal_conv1d_packed_equals_separate_calls(backend, case):
    generator = torch.Generator().manual_seed(200 + case)
    width, activation, bias = ((4, "silu", True), (2, None, True), (3, "silu", False),
                               (5, None, True))[case]
    batch, dim = 3, 5
    L = int(torch.randint(10, 41, (), generator=generator, device="cpu"))
    seq_idx, segments = random_packing(batch, L, generator)
    t = _conv_inputs(batch, dim, width, L, generator, bias)
    out = causal_conv1d(t["x"], t["weight"], t["bias"], activation, backend=backend, seq_idx=seq_idx)
    weights = _randn(out.shape, generator=generator)
    got = _grads((out * weights).sum(), t)

    t64 = _float64(t)
    ref = torch.cat([torch.cat([causal_conv1d_reference(t64["x"][b:b + 1, :, start:stop],
                                                        t64["weight"], t64["bias"], activation)
                                for start, stop in row], dim=2)
                     for b, row in enumerate(segments)])
    expected = _grads((ref * weights.double()).sum(), t64)
    assert_close("out", out, ref, FORWARD_TOLERANCE[torch.float32])
    assert set(got) == set(expected)
    for name in expected:
        assert_close(f"grad {name}", got[name], expected[name], GRADIENT_TOLERANCE[torch.float32])


def test_causal_conv1d_reference_gradcheck_with_seq_idx():
    t = _float64(_conv_inputs(2, 3, 3, 7, torch.Generator().manual_seed(1)))
    seq_idx = torch.tensor([[0, 1, 1, 1, 2, 2, 2], [0, 0, 0, 0, 0, 3, 3]], dtype=torch.int32)
    assert torch.autograd.gradcheck(
        lambda x, w, b: causal_conv1d_reference(x, w, b, "silu", seq_idx),
        [t["x"], t["weight"], t["bias"]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_conv1d_rejects_bad_seq_idx(backend):
    x, weight = torch.randn(2, 3, 8), torch.randn(3, 4)
    good = torch.zeros(2, 8, dtype=torch.int32)
    decreasing = good.clone()
    decreasing[0, 3] = 5
    cases = [(good.long(), TypeError, "seq_idx must have dtype int32"),
             (good[:1], ValueError, r"seq_idx must have shape \(batch, L\) = \(2, 8\)"),
             (good.to("meta"), ValueError, "seq_idx is on meta")]
    if good.device.type == "cpu":  # checked on CPU tensors only (on CUDA it would cost a sync)
        cases.append((decreasing, ValueError, "row 0 falls from 5 to 0 at t=4"))
    for seq_idx, error, message in cases:
        with pytest.raises(error, match=message):
            causal_conv1d(x, weight, activation="silu", backend=backend, seq_idx=seq_idx)


def test_causal_conv1d_package_takes_seq_idx_only_channel_last():
    x = torch.randn(2, 6, 9)
    seq_idx = torch.zeros(2, 9, dtype=torch.int32)
    channel_last = torch.randn(2, 9, 6).transpose(1, 2)
    assert conv_op._package_takes_seq_idx(x, None)
    assert not conv_op._package_takes_seq_idx(x, seq_idx)
    assert conv_op._package_takes_seq_idx(channel_last, seq_idx)


def test_causal_conv1d_with_seq_idx_falls_back_from_the_package_on_channel_first(monkeypatch):
    """With the package "installed" (a recorder), seq_idx and a channel-first x take the torch
    path; a channel-last x goes to the package with seq_idx."""
    calls = []

    def causal_conv1d_fn(x, weight, bias, activation=None, seq_idx=None):
        calls.append(seq_idx)
        return torch.zeros_like(x)

    monkeypatch.setattr(conv_op, "_cuda_package",
                        lambda: types.SimpleNamespace(causal_conv1d_fn=causal_conv1d_fn))
    monkeypatch.setattr(conv_op, "package_supports", lambda x, weight, bias: True)
    weight = torch.randn(6, 4)
    seq_idx = torch.tensor([[0] * 4 + [1] * 5, [0] * 9], dtype=torch.int32)
    x = torch.randn(2, 6, 9)
    out = causal_conv1d(x, weight, activation="silu", backend="triton", seq_idx=seq_idx)
    assert calls == []
    assert_close("fallback", out, causal_conv1d_reference(x, weight, None, "silu", seq_idx),
                 FORWARD_TOLERANCE[torch.float32])
    causal_conv1d(x.transpose(1, 2).contiguous().transpose(1, 2), weight, activation="silu",
                  backend="triton", seq_idx=seq_idx)
    assert len(calls) == 1 and calls[0] is seq_idx


# ---------------------------------------------------------------------------------------------
# Mamba
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ("fast", "triton"))
def test_mamba_forward_packed_equals_separate_calls(backend, small_chunks):
    generator = torch.Generator().manual_seed(300)
    module = Mamba(4, d_state=3, d_conv=3, expand=1.5, backend=backend)
    reference = Mamba(4, d_state=3, d_conv=3, expand=1.5, backend="reference").double()
    reference.load_state_dict(module.state_dict())
    batch, L = 2, 13
    seq_idx, segments = random_packing(batch, L, generator)
    hidden = _randn(batch, L, 4, generator=generator).requires_grad_()
    out = module(hidden, seq_idx=seq_idx)
    weights = _randn(out.shape, generator=generator)
    (out * weights).sum().backward()

    hidden64 = hidden.detach().double().requires_grad_()
    ref = torch.cat([torch.cat([reference(hidden64[b:b + 1, start:stop]) for start, stop in row],
                               dim=1) for b, row in enumerate(segments)])
    (ref * weights.double()).sum().backward()
    assert_close("out", out, ref, FORWARD_TOLERANCE[torch.float32])
    assert_close("grad hidden_states", hidden.grad, hidden64.grad, GRADIENT_TOLERANCE[torch.float32])
    params = dict(reference.named_parameters())
    for name, p in module.named_parameters():
        assert_close(f"grad {name}", p.grad, params[name].grad, GRADIENT_TOLERANCE[torch.float32])


def test_mamba_prompt_with_seq_idx_then_steps_continue_the_last_sequence():
    """A packed prompt fills the states of each row's last sequence: the steps after it equal
    those after a prompt of that sequence alone."""
    module = Mamba(8, d_state=4, d_conv=4, layer_idx=0, backend="fast")
    hidden = torch.randn(2, 9, 8)
    after = torch.randn(2, 3, 8)
    seq_idx = torch.tensor([[0] * 7 + [1] * 2, [0] * 3 + [4] * 6], dtype=torch.int32)

    def generate(prompt, seq, tokens):
        params = types.SimpleNamespace(key_value_memory_dict={}, seqlen_offset=0)
        module(prompt, inference_params=params, seq_idx=seq)
        outs = []
        for t in range(tokens.shape[1]):
            params.seqlen_offset = prompt.shape[1] + t
            outs.append(module(tokens[:, t:t + 1], inference_params=params))
        return torch.cat(outs, dim=1)

    with torch.no_grad():
        packed = generate(hidden, seq_idx, after)
        for b, start in enumerate((7, 3)):
            alone = generate(hidden[b:b + 1, start:], None, after[b:b + 1])
            assert_close(f"row {b}", packed[b:b + 1], alone, FORWARD_TOLERANCE[torch.float32])


def test_seq_idx_compiles_without_graph_break():
    """torch.compile(fullgraph=True) traces the conv and the scan with seq_idx (the CPU
    non-decreasing check, data-dependent, is skipped while tracing) and matches eager."""
    torch._dynamo.reset()

    def block(x, weight, delta, A, B, C, seq_idx):
        x = causal_conv1d(x, weight, activation="silu", backend="fast", seq_idx=seq_idx)
        out, last = selective_scan(x, delta, A, B, C, delta_softplus=True, return_last_state=True,
                                   backend="fast", seq_idx=seq_idx)
        return out.square().sum() + last.sum()

    generator = torch.Generator().manual_seed(4)
    seq_idx, _ = random_packing(2, 20, generator)
    x = _randn(2, 3, 20, generator=generator).requires_grad_()
    rest = (_randn(3, 4, generator=generator), _randn(2, 3, 20, generator=generator),
            -_rand(3, 4, generator=generator), _randn(2, 4, 20, generator=generator),
            _randn(2, 4, 20, generator=generator))
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    (grad_x,) = torch.autograd.grad(compiled(x, *rest, seq_idx), x)
    (ref_grad_x,) = torch.autograd.grad(block(x, *rest, seq_idx), x)
    assert_close("grad x", grad_x, ref_grad_x, GRADIENT_TOLERANCE[torch.float32])
