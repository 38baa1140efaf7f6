"""Per-stage latency of img2img and audio2video, one second of 25 fps video, per config.

Run from the repository root::

    python -m bench.latency [--config tiny --config base] [--seconds 1] [--repeats 3]
                            [--out-dir bench/results] [--trace-dir DIR]

Each config is profiled by ``mim.profile.profile`` (the logic of ``mim profile``): every stage
of both scenarios, the engine backend beside the reference one, wall time measured on this
device (median of ``--repeats`` runs after a warm-up), FLOPs and bytes counted, H100 time
**modeled** (max(FLOPs / peak, bytes / 3.0 TB/s) + 4 µs per launch; see ``bench/NOTES.md``).
Random weights: no stage's cost depends on their values. Results go to ``latency.json`` (with the
date and machine, which ``bench/plots.py`` puts in its titles) and ``latency.md``.

Measured times are only as good as the machine is quiet: run it with nothing else on the CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from mim.io import atomic_output
from mim.profile import SCENARIOS, format_report, profile, report_json
from mim.runinfo import run_metadata

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CONFIGS = ("tiny", "base")


def report_markdown(report: dict) -> str:
    metadata = report["metadata"]
    machine = metadata["machine"]
    where = machine["gpu"] or machine["processor"]
    lines = ["# Per-stage latency of img2img and audio2video (measured; H100 modeled)",
             "",
             f"Measured {metadata['date']} on {machine['node']} ({where}, {machine['cpu_count']} CPUs), "
             f"torch {metadata['versions']['torch']}. Written by `python -m bench.latency`.",
             ""]
    for run in report["runs"]:
        lines += [f"## config `{run['config']}`", "", "```", format_report(run), "```", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append",
                        help=f"a config to profile (repeatable; default: {' and '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds of video (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is kept")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--scenario", choices=(*SCENARIOS, "both"), default="both")
    parser.add_argument("--sample-steps", type=int, help="DDIM steps (default: each config's)")
    parser.add_argument("--backend", default=None, help="the engine column's backend (default auto)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help=f"where latency.json and latency.md go (default: {RESULTS_DIR})")
    parser.add_argument("--trace-dir", type=Path,
                        help="also write a Chrome trace per config there (latency_<config>_trace.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    scenarios = SCENARIOS if args.scenario == "both" else (args.scenario,)
    metadata = run_metadata()
    runs = []
    for config in args.config or DEFAULT_CONFIGS:
        trace = None
        if args.trace_dir is not None:
            args.trace_dir.mkdir(parents=True, exist_ok=True)
            trace = str(args.trace_dir / f"latency_{Path(config).stem}_trace.json")
        run = profile(config, seconds=args.seconds, scenarios=scenarios, repeats=args.repeats,
                      warmup=args.warmup, backend=args.backend, device=args.device,
                      sample_steps=args.sample_steps, trace=trace, progress=not args.quiet)
        print(format_report(run), end="\n\n", flush=True)
        runs.append(run)
    report = report_json(runs, metadata)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out_dir / "latency.json", args.out_dir / "latency.md"
    for path, text in ((json_path, json.dumps(report, indent=2) + "\n"),
                       (md_path, report_markdown(report))):
        with atomic_output(path) as temp:
            temp.write_text(text, encoding="utf-8")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
