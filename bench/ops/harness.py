"""What every op's microbenchmark shares: the timer, the copy-bandwidth probe, the rows, the
files (CSV, JSON, PNG) and the command line.

An op's script (``bench/ops/<op>.py``) describes its op as an :class:`OpBench`: its shapes (the
model's, in the tiny and base configs, and for the Mamba ops the ``mamba_ssm`` benchmark's), how
to build inputs (``kernels/<op>/inputs.make_inputs``), how to call each provider, and its counted
bytes (``kernels/<op>/cost.minimum_traffic``). :func:`run` times every provider × mode × shape
and :func:`main` is the command line of ``python -m bench.ops`` and of each script.

Providers: ``reference`` (``kernels/<op>/reference.py``), ``fast`` (the op's backend "fast"),
``triton`` (backend "triton") and ``compile`` (``torch.compile`` of the reference). Modes:
``fwd`` and ``fwd+bwd`` (the forward, then ``out.backward(grad)`` with a fixed gradient).

Timing (:func:`time_ms`, the one place the timer is chosen): on CUDA
``triton.testing.do_bench(fn, grad_to_none=..., return_mode="median")``; elsewhere
``time.perf_counter`` around each call, after warm-up calls, median of the repeats. On CPU the
Triton provider runs under the Triton interpreter (``TRITON_INTERPRET=1``, set before triton is
imported): its times are the interpreter's, not a GPU's.

Counted bytes are the op's minimum traffic (``minimum_traffic``: each input read once, each
output written once, for the shape and dtype), ``fwd`` for the forward and ``fwd`` + ``bwd`` for
forward+backward: the same count for every provider, so achieved GB/s (counted bytes / time)
compares providers, and % of copy bandwidth divides it by the bandwidth of ``dst.copy_(src)``
timed in the same run (2 × the tensor's bytes per copy).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:  # torch is imported where it is used, so a bad command line fails at once
    import torch

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
PROVIDERS = ("reference", "fast", "triton", "compile")
MODES = ("fwd", "fwd+bwd")
PROVIDER_COLORS = {"reference": "tab:blue", "fast": "tab:orange", "triton": "tab:green",
                   "compile": "tab:red"}
COLUMNS = ("op", "shape", "params", "dtype", "provider", "mode", "time_ms", "counted_bytes",
           "gb_per_s", "pct_of_copy_bw", "speedup_vs_reference", "device", "note")
BYTES_BASIS = ("minimum traffic (kernels/<op>/cost.minimum_traffic): each input read once, each "
               "output written once; fwd for the forward, fwd + bwd for forward+backward")
OP_NAMES = ("grid_sample_3d", "region_softmax_warp", "deviation_adanorm", "selective_scan",
            "selective_state_update", "causal_conv1d")
"""The op scripts, in ``kernels.OPS``'s order (not imported from there: importing kernels imports
triton, which must come after ``TRITON_INTERPRET`` is settled)."""

# CPU timer: WARMUP untimed calls, then up to REPEATS timed calls, stopping after BUDGET_S seconds
# of timed calls once MIN_REPEATS are in (a call of seconds, the interpreter's or a compile's
# first, is timed MIN_REPEATS times). --smoke: one warm-up, two timed calls.
WARMUP, REPEATS, MIN_REPEATS, BUDGET_S = 1, 15, 3, 2.0
SMOKE_TIMER = {"warmup": 1, "repeats": 2, "min_repeats": 2, "budget_s": 0.0}
# The copy probe: the tensor copied (fp32 elements), on CUDA and on CPU (and in a smoke run).
COPY_BYTES = {"cuda": 1 << 30, "cpu": 1 << 28, "smoke": 1 << 24}



def make_provider(reference: Callable, engine: Callable[[str], Callable]) -> Callable[[str], Callable]:
    """An op script's ``provider(name)``: "reference" is ``reference``, "compile" is
    ``torch.compile(reference)`` (compiled once, on first use), any other name is
    ``engine(name)``, the op's public function on that backend."""
    compiled: List[Callable] = []

    def provider(name: str) -> Callable:
        if name == "reference":
            return reference
        if name == "compile":
            if not compiled:
                import torch
                compiled.append(torch.compile(reference))
            return compiled[0]
        return engine(name)
    return provider

@dataclass(frozen=True)
class Shape:
    """One shape an op is timed at. ``params``: the op's own size arguments (passed to its
    script's ``make`` and ``counted_bytes``); ``skip``: provider (or "provider:mode") → why it is
    not run at this shape (its rows keep an empty time and carry the reason)."""
    label: str
    params: Mapping[str, int]
    skip: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.params.items())


@dataclass
class OpBench:
    """An op's benchmark. ``shapes(device, smoke)`` → the shapes; ``make(params, dtype, device,
    requires_grad)`` → the inputs, a tuple passed positionally to a provider's function;
    ``provider(name)`` → that function (inputs → the output tensor); ``counted_bytes(params,
    itemsize)`` → {"fwd": bytes, "bwd": bytes}; ``dtypes``: names of torch dtypes to time ("bwd" absent for an op without a backward);
    ``autograd``: False for an op without a backward (its fwd+bwd rows say so, with no time and
    no counted bytes)."""
    name: str
    shapes: Callable[[str, bool], List[Shape]]
    make: Callable[..., tuple]
    provider: Callable[[str], Callable[..., "torch.Tensor"]]
    counted_bytes: Callable[[Mapping[str, int], int], Dict[str, int]]
    autograd: bool = True
    dtypes: Tuple[str, ...] = ("float32",)


def sanitize(name: str) -> str:
    """``name`` made safe as one path component: runs of anything but letters, digits, '.', '_'
    and '-' become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "unknown"


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, the processor's name on CPU."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    from mim.runinfo import cpu_name

    return cpu_name()


def default_out_dir(device: torch.device) -> Path:
    """bench/results/gpu/<device name>/ on CUDA, bench/results/cpu/<processor name>/ on CPU."""
    kind = "gpu" if device.type == "cuda" else "cpu"
    return RESULTS_DIR / kind / sanitize(device_name(device))


def time_ms(fn: Callable[[], object], device: torch.device, grad_to_none: Sequence[torch.Tensor] = (),
            smoke: bool = False) -> float:
    """Median milliseconds of one call of ``fn``: ``triton.testing.do_bench`` on CUDA (its default
    warm-up and repetition times), else ``time.perf_counter`` (see ``WARMUP`` ... ``BUDGET_S``).
    ``grad_to_none``: tensors whose ``.grad`` is reset before each call."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, grad_to_none=list(grad_to_none) or None, return_mode="median"))
    timer = SMOKE_TIMER if smoke else {"warmup": WARMUP, "repeats": REPEATS,
                                      "min_repeats": MIN_REPEATS, "budget_s": BUDGET_S}

    def call() -> float:
        for tensor in grad_to_none:
            tensor.grad = None
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for _ in range(timer["warmup"]):
        call()
    samples: List[float] = []
    while len(samples) < timer["repeats"]:
        samples.append(call())
        if len(samples) >= timer["min_repeats"] and sum(samples) >= timer["budget_s"]:
            break
    return statistics.median(samples) * 1e3


def copy_bandwidth(device: torch.device, smoke: bool = False) -> Dict[str, float]:
    """The device's copy bandwidth, measured: ``dst.copy_(src)`` of a large fp32 tensor, timed by
    :func:`time_ms`, counting 2 × its bytes (read and write)."""
    import torch

    nbytes = COPY_BYTES["smoke" if smoke else device.type if device.type == "cuda" else "cpu"]
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, smoke=smoke)
    return {"tensor_bytes": nbytes, "time_ms": ms, "gb_per_s": 2 * nbytes / (ms * 1e-3) / 1e9}


def _skip_reason(shape: Shape, provider: str, mode: str) -> Optional[str]:
    return shape.skip.get(f"{provider}:{mode}") or shape.skip.get(provider)


def _first_tensor(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _measure(bench: OpBench, shape: Shape, dtype: torch.dtype, provider: str, mode: str,
             device: torch.device, smoke: bool) -> Tuple[Optional[float], str]:
    """(milliseconds, note) of one provider in one mode; (None, why) where it is not run."""
    import torch

    reason = _skip_reason(shape, provider, mode)
    if reason:
        return None, reason
    if mode == "fwd+bwd" and not bench.autograd:
        return None, f"no autograd: {bench.name} has a forward only, so fwd+bwd is not timed"
    if provider == "triton" and not _triton_runs(device):
        return None, ("not run: triton is not installed" if not _triton_installed() else
                      "not run: CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 "
                      "before triton is imported)")
    fn = bench.provider(provider)
    backward = mode == "fwd+bwd"
    inputs = bench.make(shape.params, dtype, device, backward)
    if not backward:
        with torch.no_grad():
            ms = time_ms(lambda: fn(*inputs), device, smoke=smoke)
        return ms, ""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grad = torch.randn_like(_first_tensor(fn(*inputs)))

    def step():
        _first_tensor(fn(*inputs)).backward(grad)

    return time_ms(step, device, grad_to_none=leaves, smoke=smoke), ""


def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_runs(device: torch.device) -> bool:
    if not _triton_installed():
        return False
    from kernels import resolve_backend
    from kernels import BackendUnavailableError

    try:
        resolve_backend("triton", device, "bench")
    except BackendUnavailableError:
        return False
    return True


def run(benches: Sequence[OpBench], device: torch.device, providers: Sequence[str] = PROVIDERS,
        smoke: bool = False, copy: Optional[Dict[str, float]] = None, log=print,
        op_done: Optional[Callable[[List[dict], Dict[str, float]], None]] = None
        ) -> Tuple[List[dict], Dict[str, float]]:
    """Time every provider × mode × shape of each op; (rows, copy bandwidth). Each row has
    every column of ``COLUMNS``; a provider not run has time_ms None and a note saying why.
    ``op_done(rows so far, copy bandwidth)`` is called after each op."""
    import torch

    copy = copy_bandwidth(device, smoke) if copy is None else copy
    name = device_name(device)
    log(f"[bench.ops] {name}: copy bandwidth {copy['gb_per_s']:.1f} GB/s "
        f"(dst.copy_(src), {copy['tensor_bytes'] / 2 ** 20:.0f} MiB)")
    rows: List[dict] = []
    for bench in benches:
        shapes = bench.shapes(device.type, smoke)
        log(f"[bench.ops] {bench.name}: {len(shapes)} shape(s) x {len(providers)} provider(s) x "
            f"{len(MODES)} modes" + ("" if bench.autograd else " (forward only: no autograd)"))
        started = time.perf_counter()
        for shape in shapes:
            for dtype in map(lambda name: getattr(torch, name), bench.dtypes):
                itemsize = torch.empty((), dtype=dtype).element_size()
                counted = bench.counted_bytes(shape.params, itemsize)
                for mode in MODES:
                    nbytes = (counted["fwd"] if mode == "fwd" else
                              counted["fwd"] + counted["bwd"] if "bwd" in counted else None)
                    group = []
                    for provider in providers:
                        ms, note = _measure(bench, shape, dtype, provider, mode, device, smoke)
                        group.append(_row(bench.name, shape, dtype, provider, mode, ms,
                                          nbytes, copy, name, note))
                        shown = "-" if ms is None else f"{ms:.3f} ms"
                        log(f"  {bench.name} | {shape.label} | {mode} | {provider}: {shown}"
                            + (f" ({note})" if note else ""))
                    _add_speedups(group)
                    rows += group
        log(f"[bench.ops] {bench.name}: done in {time.perf_counter() - started:.1f} s")
        if op_done is not None:
            op_done(rows, copy)
    return rows, copy


def _row(op: str, shape: Shape, dtype: torch.dtype, provider: str, mode: str,
         ms: Optional[float], nbytes: Optional[int], copy: Dict[str, float], device: str,
         note: str) -> dict:
    gbps = None if ms is None or nbytes is None else nbytes / (ms * 1e-3) / 1e9
    return {"op": op, "shape": shape.label, "params": shape.describe(),
            "dtype": str(dtype).replace("torch.", ""), "provider": provider, "mode": mode,
            "time_ms": ms, "counted_bytes": nbytes, "gb_per_s": gbps,
            "pct_of_copy_bw": None if gbps is None else 100.0 * gbps / copy["gb_per_s"],
            "speedup_vs_reference": None, "device": device, "note": note}


def _add_speedups(group: List[dict]) -> None:
    reference = next((r["time_ms"] for r in group if r["provider"] == "reference"), None)
    for row in group:
        if reference is not None and row["time_ms"] is not None:
            row["speedup_vs_reference"] = reference / row["time_ms"]
        elif row["time_ms"] is not None and not row["note"]:
            row["note"] = "no speedup: the reference was not timed at this shape"


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def rows_csv(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_format(row[column]) for column in COLUMNS])
    return buffer.getvalue()


def table(rows: Sequence[dict]) -> str:
    """The rows as a fixed-width text table (what the command prints last)."""
    header = ("op", "shape", "mode", "provider", "ms", "GB/s", "% copy", "x ref", "note")
    body = [(r["op"], r["shape"], r["mode"], r["provider"],
             "" if r["time_ms"] is None else f"{r['time_ms']:.3f}",
             "" if r["gb_per_s"] is None else f"{r['gb_per_s']:.3g}",
             "" if r["pct_of_copy_bw"] is None else f"{r['pct_of_copy_bw']:.1f}",
             "" if r["speedup_vs_reference"] is None else f"{r['speedup_vs_reference']:.2f}",
             r["note"][:60]) for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *body])


def plot(rows: Sequence[dict], path: Path, title: str) -> None:
    """ops.png: one panel per op, time per (shape, mode) with one bar per provider (log scale);
    a provider not run has no bar, a (shape, mode) with none run is marked "not timed"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ops = list(dict.fromkeys(r["op"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    columns = min(3, max(len(ops), 1))
    lines = math.ceil(max(len(ops), 1) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(6.5 * columns, 4.2 * lines), squeeze=False)
    for ax in axes.flat[len(ops):]:
        ax.set_visible(False)
    width = 0.8 / max(len(providers), 1)
    for ax, op in zip(axes.flat, ops):
        own = [r for r in rows if r["op"] == op]
        groups = list(dict.fromkeys((r["shape"], r["dtype"], r["mode"]) for r in own))
        for k, provider in enumerate(providers):
            xs, heights = [], []
            for g, key in enumerate(groups):
                hit = next((r for r in own if (r["shape"], r["dtype"], r["mode"]) == key
                            and r["provider"] == provider), None)
                if hit is not None and hit["time_ms"] is not None:
                    xs.append(g + (k - (len(providers) - 1) / 2) * width)
                    heights.append(hit["time_ms"])
            ax.bar(xs, heights, width, color=PROVIDER_COLORS.get(provider))
        for g, key in enumerate(groups):  # a (shape, mode) with no time at all says so
            if all(r["time_ms"] is None for r in own if (r["shape"], r["dtype"], r["mode"]) == key):
                ax.text(g, 0.5, "not timed", transform=ax.get_xaxis_transform(), ha="center",
                        fontsize=7, rotation=90)
        ax.set_xticks(range(len(groups)))
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_xticklabels([f"{shape}\n{mode}" for shape, _, mode in groups], rotation=60,
                           ha="right", fontsize=6)
        ax.set_yscale("log")
        ax.set_ylabel("ms (median)")
        ax.set_title(op, fontsize=10)
        ax.legend(handles=[Patch(color=PROVIDER_COLORS.get(p), label=p) for p in providers],
                  fontsize=7)  # every provider, drawn or not, in its own colour
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)


def write_results(rows: Sequence[dict], metadata: dict, out_dir: Path) -> List[Path]:
    """ops.csv, ops.json ({"metadata", "columns", "rows"}) and ops.png in ``out_dir``, each written
    to a temporary file and renamed over its target. ``main`` writes them after each op
    (metadata "complete": false, "ops_done": the ops so far) and once more at the end."""
    from mim.io import atomic_output

    out_dir = Path(out_dir)
    paths = [out_dir / "ops.csv", out_dir / "ops.json", out_dir / "ops.png"]
    with atomic_output(paths[0]) as temp:
        Path(temp).write_text(rows_csv(rows), encoding="utf-8")
    with atomic_output(paths[1]) as temp:
        Path(temp).write_text(json.dumps({"metadata": metadata, "columns": list(COLUMNS),
                                          "rows": list(rows)}, indent=1) + "\n", encoding="utf-8")
    where = metadata["device"]
    kind = "measured on CUDA" if metadata["device_type"] == "cuda" else (
        "measured on CPU; triton = the Triton interpreter")
    with atomic_output(paths[2]) as temp:
        plot(rows, Path(temp), f"bench.ops: median time per call, {where} ({kind}), "
                               f"{metadata['date']}")
    return paths


def _op_list(text: str, parser: argparse.ArgumentParser) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OP_NAMES]
    if unknown or not names:
        parser.error(f"--ops: unknown op(s) {', '.join(map(repr, unknown)) or repr(text)}; "
                     f"known: {', '.join(OP_NAMES)}")
    return names


def _provider_list(text: str, parser: argparse.ArgumentParser) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PROVIDERS]
    if unknown or not names:
        parser.error(f"--providers: unknown provider(s) {', '.join(map(repr, unknown)) or repr(text)}; "
                     f"known: {', '.join(PROVIDERS)}")
    return names


def load_bench(op: str) -> OpBench:
    """The ``BENCH`` of ``bench/ops/<op>.py``."""
    import importlib

    return importlib.import_module(f"bench.ops.{op}").BENCH


def main(argv: Optional[Sequence[str]] = None, only: Optional[str] = None) -> int:
    """``python -m bench.ops`` (every op, or ``--ops``) and ``python -m bench.ops.<op>``
    (``only`` = that op)."""
    prog = "python -m bench.ops" + (f".{only}" if only else "")
    parser = argparse.ArgumentParser(prog=prog, description=(
        "Per-op microbenchmarks: reference, fast, triton and torch.compile(reference), forward "
        "and forward+backward, at the model's shapes; writes ops.csv, ops.json and ops.png."))
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        help="where to run (default: cuda when available, else cpu)")
    if only is None:
        parser.add_argument("--ops", help=f"comma-separated ops (default: all of {', '.join(OP_NAMES)})")
    parser.add_argument("--providers", default=",".join(PROVIDERS),
                        help=f"comma-separated providers (default: {','.join(PROVIDERS)})")
    parser.add_argument("--out-dir", type=Path, help=(
        "where ops.csv, ops.json and ops.png go (default: bench/results/gpu/<device name>/ on "
        "CUDA, bench/results/cpu/<processor name>/ on CPU)"))
    parser.add_argument("--smoke", action="store_true",
                        help="the tiniest shapes and two timed calls each (for the tests)")
    args = parser.parse_args(argv)
    ops = [only] if only else (_op_list(args.ops, parser) if args.ops else list(OP_NAMES))
    providers = _provider_list(args.providers, parser)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and "triton" not in sys.modules:
        # the Triton provider on CPU tensors: the interpreter, chosen before triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from mim.runinfo import run_metadata

    benches = [load_bench(op) for op in ops]
    started = time.perf_counter()
    out_dir = args.out_dir or default_out_dir(device)

    def metadata(copy: Dict[str, float], done: List[str]) -> dict:
        return {**run_metadata(), "device": device_name(device), "device_type": device.type,
                "copy_bandwidth": copy, "bytes_basis": BYTES_BASIS,
                "timer": ("triton.testing.do_bench, median" if device.type == "cuda" else
                          "time.perf_counter, median of repeats after warm-up"),
                "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
                "smoke": args.smoke, "ops": ops, "ops_done": done, "complete": done == ops,
                "providers": providers,
                "command": " ".join([prog, *(argv if argv is not None else sys.argv[1:])]),
                "wall_s": round(time.perf_counter() - started, 1)}

    def op_done(rows: List[dict], copy: Dict[str, float]) -> None:
        # the files after each op, so a run stopped part-way still leaves the ops it finished
        done = list(dict.fromkeys(row["op"] for row in rows))
        write_results(rows, metadata(copy, done), out_dir)

    rows, copy = run(benches, device, providers, smoke=args.smoke, op_done=op_done)
    final = metadata(copy, list(ops))
    paths = write_results(rows, final, out_dir)
    print(table(rows))
    print(f"[bench.ops] {len(rows)} rows in {final['wall_s']} s; wrote "
          + ", ".join(str(path) for path in paths))
    return 0
