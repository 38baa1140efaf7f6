"""Tuned launch configs (kernels.tuning): a winners file is read, checked and used by the launchers;
a malformed, foreign-architecture or stale file is ignored with a warning; every alternative
config the tuner may pick computes what the reference computes when forced through that path."""
import contextlib
import json
import os
import warnings

import pytest
import torch

import kernels
from kernels import tuning
from kernels.causal_conv1d import triton_kernels as conv_kernels
from kernels.deviation_adanorm import triton_kernels as adanorm_kernels
from kernels.grid_sample_3d import triton_kernels as grid_kernels
from kernels.region_softmax_warp import triton_kernels as warp_kernels
from kernels.selective_state_update import triton_kernels as update_kernels
from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
ADANORM_FWD = adanorm_kernels._adanorm_fwd_kernel.__name__
WIDE, NARROW = adanorm_kernels.TUNING_CONFIGS  # BLOCK_G 1024 and 256, not the heuristics


@pytest.fixture(autouse=True)
def tuned_dir(tmp_path, monkeypatch):
    """Winners files in a fresh folder, read afresh by each test."""
    monkeypatch.setenv(tuning.TUNED_DIR_ENV, str(tmp_path))
    tuning.reload()
    yield tmp_path
    tuning.reload()


def _document(arch="sm_90", winners=None, **overrides):
    doc = {"format": tuning.FORMAT, "arch": arch, "device": "test", "triton": "x", "torch": "x",
           "created": "2026-01-01T00:00:00+00:00", "winners": winners or {}}
    doc.update(overrides)
    return doc


def _adanorm_key(rows=2, dtype="fp32"):
    return tuning.shape_key(BLOCK_G=1024, dtype=dtype, rows=rows)


def _adanorm_winner(config, key=None):
    return {f"deviation_adanorm/{ADANORM_FWD}": {
        key or _adanorm_key(): {"config": config.label(), "time_ms": 0.1,
                                "timings": {config.label(): 0.1}}}}


def _candidates():
    return [c for c in adanorm_kernels.ALL_CONFIGS if c.constexprs["BLOCK_G"] == 1024]


def test_no_file_or_no_cuda_device_means_the_heuristic_silently(tuned_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tuning.assume_arch(90):
            assert tuning.tuned_config("deviation_adanorm", ADANORM_FWD, _adanorm_key(),
                                       _candidates(), "cpu") is None
        (tuned_dir / "sm_90.json").write_text(json.dumps(_document(winners=_adanorm_winner(WIDE))))
        tuning.reload()
        # off CUDA no architecture is current: the file is not even read
        assert tuning.current_arch("cpu") is None
        assert tuning.tuned_config("deviation_adanorm", ADANORM_FWD, _adanorm_key(),
                                   _candidates(), "cpu") is None


def test_the_winner_is_returned_by_exact_key(tuned_dir):
    (tuned_dir / "sm_90.json").write_text(json.dumps(_document(winners=_adanorm_winner(WIDE))))
    with tuning.assume_arch(90):
        assert tuning.tuned_config("deviation_adanorm", ADANORM_FWD, _adanorm_key(),
                                   _candidates(), "cpu") == WIDE
        assert tuning.tuned_config("deviation_adanorm", ADANORM_FWD, _adanorm_key(rows=4),
                                   _candidates(), "cpu") is None
    with tuning.assume_arch(80):  # another architecture's file (absent)
        assert tuning.tuned_config("deviation_adanorm", ADANORM_FWD, _adanorm_key(),
                                   _candidates(), "cpu") is None


@pytest.mark.parametrize("content, fault", [
    ("{not json", "not readable JSON"),
    (json.dumps(_document(format=2)), "format is 2"),
    (json.dumps(_document(arch="sm_80")), "'sm_80'"),
    (json.dumps(_document(winners={"no_slash": {}})), "winners entry 'no_slash'"),
    (json.dumps([1, 2]), "not an object"),
], ids=["bad-json", "format", "foreign-arch", "schema", "not-an-object"])
def test_a_bad_file_is_ignored_with_one_warning(tuned_dir, content, fault):
    path = tuned_dir / "sm_90.json"
    if "sm_80" in content:  # a real sm_80 winners file installed under sm_90's name
        content = json.dumps(_document(arch="sm_80", winners=_adanorm_winner(WIDE)))
    path.write_text(content)
    with tuning.assume_arch(90), pytest.warns(RuntimeWarning) as caught:
        for _ in range(3):
            assert tuning.tuned_config("deviation_adanorm", ADANORM_FWD, _adanorm_key(),
                                       _candidates(), "cpu") is None
    assert len(caught) == 1
    message = str(caught[0].message)
    assert str(path) in message and fault in message


def test_a_stale_winner_is_ignored_with_a_warning(tuned_dir):
    stale = kernels.LaunchConfig({"BLOCK_G": 1024}, num_warps=32)
    (tuned_dir / "sm_90.json").write_text(json.dumps(_document(winners=_adanorm_winner(stale))))
    with tuning.assume_arch(90), pytest.warns(RuntimeWarning, match="not among the registered"):
        assert tuning.tuned_config("deviation_adanorm", ADANORM_FWD, _adanorm_key(),
                                   _candidates(), "cpu") is None


def test_forcing_wins_and_must_be_a_candidate():
    with tuning.forcing("deviation_adanorm", ADANORM_FWD, WIDE):
        assert tuning.tuned_config("deviation_adanorm", ADANORM_FWD, "k", _candidates(),
                                   "cpu") == WIDE
        with pytest.raises(ValueError, match="cannot serve"):
            tuning.tuned_config("deviation_adanorm", ADANORM_FWD, "k", [NARROW], "cpu")
    assert tuning.tuned_config("deviation_adanorm", ADANORM_FWD, "k", _candidates(),
                               "cpu") is None


class _Spy:
    """Stands in for a kernel in its launcher's module: records each launch's configuration."""

    def __init__(self, kernel):
        self.kernel, self.__name__, self.launches = kernel, kernel.__name__, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch


def test_the_launcher_runs_the_winner_and_matches_the_reference(tuned_dir, monkeypatch):
    spy = _Spy(adanorm_kernels._adanorm_fwd_kernel)
    monkeypatch.setattr(adanorm_kernels, "_adanorm_fwd_kernel", spy)
    from kernels.deviation_adanorm.inputs import make_inputs

    v, scale, shift = make_inputs(1, 3, 2, 600, device=DEVICE, seed=1)  # rows B·N = 2
    (tuned_dir / "sm_90.json").write_text(json.dumps(_document(winners=_adanorm_winner(WIDE))))
    with tuning.assume_arch(90):
        out = kernels.deviation_adanorm(v, scale, shift, backend="triton")
    assert (spy.launches[-1]["num_warps"], spy.launches[-1]["BLOCK_G"]) == (WIDE.num_warps, 1024)
    ref = kernels.deviation_adanorm(v.double(), scale.double(), shift.double(),
                                    backend="reference")
    assert_close("out", out, ref, FORWARD_TOLERANCE[torch.float32])
    (tuned_dir / "sm_90.json").unlink()  # no winners file (on a GPU, its own arch's): heuristic
    tuning.reload()
    out = kernels.deviation_adanorm(v, scale, shift, backend="triton")
    assert spy.launches[-1]["num_warps"] == adanorm_kernels.launch_config(600).num_warps == 4


# ---------------------------------------------------------------------------------------------
# Every alternative config, forced through the tuned-config path, against the reference
# ---------------------------------------------------------------------------------------------

def _double(x):
    return x.detach().double().requires_grad_(x.requires_grad) if (
        isinstance(x, torch.Tensor) and x.is_floating_point()) else x


def _check(op_fn, args, kwargs, forced, backward=True):
    """op_fn with backend="triton" under every (op, kernel, config) of ``forced`` against
    backend="reference" in float64: output and every gradient."""
    grads_of = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    with contextlib.ExitStack() as stack:
        for op, kernel, config in forced:
            stack.enter_context(tuning.forcing(op, kernel, config))
        out = op_fn(*args, **kwargs, backend="triton")
        grad = torch.randn_like(out) if backward else None
        got = torch.autograd.grad(out, grads_of, grad) if backward else ()
    ref_args = [_double(a) for a in args]
    ref = op_fn(*ref_args, **kwargs, backend="reference")
    assert_close("out", out, ref, FORWARD_TOLERANCE[torch.float32])
    if backward:
        wanted = torch.autograd.grad(ref, [a for a in ref_args if isinstance(a, torch.Tensor)
                                           and a.requires_grad], grad.double())
        for i, (g, w) in enumerate(zip(got, wanted)):
            assert_close(f"grad {i}", g, w, GRADIENT_TOLERANCE[torch.float32])


@pytest.mark.parametrize("config", adanorm_kernels.TUNING_CONFIGS, ids=lambda c: c.label())
def test_adanorm_alternatives(config):
    from kernels.deviation_adanorm.inputs import make_inputs

    G = 600 if config.constexprs["BLOCK_G"] == 1024 else 200
    args = make_inputs(2, 3, 2, G, device=DEVICE, requires_grad=True, seed=2)
    _check(kernels.deviation_adanorm, args, {},
           [("deviation_adanorm", k.__name__, config) for k in
            (adanorm_kernels._adanorm_fwd_kernel, adanorm_kernels._adanorm_bwd_kernel)])


@pytest.mark.parametrize("config", update_kernels.TUNING_CONFIGS, ids=lambda c: c.label())
def test_state_update_alternatives(config):
    from kernels.selective_state_update.inputs import make_inputs

    state, *rest = make_inputs(2, 40, 16, device=DEVICE, seed=3)
    ref_state = state.double().clone()
    with tuning.forcing("selective_state_update", update_kernels._state_update_kernel.__name__,
                        config):
        out = kernels.selective_state_update(state, *rest, dt_softplus=True, backend="triton")
    ref = kernels.selective_state_update(ref_state, *[_double(t) for t in rest],
                                         dt_softplus=True, backend="reference")
    assert_close("out", out, ref, FORWARD_TOLERANCE[torch.float32])
    assert_close("state", state, ref_state, FORWARD_TOLERANCE[torch.float32])


_CONV_ALTERNATIVES = ([(conv_kernels._causal_conv1d_fwd_kernel, c)
                       for c in conv_kernels.FORWARD_CONFIGS[2:]]
                      + [(conv_kernels._causal_conv1d_bwd_kernel, c)
                         for c in conv_kernels.BACKWARD_CONFIGS[2:]])


@pytest.mark.parametrize("kernel, config", _CONV_ALTERNATIVES,
                         ids=[f"{k.__name__}-{c.label()}" for k, c in _CONV_ALTERNATIVES])
def test_conv_alternatives(kernel, config):
    from kernels.causal_conv1d.inputs import make_inputs

    x, weight, bias = make_inputs(1, 20, 37, 4, device=DEVICE, requires_grad=True, seed=4,
                                  channel_last=config.constexprs["CHANNEL_LAST"])
    _check(kernels.causal_conv1d, (x, weight, bias), {"activation": "silu"},
           [("causal_conv1d", kernel.__name__, config)])


@pytest.mark.parametrize("config", conv_kernels.UPDATE_CONFIGS[1:], ids=lambda c: c.label())
def test_conv_step_alternatives(config):
    from kernels.causal_conv1d.inputs import make_inputs

    x, weight, bias = make_inputs(2, 300, 4, 4, device=DEVICE, seed=5)
    step, state = x[:, :, -1].contiguous(), x[:, :, :3].contiguous()
    ref_state = state.double().clone()
    with tuning.forcing("causal_conv1d", conv_kernels._causal_conv1d_update_kernel.__name__,
                        config):
        out = kernels.causal_conv1d_update(step, state, weight, bias, "silu", backend="triton")
    ref = kernels.causal_conv1d_update(step.double(), ref_state, weight.double(), bias.double(),
                                       "silu", backend="reference")
    assert_close("out", out, ref, FORWARD_TOLERANCE[torch.float32])
    assert_close("state", state, ref_state, FORWARD_TOLERANCE[torch.float32])


def test_grid_sample_alternatives():
    from kernels.grid_sample_3d.inputs import make_inputs

    input, grid = make_inputs(2, 3, 3, 5, 6, device=DEVICE, requires_grad=True, seed=6)
    alternative = dict(block_p=grid_kernels.TILES[1][0], num_warps=grid_kernels.TILES[1][1])
    forced = [("grid_sample_3d", grid_kernels._grid_sample_3d_fwd_kernel.__name__,
               grid_kernels.forward_config(True, True, **alternative)),
              ("grid_sample_3d", grid_kernels._grid_sample_3d_bwd_kernel.__name__,
               grid_kernels.backward_config(True, True, True, True, **alternative))]
    _check(kernels.grid_sample_3d, (input, grid), dict(padding_mode="border", align_corners=True),
           forced)


def test_region_softmax_warp_alternatives():
    from kernels.region_softmax_warp.inputs import make_inputs

    feature, logits, displacement, mask, beta = make_inputs(
        2, 3, 2, 3, 5, 6, device=DEVICE, requires_grad=True, seed=7)
    block, warps = warp_kernels.TILES[1]
    flags = {"ALIGN_CORNERS": False, "BORDER": True}
    forward = kernels.LaunchConfig({"BLOCK": block, **flags}, num_warps=warps)
    backward = kernels.LaunchConfig({**forward.constexprs, "FEATURE_GRAD": True}, num_warps=warps)
    assert forward in warp_kernels.FORWARD_CONFIGS and backward in warp_kernels.BACKWARD_CONFIGS
    _check(kernels.region_softmax_warp, (feature, logits, displacement, mask, beta),
           dict(padding_mode="border", align_corners=False),
           [("region_softmax_warp", warp_kernels._warp_fwd_kernel.__name__, forward),
            ("region_softmax_warp", warp_kernels._warp_bwd_kernel.__name__, backward)])


def test_the_scan_launcher_consults_the_winner(tuned_dir):
    from kernels.selective_scan import triton_kernels as scan_kernels

    configs = scan_kernels.FORWARD_CONFIGS
    kernel = scan_kernels._selective_scan_fwd_kernel.__name__
    args = (configs, scan_kernels.FORWARD_PROGRAMS_PER_SM, 64, 1, 1024, 16, torch.device("cpu"))
    heuristic = scan_kernels.launch_config(*args)
    (other,) = [c for c in configs if c.constexprs["N_PAD"] == 16 and c != heuristic]
    key = tuning.shape_key(N_PAD=16, dtype="bf16", rows=64, group_dim=1024)
    winners = {f"selective_scan/{kernel}": {key: {"config": other.label(), "time_ms": 1.0,
                                                  "timings": {other.label(): 1.0}}}}
    (tuned_dir / "sm_100.json").write_text(json.dumps(_document("sm_100", winners)))
    with tuning.assume_arch(100):
        assert scan_kernels.launch_config(*args, kernel=kernel, dtypes="bf16") == other
        assert scan_kernels.launch_config(*args, kernel=kernel, dtypes="fp32") == heuristic
    assert scan_kernels.launch_config(*args, kernel=kernel, dtypes="bf16") == heuristic


def test_every_scan_launch_asks_by_its_registered_name():
    from kernels.selective_scan.inputs import make_inputs

    registered = {e.name for e in kernels.registered_kernels() if e.op == "selective_scan"}
    u, delta, A, B, C, D, z, bias = make_inputs(1, 2, 5, 2, device=DEVICE, requires_grad=True,
                                                seed=8)
    seq_idx = torch.tensor([[0, 0, 1, 1, 1]], dtype=torch.int32, device=DEVICE)
    with tuning.recording() as calls:
        for packed in ({}, {"seq_idx": seq_idx}):
            out = kernels.selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias,
                                         backend="triton", **packed)
            torch.autograd.grad(out, [u], torch.ones_like(out))
        out, states = kernels.selective_scan(u, delta, A, B, C, D, backend="triton",
                                             seq_idx=seq_idx, return_varlen_states=True)
        torch.autograd.grad((out, states), [u], (torch.ones_like(out), torch.ones_like(states)))
    assert {c.kernel for c in calls} == registered
