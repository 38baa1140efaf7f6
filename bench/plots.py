"""PNG plots of the committed benchmark results.

Run from the repository root::

    python -m bench.plots [--results-dir bench/results] [--out-dir bench/results/plots]

Reads, from ``--results-dir``, each of these that exists and draws one PNG per file into
``--out-dir``:

- ``traffic.json`` (``python -m bench.traffic``) -> ``traffic.png``: device-memory bytes per
  kernel, the eager path counted beside the fused Triton kernels (analytic);
- ``microbench.json`` (pytest-benchmark, ``make bench``) -> ``microbench.png``: CPU speedup of
  the engine's fast path over each baseline (reference, mamba_ssm-style loop), from medians;
- ``latency.json`` (``python -m bench.latency``) -> ``latency.png``: per-stage time per second
  of video, measured on the machine and modeled on an H100, engine beside reference.

Each plot's title says when and on which machine its numbers were measured, read from the
JSON's metadata. Plots are drawn with matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The engine's own (non-Triton) path: "fast"; results written before the rename call it "torch".
ENGINE_PATHS = ("fast", "torch")
PARAM_PATH_KEYS = ("backend", "path")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _format_date(date: str) -> str:
    """An ISO 8601 date as "YYYY-MM-DD HH:MM UTC" (as given when it does not parse)."""
    try:
        parsed = datetime.datetime.fromisoformat(date)
    except (TypeError, ValueError):
        return str(date)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(datetime.timezone.utc)
    return parsed.strftime("%Y-%m-%d %H:%M") + " UTC"


def _when_where(date: str, machine: str, verb: str = "measured") -> str:
    return f"{verb} {_format_date(date)} on {machine}"


def _save(fig, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


# traffic.json

def traffic_title(data: dict) -> str:
    machine = data["machine"]
    return ("Device-memory traffic per kernel: eager (counted) vs fused Triton (analytic)\n"
            + _when_where(data["date"], f"{machine['node']} ({machine['processor']})", "counted"))


def plot_traffic(data: dict, out: Path) -> str:
    """Horizontal bars, log scale: eager bytes of each (op, dtype, direction, path) row and the
    fused kernels' bytes for the same case. Returns the title."""
    plt = _pyplot()
    rows = data["rows"]
    labels = [f"{r['op']} {r['dtype']} {r['direction']} [{r['path']}]" for r in rows]
    eager = [r["eager"]["bytes"] / 1e6 for r in rows]
    fused = [r["fused"]["bytes"] / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(rows) + 1.8))
    positions = list(range(len(rows)))
    height = 0.4
    ax.barh([p - height / 2 for p in positions], eager, height, label="eager path (counted ATen ops)")
    ax.barh([p + height / 2 for p in positions], fused, height, label="fused Triton kernels (analytic)")
    for p, e, f in zip(positions, eager, fused):
        ax.text(max(e, f) * 1.08, p, f"{e / f:.2f}x", va="center", fontsize=8)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(eager + fused) * 4)
    ax.set_xlabel("MB moved through device memory (log scale); label: eager / fused")
    ax.legend(loc="upper right", fontsize=8)
    title = traffic_title(data)
    ax.set_title(title, fontsize=10)
    _save(fig, out)
    return title


# microbench.json (pytest-benchmark)

def microbench_title(data: dict) -> str:
    info = data["machine_info"]
    cpu = info.get("cpu", {}).get("brand_raw") or info.get("processor") or info.get("machine", "")
    count = info.get("cpu", {}).get("count")
    where = f"{info.get('node', '?')} ({cpu}{f', {count} CPUs' if count else ''})"
    return ("CPU speedup of the engine's fast path (median times)\n"
            + _when_where(data["datetime"], where))


def microbench_speedups(data: dict) -> List[tuple]:
    """(label, speedup) for each baseline benchmark paired with the engine's in its group: the
    same group and parameters except the path/backend one; speedup = baseline / engine median."""
    by_group: Dict[tuple, Dict[str, float]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        params = bench.get("params") or {}
        path_key = next((k for k in PARAM_PATH_KEYS if k in params), None)
        if path_key is None:
            continue
        rest = tuple(sorted((k, str(v)) for k, v in params.items() if k != path_key))
        by_group[(bench["group"], rest)][params[path_key]] = bench["stats"]["median"]
    pairs = []
    for (group, _), medians in by_group.items():
        engine = next((p for p in ENGINE_PATHS if p in medians), None)
        if engine is None:
            continue
        for path, median in medians.items():
            if path not in ENGINE_PATHS:
                pairs.append((f"{group} [{path} / {engine}]", median / medians[engine]))
    return pairs


def plot_microbench(data: dict, out: Path) -> str:
    plt = _pyplot()
    pairs = microbench_speedups(data)
    if not pairs:
        raise ValueError("microbench.json has no benchmark with an engine (torch) and a baseline path")
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(pairs) + 1.8))
    positions = list(range(len(pairs)))
    speedups = [s for _, s in pairs]
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
    ax.barh(positions, speedups, color=colors)
    for p, s in zip(positions, speedups):
        ax.text(s * 1.08, p, f"{s:.0f}x" if s >= 100 else f"{s:.3g}x", va="center", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlim(right=max(speedups + [1.0]) * 4)
    ax.set_yticks(positions, [label for label, _ in pairs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speedup = baseline median / engine median (log scale; < 1: engine slower)")
    title = microbench_title(data)
    ax.set_title(title, fontsize=10)
    _save(fig, out)
    return title


# latency.json (bench/latency.py, mim profile --json)

def latency_title(data: dict) -> str:
    metadata = data["metadata"]
    machine = metadata["machine"]
    where = f"{machine['node']} ({machine.get('gpu') or machine['processor']})"
    return ("Per-stage latency per second of 25 fps video: measured, and modeled on an H100\n"
            + _when_where(metadata["date"], where))


def plot_latency(data: dict, out: Path) -> str:
    """One row per (config, scenario): stacked bars of stage times per second of video, engine and
    reference; left measured on the machine (with the paper's Table III figure), right the
    modeled H100 time (host-side video writing excluded)."""
    plt = _pyplot()
    panels = [(run, scenario, result) for run in data["runs"]
              for scenario, result in run["scenarios"].items()]
    if not panels:
        raise ValueError("latency.json has no runs")
    from matplotlib.patches import Patch

    from mim.profile import STAGES

    present = {stage["stage"] for _, _, result in panels for stage in result["stages"]}
    stage_names = [name for name in STAGES if name in present]
    stage_names += sorted(present - set(stage_names))
    cmap = plt.get_cmap("tab10")
    colors = {name: cmap(STAGES.index(name) % 10 if name in STAGES else 9) for name in stage_names}
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 2.3 * len(panels) + 1.2), squeeze=False)
    for row, (run, scenario, result) in enumerate(panels):
        seconds = run["seconds"]
        columns = ("engine", "reference")
        labels = [f"{c} ({run['backends'][c]})" for c in columns]
        for col, (key, scale, unit) in enumerate((("measured_s", 1.0, "s"),
                                                   ("modeled_h100_s", 1e3, "ms"))):
            ax = axes[row][col]
            left = [0.0, 0.0]
            for stage in result["stages"]:
                if key == "modeled_h100_s" and stage["host"]:
                    continue
                values = [(stage[c][key] or 0.0) * scale / seconds for c in columns]
                ax.barh(labels, values, left=left, color=colors[stage["stage"]])
                left = [a + b for a, b in zip(left, values)]
            for y, total in enumerate(left):
                ax.text(total, y, f" {total:.3g} {unit}", va="center", fontsize=8)
            ax.invert_yaxis()
            ax.set_xlim(0, max(left) * 1.25 or 1)
            if key == "measured_s":
                paper = result["paper_table3_s_per_video_second"]
                where = f"measured on {run['device']} (dashed: paper Table III, {paper:g} s, their GPU)"
            else:
                where = "H100, modeled (video writing excluded)"
            ax.set_title(f"{scenario}, config {run['config']}: {where}", fontsize=9)
            ax.set_xlabel(f"{unit} per second of video", fontsize=8)
            ax.tick_params(labelsize=8)
            if key == "measured_s":
                ax.axvline(paper, color="black", linestyle="--", linewidth=0.8)
                ax.set_xlim(0, max(max(left), paper) * 1.3)
    handles = [Patch(color=colors[name], label=name) for name in stage_names]
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=8,
               bbox_to_anchor=(0.5, -0.02))
    title = latency_title(data)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    _save(fig, out)
    return title


PLOTS: Dict[str, tuple] = {
    "traffic.json": ("traffic.png", plot_traffic),
    "microbench.json": ("microbench.png", plot_microbench),
    "latency.json": ("latency.png", plot_latency),
}


def draw_all(results_dir: Path, out_dir: Path, log: Optional[Callable[[str], None]] = print) -> List[Path]:
    """Draw the plot of every result file found; returns the PNGs written."""
    written = []
    for source, (target, plot) in PLOTS.items():
        path = results_dir / source
        if not path.is_file():
            if log:
                log(f"skipped {target}: {path} does not exist")
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        title = plot(data, out_dir / target)
        written.append(out_dir / target)
        if log:
            log(f"wrote {out_dir / target}: {' / '.join(title.splitlines())}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help=f"where the JSON results are (default: {RESULTS_DIR})")
    parser.add_argument("--out-dir", type=Path,
                        help="where the PNGs go (default: RESULTS_DIR/plots)")
    args = parser.parse_args(argv)
    written = draw_all(args.results_dir, args.out_dir or args.results_dir / "plots")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
