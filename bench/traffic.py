"""Device-memory traffic of each op: eager PyTorch paths counted, fused Triton kernels modeled.

Run from the repository root::

    python -m bench.traffic [--op NAME ...] [--out-dir DIR] [--breakdown]

Each case's eager paths (the op's reference, differentiated by autograd, and its torch path) run on
CPU under ``TrafficCounter``, a ``TorchDispatchMode`` that sees every ATen op below autograd,
forward and backward, and counts the bytes each would move through device memory on a GPU. The
ATen op sequence of these paths does not depend on the device. The fused Triton kernels address
memory through raw pointers, out of the counter's sight, so their traffic is analytic: a function
next to each case derives it from the kernels' access pattern. Beside both stands the minimum, each
input read once and each output written once.

GPU time is modeled, not measured (there is no GPU here): bytes / 3.0 TB/s + 4 µs per launch, a
round H100 figure. Results go to ``traffic.json`` and ``traffic.md`` under ``bench/results/``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from kernels import OPS
from mim import runinfo
from kernels.cost import (H100_BANDWIDTH_BYTES_PER_S, LAUNCH_OVERHEAD_S, TRAFFIC_MODEL_NOTE,
                          Traffic, TrafficCase, count_forward_backward, saved_bytes)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODEL_NOTE = TRAFFIC_MODEL_NOTE
Case = TrafficCase


@dataclass(frozen=True)
class Row:
    """One eager path of one case in one direction, beside the fused kernels and the minimum."""
    case: Case
    path: str
    direction: str
    eager: Traffic
    eager_breakdown: Mapping[str, Traffic]
    saved_beyond_inputs: Optional[int] = None  # forward rows of differentiable cases

    @property
    def fused(self) -> Traffic:
        return self.case.fused[self.direction]

    @property
    def minimum(self) -> Traffic:
        return self.case.minimum[self.direction]

    @property
    def eager_over_fused(self) -> float:
        return self.eager.bytes / self.fused.bytes

    def to_json(self) -> dict:
        return {
            "op": self.case.op, "shape": self.case.shape, "dtype": _dtype_name(self.case.dtype),
            "direction": self.direction, "path": self.path,
            "eager": self.eager.to_json(), "fused": self.fused.to_json(),
            "minimum": self.minimum.to_json(),
            "eager_over_fused_bytes": round(self.eager_over_fused, 3),
            "modeled_h100_us": {"eager": round(self.eager.modeled_h100_us(), 2),
                                "fused": round(self.fused.modeled_h100_us(), 2)},
            "saved_for_backward_beyond_inputs_bytes": self.saved_beyond_inputs,
            "eager_breakdown": {name: t.to_json() for name, t in self.eager_breakdown.items()},
        }


def measure(case: Case) -> list[Row]:
    """Counts every eager path of ``case``, forward and backward, on fresh inputs."""
    rows = []
    for path, fn in case.eager_paths.items():
        counters = count_forward_backward(fn, case.make_inputs(), case.directions)
        saved = saved_bytes(fn, case.make_inputs())[1] if "bwd" in case.directions else None
        rows += [Row(case, path, direction, counters[direction].summary(),
                     counters[direction].breakdown(), saved if direction == "fwd" else None)
                 for direction in case.directions]
    return rows


CASES: tuple[Case, ...] = tuple(case for op in OPS
                                for case in importlib.import_module(f"kernels.{op}.cost").traffic_cases())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.3f}"


TABLE_HEADERS = ("op", "shape", "dtype", "dir", "path", "eager launches", "eager MB",
                 "fused launches", "fused MB", "min MB", "eager/fused bytes",
                 "modeled H100 µs eager", "modeled H100 µs fused", "saved for bwd MB")


def table_cells(row: Row) -> tuple[str, ...]:
    return (row.case.op, row.case.shape, _dtype_name(row.case.dtype), row.direction, row.path,
            str(row.eager.launches), _mb(row.eager.bytes), str(row.fused.launches),
            _mb(row.fused.bytes), _mb(row.minimum.bytes), f"{row.eager_over_fused:.2f}x",
            f"{row.eager.modeled_h100_us():.1f}", f"{row.fused.modeled_h100_us():.1f}",
            "" if row.saved_beyond_inputs is None else _mb(row.saved_beyond_inputs))


def format_table(rows: Sequence[Row]) -> str:
    """Plain-text table: text columns left-aligned, figures right-aligned."""
    cells = [table_cells(row) for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(TABLE_HEADERS)]
    text_columns = 5

    def line(values):
        return "  ".join(v.ljust(w) if i < text_columns else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(TABLE_HEADERS), line(["-" * w for w in widths]),
                      *(line(c) for c in cells)])


def format_breakdown(row: Row) -> str:
    title = (f"{row.case.op} {row.case.shape} {_dtype_name(row.case.dtype)} {row.direction} "
             f"{row.path}: {row.eager.launches} launches, {_mb(row.eager.bytes)} MB")
    lines = [title]
    for name, t in row.eager_breakdown.items():
        lines.append(f"  {name:<28} x{t.launches:<3} read {_mb(t.bytes_read):>8} MB  "
                     f"written {_mb(t.bytes_written):>8} MB")
    return "\n".join(lines)


def run_metadata() -> dict:
    """``mim.runinfo.run_metadata()`` (date, machine, versions) and this table's traffic model."""
    return {**runinfo.run_metadata(),
            "model": {"note": MODEL_NOTE, "bandwidth_bytes_per_s": H100_BANDWIDTH_BYTES_PER_S,
                      "launch_overhead_us": LAUNCH_OVERHEAD_S * 1e6}}


def report_markdown(rows: Sequence[Row], metadata: dict) -> str:
    machine, versions = metadata["machine"], metadata["versions"]
    lines = [
        "# Device-memory traffic: eager paths counted, fused kernels analytic",
        "",
        f"Machine {machine['node']} ({machine['processor']}), torch {versions['torch']}, "
        f"triton {versions['triton']}, {metadata['date']}. Written by `python -m bench.traffic`.",
        "",
        MODEL_NOTE,
        "",
        "| " + " | ".join(TABLE_HEADERS) + " |",
        "|" + "|".join("---" for _ in TABLE_HEADERS) + "|",
        *("| " + " | ".join(table_cells(row)) + " |" for row in rows),
        "",
        "## Eager paths, per ATen op",
    ]
    for row in rows:
        lines += ["", "```", format_breakdown(row), "```"]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path``, then renames it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates the file readable by its owner only
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    ops = sorted({case.op for case in CASES})
    parser = argparse.ArgumentParser(prog="python -m bench.traffic",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--op", action="append", choices=ops,
                        help="only this op (repeatable); default: every op")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help=f"where traffic.json and traffic.md go (default: {RESULTS_DIR})")
    parser.add_argument("--breakdown", action="store_true",
                        help="print each eager row's traffic per ATen op before the table")
    args = parser.parse_args(argv)

    rows = [row for case in CASES if args.op is None or case.op in args.op
            for row in measure(case)]
    metadata = run_metadata()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out_dir / "traffic.json", args.out_dir / "traffic.md"
    write_atomic(json_path, json.dumps({**metadata, "rows": [r.to_json() for r in rows]},
                                       indent=2, ensure_ascii=False) + "\n")
    write_atomic(md_path, report_markdown(rows, metadata))

    if args.breakdown:
        print("\n\n".join(format_breakdown(row) for row in rows), end="\n\n")
    print(f"wrote {json_path} and {md_path}")
    print(f"note: {MODEL_NOTE}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
