"""ONNX export of the stage-1 renderer, with the 5-D (trilinear) grid sample of the warp.

    python -m mim.export --checkpoint runs/x/checkpoints/step_0000500.safetensors --out renderer.onnx
    python -m mim.export --config tiny --out renderer.onnx          # random weights, for testing

Three graphs, as the renderer is used (source once, frames many; see docs/onnx.md):

- ``encode_source``: source (B, 3, S, S) → feature F_id (B, C, S_d, H, W), appearance F_A
  (B, appearance_dim), source_motion M_0 (B, motion_dim); once per portrait.
- ``encode_motion``: frames (B, N, 3, S, S) → motion (B, N, motion_dim); driving frames of a
  reenactment (stage 2 produces motion features itself).
- ``render``: feature, appearance, source_motion, motion (B, N, motion_dim) → frames
  (B, N, 3, S, S) in [0, 1]. One call is one DIT window: ``Renderer.render`` splits a long
  sequence into windows of ``render_window`` frames (stored in the model's metadata), each
  rendered against M_0; a caller of the graph does the same.

B and N are dynamic axes. The warp's trilinear sampling is either the ONNX ``GridSample`` op on
5-D tensors (``grid_sample="onnx"``, opset >= 20, mode "linear") or, for runtimes without 5-D
GridSample, a decomposition into 8 ``Gather`` ops (one per cell corner, on the volume as rows
of C channels; ``grid_sample="gather"``, opset >= 18): the warp reference's two samplers
(``region_softmax_warp_reference(..., sampler=...)``). The render graph is
``Renderer.render_window`` traced with that warp. The engine's custom ops export through their
reference math (``backend="reference"`` for the duration of the export), so the graph holds
standard ONNX ops only.

Several graphs are written next to ``path`` with the graph's name before the suffix
(``renderer.onnx`` → ``renderer.render.onnx``, ...); a single graph is written to ``path`` itself.
Every graph is exported in memory first and then written atomically (temporary file, rename):
a failed export leaves no file and does not touch existing ones.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from kernels.region_softmax_warp import region_softmax_warp_reference
from mim.models.renderer import Renderer, SourceState

__all__ = ["GRAPHS", "GRID_SAMPLE_MODES", "ExportError", "export_renderer_onnx", "exporting", "graph_paths",
           "renderer_graph_modules", "main"]

GRAPHS = ("encode_source", "encode_motion", "render")
GRID_SAMPLE_MODES = ("onnx", "gather")
# The warp reference's sampler behind each mode: F.grid_sample → GridSample; 8 row gathers → Gather.
SAMPLERS = {"onnx": "grid_sample", "gather": "gather"}
MIN_OPSET = {"onnx": 20, "gather": 18}   # GridSample takes 5-D inputs from opset 20 on

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """The renderer could not be exported (bad arguments, or the exporter failed)."""


# --------------------------------------------------------------------------- graph modules


class _EncodeSource(nn.Module):
    def __init__(self, renderer: Renderer):
        super().__init__()
        self.renderer = renderer

    def forward(self, source: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.renderer
        return r.image_encoder(source), r.appearance_extractor(source), r.motion_encoder(source)


class _EncodeMotion(nn.Module):
    def __init__(self, renderer: Renderer):
        super().__init__()
        self.renderer = renderer

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, n = frames.shape[0], frames.shape[1]
        motion = self.renderer.motion_encoder(frames.flatten(0, 1))
        return motion.reshape(b, n, motion.shape[-1])


class _Render(nn.Module):
    """One window of ``Renderer.render``: ``Renderer.render_window`` itself, with the reference
    warp math (``region_softmax_warp_reference``, its sampler picked by ``grid_sample``) as its
    ``warp``, so that F_id is expanded to B·N frames (Expand + Reshape in ONNX) and warped in one
    batched call: the trace holds for any B and N."""

    def __init__(self, renderer: Renderer, grid_sample: str):
        super().__init__()
        self.renderer = renderer
        self.sampler = SAMPLERS[grid_sample]

    def _warp(self, feature, logits, displacement, mask):
        warp = self.renderer.warp
        return region_softmax_warp_reference(feature, logits, displacement, mask, warp.beta,
                                             warp.padding_mode, warp.align_corners, self.sampler)

    def forward(self, feature: torch.Tensor, appearance: torch.Tensor, source_motion: torch.Tensor,
                motion: torch.Tensor) -> torch.Tensor:
        state = SourceState(feature=feature, appearance=appearance, motion=source_motion)
        return self.renderer.render_window(state, motion, warp=self._warp)["frames"]


def renderer_graph_modules(renderer: Renderer, grid_sample: str = "onnx") -> Dict[str, nn.Module]:
    """The modules that are exported, by graph name (they share ``renderer``'s parameters).
    Run them under ``exporting(renderer)`` to get the exported math in PyTorch."""
    return {"encode_source": _EncodeSource(renderer), "encode_motion": _EncodeMotion(renderer),
            "render": _Render(renderer, grid_sample)}


@contextlib.contextmanager
def exporting(renderer: Renderer) -> Iterator[None]:
    """Eval mode and the reference backend (plain PyTorch math, no custom ops) for the block;
    the renderer's mode and backends are restored afterwards."""
    backends = (renderer.dit.adanorm.backend, renderer.warp.backend)
    training = renderer.training
    renderer.eval()
    renderer.dit.adanorm.backend = "reference"
    renderer.warp.backend = "reference"
    try:
        with torch.no_grad():
            yield
    finally:
        renderer.dit.adanorm.backend, renderer.warp.backend = backends
        renderer.train(training)


# --------------------------------------------------------------------------- export


def _example_inputs(renderer: Renderer, graph: str, batch: int = 2, frames: int = 3):
    """Example inputs (B = 2, N = 3, so that neither axis is traced as the constant 1),
    input names, output names and dynamic axes."""
    c = renderer.config
    s, v = c.image_size, c.volume_size
    parameter = next(renderer.parameters())
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(parameter)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(parameter)

    if graph == "encode_source":
        return ((rand(batch, 3, s, s),), ["source"], ["feature", "appearance", "source_motion"],
                {"source": {0: "batch"}})
    if graph == "encode_motion":
        return ((rand(batch, frames, 3, s, s),), ["frames"], ["motion"],
                {"frames": {0: "batch", 1: "frames"}})
    inputs = (rand(batch, c.feature_channels, c.depth_layers, v, v), rand(batch, c.appearance_dim),
              randn(batch, c.motion_dim), randn(batch, frames, c.motion_dim))
    return (inputs, ["feature", "appearance", "source_motion", "motion"], ["frames"],
            {"feature": {0: "batch"}, "appearance": {0: "batch"}, "source_motion": {0: "batch"},
             "motion": {0: "batch", 1: "frames"}})


def _dynamic_shapes(names: Sequence[str], axes: Dict[str, Dict[int, str]]):
    dims = {name: torch.export.Dim(name, min=1) for name in ("batch", "frames")}
    return tuple({axis: dims[label] for axis, label in axes.get(name, {}).items()} for name in names)


def _require_exporter() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)} (torch.onnx.export with "
                          f"dynamo=True): pip install {' '.join(missing)}, or the dev extras")


def _export_graph(renderer: Renderer, graph: str, opset: int, grid_sample: str):
    import onnx

    module = renderer_graph_modules(renderer, grid_sample)[graph]
    args, inputs, outputs, axes = _example_inputs(renderer, graph)
    captured = io.StringIO()   # the exporter reports its steps on stdout
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)   # e.g. "torchvision is not installed" warnings
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, None, dynamo=True, opset_version=opset,
                                        input_names=inputs, output_names=outputs,
                                        dynamic_shapes=_dynamic_shapes(inputs, axes),
                                        optimize=True, verbose=False)
    except Exception as error:  # the exporter raises many types; keep its message
        raise ExportError(f"ONNX export of the {graph!r} graph failed: {type(error).__name__}: "
                          f"{error}") from error
    finally:
        torch_onnx_log.setLevel(level)
    log.info("exported %s: %s", graph, captured.getvalue().strip().replace("\n", "; "))
    model = program.model_proto
    metadata = {"mim.graph": graph, "mim.grid_sample": grid_sample,
                "mim.render_window": str(renderer.config.render_window),
                "mim.renderer_config": json.dumps(dataclasses.asdict(renderer.config))}
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "mim-engine"
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the exported {graph!r} graph is not valid ONNX: {error}") from error
    return model


def graph_paths(path, graphs: Sequence[str]) -> Dict[str, Path]:
    """Where each graph is written: ``path`` for a single graph, else ``<stem>.<graph><suffix>``
    next to it."""
    path = Path(path)
    if len(graphs) == 1:
        return {graphs[0]: path}
    suffix = path.suffix or ".onnx"
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return {graph: path.with_name(f"{stem}.{graph}{suffix}") for graph in graphs}


def _check_arguments(renderer, path, graphs, opset, grid_sample) -> Tuple[str, ...]:
    if not isinstance(renderer, Renderer):
        raise TypeError(f"renderer must be a mim.models.Renderer, got {type(renderer).__name__}")
    if isinstance(graphs, str):
        graphs = (graphs,)
    graphs = tuple(graphs)
    unknown = [g for g in graphs if g not in GRAPHS]
    if not graphs or unknown or len(set(graphs)) != len(graphs):
        raise ValueError(f"graphs must be distinct names from {GRAPHS}, got {graphs}")
    if grid_sample not in GRID_SAMPLE_MODES:
        raise ValueError(f"grid_sample must be one of {GRID_SAMPLE_MODES}, got {grid_sample!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET[grid_sample]:
        why = (" (GridSample takes 5-D inputs from opset 20 on; use grid_sample='gather' for an "
               "older opset)" if grid_sample == "onnx" else "")
        raise ValueError(f"opset must be an integer >= {MIN_OPSET[grid_sample]} for "
                         f"grid_sample={grid_sample!r}{why}, got {opset!r}")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"path must be a file path, got {path!r}")
    if Path(path).is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give a file name such as renderer.onnx")
    return graphs


def export_renderer_onnx(renderer: Renderer, path, graphs: Sequence[str] = GRAPHS, *,
                         opset: int = 20, grid_sample: str = "onnx") -> Dict[str, str]:
    """Export ``renderer``'s graphs to ONNX; returns {graph: written path}.

    Args:
        renderer: a ``mim.models.Renderer`` (its mode and kernel backends are restored after).
        path: the file for a single graph; with several, ``<stem>.<graph>.onnx`` next to it.
        graphs: any of "encode_source", "encode_motion", "render" (default: all three).
        opset: ONNX opset (>= 20 for grid_sample="onnx", >= 18 for "gather").
        grid_sample: "onnx" (the GridSample op on 5-D tensors) or "gather" (8 Gather ops, one
            per cell corner, for runtimes without 5-D GridSample).

    Raises ``TypeError``/``ValueError`` for bad arguments and ``ExportError`` when the exporter
    fails; nothing is written then.
    """
    from mim.io import atomic_output

    graphs = _check_arguments(renderer, path, graphs, opset, grid_sample)
    _require_exporter()
    import onnx

    with exporting(renderer):
        models = {graph: _export_graph(renderer, graph, opset, grid_sample) for graph in graphs}
    written = {}
    for graph, target in graph_paths(path, graphs).items():
        with atomic_output(target) as temp:
            onnx.save_model(models[graph], str(temp))
        written[graph] = str(target)
    return written


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mim.export",
                                     description="Export the stage-1 renderer to ONNX.")
    parser.add_argument("--checkpoint", help="a stage1 or stage2 checkpoint (.safetensors)")
    parser.add_argument("--config", help="a config name or file; without --checkpoint, export "
                        "randomly initialized weights of this config (for testing)")
    parser.add_argument("--out", required=True, help="output file, e.g. renderer.onnx")
    parser.add_argument("--graph", action="append", choices=GRAPHS, dest="graphs",
                        help="graph to export (repeatable; default: all three)")
    parser.add_argument("--opset", type=int, default=20)
    parser.add_argument("--grid-sample", choices=GRID_SAMPLE_MODES, default="onnx")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _load_renderer(args) -> Renderer:
    from mim.config import load_config

    if args.checkpoint:
        from mim.checkpoint import renderer_from_checkpoint
        config = load_config(args.config) if args.config else None
        return renderer_from_checkpoint(args.checkpoint, backend="reference", config=config)
    if not args.config:
        raise ValueError("give --checkpoint CKPT (a stage1 or stage2 checkpoint), or --config NAME "
                         "to export random weights")
    config = load_config(args.config)
    with torch.random.fork_rng(devices=[]):   # the caller's random state is left as it was
        torch.manual_seed(args.seed)
        return Renderer.from_config(config, backend="reference").eval()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        renderer = _load_renderer(args)
        written = export_renderer_onnx(renderer, args.out, tuple(args.graphs or GRAPHS),
                                       opset=args.opset, grid_sample=args.grid_sample)
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as error:
        if args.verbose:
            raise
        print(f"mim.export: error: {error}", file=sys.stderr)
        return 2
    for graph, target in written.items():
        print(f"{graph}: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
