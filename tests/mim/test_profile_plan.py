"""mim profile --precision bf16 --cuda-graphs: the engine column modeled as the GPU plan (bf16
autocast bytes and FLOPs, one launch per graph replay), the reference column fp32 eager and
untouched by the flags, the engine / reference ratio in the table and the JSON."""

import contextlib
import dataclasses
import io
import json
import math

import pytest
import torch

from kernels.cost import H100_PEAK_FLOPS, modeled_h100_mixed_s, modeled_h100_s
from mim.cli import build_parser, main
from mim.config import config_to_dict, get_config
from mim.profile import SCENARIO_STAGES, StageRecorder, profile

FRAMES = 5                 # 0.2 s of 25 fps video
SECONDS = FRAMES / 25
RENDER_WINDOW = 2          # 5 frames: 3 render windows (2, 2, 1)
MOTION_WINDOW = 3          # and 2 DDIM windows (3, 2)
RENDER_STAGES = ("DIT", "LMDD", "warp", "decoder")
COUNTED = ("flops", "bytes", "bytes_read", "bytes_written", "launches", "analytic_bytes",
           "analytic_launches", "flops_by_dtype", "graph_replays", "captured_launches",
           "modeled_launches", "modeled_h100_s", "replay_copy_bytes", "replay_copy_launches")


def _config():
    """tiny made smaller (32² frames, narrower networks: bf16 is emulated on CPUs without bf16
    instructions, and slow) with short windows, so that a 5-frame clip has several render and
    DDIM windows."""
    tiny = get_config("tiny")
    motion = dataclasses.replace(tiny.motion, prev_frames=1, window=MOTION_WINDOW, width=64,
                                 layers=1, heads=2, audio_dim=32)
    renderer = dataclasses.replace(tiny.renderer, image_size=32, volume_size=16,
                                   feature_channels=4, encoder_channels=16, decoder_channels=32,
                                   lmdd_channels=16, dit_channels=16, motion_dim=64,
                                   appearance_dim=32, resnet3d_blocks=1,
                                   render_window=RENDER_WINDOW)
    return dataclasses.replace(tiny, motion=motion, renderer=renderer).validate()


def _ddim_windows(config) -> int:
    return math.ceil(FRAMES / config.motion.window)


def _stage(run, scenario, name):
    return next(s for s in run["scenarios"][scenario]["stages"] if s["stage"] == name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 5-frame clip profiled three times, 2 DDIM steps, one timed run each: fp32 eager
    and bf16 eager (audio2video) through the API, bf16 with CUDA graphs through the command line
    (with --json)."""
    root = tmp_path_factory.mktemp("profile_plan")
    config = _config()
    path = root / "config.json"
    path.write_text(json.dumps(config_to_dict(config)))
    options = dict(device="cpu", seconds=SECONDS, repeats=1, warmup=0, sample_steps=2)
    eager = profile(config, **options)
    bf16 = profile(config, scenarios=("audio2video",), precision="bf16", **options)
    out = root / "plan.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["profile", "--config", str(path), "--device", "cpu", "--seconds", str(SECONDS),
                     "--repeats", "1", "--warmup", "0", "--sample-steps", "2", "--precision",
                     "bf16", "--cuda-graphs", "--json", str(out), "--no-progress"])
    assert code == 0
    (plan,) = json.loads(out.read_text())["runs"]
    return {"eager": eager, "bf16": bf16, "plan": plan, "stdout": stdout.getvalue(),
            "config": config}


def test_flags_parse_and_bad_values_are_named(capsys):
    args = build_parser().parse_args(["profile", "--precision", "bf16", "--cuda-graphs"])
    assert args.precision == "bf16" and args.cuda_graphs is True
    args = build_parser().parse_args(["profile"])
    assert args.precision == "fp32" and args.cuda_graphs is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["profile", "--precision", "fp16"])
    assert "--precision" in capsys.readouterr().err
    with pytest.raises(ValueError, match="precision"):
        profile("tiny", device="cpu", seconds=0.12, precision="fp16")
    with pytest.raises(ValueError, match="cuda_graphs"):
        profile("tiny", device="cpu", seconds=0.12, cuda_graphs="yes")


def test_the_run_records_each_columns_plan(runs):
    assert runs["plan"]["plans"] == {"engine": {"precision": "bf16", "cuda_graphs": True},
                                     "reference": {"precision": "fp32", "cuda_graphs": False}}
    assert runs["eager"]["plans"]["engine"] == {"precision": "fp32", "cuda_graphs": False}
    for word in ("bf16 autocast", "CUDA graphs", "reference: fp32 eager", "e/ref (modeled)",
                 "modeled H100, engine / reference"):
        assert word in runs["stdout"], word


def test_bf16_moves_fewer_bytes_with_its_matmuls_in_bf16(runs):
    fp32 = runs["eager"]["scenarios"]["audio2video"]
    bf16 = runs["bf16"]["scenarios"]["audio2video"]
    assert bf16["total"]["engine"]["bytes"] < fp32["total"]["engine"]["bytes"]
    assert bf16["total"]["engine"]["flops"] == fp32["total"]["engine"]["flops"]   # the same work
    for name in ("LMDD", "decoder"):   # the convolutions' activations halve
        assert (_stage(runs["bf16"], "audio2video", name)["engine"]["bytes"]
                < _stage(runs["eager"], "audio2video", name)["engine"]["bytes"]), name
    for name in ("LMDD", "decoder", "diffusion sampling"):
        by_dtype = _stage(runs["bf16"], "audio2video", name)["engine"]["flops_by_dtype"]
        assert set(by_dtype) == {"bfloat16"}, name
    # the source is encoded once, in fp32, as the products do (mim.precision.render_state)
    assert set(_stage(runs["bf16"], "audio2video", "source encoding")["engine"]["flops_by_dtype"]) \
        == {"float32"}
    for scenario in SCENARIO_STAGES:   # with graphs too (the replays re-cast weights, counted)
        assert (runs["plan"]["scenarios"][scenario]["total"]["engine"]["bytes"]
                < runs["eager"]["scenarios"][scenario]["total"]["engine"]["bytes"]), scenario
    for result in runs["eager"]["scenarios"].values():   # fp32: every FLOP in fp32
        for stage in result["stages"]:
            for column in ("engine", "reference"):
                entry = stage[column]
                assert set(entry["flops_by_dtype"]) <= {"float32"}
                assert sum(entry["flops_by_dtype"].values()) == entry["flops"]


def test_with_cuda_graphs_a_window_is_one_launch(runs):
    config = runs["config"]
    render_windows = math.ceil(FRAMES / RENDER_WINDOW)
    for scenario in SCENARIO_STAGES:
        render = [_stage(runs["plan"], scenario, name)["engine"] for name in RENDER_STAGES]
        assert render[0]["graph_replays"] == render_windows     # filed under the DIT
        copies = sum(e["replay_copy_launches"] for e in render)
        assert sum(e["modeled_launches"] for e in render) == render_windows + copies
        assert all(e["captured_launches"] == e["launches"] - e["replay_copy_launches"] > 0
                   for e in render)
        for stage in runs["plan"]["scenarios"][scenario]["stages"]:
            entry = stage["engine"]
            assert entry["modeled_launches"] == (entry["launches"] - entry["captured_launches"]
                                                 + entry["graph_replays"])
            if stage["stage"] not in RENDER_STAGES + ("diffusion sampling",):
                assert entry["graph_replays"] == entry["captured_launches"] == 0
                assert entry["modeled_launches"] == entry["launches"]
        for e in render:   # a replay copies its inputs in and its output out: eager kernels
            assert e["replay_copy_launches"] == (5 * render_windows if e is render[0] else 0)
    sampling = _stage(runs["plan"], "audio2video", "diffusion sampling")["engine"]
    assert sampling["graph_replays"] == _ddim_windows(config) == 2
    assert sampling["replay_copy_launches"] == 7 * 2   # x_T, z, F_ag, F_al, previous, F_A; out
    # 2 steps x 2 guided denoiser calls per window are captured; the draws and the bookkeeping
    # between windows stay eager
    assert sampling["launches"] > sampling["captured_launches"] > 10 * sampling["graph_replays"]
    # without the flag no region, and every kernel is a launch
    for run in (runs["eager"], runs["bf16"]):
        for result in run["scenarios"].values():
            for stage in result["stages"]:
                entry = stage["engine"]
                assert entry["modeled_launches"] == entry["launches"]
                assert entry["graph_replays"] == entry["captured_launches"] == 0


def test_the_reference_column_is_unchanged_by_the_flags(runs):
    for other in (runs["plan"], runs["bf16"]):
        for scenario, result in other["scenarios"].items():
            eager = runs["eager"]["scenarios"][scenario]
            for before, after in zip(eager["stages"], result["stages"]):
                for key in COUNTED:
                    assert after["reference"][key] == before["reference"][key], \
                        (scenario, after["stage"], key)
            for key in ("flops", "bytes", "launches", "modeled_launches", "modeled_h100_s"):
                assert result["total"]["reference"][key] == eager["total"]["reference"][key]


def test_the_bf16_figures_do_not_depend_on_the_cpus_route_to_them(runs, monkeypatch):
    """On a CPU without bf16 instructions the bf16 convolutions and matmuls are computed in fp32
    and rounded (mim.precision.bf16_compute, the default); PyTorch's own bf16 kernels
    (MIM_BF16_CPU=native) count the same ops, bytes, FLOPs and launches."""
    monkeypatch.setenv("MIM_BF16_CPU", "native")
    native = profile(runs["config"], scenarios=("audio2video",), precision="bf16", device="cpu",
                     seconds=SECONDS, repeats=1, warmup=0, sample_steps=2)
    routed = runs["bf16"]["scenarios"]["audio2video"]
    for before, after in zip(routed["stages"], native["scenarios"]["audio2video"]["stages"]):
        for column in ("engine", "reference"):
            for key in COUNTED:
                assert after[column][key] == before[column][key], (after["stage"], column, key)


def test_modeled_times_follow_the_plan_and_the_ratio_is_theirs(runs):
    for run in (runs["eager"], runs["bf16"], runs["plan"]):
        for result in run["scenarios"].values():
            total = result["total"]
            engine, reference = total["engine"]["modeled_h100_s"], total["reference"]["modeled_h100_s"]
            assert engine > 0 and reference > 0
            assert total["modeled_h100_engine_over_reference"] == pytest.approx(engine / reference,
                                                                                rel=1e-12)
            for column in ("engine", "reference"):
                assert total[column]["modeled_h100_s"] == pytest.approx(
                    sum(s[column]["modeled_h100_s"] for s in result["stages"]
                        if s[column]["modeled_h100_s"] is not None))
    for result in (*runs["plan"]["scenarios"].values(), runs["bf16"]["scenarios"]["audio2video"]):
        for stage in result["stages"]:
            entry = stage["engine"]
            if stage["host"]:
                assert entry["modeled_h100_s"] is None
                continue
            compute = sum(n / H100_PEAK_FLOPS[getattr(torch, d)]
                          for d, n in entry["flops_by_dtype"].items())
            expected = max(compute, entry["bytes"] / 3.0e12) + 4e-6 * entry["modeled_launches"]
            assert entry["modeled_h100_s"] == pytest.approx(expected, rel=1e-12), stage["stage"]
    # the plan models less time than fp32 eager for the same clip
    for scenario in SCENARIO_STAGES:
        assert (runs["plan"]["scenarios"][scenario]["total"]["engine"]["modeled_h100_s"]
                < runs["eager"]["scenarios"][scenario]["total"]["engine"]["modeled_h100_s"])


def test_modeled_h100_mixed_s_runs_each_precision_at_its_peak():
    assert modeled_h100_mixed_s({torch.float32: 6e9}, 1e6, 3) == modeled_h100_s(6e9, 1e6, 3,
                                                                                 torch.float32)
    assert modeled_h100_mixed_s({torch.bfloat16: 800e12, torch.float32: 60e12}, 0, 1) == \
        pytest.approx(2.0 + 4e-6)
    assert modeled_h100_mixed_s({torch.bfloat16: 8e9}, 3e9, 0) == pytest.approx(1e-3)   # memory
    assert modeled_h100_mixed_s({}, 0, 2) == pytest.approx(8e-6)
    with pytest.raises(ValueError, match="int8"):
        modeled_h100_mixed_s({torch.int8: 1}, 0, 0)


def test_graph_replay_regions_count_captured_launches_and_replays():
    x = torch.ones(4)
    recorder = StageRecorder(torch.device("cpu"), "count")
    with recorder("diffusion sampling"):
        x + 1                                  # eager
        with recorder.graph_replay():
            x * 2
            x - 3                              # captured: 2 launches, one replay
    with recorder.graph_replay():              # a region holding whole stages
        with recorder("DIT"):
            x + 1
        with recorder("LMDD"):
            x + 2
            x + 3
    assert recorder.traffic["diffusion sampling"].launches == 3
    assert recorder.captured_launches == {"diffusion sampling": 2, "DIT": 1, "LMDD": 2}
    assert recorder.replays == {"diffusion sampling": 1, "DIT": 1}
    with pytest.raises(RuntimeError, match="nest"):
        with recorder.graph_replay(), recorder.graph_replay():
            pass
    timing = StageRecorder(torch.device("cpu"), "time")
    with timing.graph_replay(), timing.graph_replay():   # nothing is counted outside "count"
        pass
    assert not timing.replays and not timing.captured_launches
