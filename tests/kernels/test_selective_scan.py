"""selective_scan's public function: the reference proven (gradcheck, closed form), every path at
L = 4096, the benchmark's mamba_ssm-style peer equal to the reference, and clear errors."""
import pytest
import torch
import torch.nn.functional as F

from kernels.selective_scan.reference import selective_scan_mamba_style as mamba_style_loop
from kernels import SelectiveScan, selective_scan
from kernels.selective_scan import selective_scan_reference
from kernels.selective_scan.inputs import make_inputs
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _inputs(batch=2, dim=4, N=3, L=7, groups=None, dtype=torch.float64):
    """Every input by name, all in ``dtype``, an initial state included."""
    return dict(zip(NAMES, make_inputs(batch, dim, L, N, groups=groups, dtype=dtype,
                                       param_dtype=dtype, initial_state=True)))


@pytest.mark.parametrize("groups", [None, 2])
def test_reference_gradcheck(groups):
    t = {k: v.requires_grad_() for k, v in _inputs(batch=1, dim=4, N=2, L=5, groups=groups).items()}
    names = list(t)

    def fn(*args):
        kw = dict(zip(names, args))
        out, last = selective_scan_reference(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"],
                                             kw["z"], kw["delta_bias"], True, return_last_state=True,
                                             initial_state=kw["initial_state"])
        return out, last

    assert torch.autograd.gradcheck(fn, [t[n] for n in names])


def test_reference_equals_the_closed_form():
    """h_t = Σ_{s≤t} (Π_{s<k≤t} exp(dt_k A)) dt_s B_s u_s + (Π_{k≤t} exp(dt_k A)) h_{-1}, summed directly."""
    t = _inputs(batch=2, dim=4, N=3, L=6, groups=2)
    out, last = selective_scan_reference(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                         t["delta_bias"], True, return_last_state=True,
                                         initial_state=t["initial_state"])
    dt = F.softplus(t["delta"] + t["delta_bias"][:, None])
    B_ch = t["B"].repeat_interleave(2, dim=1)  # (batch, dim, N, L): channels 0-1 group 0, 2-3 group 1
    C_ch = t["C"].repeat_interleave(2, dim=1)
    log_decay = dt[:, :, None, :] * t["A"][None, :, :, None]  # (batch, dim, N, L)
    ys = []
    for step in range(6):
        h = torch.exp(log_decay[..., :step + 1].sum(-1)) * t["initial_state"]
        for s in range(step + 1):
            carry = torch.exp(log_decay[..., s + 1:step + 1].sum(-1))
            h = h + carry * (dt[:, :, s] * t["u"][:, :, s])[..., None] * B_ch[..., s]
        ys.append((h * C_ch[..., step]).sum(-1))
    y = torch.stack(ys, -1) + t["D"][:, None] * t["u"]
    assert_close("out", out, y * F.silu(t["z"]), 1e-12)
    assert_close("last_state", last, h, 1e-12)


def test_mamba_style_peer_equals_reference():
    t = _inputs(batch=2, dim=5, N=4, L=33, dtype=torch.float32)
    args = [t[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out, last = mamba_style_loop(*args, delta_softplus=True)
    ref_out, ref_last = selective_scan_reference(*args, True, return_last_state=True)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("last_state", last, ref_last, FORWARD_TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", ["fast", "triton"])
def test_long_sequence_l4096(backend):
    """L = 4096 (128 chunks of the triton path, 64 checkpoints of the CPU path), forward and every
    gradient, on a single channel and state so the interpreter stays fast."""
    t = _inputs(batch=1, dim=1, N=1, L=4096, dtype=torch.float32)
    t["delta"] = t["delta"] - 2.0  # dt ≈ 0.05: the state remembers hundreds of steps
    t = {k: v.requires_grad_() for k, v in t.items()}
    names = list(t)
    out, last = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
                               True, return_last_state=True, initial_state=t["initial_state"], backend=backend)
    grad_out, grad_last = torch.randn_like(out), torch.randn_like(last)
    grads = torch.autograd.grad((out, last), [t[n] for n in names], (grad_out, grad_last))
    ref = {k: v.detach().double().requires_grad_() for k, v in t.items()}
    ref_out, ref_last = selective_scan_reference(
        ref["u"], ref["delta"], ref["A"], ref["B"], ref["C"], ref["D"], ref["z"], ref["delta_bias"],
        True, return_last_state=True, initial_state=ref["initial_state"])
    ref_grads = torch.autograd.grad((ref_out, ref_last), [ref[n] for n in names],
                                    (grad_out.double(), grad_last.double()))
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("last_state", last, ref_last, FORWARD_TOLERANCE[torch.float32])
    for name, g, r in zip(names, grads, ref_grads):
        assert_close(f"grad_{name}", g, r, GRADIENT_TOLERANCE[torch.float32])


def test_reference_backend_and_optional_arguments_left_none():
    t = _inputs(dtype=torch.float32)
    out = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend="reference")
    assert out.shape == t["u"].shape
    out2, last = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], return_last_state=True)
    assert_close("auto = torch", out2, out, FORWARD_TOLERANCE[torch.float32])
    assert last.shape == (2, 4, 3) and last.dtype == torch.float32


BAD_INPUTS = [
    ("u must be 3-D", lambda t: dict(u=t["u"][0]), ValueError),
    ("delta must have the shape of u", lambda t: dict(delta=t["delta"][:, :, :3]), ValueError),
    ("z must have the shape of u", lambda t: dict(z=t["z"][:1]), ValueError),
    ("A must be 2-D", lambda t: dict(A=t["A"][0]), ValueError),
    ("A must be 2-D", lambda t: dict(A=t["A"][:3]), ValueError),
    ("B must be", lambda t: dict(B=t["B"][0]), ValueError),
    ("C must have shape", lambda t: dict(C=t["C"][:, :2]), ValueError),
    ("B has 3 groups, which do not divide dim=4", lambda t: dict(B=torch.randn(2, 3, 3, 7), C=torch.randn(2, 3, 3, 7)), ValueError),
    (r"C must be \(dim, N\) = \(4, 3\) when 2-D", lambda t: dict(C=torch.randn(3, 4)), ValueError),
    ("D must have shape", lambda t: dict(D=torch.randn(5)), ValueError),
    ("delta_bias must have shape", lambda t: dict(delta_bias=torch.randn(4, 1)), ValueError),
    ("initial_state must have shape", lambda t: dict(initial_state=torch.randn(2, 4, 2)), ValueError),
    ("delta has dtype", lambda t: dict(delta=t["delta"].double()), TypeError),
    ("z has dtype", lambda t: dict(z=t["z"].half()), TypeError),
    ("u must have a floating dtype", lambda t: dict(u=t["u"].long()), TypeError),
    ("A must be a torch.Tensor", lambda t: dict(A=t["A"].tolist()), TypeError),
    ("C is on meta", lambda t: dict(C=t["C"].to("meta")), ValueError),
    ("A is on meta", lambda t: dict(A=t["A"].to("meta")), ValueError),
]


@pytest.mark.parametrize("message,change,error", BAD_INPUTS, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_is_named(message, change, error):
    t = _inputs(dtype=torch.float32)
    t.update(change(t))
    with pytest.raises(error, match=message):
        selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
                       initial_state=t["initial_state"])


class _ScanBlock(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.A_log = torch.nn.Parameter(torch.randn(3, 2))
        self.D = torch.nn.Parameter(torch.randn(3))

    def forward(self, u, delta, B, C, z):
        out, last = selective_scan(u.tanh(), delta, -torch.exp(self.A_log), B, C, self.D, z,
                                   delta_softplus=True, return_last_state=True, backend=self.backend)
        return out * 2, last


@pytest.mark.parametrize("backend", ["fast", "triton"])
def test_compiles_without_graph_break(backend):
    torch._dynamo.reset()
    block = _ScanBlock(backend)
    t = _inputs(batch=1, dim=3, N=2, L=9, dtype=torch.float32)
    args = (t["u"].requires_grad_(), t["delta"], t["B"], t["C"], t["z"])
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out, last = compiled(*args)
    grads = torch.autograd.grad(out.square().sum() + last.sum(), (args[0], block.A_log))
    ref_out, ref_last = block(*args)
    ref_grads = torch.autograd.grad(ref_out.square().sum() + ref_last.sum(), (args[0], block.A_log))
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[torch.float32])
    assert_close("last", last, ref_last, FORWARD_TOLERANCE[torch.float32])
    for g, r in zip(grads, ref_grads):
        assert_close("grad", g, r, GRADIENT_TOLERANCE[torch.float32])


def test_module_is_the_op_with_its_settings():
    t = _inputs(batch=2, dim=4, N=3, L=9, groups=2, dtype=torch.float32)
    args = [t[k] for k in NAMES[:8]]
    module = SelectiveScan(delta_softplus=True, return_last_state=True, backend="fast")
    out, last = module(*args, initial_state=t["initial_state"])
    ref_out, ref_last = selective_scan(*args, True, True, t["initial_state"], backend="fast")
    assert torch.equal(out, ref_out) and torch.equal(last, ref_last)
    plain = SelectiveScan(delta_softplus=False)
    assert torch.equal(plain(*args[:5]), selective_scan(*args[:5]))
    assert "delta_softplus=False" in repr(plain) and list(plain.parameters()) == []
