"""python -m tools.tune with an injected timer: the winners are written, read back and launched;
without CUDA it exits 2; its dry run lists every op's calls at the shipped configs' shapes."""
import json
import os

import pytest
import torch

import kernels
from kernels import tuning
from kernels.deviation_adanorm import triton_kernels as adanorm_kernels
from kernels.deviation_adanorm.inputs import make_inputs as adanorm_inputs
from kernels.selective_state_update import triton_kernels as update_kernels
from kernels.testing import FORWARD_TOLERANCE, assert_close
from tools import tune

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
ALTERNATIVES = list(adanorm_kernels.TUNING_CONFIGS) + list(update_kernels.TUNING_CONFIGS)
SMALL = tune.ModelDims(name="small", batch=1, driving=2, motion_dim=200, regions=2,
                       feature_channels=2, depth_layers=2, volume_size=4, padding_mode="border",
                       align_corners=False, d_model=8, d_state=4, mamba_batch=1, length=8,
                       local_batch=2, local_length=4)


def fake_timer(timed):
    """Runs the call once (so each candidate really launches) and ranks the registered
    alternatives first, in their order, the heuristics' configs last."""
    def timer(fn, config):
        fn()
        timed.append(config)
        return 0.1 * (1 + ALTERNATIVES.index(config)) if config in ALTERNATIVES else 1.0
    return timer


class _Spy:
    def __init__(self, kernel):
        self.kernel, self.__name__, self.launches = kernel, kernel.__name__, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch


def test_round_trip_winner_written_read_back_and_launched(tmp_path, monkeypatch, capsys):
    timed = []
    code = tune.main(["--ops", "deviation_adanorm,selective_state_update", "--dtypes", "fp32",
                      "--out-dir", str(tmp_path)], timer=fake_timer(timed), arch=90,
                     device=DEVICE, dims=[SMALL])
    assert code == 0
    document = json.loads((tmp_path / "sm_90.json").read_text())
    assert tuning.check_document(document, 90) is None and document["arch"] == "sm_90"
    fwd, bwd = (f"deviation_adanorm/{k.__name__}" for k in
                (adanorm_kernels._adanorm_fwd_kernel, adanorm_kernels._adanorm_bwd_kernel))
    update = f"selective_state_update/{update_kernels._state_update_kernel.__name__}"
    assert set(document["winners"]) == {fwd, bwd, update}
    narrow = adanorm_kernels.TUNING_CONFIGS[1]          # BLOCK_G 256, not the heuristic
    key = tuning.shape_key(BLOCK_G=256, dtype="fp32", rows=2)
    for kernel in (fwd, bwd):
        entry = document["winners"][kernel][key]
        assert entry["config"] == narrow.label() != adanorm_kernels.launch_config(200).label()
        assert entry["timings"] == {adanorm_kernels.launch_config(200).label(): 1.0,
                                    narrow.label(): 0.2}
    (update_entry,) = document["winners"][update].values()
    assert update_entry["config"] == update_kernels.TUNING_CONFIGS[0].label()
    assert len(update_entry["timings"]) == 3       # every candidate of N = 4 (BLOCK_N 16) timed
    assert narrow in timed and update_kernels.launch_config(4) in timed
    out = capsys.readouterr().out
    assert narrow.label() in out and "sm_90.json" in out

    # read back: with sm_90 current, the launcher runs the winner and still computes eq. 2
    monkeypatch.setenv(tuning.TUNED_DIR_ENV, str(tmp_path))
    tuning.reload()
    spy = _Spy(adanorm_kernels._adanorm_fwd_kernel)
    monkeypatch.setattr(adanorm_kernels, "_adanorm_fwd_kernel", spy)
    v, scale, shift = adanorm_inputs(1, 3, 2, 200, device=DEVICE, seed=0)
    with tuning.assume_arch(90):
        out = kernels.deviation_adanorm(v, scale, shift, backend="triton")
    assert (spy.launches[-1]["num_warps"], spy.launches[-1]["BLOCK_G"]) == (narrow.num_warps, 256)
    ref = kernels.deviation_adanorm(v.double(), scale.double(), shift.double(),
                                    backend="reference")
    assert_close("out", out, ref, FORWARD_TOLERANCE[torch.float32])
    tuning.reload()


def test_a_second_run_keeps_the_other_kernels_winners(tmp_path):
    args = ["--dtypes", "fp32", "--out-dir", str(tmp_path)]
    assert tune.main(["--ops", "selective_state_update", *args], timer=fake_timer([]), arch=90,
                     device=DEVICE, dims=[SMALL]) == 0
    assert tune.main(["--ops", "deviation_adanorm", *args], timer=fake_timer([]), arch=90,
                     device=DEVICE, dims=[SMALL]) == 0
    winners = json.loads((tmp_path / "sm_90.json").read_text())["winners"]
    assert {k.split("/")[0] for k in winners} == {"selective_state_update", "deviation_adanorm"}


def test_without_cuda_it_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tune.main(["--out-dir", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_dry_run_lists_every_op_at_both_configs(capsys):
    assert tune.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for op in kernels.OPS:
        assert op in out
    assert "tiny:" in out and "base:" in out
    base = tune.model_dims("base")
    assert f"G {base.motion_dim}" in out and f"dim {2 * base.d_model}" in out


def test_unknown_op_is_an_error(capsys):
    with pytest.raises(SystemExit) as stop:
        tune.main(["--ops", "nope"])
    assert stop.value.code == 2
    assert "unknown ops ['nope']" in capsys.readouterr().err


def test_every_other_op_runs_through_the_tuner(tmp_path):
    """conv (sequence and step), the warp and grid_sample: each candidate launches (the scan's
    calls are the same path, and too slow in the interpreter for this file)."""
    timed = []
    ops = "causal_conv1d,region_softmax_warp,grid_sample_3d"
    assert tune.main(["--ops", ops, "--dtypes", "fp32", "--out-dir", str(tmp_path)],
                     timer=fake_timer(timed), arch=120, device=DEVICE, dims=[SMALL]) == 0
    winners = json.loads((tmp_path / "sm_120.json").read_text())["winners"]
    # conv fwd, bwd, update; warp fwd, bwd; grid_sample fwd, bwd: one shape key each
    assert len(winners) == 7 and {k.split("/")[0] for k in winners} == set(ops.split(","))
    for keys in winners.values():
        (entry,) = keys.values()
        assert len(entry["timings"]) >= 2
    assert len(timed) == sum(len(e["timings"]) for k in winners.values() for e in k.values())


def test_a_run_stopped_midway_keeps_the_calls_it_finished(tmp_path):
    calls = []

    def stopping_timer(fn, config):  # the state update's 3 candidates, then a stop
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(config)
        return 1.0

    with pytest.raises(KeyboardInterrupt):
        tune.main(["--ops", "selective_state_update,deviation_adanorm", "--dtypes", "fp32",
                   "--out-dir", str(tmp_path)], timer=stopping_timer, arch=90, device=DEVICE,
                  dims=[SMALL])
    document = json.loads((tmp_path / "sm_90.json").read_text())
    assert tuning.check_document(document, 90) is None
    assert [k.split("/")[0] for k in document["winners"]] == ["selective_state_update"]
    assert not [p for p in tmp_path.iterdir() if p.name != "sm_90.json"]  # no temporary left
