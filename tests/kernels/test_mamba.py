"""kernels.Mamba as a drop-in for mamba_ssm.Mamba: its state_dict, initialisation, forward (against
the block's literal math in float64) and streaming step."""
import math
import types

import pytest
import torch
import torch.nn.functional as F

from kernels import Mamba
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

D_MODEL, D_STATE, D_CONV, EXPAND = 20, 5, 3, 2
D_INNER, DT_RANK = D_MODEL * EXPAND, math.ceil(D_MODEL / 16)
# The block chains five ops that each round to bf16 (in_proj, conv, x_proj, dt_proj, scan): three
# times the one-op tolerance (observed at most 1.3e-2 over 30 seeds, forward and step alike).
BLOCK_BF16_TOLERANCE = 3 * FORWARD_TOLERANCE[torch.bfloat16]


def _mamba_ssm_state_dict(bias=False, conv_bias=True, dtype=torch.float32):
    """What ``mamba_ssm.Mamba(D_MODEL, D_STATE, D_CONV, EXPAND, bias=..., conv_bias=...)`` saves,
    with random values (A_log and D in float32, as mamba_ssm keeps them)."""
    shapes = {
        "A_log": (D_INNER, D_STATE),
        "D": (D_INNER,),
        "in_proj.weight": (2 * D_INNER, D_MODEL),
        "conv1d.weight": (D_INNER, 1, D_CONV),
        "x_proj.weight": (DT_RANK + 2 * D_STATE, D_INNER),
        "dt_proj.weight": (D_INNER, DT_RANK),
        "dt_proj.bias": (D_INNER,),
        "out_proj.weight": (D_MODEL, D_INNER),
    }
    if conv_bias:
        shapes["conv1d.bias"] = (D_INNER,)
    if bias:
        shapes["in_proj.bias"] = (2 * D_INNER,)
        shapes["out_proj.bias"] = (D_MODEL,)
    state = {k: (torch.randn(shape) * 0.3).to(torch.float32 if k in ("A_log", "D") else dtype)
             for k, shape in shapes.items()}
    state["A_log"] = torch.log(torch.rand(D_INNER, D_STATE) * 3 + 0.5)
    state["dt_proj.bias"] = (torch.rand(D_INNER) * 2 - 4).to(dtype)  # softplus ≈ 0.02..0.13
    return state


def _literal_forward(sd, hidden):
    """The Mamba block written out in float64, one token and one state at a time."""
    sd = {k: v.double() for k, v in sd.items()}
    hidden = hidden.double()
    batch, length, _ = hidden.shape
    xz = hidden @ sd["in_proj.weight"].T + sd.get("in_proj.bias", 0)
    x, z = xz[..., :D_INNER], xz[..., D_INNER:]
    conv = torch.zeros_like(x) + sd.get("conv1d.bias", 0)
    for t in range(length):
        for k in range(D_CONV):
            source = t - (D_CONV - 1) + k
            if source >= 0:
                conv[:, t] += sd["conv1d.weight"][:, 0, k] * x[:, source]
    x = F.silu(conv)
    x_dbl = x @ sd["x_proj.weight"].T
    dt_low, B, C = x_dbl.split([DT_RANK, D_STATE, D_STATE], dim=-1)
    dt = F.softplus(dt_low @ sd["dt_proj.weight"].T + sd["dt_proj.bias"])
    A = -torch.exp(sd["A_log"])
    h = torch.zeros(batch, D_INNER, D_STATE, dtype=torch.float64)
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        y = (h * C[:, t, None, :]).sum(-1) + sd["D"] * x[:, t]
        ys.append(y * F.silu(z[:, t]))
    y = torch.stack(ys, dim=1)
    return y @ sd["out_proj.weight"].T + sd.get("out_proj.bias", 0)


def _loaded(sd, backend, dtype=torch.float32):
    module = Mamba(D_MODEL, d_state=D_STATE, d_conv=D_CONV, expand=EXPAND, bias="in_proj.bias" in sd,
                   conv_bias="conv1d.bias" in sd, backend=backend)
    module.load_state_dict(sd, strict=True)
    return module.to(dtype)


@pytest.mark.parametrize("bias,conv_bias", [(False, True), (True, False)])
def test_mamba_ssm_state_dict_loads_strictly(bias, conv_bias):
    sd = _mamba_ssm_state_dict(bias=bias, conv_bias=conv_bias)
    module = _loaded(sd, "reference")
    assert set(module.state_dict()) == set(sd)
    for key, value in module.state_dict().items():
        assert value.shape == sd[key].shape and torch.equal(value, sd[key])


# The interpreted triton scan costs seconds per forward: one case of it.
@pytest.mark.parametrize("backend,bias,conv_bias", [
    ("reference", False, True), ("reference", True, False), ("fast", False, True),
    ("fast", True, False), ("triton", True, True)])
def test_forward_matches_the_literal_block_in_float64(backend, bias, conv_bias):
    sd = _mamba_ssm_state_dict(bias=bias, conv_bias=conv_bias)
    hidden = torch.randn(2, 7, D_MODEL)
    ref = _literal_forward(sd, hidden)
    dtypes = [torch.float32] if backend == "triton" else [torch.float32, torch.float64]
    for dtype in dtypes:
        out = _loaded(sd, backend, dtype)(hidden.to(dtype))
        assert out.shape == hidden.shape and out.dtype == dtype
        assert_close(f"forward {dtype}", out, ref, FORWARD_TOLERANCE[dtype])


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_forward_in_bfloat16(backend):
    sd = _mamba_ssm_state_dict()
    hidden = torch.randn(2, 5, D_MODEL)
    module = _loaded(sd, backend, torch.bfloat16)
    ref = _literal_forward({k: v.to(torch.bfloat16) for k, v in module.state_dict().items()},
                           hidden.to(torch.bfloat16))
    out = module(hidden.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert_close("forward bf16", out, ref, BLOCK_BF16_TOLERANCE)


def test_forward_gradients_reach_every_parameter():
    sd = _mamba_ssm_state_dict(bias=True)
    module = _loaded(sd, "reference", torch.float64)
    hidden = torch.randn(2, 6, D_MODEL, dtype=torch.float64, requires_grad=True)
    module(hidden).square().sum().backward()
    ref_sd = {k: v.detach().double().requires_grad_() for k, v in sd.items()}
    ref_hidden = hidden.detach().requires_grad_()
    _literal_forward(ref_sd, ref_hidden).square().sum().backward()
    assert_close("grad hidden", hidden.grad, ref_hidden.grad, GRADIENT_TOLERANCE[torch.float64])
    for name, p in module.named_parameters():
        assert_close(f"grad {name}", p.grad, ref_sd[name].grad, GRADIENT_TOLERANCE[torch.float64])


@pytest.mark.parametrize("step_backend", ["reference", "fast", "triton"])
@pytest.mark.parametrize("bias,conv_bias", [(False, True), (True, False)])
def test_step_token_by_token_equals_forward(bias, conv_bias, step_backend):
    sd = _mamba_ssm_state_dict(bias=bias, conv_bias=conv_bias)
    module = _loaded(sd, "reference")
    hidden = torch.randn(2, 6, D_MODEL)
    ref = module(hidden)
    module.backend = step_backend
    conv_state, ssm_state = module.allocate_inference_cache(2, 6)
    outs = []
    for t in range(hidden.shape[1]):
        out, conv_state_after, ssm_state_after = module.step(hidden[:, t:t + 1], conv_state, ssm_state)
        assert conv_state_after is conv_state and ssm_state_after is ssm_state
        outs.append(out)
    assert_close("stepped", torch.cat(outs, dim=1), ref, FORWARD_TOLERANCE[torch.float32])


def test_inference_params_prefill_then_step_equals_forward():
    """mamba_ssm's generation protocol: a prompt fills the layer's states, then one token a call."""
    module = _loaded(_mamba_ssm_state_dict(), "reference")
    module.layer_idx = 3
    hidden = torch.randn(2, 7, D_MODEL)
    ref = module(hidden)
    params = types.SimpleNamespace(key_value_memory_dict={}, seqlen_offset=0)
    outs = [module(hidden[:, :2], inference_params=params)]
    conv_state, ssm_state = params.key_value_memory_dict[3]
    assert conv_state.shape == (2, D_INNER, D_CONV) and ssm_state.dtype == torch.float32
    for t in range(2, hidden.shape[1]):
        params.seqlen_offset = t
        outs.append(module(hidden[:, t:t + 1], inference_params=params))
    assert_close("generated", torch.cat(outs, dim=1), ref, FORWARD_TOLERANCE[torch.float32])


def test_step_is_inference_only_and_one_token():
    module = Mamba(D_MODEL, backend="fast")
    conv_state, ssm_state = module.allocate_inference_cache(2, 1)
    out, _, _ = module.step(torch.randn(2, 1, D_MODEL), conv_state, ssm_state)
    assert out.shape == (2, 1, D_MODEL) and not out.requires_grad
    with pytest.raises(ValueError, match=r"one token at a time.*\(batch, 1, d_model\)"):
        module.step(torch.randn(2, 3, D_MODEL), conv_state, ssm_state)
    with pytest.raises(ValueError, match="layer_idx"):
        module(torch.randn(2, 3, D_MODEL), inference_params=types.SimpleNamespace(
            key_value_memory_dict={}, seqlen_offset=0))


def test_initialisation_follows_mamba_ssm():
    module = Mamba(40, d_state=7, dt_min=0.01, dt_max=0.05, dt_scale=2.0)
    assert module.d_inner == 80 and module.dt_rank == 3
    assert torch.equal(module.A_log, torch.log(torch.arange(1.0, 8.0)).expand(80, 7))
    assert torch.equal(module.D, torch.ones(80))
    bound = 3 ** -0.5 * 2.0
    assert module.dt_proj.weight.abs().max() <= bound
    assert module.dt_proj.weight.std() > bound / 4  # uniform, not constant
    dt = F.softplus(module.dt_proj.bias)
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    half = Mamba(40, dtype=torch.bfloat16)
    assert half.A_log.dtype == torch.float32 and half.D.dtype == torch.float32
    assert half.in_proj.weight.dtype == torch.bfloat16 and half.dt_proj.bias.dtype == torch.bfloat16
    assert module.A_log._no_weight_decay and module.D._no_weight_decay
    assert module.dt_proj.bias._no_reinit
    assert module.in_proj.bias is None and module.conv1d.bias is not None
    constant = Mamba(16, dt_init="constant", dt_rank=4, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)
    assert torch.equal(constant.dt_proj.weight, torch.full((32, 4), 0.5))
    assert torch.allclose(F.softplus(constant.dt_proj.bias), torch.full((32,), 1e-4), rtol=1e-4)
    with pytest.raises(ValueError, match="dt_init must be"):
        Mamba(16, dt_init="xavier")


def test_allocate_inference_cache():
    module = Mamba(D_MODEL, d_state=D_STATE, d_conv=D_CONV, dtype=torch.bfloat16)
    conv_state, ssm_state = module.allocate_inference_cache(3, 100)
    assert conv_state.shape == (3, D_INNER, D_CONV) and conv_state.dtype == torch.bfloat16
    assert ssm_state.shape == (3, D_INNER, D_STATE) and ssm_state.dtype == torch.float32
    assert not conv_state.any() and not ssm_state.any()
    conv_state, ssm_state = module.allocate_inference_cache(1, 1, dtype=torch.float16)
    assert conv_state.dtype == torch.float16 and ssm_state.dtype == torch.float32


def test_step_in_bfloat16_tracks_the_float32_step():
    module = _loaded(_mamba_ssm_state_dict(), "fast", torch.bfloat16)
    ref_module = _loaded({k: v.float() for k, v in module.state_dict().items()}, "fast")
    hidden = torch.randn(2, 4, D_MODEL).bfloat16().float()
    ref_states, states = ref_module.allocate_inference_cache(2, 4), module.allocate_inference_cache(2, 4)
    refs, outs = [], []
    for t in range(hidden.shape[1]):
        refs.append(ref_module.step(hidden[:, t:t + 1], *ref_states)[0])
        outs.append(module.step(hidden[:, t:t + 1].bfloat16(), *states)[0])
    assert all(out.dtype == torch.bfloat16 for out in outs)
    assert_close("stepped", torch.cat(outs, dim=1), torch.cat(refs, dim=1), BLOCK_BF16_TOLERANCE)
