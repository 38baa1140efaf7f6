"""Per-stage latency of the two products (``mim profile``, ``bench/latency.py``).

One clip of ``seconds`` of 25 fps video (default 1 s, as the paper's Table III) is produced in
the two scenarios, stage by stage:

- **img2img** (reenactment, as :func:`mim.reenact.reenact`): source encoding, motion encoding of
  the driving frames (relative to the first one), then per render window the renderer's DIT,
  LMDD, warp and decoder, then video writing;
- **audio2video** (as :class:`mim.animate.Animator`): source encoding, audio features (log-mel),
  Mamba-g/l (``MotionGenerator.encode_audio``), diffusion sampling (``MotionGenerator.generate``),
  the renderer's four stages per window, video writing (with the audio muxed in).

Inputs are procedural and weights random unless a checkpoint is given (``scenarios``). Each
scenario runs once per backend column: **engine** (``backend``, default auto: the fast CPU path on
CPU, Triton on CUDA) and **reference** (the literal PyTorch of every op), set with
``Renderer.set_backend`` and each ``kernels.Mamba``'s ``backend``.

For each stage and column:

- **measured**: wall time on this device, the median over ``repeats`` runs after ``warmup``
  untimed runs (CUDA is synchronized before and after each stage).
- **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` plus formulas for the fused ops it does
  not know (``stages``).
- **bytes** and **launches**: ``kernels.cost.TrafficCounter``, the ATen ops that ran, each
  counted as a GPU kernel reading its operands and writing its results, plus the analytic
  traffic of the kernels it cannot see, from their ops' cost models (``opaque``).
- **modeled H100**: ``kernels.cost.modeled_h100_s``: ``max(FLOPs / peak, bytes / 3.0 TB/s) +
  4 µs × launches`` per stage, peak 800 TFLOP/s for bf16/fp16 and 60 TFLOP/s for fp32 (the
  parameters' dtype). A model, not a measurement. Video writing (libx264 on the host) is not
  modeled.

The engine column can be modeled as the GPU plan (``precision``, ``cuda_graphs``; the reference
column is always fp32 eager and its figures do not depend on them):

- ``precision="bf16"``: the engine's runs (timed and counted) are under bf16 autocast
  (``mim.precision``), as ``mim animate --precision bf16`` and ``mim reenact`` run them. The
  bytes are those the ops under autocast actually moved (bf16 activations, the per-region weight
  casts, what stays fp32); each op's FLOPs are filed under the dtype it computed in, and the
  model runs bf16 FLOPs at the bf16 peak and any left in fp32 at the fp32 one
  (``kernels.cost.modeled_h100_mixed_s``). Every FLOP the counter sees is a matmul, convolution
  or attention (elementwise work counts 0), so "bf16 FLOPs" are tensor-core FLOPs.
- ``cuda_graphs=True``: every DDIM window (``MotionGenerator.sample_window``, all steps with
  guidance) and every render window (one ``Renderer.render`` of ``render_window`` frames: DIT,
  LMDD, warp, decoder) runs in a :meth:`StageRecorder.graph_replay` region; the modeled launches
  of a stage are its counted launches minus those inside regions, plus one per region (a graph
  replay; a render window's replay is filed under its first stage, the DIT). Launches outside
  the regions (source and audio encoding, motion encoding, the draws and the bookkeeping
  between DDIM windows) stay one per kernel. A replay runs as ``mim.graphs.CapturedWindows``
  runs it: autocast's weight cache off inside (each replay casts the weights it uses, counted),
  and one copy kernel per input into the graph's static buffers and one for the output
  (``replay_copy_bytes``, ``replay_copy_launches``). The measured times are this device's
  eager runs: ``mim profile`` models graphs, it does not capture them.

The renderer's stages are those of ``Renderer.render``'s window (``stage=`` a
:class:`StageRecorder`); every stage is an NVTX range and a ``torch.profiler.record_function``;
``trace`` writes one more run of each scenario and column as a Chrome trace. The package:
``stages`` (stage names, NVTX, FLOP formulas, the recorder), ``opaque`` (the hooks adding
fused-kernel traffic), ``scenarios`` (inputs, models, img2img, audio2video), ``report`` (text and
JSON); this module measures (:func:`profile`).
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch

from kernels.cost import (H100_BANDWIDTH_BYTES_PER_S, H100_PEAK_FLOPS, LAUNCH_OVERHEAD_S,
                          ROOFLINE_NOTE, modeled_h100_mixed_s, modeled_h100_s)
from mim.audio import VIDEO_FPS
from mim.config import Config
from mim.profile.opaque import opaque_kernel_hooks
from mim.profile.report import counting_note, format_report, plan_note, report_json
from mim.profile.scenarios import (Inputs, audio_samples, build_animator, make_inputs,
                                   run_audio2video, run_img2img, set_backend)
from mim.precision import bf16_compute, check_precision
from mim.profile.stages import (HOST_STAGES, NVTX_SOURCE, SCENARIO_STAGES, SCENARIOS, STAGES,
                                StageRecorder, nvtx_range)
from mim.runinfo import run_metadata

__all__ = ["STAGES", "SCENARIOS", "SCENARIO_STAGES", "HOST_STAGES", "PAPER_TABLE3_S", "COLUMNS",
           "StageRecorder", "nvtx_range", "NVTX_SOURCE", "opaque_kernel_hooks", "Inputs",
           "make_inputs", "build_animator", "set_backend", "run_img2img", "run_audio2video",
           "profile", "format_report", "report_json", "run_metadata"]

# Paper, Table III: seconds to generate one second of 25 fps video on the authors' GPU.
PAPER_TABLE3_S = {"img2img": 1.322, "audio2video": 1.515}
COLUMNS = ("engine", "reference")


# Measurement.

def _stage_entry(recorders_time: List[StageRecorder], counted: StageRecorder, name: str,
                 dtype: torch.dtype, backend: str, plan: dict) -> dict:
    times = [r.times.get(name, 0.0) for r in recorders_time]
    aten = counted.traffic[name]
    opaque = counted.opaque[name]
    copies = counted.replay_copies[name]
    total = aten + opaque + copies
    flops = counted.flops[name]
    host = name in HOST_STAGES
    captured, replays = counted.captured_launches[name], counted.replays[name]
    by_dtype = {d: n for d, n in counted.flops_by_dtype[name].items() if n}
    if plan["cuda_graphs"]:
        launches = total.launches - captured + replays
    else:
        launches = total.launches
    if host:
        modeled = None
    elif plan["precision"] == "fp32" and not plan["cuda_graphs"]:
        modeled = modeled_h100_s(flops, total.bytes, total.launches, dtype)
    else:
        modeled = modeled_h100_mixed_s(by_dtype, total.bytes, launches)
    return {
        "backend": backend,
        "measured_s": statistics.median(times),
        "measured_runs_s": times,
        "flops": flops,
        "bytes": total.bytes,
        "bytes_read": total.bytes_read,
        "bytes_written": total.bytes_written,
        "launches": total.launches,
        "analytic_bytes": opaque.bytes,
        "analytic_launches": opaque.launches,
        "replay_copy_bytes": copies.bytes,
        "replay_copy_launches": copies.launches,
        "flops_by_dtype": {str(d).replace("torch.", ""): n for d, n in by_dtype.items()},
        "graph_replays": replays,
        "captured_launches": captured,
        "modeled_launches": launches,
        "modeled_h100_s": modeled,
    }


def _measure(run: Callable, animator, backend: Optional[str], repeats: int, warmup: int,
             log: Callable[[str], None], label: str, precision: str = "fp32") -> tuple:
    """(timed recorders, count recorder) of ``run(stage)`` with ``backend`` set, each run inside
    ``bf16_compute(precision)`` (outermost: the counters, entered per stage, see bf16 ops)."""
    set_backend(animator, backend)
    device = animator.device
    plain = run

    def run(stage):
        with bf16_compute(precision, device):
            return plain(stage)
    for index in range(warmup):
        log(f"{label}: warm-up {index + 1}/{warmup}")
        run(StageRecorder(device, "run", f"{label}/warmup/"))
    timed = []
    for index in range(repeats):
        log(f"{label}: timed run {index + 1}/{repeats}")
        recorder = StageRecorder(device, "time", f"{label}/")
        run(recorder)
        timed.append(recorder)
    log(f"{label}: counting FLOPs and bytes")
    counted = StageRecorder(device, "count", f"{label}/count/")
    with opaque_kernel_hooks((animator.renderer, animator.motion), counted):
        run(counted)
    return timed, counted


def _total(stages: List[dict], column: str, seconds: float) -> dict:
    entries = [s[column] for s in stages]
    modeled = [e["modeled_h100_s"] for e in entries if e["modeled_h100_s"] is not None]
    measured = sum(e["measured_s"] for e in entries)
    return {
        "measured_s": measured,
        "measured_per_video_second_s": measured / seconds,
        "flops": sum(e["flops"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "launches": sum(e["launches"] for e in entries),
        "graph_replays": sum(e["graph_replays"] for e in entries),
        "modeled_launches": sum(e["modeled_launches"] for e in entries),
        "modeled_h100_s": sum(modeled),
        "modeled_h100_per_video_second_s": sum(modeled) / seconds,
    }


def profile(config: Union[str, Config, None] = None, checkpoint: Optional[str] = None,
            seconds: float = 1.0, scenarios: Sequence[str] = SCENARIOS, repeats: int = 3,
            warmup: int = 1, backend: Optional[str] = None, device="auto",
            sample_steps: Optional[int] = None, seed: int = 0, trace: Optional[str] = None,
            progress: bool = False, precision: str = "fp32", cuda_graphs: bool = False) -> dict:
    """Profile ``seconds`` of video in each of ``scenarios``: the engine (``backend``) and the
    reference column, every stage measured, counted and modeled (see the module docstring).
    ``precision`` ("fp32", "bf16") and ``cuda_graphs`` set the engine's plan (the reference is
    fp32 eager). Returns the run as a JSON-ready dict; ``trace`` also writes a Chrome trace there."""
    from kernels import resolve_backend

    check_precision(precision)
    if not isinstance(cuda_graphs, bool):
        raise ValueError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")

    for name in scenarios:
        if name not in SCENARIO_STAGES:
            raise ValueError(f"unknown scenario {name!r}; scenarios: {SCENARIOS}")
    for value, name, least in ((repeats, "repeats", 1), (warmup, "warmup", 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    audio_samples(seconds)
    animator, weights = build_animator(config, checkpoint, device, seed)
    steps = sample_steps if sample_steps is not None else animator.config.motion.sample_steps
    most = animator.config.motion.diffusion_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
        raise ValueError(f"sample_steps must be an integer in [1, {most}], got {sample_steps!r}")
    inputs = make_inputs(animator.config.renderer.image_size, seconds, seed)
    video_seconds = inputs.frames / VIDEO_FPS
    dtype = next(animator.renderer.parameters()).dtype
    device = animator.device
    engine = resolve_backend(backend, device, "profile")
    backends = {"engine": backend, "reference": "reference"}
    names = {"engine": engine, "reference": "reference"}
    plans = {"engine": {"precision": precision, "cuda_graphs": cuda_graphs},
             "reference": {"precision": "fp32", "cuda_graphs": False}}

    def log(text: str) -> None:
        if progress:
            print(f"mim profile: {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="mim-profile-") as tmp:
        workdir = Path(tmp)
        def runner(scenario: str, column: str) -> Callable:
            mode, graphs = plans[column]["precision"], plans[column]["cuda_graphs"]
            if scenario == "img2img":
                return lambda stage: run_img2img(animator, inputs, stage, workdir, mode, graphs)
            return lambda stage: run_audio2video(animator, inputs, stage, workdir, steps, seed,
                                                 mode, graphs)

        runners = {scenario: {column: runner(scenario, column) for column in COLUMNS}
                   for scenario in SCENARIOS}
        results = {}
        for scenario in scenarios:
            measured = {column: _measure(runners[scenario][column], animator, backends[column],
                                         repeats, warmup, log, f"{scenario}/{column}",
                                         plans[column]["precision"])
                        for column in COLUMNS}
            stages = []
            for name in SCENARIO_STAGES[scenario]:
                entry = {"stage": name, "host": name in HOST_STAGES}
                for column in COLUMNS:
                    entry[column] = _stage_entry(*measured[column], name, dtype, names[column],
                                                 plans[column])
                stages.append(entry)
            total = {column: _total(stages, column, video_seconds) for column in COLUMNS}
            total["modeled_h100_engine_over_reference"] = (
                total["engine"]["modeled_h100_s"] / total["reference"]["modeled_h100_s"])
            results[scenario] = {
                "stages": stages,
                "total": total,
                "paper_table3_s_per_video_second": PAPER_TABLE3_S[scenario],
            }
        if trace is not None:
            _write_trace(trace, runners, scenarios, animator, backends, log)
    set_backend(animator, backend)
    return {
        "config": animator.config.name,
        "weights": weights,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "seconds": video_seconds,
        "frames": inputs.frames,
        "fps": VIDEO_FPS,
        "image_size": animator.config.renderer.image_size,
        "render_window": animator.config.renderer.render_window,
        "sample_steps": steps,
        "guidance_scale": animator.config.motion.guidance_scale,
        "repeats": repeats,
        "warmup": warmup,
        "torch_threads": torch.get_num_threads(),
        "backends": names,
        "plans": plans,
        "plan_note": plan_note(plans["engine"]),
        "nvtx": NVTX_SOURCE,
        "model": {"note": ROOFLINE_NOTE, "bandwidth_bytes_per_s": H100_BANDWIDTH_BYTES_PER_S,
                  "launch_overhead_s": LAUNCH_OVERHEAD_S,
                  "peak_flops": H100_PEAK_FLOPS[dtype] if dtype in H100_PEAK_FLOPS else None},
        "counting_note": counting_note(device, engine),
        "scenarios": results,
    }


def _write_trace(path, runners, scenarios, animator, backends, log) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from mim.io import atomic_output

    activities = [ProfilerActivity.CPU]
    if animator.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    log(f"tracing one run of each scenario and column into {path}")
    with torch_profile(activities=activities) as prof:
        for scenario in scenarios:
            for column in COLUMNS:
                set_backend(animator, backends[column])
                runners[scenario][column](StageRecorder(animator.device, "run",
                                                        f"{scenario}/{column}/"))
    with atomic_output(path) as temp:
        prof.export_chrome_trace(str(temp))
