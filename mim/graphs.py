"""Launch-free sampling: the DDIM window and the render window captured once and replayed.

Both units are functions of tensors only, with fixed shapes and no host read of a tensor value:
``MotionGenerator.window_sampler(...)`` (every DDIM step of one motion window, guidance included)
and ``Renderer.window_frames`` (the DIT, the LMDD, the warp and the decoder for one render
window). Two ways to run them without a launch per kernel:

- ``"cuda-graphs"`` (:class:`CapturedWindows`): per set of input shapes, a warm-up on a side
  stream, one ``torch.cuda.CUDAGraph`` capture into static input buffers, then per window a copy
  of the inputs into those buffers and one replay. A motion clip has at most two window shapes
  (the full window and a shorter last one), and so has a rendered clip: at most two captures each.
- ``"compile"`` (:func:`compiled`): ``torch.compile(mode="reduce-overhead", fullgraph=True,
  dynamic=False)``; on CUDA inductor replays its own CUDA graphs, on the CPU it compiles with
  inductor (its C++ backend) and replays nothing.

``"eager"`` runs them as they are. :func:`window_wrapper` gives the wrapper for a mode.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Callable, Dict, Optional, Tuple

import torch

__all__ = ["GRAPH_MODES", "CapturedWindows", "check_graph_mode", "compiled", "window_wrapper"]

GRAPH_MODES = ("eager", "cuda-graphs", "compile")
WARMUP_CALLS = 3
"""Eager calls on a side stream before a capture: lazy initialisation (cuBLAS handles, Triton
compilation, the schedule's device copy) happens there, never inside the capture."""


def check_graph_mode(mode: str, device: torch.device) -> str:
    """``mode`` if it is one of :data:`GRAPH_MODES` and can run on ``device``; "cuda-graphs"
    needs a CUDA device."""
    if mode not in GRAPH_MODES:
        raise ValueError(f"graphs must be one of {GRAPH_MODES}, got {mode!r}")
    if mode == "cuda-graphs" and torch.device(device).type != "cuda":
        raise ValueError(f"--cuda-graphs captures CUDA graphs and needs a CUDA device, but the "
                         f"model runs on {torch.device(device)}; use --device cuda on a machine "
                         f"with a GPU, or --compile (torch.compile, which also runs on the CPU)")
    return mode


def _without_autocast_cache():
    """A capture must not read autocast's cache of cast weights (it is freed when the outermost
    autocast region closes, while the graph would keep reading it): nest a region with the same
    settings and the cache off. Nothing when autocast is off."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


class CapturedWindows:
    """``fn(*tensors) -> tensor`` as a CUDA graph per set of input shapes and dtypes.

    The first call with new shapes copies its inputs into static buffers, runs ``fn``
    :data:`WARMUP_CALLS` times on a side stream, then captures one call into a
    ``torch.cuda.CUDAGraph``; every call (that one included) copies its inputs into the buffers,
    replays the graph and returns a copy of the static output. ``fn`` must be capturable: CUDA
    tensors of fixed shapes in and out, no host read of a tensor value, no copy from the host.
    ``captures`` counts the graphs made so far.
    """

    def __init__(self, fn: Callable[..., torch.Tensor]):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self._graphs: Dict[Tuple, Tuple[torch.cuda.CUDAGraph, Tuple[torch.Tensor, ...], torch.Tensor]] = {}

    @property
    def captures(self) -> int:
        return len(self._graphs)

    def _capture(self, inputs: Tuple[torch.Tensor, ...]):
        static = tuple(x.clone() for x in inputs)
        side = torch.cuda.Stream(device=static[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # A Triton kernel object collected during the capture unloads its module and invalidates
        # the capture: the collector stays off for its length.
        collecting = gc.isenabled()
        gc.disable()
        try:
            with torch.cuda.graph(graph):
                output = self.fn(*static)
        finally:
            if collecting:
                gc.enable()
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"a captured window must return one tensor, got {type(output).__name__}")
        return graph, static, output

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for index, x in enumerate(inputs):
            if not isinstance(x, torch.Tensor) or not x.is_cuda:
                got = f"a {x.device} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"a CUDA-graph window takes CUDA tensors only; input {index} is {got}")
        key = tuple((tuple(x.shape), x.dtype, x.device) for x in inputs)
        with _without_autocast_cache():
            if key not in self._graphs:
                self._graphs[key] = self._capture(inputs)
            graph, static, output = self._graphs[key]
            for buffer, x in zip(static, inputs):
                buffer.copy_(x)
            graph.replay()
        return output.clone()


def compiled(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` under ``torch.compile(mode="reduce-overhead", fullgraph=True, dynamic=False)``:
    one graph per input shape (a graph break is an error), replayed as a CUDA graph on CUDA."""
    return torch.compile(fn, mode="reduce-overhead", fullgraph=True, dynamic=False)


def window_wrapper(mode: str, device: torch.device) -> Optional[Callable[[Callable], Callable]]:
    """What turns a window function into its launch-free version for ``mode``: None for "eager",
    :class:`CapturedWindows` for "cuda-graphs" (CUDA only), :func:`compiled` for "compile"."""
    mode = check_graph_mode(mode, device)
    return {"eager": None, "cuda-graphs": CapturedWindows, "compile": compiled}[mode]
