"""The stages of the two products and :class:`StageRecorder`, which times or counts each one.

Every stage runs inside an NVTX range (the ``nvtx`` package; a no-op unless a CUDA profiler such
as Nsight Systems is attached) and a ``torch.profiler.record_function``. FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; elementwise work is
not counted) plus the formulas below for the fused ATen ops it does not know; bytes and launches by
``kernels.cost.TrafficCounter``. Each op's FLOPs are also filed under the dtype it computes in
(its result's: bf16 for a matmul under bf16 autocast), so that the model can run each precision
at its own peak. A :meth:`StageRecorder.graph_replay` region marks work a CUDA graph would replay:
the launches counted inside it are noted as captured, and the region as one replay.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import Counter, defaultdict
from typing import Dict, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["STAGES", "SCENARIO_STAGES", "SCENARIOS", "HOST_STAGES", "StageRecorder", "nvtx_range",
           "NVTX_SOURCE"]

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


def _compute_dtype(out, args) -> Optional[torch.dtype]:
    """The dtype an op computes in: its first floating-point result's (a bf16 GEMM accumulates in
    fp32 and writes bf16), else its first floating-point operand's."""
    from torch.utils._pytree import tree_leaves

    for value in (out, args):
        for leaf in tree_leaves(value):
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                return leaf.dtype
    return None


class _FlopsByDtype(FlopCounterMode):
    """``FlopCounterMode`` (with :func:`_flop_formulas`) that also files each op's FLOPs under
    :func:`_compute_dtype` in ``by_dtype``; the total is ``FlopCounterMode``'s own."""

    def __init__(self):
        super().__init__(display=False, custom_mapping=_flop_formulas())
        self.by_dtype: Counter = Counter()

    def _count_flops(self, func_packet, out, args, kwargs):
        before = self.get_total_flops()
        result = super()._count_flops(func_packet, out, args, kwargs)
        added = self.get_total_flops() - before
        if added:
            self.by_dtype[_compute_dtype(out, args)] += added
        return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageRecorder:
    """Runs a pipeline's stages: ``with recorder("DIT"): ...``; pass it as the ``stage`` of
    ``Renderer.render`` and the scenarios.

    Every stage is an NVTX range and a ``torch.profiler.record_function`` named
    ``prefix + stage``. ``mode``: "run" (nothing else), "time" (wall time, the device
    synchronized at both ends, summed per stage name into ``times``) or "count" (FLOPs into
    ``flops`` and, per dtype, ``flops_by_dtype``; ATen traffic into ``traffic``; analytic traffic
    of opaque kernels, reported by :meth:`add_opaque`, into ``opaque``; the launches inside
    :meth:`graph_replay` regions into ``captured_launches``, the regions into ``replays`` and the
    copies in and out of each replay's static buffers into ``replay_copies``). A stage entered
    several times (once per render window) adds up.
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
        self.flops_by_dtype: Dict[str, Counter] = defaultdict(Counter)
        self.traffic = defaultdict(lambda: Traffic(0, 0, 0))
        self.opaque = defaultdict(lambda: Traffic(0, 0, 0))
        self.captured_launches: Dict[str, int] = defaultdict(int)
        self.replays: Dict[str, int] = defaultdict(int)
        self.replay_copies = defaultdict(lambda: Traffic(0, 0, 0))
        self.current: Optional[str] = None
        self._counter = None            # the current stage's TrafficCounter
        self._replay: Optional[dict] = None   # the open graph_replay region

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
                from kernels.cost import TrafficCounter

                flops = _FlopsByDtype()
                replay = self._replay      # a region this whole stage runs inside
                self.current = name
                try:
                    with flops, TrafficCounter() as traffic:
                        self._counter = traffic
                        yield
                finally:
                    self.current, self._counter = None, None
                self.flops[name] += flops.get_total_flops()
                self.flops_by_dtype[name].update(flops.by_dtype)
                self.traffic[name] = self.traffic[name] + traffic.summary()
                if replay is not None:
                    self.captured_launches[name] += len(traffic.records)
                    if replay["stage"] is None:
                        replay["stage"] = name
            else:
                yield

    @contextlib.contextmanager
    def graph_replay(self, inputs=()):
        """A region a CUDA graph would capture once and replay (a DDIM window, a render window):
        in "count" mode, the launches counted inside it (ATen and opaque) are added to
        ``captured_launches`` of their stage, and the region counts as one replay of the stage
        it runs in, or, when it holds whole stages, of the first of them. Yields a list: append
        the region's output tensors to it. A replay copies its ``inputs`` into the graph's static
        buffers and its outputs out of them (``mim.graphs.CapturedWindows``): one eager copy
        kernel each, added to ``replay_copies`` of the replay's stage. Regions do not nest."""
        outputs = []
        if self.mode != "count":
            yield outputs
            return
        if self._replay is not None:
            raise RuntimeError("graph_replay regions do not nest: one graph replay at a time")
        stage = self.current
        start = len(self._counter.records) if stage is not None else 0
        self._replay = {"stage": stage, "inside": stage is not None}
        try:
            yield outputs
        finally:
            replay, self._replay = self._replay, None
        if replay["inside"]:
            # the stage's counter is still open: the ATen launches since the region began
            self.captured_launches[stage] += len(self._counter.records) - start
        if replay["stage"] is not None:
            from kernels.cost import Traffic, tensor_bytes

            self.replays[replay["stage"]] += 1
            copied = [t for t in (*inputs, *outputs) if isinstance(t, torch.Tensor)]
            moved = sum(tensor_bytes(t) for t in copied)
            self.replay_copies[replay["stage"]] += Traffic(len(copied), moved, moved)

    def add_opaque(self, traffic) -> None:
        """Add the analytic traffic of a kernel the counter cannot see to the current stage."""
        if self.mode == "count" and self.current is not None:
            self.opaque[self.current] = self.opaque[self.current] + traffic
            if self._replay is not None:
                self.captured_launches[self.current] += traffic.launches
