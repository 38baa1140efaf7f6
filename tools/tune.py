"""Launch-config tuner: times every registered launch config that can serve each op's calls at
the model's shapes on the current GPU and writes the winners of its architecture for the
launchers (``kernels.tuning``).

    python -m tools.tune [--ops a,b] [--configs tiny,base] [--dtypes fp32,bf16] [--out-dir DIR]
                         [--dry-run]

For each shipped config (``--configs``) the op calls the model makes are derived from its sizes
(``model_dims``, ``cases_for``). Each call runs once under ``kernels.tuning.recording()``, which
lists every launch whose config is a choice (kernel, shape key, candidate configs); then each
candidate is forced (``kernels.tuning.forcing``) and the call timed through the op's public
function, so through the real launch path: forward kernels by the forward, backward kernels by
``torch.autograd.grad`` of one forward's output. A launch with one candidate has nothing to
choose and is not timed. Timing is ``triton.testing.do_bench`` (mean ms after warm-up) on CUDA;
tests inject a timer. The winners (fastest candidate per kernel and shape key, with every
candidate's time) are merged into ``<out-dir>/<arch>.json`` (default ``kernels/tuned``, shipped in
the wheel), rewritten atomically after each call (a run stopped by a time limit keeps what it
timed; fp32 calls first), and printed as a table.

Without a CUDA device (and no injected timer) it exits 2; ``--dry-run`` prints the calls it would
time and exits 0 on any machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

import kernels
from kernels import LaunchConfig, tuning
from kernels.tuning import arch_label, device_arch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_CONFIGS = ("tiny", "base")
DEFAULT_DTYPES = ("fp32", "bf16")
Timer = Callable[[Callable[[], Any], LaunchConfig], float]


@dataclass(frozen=True)
class ModelDims:
    """The sizes of a config that the kernels' calls depend on."""
    name: str
    batch: int              # stage-1 batch of clips (the renderer's calls)
    driving: int            # driving frames per clip (the DIT's N, the warp's frames)
    motion_dim: int         # G of deviation_adanorm
    regions: int            # λ = R
    feature_channels: int   # C of the volume
    depth_layers: int       # D of the volume
    volume_size: int        # H = W of the volume
    padding_mode: str
    align_corners: bool
    d_model: int            # the Mamba extractors' width (audio_dim)
    d_state: int            # N
    mamba_batch: int        # Mamba-g: stage-2 batch of clips ...
    length: int             # ... over a clip's log-mel frames
    local_batch: int        # Mamba-l: one sequence per video frame of the batch's windows ...
    local_length: int       # ... over the mel frames around it


def model_dims(name: str) -> ModelDims:
    """The kernel-relevant sizes of a shipped config (``tiny``, ``base``) or a config file."""
    from mim.audio import MEL_PER_VIDEO_FRAME
    from mim.config import load_config

    c = load_config(name)
    r, m = c.renderer, c.motion
    return ModelDims(name=c.name, batch=c.train.batch_size, driving=c.train.num_driving,
                     motion_dim=r.motion_dim, regions=r.regions,
                     feature_channels=r.feature_channels, depth_layers=r.depth_layers,
                     volume_size=r.volume_size, padding_mode=r.padding_mode,
                     align_corners=r.align_corners, d_model=m.audio_dim, d_state=m.d_state,
                     mamba_batch=c.stage2.batch_size,
                     length=c.stage2.frames_per_clip * MEL_PER_VIDEO_FRAME,
                     local_batch=c.stage2.batch_size * m.window,
                     local_length=MEL_PER_VIDEO_FRAME * (2 * m.local_context + 1))


@dataclass(frozen=True)
class Case:
    """One op call of the model: ``build(device, dtype)`` gives (args, kwargs) for the op's public
    function ``kernels.<op>`` (or ``function``), with the tensors to differentiate marked
    ``requires_grad`` when ``backward``."""
    op: str
    label: str
    build: Callable[[torch.device, torch.dtype], Tuple[tuple, dict]]
    backward: bool = True
    function: Optional[str] = None

    def run(self, args, kwargs):
        return getattr(kernels, self.function or self.op)(*args, **kwargs, backend="triton")


def cases_for(dims: ModelDims) -> List[Case]:
    """The op calls a training step and a decode step of the model make at these sizes."""
    from kernels.causal_conv1d.inputs import make_inputs as conv_inputs
    from kernels.deviation_adanorm.inputs import make_inputs as adanorm_inputs
    from kernels.grid_sample_3d.inputs import make_inputs as grid_inputs
    from kernels.region_softmax_warp.inputs import make_inputs as warp_inputs
    from kernels.selective_scan.inputs import make_inputs as scan_inputs
    from kernels.selective_state_update.inputs import make_inputs as update_inputs

    d_inner = 2 * dims.d_model
    frames = dims.batch * dims.driving
    side = dims.volume_size
    flags = dict(padding_mode=dims.padding_mode, align_corners=dims.align_corners)
    decode_batch = 2  # a decode step with classifier-free guidance: conditioned and not

    def scan(batch, length):
        def build(device, dtype):
            u, delta, A, B, C, D, z, bias = scan_inputs(
                batch, d_inner, length, dims.d_state, dtype=dtype, device=device,
                requires_grad=True, seed=0)
            return (u, delta, A, B, C, D), dict(z=z, delta_bias=bias, delta_softplus=True)
        return build

    def conv(batch, length):
        def build(device, dtype):
            x, weight, bias = conv_inputs(batch, d_inner, length, 4, dtype=dtype, device=device,
                                          requires_grad=True, seed=0)
            return (x, weight, bias), dict(activation="silu")
        return build

    def conv_step(device, dtype):
        x, weight, bias = conv_inputs(decode_batch, d_inner, 4, 4, dtype=dtype, device=device,
                                      seed=0)
        return (x[:, :, -1].contiguous(), x[:, :, :3].contiguous(), weight, bias), \
            dict(activation="silu")

    def state_update(device, dtype):
        return update_inputs(decode_batch, d_inner, dims.d_state, dtype=dtype, device=device,
                             seed=0), dict(dt_softplus=True)

    def adanorm(device, dtype):
        return adanorm_inputs(dims.batch, dims.driving + 1, dims.regions, dims.motion_dim,
                              dtype=dtype, device=device, requires_grad=True, seed=0), {}

    def warp(device, dtype):
        return warp_inputs(frames, dims.feature_channels, dims.regions, dims.depth_layers, side,
                           side, feature_batch=frames, dtype=dtype, device=device,
                           requires_grad=True, seed=0), dict(flags)

    def grid_sample(device, dtype):
        return grid_inputs(frames, dims.feature_channels, dims.depth_layers, side, side,
                           dtype=dtype, device=device, requires_grad=True, seed=0), dict(flags)

    shape = f"{dims.name}"
    mamba = [(f"{shape} Mamba-g", dims.mamba_batch, dims.length),
             (f"{shape} Mamba-l", dims.local_batch, dims.local_length)]
    return [
        *(Case("selective_scan", f"{name}: batch {batch}, dim {d_inner}, L {length}, "
               f"N {dims.d_state}", scan(batch, length)) for name, batch, length in mamba),
        *(Case("causal_conv1d", f"{name}: batch {batch}, dim {d_inner}, L {length}, W 4",
               conv(batch, length)) for name, batch, length in mamba),
        Case("causal_conv1d", f"{shape}: step, batch {decode_batch}, dim {d_inner}", conv_step,
             backward=False, function="causal_conv1d_update"),
        Case("selective_state_update", f"{shape}: step, batch {decode_batch}, dim {d_inner}, "
             f"N {dims.d_state}", state_update, backward=False),
        Case("deviation_adanorm", f"{shape}: B {dims.batch}, N {dims.driving}, R {dims.regions}, "
             f"G {dims.motion_dim}", adanorm),
        Case("region_softmax_warp", f"{shape}: B {frames}, C {dims.feature_channels}, "
             f"R {dims.regions}, {dims.depth_layers}x{side}x{side}", warp),
        Case("grid_sample_3d", f"{shape}: N {frames}, C {dims.feature_channels}, "
             f"{dims.depth_layers}x{side}x{side} (the warp's volume)", grid_sample),
    ]


@dataclass
class Measured:
    op: str
    kernel: str
    key: str
    case: str
    timings: Dict[str, float]

    @property
    def winner(self) -> str:
        return min(self.timings, key=self.timings.get)


def _grad_inputs(args, kwargs) -> List[torch.Tensor]:
    return [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]


def _first_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _choices(calls: Sequence[tuning.TunableCall], op: str, skip=()) -> List[tuning.TunableCall]:
    """The distinct (kernel, key) lookups of ``op`` with more than one candidate."""
    seen, out = set(skip), []
    for call in calls:
        if call.op == op and (call.kernel, call.key) not in seen and len(call.candidates) > 1:
            seen.add((call.kernel, call.key))
            out.append(call)
    return out


def tune_case(case: Case, device: torch.device, dtype: torch.dtype, timer: Timer,
              done: set) -> List[Measured]:
    """Time every candidate of every tunable launch ``case`` makes (skipping (kernel, key) pairs
    in ``done``, which it extends)."""
    args, kwargs = case.build(device, dtype)
    with tuning.recording() as forward_calls:
        out = case.run(args, kwargs)
    grads = _grad_inputs(args, kwargs) if case.backward else []
    backward_calls: List[tuning.TunableCall] = []
    if grads:
        first = _first_output(out)
        grad_out = torch.randn_like(first)
        with tuning.recording() as backward_calls:
            torch.autograd.grad(first, grads, grad_out)
    forward_kernels = {c.kernel for c in forward_calls}
    results = []
    for call in _choices(forward_calls, case.op, done):
        timings = {}
        for config in call.candidates:
            with tuning.forcing(case.op, call.kernel, config):
                timings[config.label()] = timer(lambda: case.run(args, kwargs), config)
        done.add((call.kernel, call.key))
        results.append(Measured(case.op, call.kernel, call.key, case.label, timings))
    # a backward re-reads forward's config (the scan's checkpoint spacing): not a backward launch
    backward_only = [c for c in backward_calls if c.kernel not in forward_kernels]
    for call in _choices(backward_only, case.op, done):
        first = _first_output(case.run(args, kwargs))
        timings = {}
        for config in call.candidates:
            with tuning.forcing(case.op, call.kernel, config):
                timings[config.label()] = timer(
                    lambda: torch.autograd.grad(first, grads, grad_out, retain_graph=True), config)
        done.add((call.kernel, call.key))
        results.append(Measured(case.op, call.kernel, call.key, case.label, timings))
    return results


def do_bench_timer(fn: Callable[[], Any], config: LaunchConfig) -> float:
    """Mean milliseconds of ``fn`` on the current CUDA device (``triton.testing.do_bench``)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=50))


def document(arch: int, device: torch.device, measured: Sequence[Measured],
             previous: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The winners document: ``previous``'s winners (a valid file of the same arch) updated with
    ``measured``."""
    import triton

    winners: Dict[str, Dict[str, Any]] = {}
    if previous is not None:
        winners = {k: dict(v) for k, v in previous["winners"].items()}
    for m in measured:
        winners.setdefault(f"{m.op}/{m.kernel}", {})[m.key] = {
            "config": m.winner, "time_ms": round(m.timings[m.winner], 6),
            "timings": {label: round(ms, 6) for label, ms in m.timings.items()}}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return {"format": tuning.FORMAT, "arch": arch_label(arch), "device": name,
            "triton": triton.__version__, "torch": torch.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "winners": winners}


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _previous(path: Path, arch: int) -> Optional[Mapping[str, Any]]:
    """The file's document when it is a valid winners file of ``arch`` (kept and updated), else
    None (replaced)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if tuning.check_document(data, arch) is None else None


def table(measured: Sequence[Measured]) -> str:
    rows = [("kernel", "shape key", "winner", "ms", "slowest ms", "call")]
    for m in measured:
        rows.append((f"{m.op}/{m.kernel}", m.key, m.winner, f"{m.timings[m.winner]:.4f}",
                     f"{max(m.timings.values()):.4f}", m.case))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def _csv(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.tune",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=_csv, default=list(kernels.OPS),
                        help="comma-separated ops (default: every op)")
    parser.add_argument("--configs", type=_csv, default=list(DEFAULT_CONFIGS),
                        help="configs whose shapes are tuned (names or files; default: tiny,base)")
    parser.add_argument("--dtypes", type=_csv, default=list(DEFAULT_DTYPES),
                        help=f"input dtypes among {', '.join(DTYPES)} (default: fp32,bf16)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where <arch>.json goes (default: {tuning.PACKAGE_TUNED_DIR})")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the calls that would be timed, time nothing")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.ops) - set(kernels.OPS))
    if unknown:
        parser.error(f"unknown ops {unknown}; the ops are {', '.join(kernels.OPS)}")
    bad = sorted(set(args.dtypes) - set(DTYPES))
    if bad:
        parser.error(f"unknown dtypes {bad}; known: {', '.join(DTYPES)}")
    return args


def main(argv: Optional[Sequence[str]] = None, timer: Optional[Timer] = None,
         arch: Optional[int] = None, device=None,
         dims: Optional[Sequence[ModelDims]] = None) -> int:
    """The CLI. Tests pass a ``timer`` (then ``device`` and ``arch`` say where the kernels run and
    whose file is written) and small ``dims`` in place of the configs' sizes."""
    args = parse_args(argv)
    try:
        sizes = list(dims) if dims is not None else [model_dims(name) for name in args.configs]
    except (ValueError, FileNotFoundError) as error:
        print(f"tune: {error}", file=sys.stderr)
        return 2
    cases = [case for d in sizes for case in cases_for(d) if case.op in args.ops]
    out_dir = args.out_dir if args.out_dir is not None else tuning.PACKAGE_TUNED_DIR
    if args.dry_run:
        print(f"tune (dry run): {len(cases)} calls x dtypes {', '.join(args.dtypes)}; winners "
              f"would go to {out_dir}/<arch>.json")
        for case in cases:
            print(f"  {case.op} ({case.function or case.op}"
                  f"{', forward and backward' if case.backward else ''}): {case.label}")
        return 0
    if timer is None:
        if not torch.cuda.is_available():
            print("tune: no CUDA device: the tuner times kernels on a GPU (use --dry-run to list "
                  "what it would time)", file=sys.stderr)
            return 2
        timer, device = do_bench_timer, torch.device("cuda")
    device = torch.device(device if device is not None else "cuda")
    if arch is None:
        arch = device_arch(device)
        if arch is None:
            print(f"tune: {device} is not a CUDA device; pass arch with an injected timer",
                  file=sys.stderr)
            return 2
    measured: List[Measured] = []
    done: set = set()
    path = tuning.winners_path(arch, out_dir)
    previous = _previous(path, arch)
    # the file is rewritten after each call, so a run stopped by a time limit keeps what it timed
    for dtype_name in args.dtypes:
        for case in cases:
            new = tune_case(case, device, DTYPES[dtype_name], timer, done)
            for m in new:
                print(f"tune: {m.op}/{m.kernel} {m.key}: {m.winner} "
                      f"{m.timings[m.winner]:.4f} ms of {len(m.timings)}", flush=True)
            if new:
                measured += new
                write_atomically(path, json.dumps(document(arch, device, measured, previous),
                                                  indent=1, sort_keys=True) + "\n")
    tuning.reload()
    print(table(measured))
    print(f"tune: {len(measured)} launches tuned on {arch_label(arch)}; winners in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
