"""mamba_ssm parity beyond Mamba-1's own calls: every call its ``selective_scan_fn`` accepts
(constant B/C, mixed groups, B/C in another dtype than u) on every backend against the float64
reference, and the attributes of ``mamba_ssm.Mamba`` that code reaches for (``act``)."""
import pytest
import torch
import torch.nn.functional as F

from kernels import Mamba

EXPECTED_KEYS = {"A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                 "dt_proj.weight", "dt_proj.bias", "out_proj.weight"}


def test_mamba_exposes_act_as_a_silu_module():
    module = Mamba(12, d_state=4, backend="fast")
    assert isinstance(module.act, torch.nn.SiLU)
    x = torch.randn(3, 7)
    torch.testing.assert_close(module.act(x), F.silu(x), rtol=0, atol=0)
    # a module without parameters or buffers: the state_dict stays mamba_ssm's
    assert set(module.state_dict()) == EXPECTED_KEYS


# --- selective_scan: constant, mixed-group and other-dtype B / C ---------------------------------

from kernels import LaunchConfig  # noqa: E402
from kernels.selective_scan import selective_scan, selective_scan_reference  # noqa: E402
from kernels.selective_scan import triton_kernels  # noqa: E402
from kernels.selective_scan.inputs import make_inputs  # noqa: E402
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close  # noqa: E402

BACKENDS = ["reference", "fast", "triton"]
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.fixture
def small_tiles(monkeypatch):
    """8-step chunks and 2 channels per program: chunk and program boundaries in tiny shapes."""
    configs = tuple(LaunchConfig({"BLOCK_D": 2, "N_PAD": pad, "T_CHUNK": 8}, 1)
                    for pad in triton_kernels.STATE_PADS)
    monkeypatch.setattr(triton_kernels, "FORWARD_CONFIGS", configs)
    monkeypatch.setattr(triton_kernels, "BACKWARD_CONFIGS", configs)


def _layout(name):
    """A B or C layout of ``make_inputs``: "const" (dim, N), "3d" (batch, N, L), or "g<G>"
    (batch, G, N, L)."""
    if name == "const":
        return "constant"
    return None if name == "3d" else int(name[1:])


def _scan_inputs(batch, dim, N, L, B_layout, C_layout, dtype=torch.float32, bc_dtype=None):
    return dict(zip(NAMES, make_inputs(batch, dim, L, N, dtype=dtype, bc_dtype=bc_dtype,
                                       groups=_layout(B_layout), C_groups=_layout(C_layout),
                                       initial_state=True)))


def _per_channel(t, batch, dim, L):
    """The literal meaning of each layout in float64: (batch, dim, N, L), channel d seeing B of its
    group, a constant (dim, N) one the same at every batch element and step (mamba_ssm's
    ``selective_scan_ref`` with ``is_variable_B`` false)."""
    if t.dim() == 2:
        return t[None, :, :, None].expand(batch, dim, t.shape[1], L)
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return t.repeat_interleave(dim // t.shape[1], dim=1)


def _float64_reference(t, grad_out, grad_last):
    ref = {k: v.detach().double().requires_grad_() for k, v in t.items()}
    batch, dim, L = t["u"].shape
    out, last = selective_scan_reference(
        ref["u"], ref["delta"], ref["A"], _per_channel(ref["B"], batch, dim, L),
        _per_channel(ref["C"], batch, dim, L), ref["D"], ref["z"], ref["delta_bias"], True,
        return_last_state=True, initial_state=ref["initial_state"])
    grads = torch.autograd.grad((out, last), [ref[k] for k in NAMES],
                                (grad_out.double(), grad_last.double()))
    return out, last, dict(zip(NAMES, grads))


def _check(t, backend, dtype):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    out, last = selective_scan(*(leaves[k] for k in NAMES[:8]), delta_softplus=True,
                               return_last_state=True, initial_state=leaves["initial_state"],
                               backend=backend)
    assert out.dtype == t["u"].dtype and out.shape == t["u"].shape
    grad_out, grad_last = torch.randn(out.shape).to(out.dtype), torch.randn(last.shape)
    grads = torch.autograd.grad((out, last), [leaves[k] for k in NAMES], (grad_out, grad_last))
    ref_out, ref_last, ref_grads = _float64_reference(t, grad_out, grad_last)
    assert_close("out", out, ref_out, FORWARD_TOLERANCE[dtype])
    assert_close("last_state", last, ref_last, FORWARD_TOLERANCE[dtype])
    for name, grad in zip(NAMES, grads):
        assert grad.dtype == t[name].dtype and grad.shape == t[name].shape, name
        assert_close(f"grad_{name}", grad, ref_grads[name], GRADIENT_TOLERANCE[dtype])


# (B layout, C layout, batch, dim): constant B or C or both (over two batch elements), B 3-D with
# C 4-D, groups 3 and 2 (each channel's pair of groups is one of lcm = 6).
LAYOUTS = [("const", "3d", 2, 4), ("g2", "const", 2, 4), ("const", "const", 2, 4),
           ("3d", "g2", 2, 4), ("g3", "g2", 1, 6)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B_layout,C_layout,batch,dim", LAYOUTS)
def test_scan_accepts_every_B_C_layout(B_layout, C_layout, batch, dim, backend, small_tiles):
    _check(_scan_inputs(batch, dim, 2, 9, B_layout, C_layout), backend, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("B_layout,C_layout", [("3d", "3d"), ("const", "g2")])
def test_scan_takes_float32_B_C_with_half_precision_u(B_layout, C_layout, dtype, backend,
                                                       small_tiles):
    t = _scan_inputs(2, 4, 2, 9, B_layout, C_layout, dtype=dtype, bc_dtype=torch.float32)
    _check(t, backend, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_through_last_state_alone_reaches_the_inputs(backend, small_tiles):
    """The documented difference from selective_scan_fn (which drops it): a loss on the last
    state alone has the reference's gradients."""
    t = _scan_inputs(1, 4, 2, 10, "const", "3d")
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    _, last = selective_scan(*(leaves[k] for k in NAMES[:8]), delta_softplus=True,
                             return_last_state=True, initial_state=leaves["initial_state"],
                             backend=backend)
    grad_last = torch.randn(last.shape)
    grads = torch.autograd.grad(last, [leaves[k] for k in NAMES], grad_last, allow_unused=True)
    _, _, ref_grads = _float64_reference(t, torch.zeros(t["u"].shape), grad_last)
    for name, grad in zip(NAMES, grads):
        if name in ("C", "D", "z"):  # the state does not depend on them
            assert grad is None or not grad.any(), name
            continue
        assert_close(f"grad_{name}", grad, ref_grads[name], GRADIENT_TOLERANCE[torch.float32])


def test_scan_docstring_states_the_last_state_difference():
    doc = " ".join(selective_scan.__doc__.split())
    assert "selective_scan_fn, whose backward ignores the gradient of the last state" in \
        doc.replace("``", "")
