"""Per-stage latency of the two products (``mim profile``, ``bench/latency.py``).

One clip of ``seconds`` of 25 fps video (default 1 s, as the paper's Table III) is produced in
the two scenarios, stage by stage:

- **img2img** (reenactment, as :func:`mim.reenact.reenact`): source encoding, motion encoding of
  the driving frames (relative to the first one), then per render window the renderer's DIT,
  LMDD, warp and decoder, then video writing;
- **audio2video** (as :class:`mim.animate.Animator`): source encoding, audio features (log-mel),
  Mamba-g/l (``MotionGenerator.encode_audio``), diffusion sampling (``MotionGenerator.generate``),
  the renderer's four stages per window, video writing (with the audio muxed in).

Inputs are procedural (``mim.data.make_clip``, ``speech_like_audio``); weights are random unless
a checkpoint is given (no stage's cost depends on the weights' values). Each scenario runs once
per backend column: **engine** (``backend``, default auto: the torch/CPU path on CPU, Triton on
CUDA) and **reference** (the literal PyTorch of every op), set with ``Renderer.set_backend`` and
each ``kernels.Mamba``'s ``backend``.

For each stage and column:

- **measured**: wall time on this device, the median over ``repeats`` runs after ``warmup``
  untimed runs (CUDA is synchronized before and after each stage). Frames are rendered whole
  before they are encoded, so that each stage is timed apart (the products stream them).
- **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention;
  elementwise work is not counted), plus formulas for the fused ops it does not know
  (``nn.TransformerEncoderLayer``'s fast path, CPU flash attention).
- **bytes** and **launches**: ``bench.traffic.TrafficCounter``, the ATen ops that ran, each
  counted as a GPU kernel reading its operands and writing its results. Kernels the counter cannot
  see get analytic figures added: the fused Triton kernels (``deviation_adanorm``,
  ``region_softmax_warp``, ``selective_scan``; the functions of ``bench.traffic``) and the
  ``causal_conv1d`` package when they run (CUDA), and the numba selective scan of the CPU path.
- **modeled H100**: ``max(FLOPs / peak, bytes / 3.0 TB/s) + 4 µs × launches`` per stage, peak
  800 TFLOP/s for bf16/fp16 and 60 TFLOP/s for fp32 (the parameters' dtype). A model, not a
  measurement. Video writing (libx264 on the host) is not modeled.

Every stage runs inside an NVTX range (the ``nvtx`` package; a no-op unless a CUDA profiler such
as Nsight Systems is attached) and a ``torch.profiler.record_function``; ``trace`` writes one more
run of each scenario and column as a Chrome trace.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch

from mim.config import Config, load_config

__all__ = ["STAGES", "SCENARIOS", "SCENARIO_STAGES", "HOST_STAGES", "PAPER_TABLE3_S",
           "H100_PEAK_FLOPS", "modeled_h100_s", "render_in_stages", "StageRecorder", "Inputs",
           "make_inputs", "build_animator", "run_img2img", "run_audio2video", "profile",
           "format_report", "report_json", "run_metadata", "nvtx_range", "NVTX_SOURCE"]

STAGES = ("source encoding", "audio features", "Mamba-g/l", "diffusion sampling", "motion encoding",
          "DIT", "LMDD", "warp", "decoder", "video writing")
SCENARIO_STAGES = {
    "img2img": ("source encoding", "motion encoding", "DIT", "LMDD", "warp", "decoder",
                "video writing"),
    "audio2video": ("source encoding", "audio features", "Mamba-g/l", "diffusion sampling", "DIT",
                    "LMDD", "warp", "decoder", "video writing"),
}
SCENARIOS = tuple(SCENARIO_STAGES)
# Stages that run on the host whatever the device: not modeled on the GPU.
HOST_STAGES = frozenset({"video writing"})
# Paper, Table III: seconds to generate one second of 25 fps video on the authors' GPU.
PAPER_TABLE3_S = {"img2img": 1.322, "audio2video": 1.515}
COLUMNS = ("engine", "reference")

# The H100 model (round figures; bandwidth and launch cost as bench.traffic).
H100_BANDWIDTH_BYTES_PER_S = 3.0e12
LAUNCH_OVERHEAD_S = 4e-6
H100_PEAK_FLOPS = {torch.float32: 60e12, torch.bfloat16: 800e12, torch.float16: 800e12}
MODEL_NOTE = ("modeled, not measured: max(FLOPs / peak, bytes / 3.0 TB/s) + 4 us x launches per "
              "stage on an H100 (peak 60 TFLOP/s fp32, 800 TFLOP/s bf16/fp16)")
VIDEO_FPS = 25


# NVTX: the nvtx package (a dependency); torch.cuda.nvtx where it is missing and CUDA is there.
try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - nvtx is in install_requires
    _nvtx = None

if _nvtx is not None:
    NVTX_SOURCE = "nvtx package"

    def nvtx_range(name: str):
        """A context manager marking an NVTX range (domain "mim"); free without a profiler."""
        return _nvtx.annotate(name, domain="mim")
elif torch.cuda.is_available():  # pragma: no cover
    NVTX_SOURCE = "torch.cuda.nvtx (the nvtx package is not installed)"

    def nvtx_range(name: str):
        return torch.cuda.nvtx.range(name)
else:  # pragma: no cover
    NVTX_SOURCE = "none (no nvtx package, no CUDA)"

    def nvtx_range(name: str):
        return contextlib.nullcontext()


def modeled_h100_s(flops: float, bytes_moved: float, launches: int, dtype: torch.dtype) -> float:
    """Modeled H100 seconds: max(flops / peak(dtype), bytes / 3.0 TB/s) + 4 µs per launch."""
    if dtype not in H100_PEAK_FLOPS:
        raise ValueError(f"no H100 peak for dtype {dtype}; known: {sorted(map(str, H100_PEAK_FLOPS))}")
    return (max(flops / H100_PEAK_FLOPS[dtype], bytes_moved / H100_BANDWIDTH_BYTES_PER_S)
            + launches * LAUNCH_OVERHEAD_S)


# FLOP formulas for fused ATen ops FlopCounterMode has none for (tensors arrive as shapes).

def _encoder_layer_flops(src_shape, embed_dim, num_heads, qkv_weight_shape, qkv_bias_shape,
                         proj_weight_shape, proj_bias_shape, use_gelu, norm_first, eps,
                         norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2,
                         ffn_weight_1_shape, *args, out_shape=None, **kwargs) -> int:
    """``aten._transformer_encoder_layer_fwd`` (nn.TransformerEncoderLayer's inference fast
    path): qkv, q·kᵀ, attention·v, the output projection and the two feed-forward layers."""
    *lead, length, width = src_shape
    batch = math.prod(lead)
    tokens = batch * length
    hidden = ffn_weight_1_shape[0]
    return (2 * tokens * width * 3 * width + 4 * batch * length * length * width
            + 2 * tokens * width * width + 4 * tokens * width * hidden)


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None,
                               **kwargs) -> int:
    """``aten._scaled_dot_product_flash_attention_for_cpu``: as the CUDA attention kernels."""
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_formulas() -> dict:
    aten = torch.ops.aten
    formulas = {aten._transformer_encoder_layer_fwd: _encoder_layer_flops}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_attention_flops
    return formulas


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageRecorder:
    """Runs a pipeline's stages: ``with recorder("DIT"): ...``.

    Every stage is an NVTX range and a ``torch.profiler.record_function`` named
    ``prefix + stage``. ``mode``: "run" (nothing else), "time" (wall time, the device
    synchronized at both ends, summed per stage name into ``times``) or "count" (FLOPs into
    ``flops``, ATen traffic into ``traffic``, analytic traffic of opaque kernels, reported by
    :meth:`add_opaque`, into ``opaque``). A stage entered several times (once per render window)
    adds up.
    """

    def __init__(self, device: torch.device, mode: str = "run", prefix: str = ""):
        if mode not in ("run", "time", "count"):
            raise ValueError(f"mode must be 'run', 'time' or 'count', got {mode!r}")
        from kernels.cost import Traffic

        self.device = torch.device(device)
        self.mode = mode
        self.prefix = prefix
        self.times: Dict[str, float] = defaultdict(float)
        self.flops: Dict[str, int] = defaultdict(int)
        self.traffic = defaultdict(lambda: Traffic(0, 0, 0))
        self.opaque = defaultdict(lambda: Traffic(0, 0, 0))
        self.current: Optional[str] = None

    @contextlib.contextmanager
    def __call__(self, name: str):
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages: {STAGES}")
        label = self.prefix + name
        with nvtx_range(label), torch.profiler.record_function(label):
            if self.mode == "time":
                _sync(self.device)
                start = time.perf_counter()
                yield
                _sync(self.device)
                self.times[name] += time.perf_counter() - start
            elif self.mode == "count":
                from torch.utils.flop_counter import FlopCounterMode
                from kernels.cost import TrafficCounter

                flops = FlopCounterMode(display=False, custom_mapping=_flop_formulas())
                self.current = name
                try:
                    with flops, TrafficCounter() as traffic:
                        yield
                finally:
                    self.current = None
                self.flops[name] += flops.get_total_flops()
                self.traffic[name] = self.traffic[name] + traffic.summary()
            else:
                yield

    def add_opaque(self, traffic) -> None:
        """Add the analytic traffic of a kernel the counter cannot see to the current stage."""
        if self.mode == "count" and self.current is not None:
            self.opaque[self.current] = self.opaque[self.current] + traffic


# Kernels out of TrafficCounter's sight: they address memory through raw pointers (Triton, numba,
# the causal_conv1d package). Forward hooks on the modules that call them add analytic traffic.

def numba_scan_traffic(batch: int, dim: int, length: int, nstate: int, compute_itemsize: int):
    """The CPU path's numba selective-scan forward (one parallel loop, with D, z, delta_bias):
    reads u, dt, z (batch·dim·L each), B and C (batch·N·L each; one group), A (dim·N), D (dim) and
    the initial state (batch·dim·N); writes out (batch·dim·L), the last state (batch·dim·N) and a
    checkpoint every 64 steps (batch·dim·⌈L/64⌉·N); all in the compute dtype (fp32 for fp32
    inputs). The torch ops around it (softplus, layout copies) are counted by the counter."""
    from kernels.cost import Traffic
    from kernels.selective_scan.cpu_path import CHUNK

    s = compute_itemsize
    sequences = batch * dim * length * s
    states = batch * dim * nstate * s
    read = 3 * sequences + 2 * batch * nstate * length * s + dim * nstate * s + dim * s + states
    written = sequences + states + batch * dim * math.ceil(length / CHUNK) * nstate * s
    return Traffic(1, read, written)


def _conv_package_traffic(batch: int, dim: int, length: int, width: int, itemsize: int):
    """The causal_conv1d package's forward: reads x, weight and bias, writes out, one launch."""
    from kernels.cost import Traffic
    return Traffic(1, batch * dim * length * itemsize + dim * (width + 1) * itemsize,
                   batch * dim * length * itemsize)


def _adanorm_hook(recorder, module, args, output):
    from kernels.deviation_adanorm.cost import fused_traffic as adanorm_fused_traffic
    from kernels._dispatch import resolve_backend

    v, scale = args[0], args[1]
    if (recorder.mode != "count"
            or resolve_backend(module.backend, v.device, "deviation_adanorm") != "triton"):
        return
    batch, frames, features = v.shape
    recorder.add_opaque(adanorm_fused_traffic(batch, frames - 1, scale.shape[2], features,
                                              v.element_size())["fwd"])


def _warp_hook(recorder, module, args, output):
    from kernels.region_softmax_warp.cost import fused_traffic as warp_fused_traffic
    from kernels._dispatch import resolve_backend

    feature, logits = args[0], args[1]
    if (recorder.mode != "count"
            or resolve_backend(module.backend, logits.device, "region_softmax_warp") != "triton"):
        return
    batch, regions, depth, height, width = logits.shape
    recorder.add_opaque(warp_fused_traffic(batch, feature.shape[1], regions, depth, height, width,
                                           feature.shape[0], logits.element_size())["fwd"])


def _mamba_hook(recorder, module, args, output):
    from kernels.selective_scan.cost import fused_traffic as scan_fused_traffic
    from kernels._dispatch import resolve_backend
    from kernels.causal_conv1d.op import _package_supports

    if recorder.mode != "count":
        return
    hidden = args[0]
    batch, length, _ = hidden.shape
    dim, nstate, itemsize = module.d_inner, module.d_state, hidden.element_size()
    scan = resolve_backend(module.backend, hidden.device, "selective_scan")
    if scan == "triton":
        recorder.add_opaque(scan_fused_traffic(batch, dim, length, nstate, 1, itemsize)["fwd"])
    elif scan == "torch" and hidden.device.type == "cpu":
        recorder.add_opaque(numba_scan_traffic(batch, dim, length, nstate,
                                               8 if hidden.dtype == torch.float64 else 4))
    weight = module.conv1d.weight.squeeze(1)
    if (resolve_backend(module.backend, hidden.device, "causal_conv1d") == "triton"
            and _package_supports(hidden, weight, module.conv1d.bias)):
        recorder.add_opaque(_conv_package_traffic(batch, dim, length, weight.shape[1], itemsize))


@contextlib.contextmanager
def _opaque_kernel_hooks(modules: Iterable[torch.nn.Module], recorder: StageRecorder):
    from kernels import Mamba
    from kernels.modules import DeviationAdaNorm, RegionSoftmaxWarp

    hooks = {DeviationAdaNorm: _adanorm_hook, RegionSoftmaxWarp: _warp_hook, Mamba: _mamba_hook}
    handles = []
    try:
        for root in modules:
            for module in root.modules():
                for kind, hook in hooks.items():
                    if isinstance(module, kind):
                        handles.append(module.register_forward_hook(functools.partial(hook, recorder)))
        yield
    finally:
        for handle in handles:
            handle.remove()


# The renderer, one stage at a time.

def _no_stage(name: str):
    return contextlib.nullcontext()


def _render_window_in_stages(renderer, state, motion: torch.Tensor, stage) -> torch.Tensor:
    """``Renderer._render_window``'s computation, the same calls in the same order, with the DIT,
    the LMDD, the warp and the decoder each inside ``stage(name)``; returns the frames."""
    b, n, _ = motion.shape
    with stage("DIT"):
        deviation = renderer.dit(torch.cat([state.motion[:, None], motion], dim=1))
        deviation = deviation.reshape(b * n, *deviation.shape[2:])
    feature = state.feature
    with stage("LMDD"):
        per_frame = (feature.repeat_interleave(n, dim=0) if b > 1 or n == 1
                     else feature.expand(n, *feature.shape[1:]))
        logits, displacement, mask, *added = renderer.lmdd(deviation, per_frame)
    with stage("warp"):
        if n == 1 or b == 1:
            warped = renderer.warp(feature, logits, displacement, mask)
        else:
            warped = torch.cat([renderer.warp(feature[i:i + 1], logits[i * n:(i + 1) * n],
                                              displacement[i * n:(i + 1) * n], mask[i * n:(i + 1) * n])
                                for i in range(b)])
    with stage("decoder"):
        appearance = state.appearance.repeat_interleave(n, dim=0)
        frames = renderer.decode(warped, added, appearance, motion.reshape(b * n, -1))
    return frames.view(b, n, *frames.shape[1:])


def render_in_stages(renderer, state, motion: torch.Tensor, window: Optional[int] = None,
                     stage: Optional[Callable] = None) -> torch.Tensor:
    """``renderer.render(state, motion, window)`` computed by calling the renderer's sub-modules
    (DIT, LMDD, warp, decoder) in order, each inside ``stage(name)`` (a context-manager factory,
    e.g. a :class:`StageRecorder`). Frames (B, N, 3, S, S), equal to ``renderer.render``'s."""
    dim = renderer.config.motion_dim
    if motion.dim() != 3 or motion.shape[0] != state.batch or motion.shape[2] != dim:
        raise ValueError(f"motion must have shape ({state.batch}, N, {dim}), got {tuple(motion.shape)}")
    window = window or renderer.config.render_window
    stage = stage or _no_stage
    return torch.cat([_render_window_in_stages(renderer, state, motion[:, s:s + window], stage)
                      for s in range(0, motion.shape[1], window)], dim=1)


# The two scenarios.

@dataclass
class Inputs:
    """A source image (3, S, S), T driving frames (T, 3, S, S), T / 25 s of 16 kHz speech."""
    source: torch.Tensor
    driving: torch.Tensor
    audio: "object"  # numpy float32 array

    @property
    def frames(self) -> int:
        return self.driving.shape[0]


def _audio_samples(seconds: float) -> int:
    """16 kHz samples of ``seconds`` of audio; a ValueError unless the audio front end takes it."""
    from mim.animate import _MIN_SAMPLES
    from mim.audio import SAMPLE_RATE

    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    samples = round(seconds * SAMPLE_RATE)
    if samples < _MIN_SAMPLES:
        raise ValueError(f"seconds must be at least {_MIN_SAMPLES / SAMPLE_RATE:.3f} "
                         f"({_MIN_SAMPLES} samples at {SAMPLE_RATE} Hz), got {seconds!r}")
    return samples


def make_inputs(image_size: int, seconds: float, seed: int = 0) -> Inputs:
    """Procedural inputs for ``seconds`` of video: T = ceil(25 · seconds) frames."""
    from mim.audio import SAMPLE_RATE, num_video_frames
    from mim.data import make_clip, speech_like_audio

    samples = _audio_samples(seconds)
    audio = speech_like_audio(samples / SAMPLE_RATE, seed=seed)[0][:samples]
    frames = num_video_frames(len(audio))
    driving = make_clip(seed, num_frames=frames, size=image_size)["frames"]
    source = make_clip(seed + 1, num_frames=1, size=image_size)["frames"][0]
    return Inputs(source=source, driving=driving, audio=audio)


@torch.no_grad()
def run_img2img(animator, inputs: Inputs, stage, workdir: Path) -> int:
    """Reenactment of the source by the driving frames, stage by stage; returns T."""
    from mim.io import write_video

    renderer, device = animator.renderer, animator.device
    window = renderer.config.render_window
    with stage("source encoding"):
        state = renderer.encode_source(inputs.source[None].to(device))
    with stage("motion encoding"):
        first = renderer.encode_motion(inputs.driving[:1].to(device))
    rendered = []
    for start in range(0, inputs.frames, window):
        with stage("motion encoding"):
            motion = renderer.encode_motion(inputs.driving[start:start + window].to(device))
            motion = state.motion + (motion - first)
        rendered.append(render_in_stages(renderer, state, motion[None], window, stage)[0])
    with stage("video writing"):
        frames = torch.cat(rendered).clamp(0, 1).cpu()
        write_video(workdir / "img2img.mp4", frames, fps=VIDEO_FPS)
    return inputs.frames


@torch.no_grad()
def run_audio2video(animator, inputs: Inputs, stage, workdir: Path, steps: Optional[int] = None,
                    seed: int = 0) -> int:
    """Audio-driven animation of the source, stage by stage; returns T."""
    from mim.audio import SAMPLE_RATE, audio_features
    from mim.io import write_video

    renderer, motion_model, device = animator.renderer, animator.motion, animator.device
    config = animator.config
    with stage("source encoding"):
        state = renderer.encode_source(inputs.source[None].to(device))
    with stage("audio features"):
        features = audio_features(inputs.audio, inputs.frames)
        mel = features.mel[None].to(device)
        windows = features.local_windows(config.motion.local_context)[None].to(device)
    with stage("Mamba-g/l"):
        audio_global, audio_local = motion_model.encode_audio(mel, windows)
    with stage("diffusion sampling"):
        generator = torch.Generator(device).manual_seed(int(seed))
        motion = motion_model.generate(audio_global, audio_local, state.appearance, steps=steps,
                                       generator=generator)
    frames = render_in_stages(renderer, state, motion, config.renderer.render_window, stage)[0]
    with stage("video writing"):
        frames = frames.clamp(0, 1).cpu()
        write_video(workdir / "audio2video.mp4", frames, fps=VIDEO_FPS, audio=inputs.audio,
                    sample_rate=SAMPLE_RATE)
    return inputs.frames


# Models.

def _resolve_device(device) -> torch.device:
    from mim.animate import _resolve_device as resolve
    return resolve(device)


def build_animator(config: Union[str, Config, None] = None, checkpoint: Optional[str] = None,
                   device="auto", seed: int = 0):
    """(Animator, weights description). ``checkpoint``: a stage-2 checkpoint (renderer and motion
    generator), or a stage-1 one (its renderer; the motion generator random); its config is
    used. Otherwise ``config`` (a name or file, default tiny) with random weights."""
    from mim.animate import Animator
    from mim.models import Renderer
    from mim.models.motion import MotionGenerator
    from mim.train.checkpoint import CheckpointError, checkpoint_config, load_checkpoint, read_metadata

    if checkpoint is not None and config is not None:
        raise ValueError("give --config or --checkpoint, not both: a checkpoint carries its config")
    meta = None
    if checkpoint is not None:
        meta = read_metadata(os.fspath(checkpoint))
        if meta["kind"] not in ("stage1", "stage2"):
            raise CheckpointError(f"checkpoint {checkpoint!r} holds a {meta['kind']!r} model, "
                                  f"expected a stage-1 or stage-2 one")
        config = checkpoint_config(os.fspath(checkpoint), meta)
    elif not isinstance(config, Config):
        config = load_config(config or "tiny")
    torch.manual_seed(seed)
    renderer = Renderer(config.renderer)
    motion = MotionGenerator(config.motion, config.renderer.motion_dim, config.renderer.appearance_dim)
    if meta is None:
        weights = "random weights (no checkpoint): stage costs do not depend on the weights' values"
    elif meta["kind"] == "stage2":
        load_checkpoint(os.fspath(checkpoint), kind="stage2",
                        modules={"renderer": renderer, "motion": motion})
        weights = f"stage-2 checkpoint {os.fspath(checkpoint)}"
    else:
        load_checkpoint(os.fspath(checkpoint), kind="stage1", modules={"renderer": renderer})
        weights = (f"renderer from stage-1 checkpoint {os.fspath(checkpoint)}; "
                   f"motion generator random weights")
    return Animator(renderer, motion, config, _resolve_device(device)), weights


def _set_backend(animator, backend: Optional[str]) -> None:
    from kernels import Mamba

    animator.renderer.set_backend(backend)
    for module in animator.motion.modules():
        if isinstance(module, Mamba):
            module.backend = backend


# Measurement.

def _stage_entry(recorders_time: List[StageRecorder], counted: StageRecorder, name: str,
                 dtype: torch.dtype, backend: str) -> dict:
    times = [r.times.get(name, 0.0) for r in recorders_time]
    aten = counted.traffic[name]
    opaque = counted.opaque[name]
    total = aten + opaque
    flops = counted.flops[name]
    host = name in HOST_STAGES
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
        "modeled_h100_s": None if host else modeled_h100_s(flops, total.bytes, total.launches, dtype),
    }


def _measure(run: Callable, animator, backend: Optional[str], repeats: int, warmup: int,
             log: Callable[[str], None], label: str) -> tuple:
    """(timed recorders, count recorder) of ``run(stage)`` with ``backend`` set."""
    _set_backend(animator, backend)
    device = animator.device
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
    with _opaque_kernel_hooks((animator.renderer, animator.motion), counted):
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
        "modeled_h100_s": sum(modeled),
        "modeled_h100_per_video_second_s": sum(modeled) / seconds,
    }


def profile(config: Union[str, Config, None] = None, checkpoint: Optional[str] = None,
            seconds: float = 1.0, scenarios: Sequence[str] = SCENARIOS, repeats: int = 3,
            warmup: int = 1, backend: Optional[str] = None, device="auto",
            sample_steps: Optional[int] = None, seed: int = 0, trace: Optional[str] = None,
            progress: bool = False) -> dict:
    """Profile ``seconds`` of video in each of ``scenarios``: the engine (``backend``) and the
    reference column, every stage measured, counted and modeled (see the module docstring).
    Returns the run as a JSON-ready dict; ``trace`` also writes a Chrome trace there."""
    from kernels._dispatch import resolve_backend

    for name in scenarios:
        if name not in SCENARIO_STAGES:
            raise ValueError(f"unknown scenario {name!r}; scenarios: {SCENARIOS}")
    for value, name, least in ((repeats, "repeats", 1), (warmup, "warmup", 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    _audio_samples(seconds)
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

    def log(text: str) -> None:
        if progress:
            print(f"mim profile: {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="mim-profile-") as tmp:
        workdir = Path(tmp)
        runners = {
            "img2img": lambda stage: run_img2img(animator, inputs, stage, workdir),
            "audio2video": lambda stage: run_audio2video(animator, inputs, stage, workdir, steps, seed),
        }
        results = {}
        for scenario in scenarios:
            measured = {column: _measure(runners[scenario], animator, backends[column], repeats,
                                         warmup, log, f"{scenario}/{column}")
                        for column in COLUMNS}
            stages = []
            for name in SCENARIO_STAGES[scenario]:
                entry = {"stage": name, "host": name in HOST_STAGES}
                for column in COLUMNS:
                    entry[column] = _stage_entry(*measured[column], name, dtype, names[column])
                stages.append(entry)
            results[scenario] = {
                "stages": stages,
                "total": {column: _total(stages, column, video_seconds) for column in COLUMNS},
                "paper_table3_s_per_video_second": PAPER_TABLE3_S[scenario],
            }
        if trace is not None:
            _write_trace(trace, runners, scenarios, animator, backends, log)
    _set_backend(animator, backend)
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
        "nvtx": NVTX_SOURCE,
        "model": {"note": MODEL_NOTE, "bandwidth_bytes_per_s": H100_BANDWIDTH_BYTES_PER_S,
                  "launch_overhead_s": LAUNCH_OVERHEAD_S,
                  "peak_flops": H100_PEAK_FLOPS[dtype] if dtype in H100_PEAK_FLOPS else None},
        "counting_note": _counting_note(device, engine),
        "scenarios": results,
    }


def _counting_note(device: torch.device, engine: str) -> str:
    if engine == "triton":
        return ("bytes and launches: ATen ops counted by bench.traffic.TrafficCounter; the fused "
                "Triton kernels (and the causal_conv1d package), which it cannot see, added from "
                "bench.traffic's analytic functions")
    return (f"bytes and launches: the ATen ops that ran on {device.type} (engine backend "
            f"'{engine}'), counted by bench.traffic.TrafficCounter as GPU kernels would move them; "
            f"the numba selective scan of the CPU path, which it cannot see, added analytically. "
            f"The Triton kernels did not run: the engine's figures are its {engine} path's")


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
                _set_backend(animator, backends[column])
                runners[scenario](StageRecorder(animator.device, "run", f"{scenario}/{column}/"))
    with atomic_output(path) as temp:
        prof.export_chrome_trace(str(temp))


# Reports.

def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's processor or machine."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_metadata() -> dict:
    """When and where: the date (UTC), the machine, the GPU if any, package versions."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"node": platform.node(), "processor": _cpu_name(),
                    "platform": platform.platform(), "cpu_count": os.cpu_count(), "gpu": gpu},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "triton": _package_version("triton"), "numba": _package_version("numba"),
                     "nvtx": _package_version("nvtx")},
    }


def report_json(runs: Sequence[dict], metadata: Optional[dict] = None) -> dict:
    """The file ``--json`` and ``bench/latency.py`` write: {"metadata": ..., "runs": [...]}."""
    return {"metadata": metadata or run_metadata(), "runs": list(runs)}


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _gflop(n: int) -> str:
    return f"{n / 1e9:.4g}"


def _gflops(engine: int, reference: int) -> str:
    """One figure when both columns agree to 4 digits, else "engine/reference"."""
    e, r = _gflop(engine), _gflop(reference)
    return e if e == r else f"{e}/{r}"


def format_report(run: dict) -> str:
    """The run as text: one table per scenario, a total line and the per-second figures."""
    engine = run["backends"]["engine"]
    lines = [
        f"mim profile: config {run['config']}, {run['frames']} frames = {run['seconds']:g} s of "
        f"{run['fps']} fps video at {run['image_size']}x{run['image_size']}, {run['device']} "
        f"{run['dtype']}, {run['torch_threads']} threads; {run['weights']}",
        f"measured: wall time on {run['device']}, median of {run['repeats']} runs after "
        f"{run['warmup']} warm-up; engine = backend '{engine}', ref = backend 'reference'; "
        f"diffusion: {run['sample_steps']} DDIM steps, guidance {run['guidance_scale']:g}",
        f"H100 figures are {run['model']['note']}",
        run["counting_note"],
        f"NVTX ranges: {run['nvtx']}",
    ]
    headers = ("stage", "engine ms", "ref ms", "GFLOP", "engine MB", "ref MB", "launches e/r",
               "H100 e ms (modeled)", "H100 ref ms (modeled)")
    for scenario, result in run["scenarios"].items():
        rows = []
        for s in result["stages"]:
            e, r = s["engine"], s["reference"]
            flops = _gflops(e["flops"], r["flops"])
            rows.append((s["stage"], _ms(e["measured_s"]), _ms(r["measured_s"]), flops,
                         _mb(e["bytes"]), _mb(r["bytes"]), f"{e['launches']}/{r['launches']}",
                         _ms(e["modeled_h100_s"]), _ms(r["modeled_h100_s"])))
        te, tr = result["total"]["engine"], result["total"]["reference"]
        rows.append(("total", _ms(te["measured_s"]), _ms(tr["measured_s"]),
                     _gflops(te["flops"], tr["flops"]),
                     _mb(te["bytes"]), _mb(tr["bytes"]), f"{te['launches']}/{tr['launches']}",
                     _ms(te["modeled_h100_s"]), _ms(tr["modeled_h100_s"])))
        widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

        def line(values):
            return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                             for i, (v, w) in enumerate(zip(values, widths)))

        paper = result["paper_table3_s_per_video_second"]
        lines += ["", f"{scenario}:", line(headers), line(["-" * w for w in widths]),
                  *(line(row) for row in rows[:-1]), line(["-" * w for w in widths]), line(rows[-1]),
                  f"per second of video: measured {te['measured_per_video_second_s']:.3f} s (engine), "
                  f"{tr['measured_per_video_second_s']:.3f} s (ref) on {run['device']}; modeled H100 "
                  f"{te['modeled_h100_per_video_second_s']:.4f} s (engine), "
                  f"{tr['modeled_h100_per_video_second_s']:.4f} s (ref), video writing excluded; "
                  f"paper Table III: {paper:.3f} s on their GPU"
                  + ("" if math.isclose(run["seconds"], 1.0) else
                     f" (a {run['seconds']:g} s clip: its fixed costs, such as source encoding, "
                     f"are divided by {run['seconds']:g} s as well; use 1 s to compare)")]
    return "\n".join(lines)
