"""selective_scan on the triton path (the interpreter) against its float64 reference: out, the last
state and the gradient of every input, with random gradients for both outputs.

The interpreter scans element by element, about 0.2 ms per element of a padded tile, so most cases
run with the ``small_tiles`` fixture: 8-step chunks (several chunk boundaries in a short L) and 2
channels per program (odd dims leave a half-masked program; dB/dC sum partials over programs)."""
from functools import partial

import pytest
import torch

from kernels import LaunchConfig, registered_kernels
from kernels.selective_scan import selective_scan, selective_scan_reference
from kernels.selective_scan import triton_kernels
from kernels.selective_scan.inputs import make_inputs
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

SMALL_CHUNK = 8
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
ALL = dict(D=True, z=True, delta_bias=True, softplus=True, initial_state=True)
BARE = dict(D=False, z=False, delta_bias=False, softplus=False, initial_state=False)


def _small_configs(block_d):
    return tuple(LaunchConfig({"BLOCK_D": block_d, "N_PAD": pad, "T_CHUNK": SMALL_CHUNK}, 1)
                 for pad in triton_kernels.STATE_PADS)


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(triton_kernels, "FORWARD_CONFIGS", _small_configs(2))
    monkeypatch.setattr(triton_kernels, "BACKWARD_CONFIGS", _small_configs(2))


def _inputs(batch, dim, N, L, groups=None, dtype=torch.float32, param_dtype=torch.float32,
            delta_scale=None, D=True, z=True, delta_bias=True, softplus=True, initial_state=True):
    """Leaf tensors by name (None where absent), from ``make_inputs``; with ``delta_scale``, delta
    is delta_scale·randn instead (both of softplus' tails)."""
    tensors = make_inputs(batch, dim, L, N, dtype=dtype, param_dtype=param_dtype, groups=groups,
                          D=D, z=z, delta_bias=delta_bias, delta_softplus=softplus,
                          initial_state=initial_state)
    t = dict(zip(NAMES, tensors + ((None,) if not initial_state else ())))
    if delta_scale is not None:  # make_inputs' delta is 0.5·randn − 1 with softplus
        t["delta"] = ((t["delta"].float() + 1.0) * 2.0 * delta_scale).to(dtype)
    return {k: (None if v is None else v.requires_grad_()) for k, v in t.items()}, softplus


def _call(fn, t, softplus, **kwargs):
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
              softplus, return_last_state=True, initial_state=t["initial_state"], **kwargs)


def _leaves(t):
    return [(k, v) for k, v in t.items() if v is not None]


def _reference(t, softplus, grad_out, grad_last, reference=selective_scan_reference):
    ref = {k: None if v is None else v.detach().double().requires_grad_() for k, v in t.items()}
    out, last = _call(reference, ref, softplus)
    names, leaves = zip(*_leaves(ref))
    grads = torch.autograd.grad((out, last), leaves, (grad_out.double(), grad_last.double()))
    return out, last, dict(zip(names, grads))


def _check_against_reference(t, softplus, dtype, reference=selective_scan_reference):
    out, last = _call(selective_scan, t, softplus, backend="triton")
    assert out.dtype == dtype and out.shape == t["u"].shape
    assert last.dtype == torch.float32 and last.shape == t["u"].shape[:2] + t["A"].shape[1:]
    grad_out, grad_last = torch.randn(out.shape).to(dtype), torch.randn(last.shape)
    names, leaves = zip(*_leaves(t))
    grads = torch.autograd.grad((out, last), leaves, (grad_out, grad_last))
    ref_out, ref_last, ref_grads = _reference(t, softplus, grad_out, grad_last, reference)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[dtype])
    assert_close("last_state", last, ref_last, FORWARD_TOLERANCE[dtype])
    for name, grad in zip(names, grads):
        assert grad.dtype == t[name].dtype and grad.shape == t[name].shape, name
        assert_close(f"grad_{name}", grad, ref_grads[name], GRADIENT_TOLERANCE[dtype])


# (batch, dim, N, L, groups, options): L straddles the 8-step chunk (1, 9, 63, 200); dims leave
# a program half masked; groups None is a 3-D B/C, 1 a 4-D one.
CASES = {
    "all-L63": (2, 3, 3, 63, None, ALL),
    "all-grouped-L63": (2, 4, 3, 63, 2, ALL),
    "bare-L63": (2, 3, 3, 63, None, BARE),
    "bare-grouped1-L63": (1, 3, 2, 63, 1, BARE),
    "all-L1": (2, 3, 3, 1, None, ALL),
    "bare-grouped-L1": (1, 4, 2, 1, 2, BARE),
    "all-grouped-L9": (2, 4, 2, SMALL_CHUNK + 1, 2, ALL),
    "all-L200": (1, 3, 2, 200, None, ALL),
    "D-only": (1, 3, 2, 40, None, dict(BARE, D=True)),
    "z-only": (1, 3, 2, 40, None, dict(BARE, z=True)),
    "bias-softplus": (1, 3, 2, 40, 1, dict(BARE, delta_bias=True, softplus=True)),
    "softplus-initial-state": (2, 3, 2, 17, None, dict(BARE, softplus=True, initial_state=True)),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_float64_reference(case, small_tiles, poisoned_empty):
    batch, dim, N, L, groups, options = CASES[case]
    _check_against_reference(*_inputs(batch, dim, N, L, groups, **options), torch.float32)


@pytest.mark.parametrize("dtype,param_dtype", [(torch.float16, torch.float16),
                                               (torch.bfloat16, torch.float32)], ids=str)
def test_half_precision_inputs(dtype, param_dtype, small_tiles, poisoned_empty):
    """fp16 throughout, and bf16 activations with fp32 A, D, delta_bias, state (Mamba's mix)."""
    t, softplus = _inputs(2, 4, 3, 41, 2, dtype=dtype, param_dtype=param_dtype)
    _check_against_reference(t, softplus, dtype)


def test_softplus_tails(small_tiles, poisoned_empty):
    """delta + delta_bias beyond ±20: softplus is x above 20 and exp(x) far below 0."""
    t, softplus = _inputs(1, 3, 2, 30, delta_scale=15.0)
    assert t["delta"].max() > 23 and t["delta"].min() < -17
    _check_against_reference(t, softplus, torch.float32)


def test_launch_configs(poisoned_empty):
    """The registered configs, as the launcher picks them on the CPU (the narrow ones for a small
    grid), at L = T_CHUNK + 1; and the wide ones for a large grid."""
    t, softplus = _inputs(1, 3, 2, triton_kernels.T_CHUNK + 1)
    _check_against_reference(t, softplus, torch.float32)
    pick = triton_kernels.launch_config
    for configs, per_sm in ((triton_kernels.FORWARD_CONFIGS, triton_kernels.FORWARD_PROGRAMS_PER_SM),
                            (triton_kernels.BACKWARD_CONFIGS, triton_kernels.BACKWARD_PROGRAMS_PER_SM)):
        widths = [c.constexprs["BLOCK_D"] for c in configs]
        small = pick(configs, per_sm, 1, 1, 3, 2, torch.device("cpu"))
        large = pick(configs, per_sm, 8, 1, 1536, 16, torch.device("cpu"))
        assert small.constexprs["BLOCK_D"] == min(widths) and small.constexprs["N_PAD"] == 16
        assert large.constexprs["BLOCK_D"] == max(widths) and large.constexprs["N_PAD"] == 16
        assert pick(configs, per_sm, 8, 1, 1536, 40, torch.device("cpu")).constexprs["N_PAD"] == 64


def test_sum_backward_with_stride_zero_gradient(small_tiles):
    """y.sum().backward() hands backward an expanded (stride-0) gradient; last state unused."""
    t, softplus = _inputs(2, 3, 2, 20)
    out = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                         t["delta_bias"], softplus, initial_state=t["initial_state"],
                         backend="triton")
    out.sum().backward()
    ref = {k: v.detach().double().requires_grad_() for k, v in t.items()}
    selective_scan_reference(ref["u"], ref["delta"], ref["A"], ref["B"], ref["C"], ref["D"],
                             ref["z"], ref["delta_bias"], softplus,
                             initial_state=ref["initial_state"]).sum().backward()
    for name, v in t.items():
        assert_close(f"grad_{name}", v.grad, ref[name].grad, GRADIENT_TOLERANCE[torch.float32])


def test_gradient_of_last_state_alone(small_tiles, poisoned_empty):
    t, softplus = _inputs(1, 3, 2, 19)
    _, last = _call(selective_scan, t, softplus, backend="triton")
    names, leaves = zip(*_leaves(t))
    grads = torch.autograd.grad(last.square().sum(), leaves)
    ref = {k: v.detach().double().requires_grad_() for k, v in t.items()}
    _, ref_last = _call(selective_scan_reference, ref, softplus)
    ref_grads = torch.autograd.grad(ref_last.square().sum(), [ref[n] for n in names],
                                    allow_unused=True)  # C, D and z do not reach the state
    for name, grad, ref_grad in zip(names, grads, ref_grads):
        ref_grad = torch.zeros_like(ref[name]) if ref_grad is None else ref_grad
        assert_close(f"grad_{name}", grad, ref_grad, GRADIENT_TOLERANCE[torch.float32])


def test_scanning_in_pieces_matches_one_scan(small_tiles):
    """Two scans chained through initial_state = the first's last state give one scan's outputs
    and gradients: gradients flow through both the returned last state and the initial state."""
    t, softplus = _inputs(1, 3, 2, 26, groups=1)
    split = 11
    pieces = []
    state = t["initial_state"]
    for steps in (slice(None, split), slice(split, None)):
        out, state = selective_scan(
            t["u"][..., steps], t["delta"][..., steps], t["A"], t["B"][..., steps],
            t["C"][..., steps], t["D"], t["z"][..., steps], t["delta_bias"], softplus,
            return_last_state=True, initial_state=state, backend="triton")
        pieces.append(out)
    last = state
    out = torch.cat(pieces, dim=-1)
    grad_out, grad_last = torch.randn(out.shape), torch.randn(last.shape)
    names, leaves = zip(*_leaves(t))
    grads = torch.autograd.grad((out, last), leaves, (grad_out, grad_last))
    ref_out, ref_last, ref_grads = _reference(t, softplus, grad_out, grad_last)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("last_state", last, ref_last, FORWARD_TOLERANCE[torch.float32])
    for name, grad in zip(names, grads):
        assert_close(f"grad_{name}", grad, ref_grads[name], GRADIENT_TOLERANCE[torch.float32])


def test_backward_is_deterministic(small_tiles):
    t, softplus = _inputs(2, 5, 2, 21)
    out, last = _call(selective_scan, t, softplus, backend="triton")
    grad_out, grad_last = torch.randn_like(out), torch.randn_like(last)
    leaves = [v for _, v in _leaves(t)]
    first = torch.autograd.grad((out, last), leaves, (grad_out, grad_last), retain_graph=True)
    second = torch.autograd.grad((out, last), leaves, (grad_out, grad_last))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("batch,L", [(0, 10), (2, 0)])
def test_empty_batch_or_length(batch, L, small_tiles, poisoned_empty):
    """No step: out is empty and the last state is the initial one, gradient passed through."""
    t, softplus = _inputs(batch, 3, 2, L)
    out, last = _call(selective_scan, t, softplus, backend="triton")
    assert out.shape == (batch, 3, L)
    if L == 0:
        assert torch.equal(last, t["initial_state"].detach())
    grad_last = torch.randn(last.shape)
    names, leaves = zip(*_leaves(t))
    grads = dict(zip(names, torch.autograd.grad((out, last), leaves, (torch.ones_like(out), grad_last),
                                                allow_unused=True)))
    assert torch.equal(grads["initial_state"], grad_last)
    for name in ("A", "D", "delta_bias"):
        assert torch.equal(grads[name], torch.zeros_like(t[name]))


def test_triton_limits_are_clear_errors():
    t, softplus = _inputs(1, 2, 2, 4)
    with pytest.raises(TypeError, match="u must have a floating dtype"):
        selective_scan(*(t[k].double() for k in ("u", "delta", "A", "B", "C")), backend="triton")
    N = triton_kernels.MAX_N + 1
    with pytest.raises(ValueError, match=f"N={N} states.*use backend='fast'"):
        selective_scan(t["u"], t["delta"], torch.zeros(2, N), torch.zeros(1, N, 4),
                       torch.zeros(1, N, 4), backend="triton")


class _RecordingLaunches:
    """Stands in for a triton kernel: records the B and C each launch is handed (arguments 4 and
    5), then launches the real kernel."""

    def __init__(self, kernel):
        self.kernel, self.seen = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.seen.append((args[4], args[5]))
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_constant_B_C_reach_the_kernels_as_stride_zero_views(dtype, small_tiles, monkeypatch):
    """A constant (dim, N) B and C (fp32, with fp32 or bf16 u) are handed to the forward and
    backward kernels as views of the caller's tensors, stride 0 over batch and time: no
    (batch, dim, N, L) copy. Out and every gradient still match the float64 reference, the
    gradients of B and C (dim, N)."""
    batch, dim, N, L = 2, 3, 2, 19
    t, softplus = _inputs(batch, dim, N, L, dtype=dtype)
    t["B"] = torch.randn(dim, N).requires_grad_()
    t["C"] = torch.randn(dim, N).requires_grad_()
    launches = {}
    for name in ("_selective_scan_fwd_kernel", "_selective_scan_bwd_kernel"):
        launches[name] = _RecordingLaunches(getattr(triton_kernels, name))
        monkeypatch.setattr(triton_kernels, name, launches[name])
    _check_against_reference(t, softplus, dtype, partial(selective_scan, backend="reference"))
    for name, recorded in launches.items():
        assert len(recorded.seen) == 1, name
        for given, caller in zip(recorded.seen[0], (t["B"], t["C"])):
            assert given.shape == (batch, dim, N, L) and given.stride() == (0, N, 1, 0), name
            assert given.data_ptr() == caller.data_ptr() and given.dtype == torch.float32, name


def test_fp32_B_C_with_bf16_u_are_read_in_fp32(small_tiles, poisoned_empty):
    """fp32 B and C with bf16 u (mamba_ssm's mix) are read by the kernels in fp32: closer to the
    float64 reference than the same call with B and C cast to bf16 first (measured both ways),
    most of all in the fp32 last state, and every gradient within bf16's tolerance."""
    t, softplus = _inputs(2, 4, 3, 41, 2, dtype=torch.bfloat16)
    for name in ("B", "C"):
        t[name] = torch.randn(t[name].shape).requires_grad_()  # not representable in bf16
    _check_against_reference(t, softplus, torch.bfloat16)
    ref_out, ref_last, _ = _reference(t, softplus, torch.zeros(t["u"].shape),
                                      torch.zeros(t["initial_state"].shape))

    def errors(B, C):
        out, last = _call(selective_scan, dict(t, B=B, C=C), softplus, backend="triton")
        return [((x.double() - ref).norm() / ref.norm()).item()
                for x, ref in ((out, ref_out), (last, ref_last))]

    out_fp32, last_fp32 = errors(t["B"], t["C"])
    out_cast, last_cast = errors(t["B"].bfloat16(), t["C"].bfloat16())
    assert out_fp32 < out_cast, (out_fp32, out_cast)
    assert last_fp32 * 10 < last_cast, (last_fp32, last_cast)


def test_registered_dtype_pairs():
    """Every selective_scan kernel is registered for (u, B/C) = (fp32, fp32), (fp16, fp16),
    (bf16, bf16) with every config, and (fp16, fp32), (bf16, fp32) with the wide configs, which
    are the ones its launcher picks for fp32 B and C with half-precision u."""
    entries = [e for e in registered_kernels() if e.op == "selective_scan"]
    assert len(entries) == 6
    for entry in entries:
        assert entry.signature["B_ptr"] == entry.signature["C_ptr"] == "*{bc_dtype}:16"
        variants = {}
        for label, signature, config in entry.variants():
            variants.setdefault(label, []).append(config)
            u_type, b_type = signature["u_ptr"], signature["B_ptr"]
            assert (u_type, b_type) in {("*fp32:16", "*fp32:16"), ("*fp16:16", "*fp16:16"),
                                        ("*bf16:16", "*bf16:16"), ("*fp16:16", "*fp32:16"),
                                        ("*bf16:16", "*fp32:16")}, (entry.name, label)
        assert list(variants) == ["fp32", "fp16", "bf16", "dtype=fp16,bc_dtype=fp32",
                                  "dtype=bf16,bc_dtype=fp32"]
        for label in ("fp32", "fp16", "bf16"):
            assert tuple(variants[label]) == entry.configs
        for half in (torch.float16, torch.bfloat16):
            wide = triton_kernels.configs_for(entry.configs, half, torch.float32)
            label = f"dtype={'fp16' if half == torch.float16 else 'bf16'},bc_dtype=fp32"
            assert tuple(variants[label]) == wide and 0 < len(wide) < len(entry.configs)
            assert all(c.constexprs["BLOCK_D"] == entry.configs[0].constexprs["BLOCK_D"]
                       for c in wide)


def test_strided_B_C_views(small_tiles, poisoned_empty):
    """A (batch, N, L) B and C that are transposes of (batch, L, N) tensors (strides (L·N, 1, N))
    are read through their strides, and match the reference; a view whose offsets inside one
    group could pass 2^31 is made contiguous for the kernels."""
    t, softplus = _inputs(2, 3, 2, 19, initial_state=False)
    for name in ("B", "C"):
        t[name] = torch.randn(2, 19, 2).transpose(1, 2).requires_grad_()
        assert not t[name].is_contiguous()
    _check_against_reference(t, softplus, torch.float32)
    huge = torch.empty_strided((1, 1, 2, 3), (0, 0, 2 ** 31, 1), device="meta")
    assert triton_kernels.grouped(huge).is_contiguous()
    small = torch.empty_strided((2, 1, 2, 3), (0, 0, 1, 0), device="meta")
    assert triton_kernels.grouped(small).stride() == (0, 0, 1, 0)
