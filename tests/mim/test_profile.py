"""mim profile / mim.profile: every stage of img2img and audio2video measured, counted and modeled,
engine beside reference, a total; the Chrome trace; Renderer.render timed stage by stage;
bench/plots.py (run as a script) draws PNGs from the result files."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mim.cli import main
from mim.config import get_config
from mim.models import Renderer
from kernels.cost import modeled_h100_s
from kernels.deviation_adanorm.cost import fused_traffic as adanorm_fused_traffic
from kernels.region_softmax_warp.cost import fused_traffic as warp_fused_traffic
from mim.config import config_to_dict
from mim.models.motion import MotionGenerator
from mim.profile import (HOST_STAGES, SCENARIO_STAGES, STAGES, StageRecorder, build_animator,
                         opaque_kernel_hooks)
from mim.checkpoint import save_checkpoint

SECONDS = 0.12   # 3 frames: the fast setting; the bench runs 1 s
# FlopCounterMode counts matmuls, convolutions and attention: video writing has none; the warp is
# gathers and elementwise work (the torch path's flow is a small matmul, the reference's is not).
NO_FLOP_STAGES = {"video writing"}
ANY_FLOP_STAGES = {"warp"}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """One `mim profile` run of the tiny config (0.12 s of video, 2 DDIM steps), JSON and trace,
    on the CPU on every machine (the engine is the fast path; a GPU's run is make gpu-check's)."""
    root = tmp_path_factory.mktemp("profile")
    out, trace = root / "profile.json", root / "trace.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["profile", "--config", "tiny", "--device", "cpu", "--seconds", str(SECONDS),
                     "--repeats", "1", "--warmup", "0", "--sample-steps", "2", "--json", str(out),
                     "--trace", str(trace), "--no-progress"])
    return {"code": code, "stdout": stdout.getvalue(), "report": json.loads(out.read_text()),
            "trace": trace}


@pytest.fixture(scope="module")
def run(profiled):
    assert profiled["code"] == 0
    (run,) = profiled["report"]["runs"]
    return run


def test_cli_prints_both_tables_with_a_total(profiled):
    text = profiled["stdout"]
    assert profiled["code"] == 0
    for word in ("img2img:", "audio2video:", "random weights", "modeled, not measured", "total",
                 "per second of video", "paper Table III: 1.322", "paper Table III: 1.515",
                 "engine ms", "ref ms", "NVTX ranges: nvtx package"):
        assert word in text, word
    for stage in STAGES:
        assert stage in text, stage


def test_every_stage_is_measured_counted_and_modeled(run):
    assert run["config"] == "tiny" and run["frames"] == 3 and run["seconds"] == pytest.approx(SECONDS)
    assert run["backends"] == {"engine": "fast", "reference": "reference"}
    assert set(run["scenarios"]) == {"img2img", "audio2video"}
    for scenario, result in run["scenarios"].items():
        assert [s["stage"] for s in result["stages"]] == list(SCENARIO_STAGES[scenario])
        for stage in result["stages"]:
            for column in ("engine", "reference"):
                entry = stage[column]
                where = f"{scenario} {stage['stage']} {column}"
                assert entry["measured_s"] > 0, where
                assert entry["bytes"] > 0 and entry["launches"] > 0, where
                if stage["stage"] in NO_FLOP_STAGES:
                    assert entry["flops"] == 0, where
                elif stage["stage"] in ANY_FLOP_STAGES:
                    assert entry["flops"] >= 0, where
                else:
                    assert entry["flops"] > 0, where
                if stage["stage"] in HOST_STAGES:
                    assert entry["modeled_h100_s"] is None, where
                else:
                    assert entry["modeled_h100_s"] > 0, where


def test_modeled_times_follow_the_formula(run):
    dit = next(s for s in run["scenarios"]["img2img"]["stages"] if s["stage"] == "DIT")["engine"]
    expected = max(dit["flops"] / 60e12, dit["bytes"] / 3.0e12) + 4e-6 * dit["launches"]
    assert dit["modeled_h100_s"] == pytest.approx(expected, rel=1e-12)
    for result in run["scenarios"].values():
        for column in ("engine", "reference"):
            entries = [s[column] for s in result["stages"]]
            total = result["total"][column]
            assert total["measured_s"] == pytest.approx(sum(e["measured_s"] for e in entries))
            assert total["modeled_h100_s"] == pytest.approx(
                sum(e["modeled_h100_s"] for e in entries if e["modeled_h100_s"] is not None))
            assert total["measured_per_video_second_s"] == pytest.approx(total["measured_s"] / SECONDS)
            assert total["bytes"] == sum(e["bytes"] for e in entries)


def test_modeled_h100_s_is_a_roofline_plus_launches():
    assert modeled_h100_s(60e12, 0, 0, torch.float32) == pytest.approx(1.0)        # compute-bound
    assert modeled_h100_s(800e12, 0, 2, torch.bfloat16) == pytest.approx(1.0 + 8e-6)
    assert modeled_h100_s(1e9, 3e9, 1, torch.float32) == pytest.approx(1e-3 + 4e-6)  # memory-bound
    with pytest.raises(ValueError, match="dtype"):
        modeled_h100_s(1, 1, 1, torch.int8)


def test_the_cpu_scan_the_counter_cannot_see_is_added_analytically(run):
    mamba = next(s for s in run["scenarios"]["audio2video"]["stages"] if s["stage"] == "Mamba-g/l")
    assert mamba["engine"]["analytic_bytes"] > 0 and mamba["engine"]["analytic_launches"] == 2
    assert mamba["reference"]["analytic_bytes"] == 0   # the reference scan is ATen ops, counted
    for result in run["scenarios"].values():   # no other stage runs an opaque kernel on CPU
        for stage in result["stages"]:
            if stage["stage"] != "Mamba-g/l":
                assert stage["engine"]["analytic_bytes"] == 0


def test_trace_is_a_chrome_trace_with_every_stage(profiled):
    trace = json.loads(profiled["trace"].read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    for scenario, stages in SCENARIO_STAGES.items():
        for column in ("engine", "reference"):
            for stage in stages:
                assert f"{scenario}/{column}/{stage}" in names


def test_bad_arguments_fail_before_profiling(tmp_path, capsys):
    assert main(["profile", "--seconds", "0"]) == 2
    assert "seconds" in capsys.readouterr().err
    assert main(["profile", "--repeats", "0"]) == 2
    assert main(["profile", "--config", "tiny", "--checkpoint", str(tmp_path / "x.safetensors")]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("batch,frames,window", [(1, 3, 2), (2, 2, 2), (1, 1, 16)])
def test_render_with_a_recorder_equals_render(batch, frames, window):
    torch.manual_seed(0)
    renderer = Renderer(get_config("tiny").renderer).eval()
    with torch.no_grad():   # zero-initialized heads would hide a wrong path
        for parameter in renderer.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05)
        state = renderer.encode_source(torch.rand(batch, 3, 64, 64))
        motion = renderer.encode_motion(torch.rand(batch, frames, 3, 64, 64))
        expected = renderer.render(state, motion, window=window)
        recorder = StageRecorder(torch.device("cpu"), "time")
        got = renderer.render(state, motion, window=window, stage=recorder)
    assert torch.equal(got, expected)
    assert set(recorder.times) == {"DIT", "LMDD", "warp", "decoder"}
    assert all(t > 0 for t in recorder.times.values())


def test_fused_triton_kernels_get_their_analytic_traffic(device_under_test):
    """The Triton path (compiled on CUDA, the interpreter without it) is out of the counter's
    sight: the DIT's deviation_adanorm and the warp get their cost models' analytic figures."""
    torch.manual_seed(0)
    config = get_config("tiny").renderer
    renderer = Renderer(config, backend="triton").eval().to(device_under_test)
    with torch.no_grad():
        state = renderer.encode_source(torch.rand(1, 3, 64, 64).to(device_under_test))
        motion = renderer.encode_motion(torch.rand(1, 1, 3, 64, 64).to(device_under_test))
        recorder = StageRecorder(device_under_test, "count")
        with opaque_kernel_hooks([renderer], recorder):
            renderer.render(state, motion, stage=recorder)
    volume = (config.depth_layers, config.volume_size, config.volume_size)
    assert recorder.opaque["DIT"] == adanorm_fused_traffic(1, 1, config.regions, config.motion_dim, 4)["fwd"]
    assert recorder.opaque["warp"] == warp_fused_traffic(1, config.feature_channels, config.regions,
                                                         *volume, 1, 4)["fwd"]
    assert set(recorder.opaque) == {"DIT", "warp"}


def test_mamba_on_triton_gets_the_scan_and_conv_kernels_traffic(device_under_test, monkeypatch):
    """Without the causal_conv1d package (hidden, should a GPU machine have it), a Mamba block on
    the Triton path runs the engine's own conv and scan kernels: its stage gets both cost
    models' forward traffic."""
    from kernels import Mamba
    from kernels.causal_conv1d import op as conv_op
    from kernels.causal_conv1d.cost import fused_traffic as conv_fused_traffic
    from kernels.selective_scan.cost import fused_traffic as scan_fused_traffic

    monkeypatch.setattr(conv_op, "_cuda_package", lambda: None)
    torch.manual_seed(0)
    block = Mamba(d_model=16, d_state=4, d_conv=4, expand=2, backend="triton").to(device_under_test)
    hidden = torch.randn(1, 9, 16).to(device_under_test)
    assert not conv_op.package_supports(hidden, block.conv1d.weight.squeeze(1), block.conv1d.bias)
    recorder = StageRecorder(device_under_test, "count")
    with torch.no_grad(), opaque_kernel_hooks([block], recorder):
        with recorder("Mamba-g/l"):
            block(hidden)
    expected = scan_fused_traffic(1, 32, 9, 4, 1, 4)["fwd"] + conv_fused_traffic(1, 32, 9, 4, 4)["fwd"]
    assert recorder.opaque == {"Mamba-g/l": expected}


def test_checkpoints_give_their_weights_and_config(tmp_path):
    config = get_config("tiny")
    torch.manual_seed(1)
    renderer = Renderer(config.renderer)
    motion = MotionGenerator(config.motion, config.renderer.motion_dim, config.renderer.appearance_dim)
    for kind, modules in (("stage2", {"renderer": renderer, "motion": motion}),
                          ("stage1", {"renderer": renderer})):
        path = str(tmp_path / f"{kind}.safetensors")
        save_checkpoint(path, kind=kind, step=0, config=config_to_dict(config), modules=modules)
        animator, weights = build_animator(checkpoint=path, device="cpu")
        assert path in weights and ("random" in weights) == (kind == "stage1")
        assert animator.config.name == "tiny"
        loaded = animator.renderer.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in renderer.state_dict().items())
    _, weights = build_animator("tiny", device="cpu")
    assert weights.startswith("random weights")


# bench/plots.py

DATE, NODE = "2026-01-02T03:04:05+00:00", "benchbox"


def _fake_results(root):
    traffic = {"machine": {"node": NODE, "processor": "x86_64", "platform": "Linux"}, "date": DATE,
               "rows": [{"op": op, "shape": "s", "dtype": "float32", "direction": "fwd", "path": "reference",
                         "eager": {"bytes": eager}, "fused": {"bytes": fused}}
                        for op, eager, fused in (("warp", 6e8, 8e7), ("adanorm", 1.6e7, 9e6))]}
    microbench = {"machine_info": {"node": NODE, "cpu": {"brand_raw": "Test CPU", "count": 2}},
                  "datetime": DATE,
                  "benchmarks": [{"group": "op forward", "params": {"backend": backend},
                                  "stats": {"median": median}}
                                 for backend, median in (("reference", 2e-3), ("torch", 5e-4))]}
    def stage(name, host, t):
        return {"stage": name, "host": host,
                "engine": {"measured_s": t, "modeled_h100_s": None if host else t / 1e3},
                "reference": {"measured_s": 2 * t, "modeled_h100_s": None if host else t / 5e2}}

    latency = {"metadata": {"date": DATE, "machine": {"node": NODE, "processor": "x86_64", "gpu": None}},
               "runs": [{"config": "tiny", "seconds": 1.0, "device": "cpu",
                         "backends": {"engine": "torch", "reference": "reference"},
                         "scenarios": {"img2img": {"stages": [stage("DIT", False, 0.1),
                                                              stage("video writing", True, 0.05)],
                                                   "paper_table3_s_per_video_second": 1.322}}}]}
    for name, data in (("traffic", traffic), ("microbench", microbench), ("latency", latency)):
        (root / f"{name}.json").write_text(json.dumps(data))
    return traffic, microbench, latency


def _plots(results_dir, out_dir):
    """``python -m bench.plots`` in a child process (tests import no bench module)."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "bench.plots", "--results-dir", str(results_dir),
                           "--out-dir", str(out_dir)], cwd=root, capture_output=True, text=True,
                          timeout=300)


def test_plots_draw_pngs_titled_with_date_and_machine(tmp_path):
    _fake_results(tmp_path)
    done = _plots(tmp_path, tmp_path / "plots")
    assert done.returncode == 0, done.stderr
    names = ["latency.png", "microbench.png", "traffic.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == names
    for name in names:
        path = tmp_path / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        (line,) = [line for line in done.stdout.splitlines() if line.startswith(f"wrote {path}")]
        assert "2026-01-02 03:04 UTC" in line and NODE in line, line


def test_plots_skip_missing_files_and_read_profile_json(tmp_path, profiled):
    done = _plots(tmp_path, tmp_path / "p")
    assert done.returncode == 1 and "skipped latency.png" in done.stdout
    (tmp_path / "latency.json").write_text(json.dumps(profiled["report"]))
    done = _plots(tmp_path, tmp_path / "p")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p" / "latency.png").stat().st_size > 5000
