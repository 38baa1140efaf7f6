"""``make gpu-check``: on a machine with one CUDA GPU, run every real measurement the project has
in one pass of under 8 minutes and write one report, ``bench/results/gpu/<device name>/REPORT.md``.

    python -m tools.gpu_check [--out-dir DIR] [--budget-s 480] [--dry-run] [--write-tuned]

Parts, in order, each a subprocess with its own time limit (``PARTS``; the limits and the fixed
costs fit in the default budget of 480 s):

- ``env``: nvidia-smi, the torch / triton / CUDA / driver versions, the device's name, compute
  capability, SM count and memory;
- ``tests-gpu``, ``tests-kernels``: ``pytest -m gpu tests/gpu`` and ``pytest tests/kernels`` on
  the compiled kernels (the interpreter switches are removed from their environment; the kernel
  tests spread over pytest-xdist workers when it is installed), counted from a junit xml:
  passed / failed / errors / skipped, and the failing test ids;
- ``bench-ops``: ``python -m bench.ops --device cuda --providers reference,fast,triton``: time,
  GB/s, % of copy bandwidth and speedup per op (the ``torch.compile`` column costs minutes of
  compiling: ``python -m bench.ops`` alone adds it);
- ``tune``: ``python -m tools.tune``: the launch-config winners; their JSON is written into the
  report's folder (and installed into the package's ``kernels/tuned/`` only with
  ``--write-tuned``);
- ``profile-tiny``, ``profile-base``: ``mim profile`` on the triton backend: per stage, the
  measured time beside the modeled H100 time of the same run;
- ``animate``: one ``mim animate`` of the demo on CUDA and its wall time;
- ``training-step``: one stage-1 training step at the base shape, engine vs reference:
  ``python -m bench.training_step --device cuda`` (step time and peak CUDA memory).

A part that overruns its limit gets SIGINT (pytest then still writes its junit xml), then SIGKILL
for its whole process group, and is reported "timed out" with the end of its output; a part that
would start with too little of the budget left is "not run: budget". The report is rewritten
(atomically) after every part, so a run stopped half-way leaves the finished parts. Each part's
full output goes to ``logs/<part>.log`` beside the report. Without CUDA, or with ``--dry-run``,
the plan (every part's command and limit) is printed and nothing is written. See docs/gpu.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import wave
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mim.io import atomic_output

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = Path("examples") / "demo"
"""Relative to ROOT, the parts' working directory."""
DEFAULT_BUDGET_S = 480
GRACE_S = 5
"""Seconds between a timed-out part's SIGINT and the SIGKILL of its process group."""
STARTUP_S = 15
"""This process's own start (python, torch) and the report writes, kept out of the parts' limits."""
MIN_PART_S = 5
"""A part is started with its own limit, or with what is left of the budget when that is at least
this many seconds; otherwise it is "not run: budget"."""
TAIL_LINES = 40
INTERPRETER_SWITCHES = ("TRITON_INTERPRET", "MIM_TEST_INTERPRET", "MIM_KERNEL_BACKEND")
"""Removed from every part's environment: the parts run the compiled kernels, auto backend."""


@dataclass(frozen=True)
class Part:
    """One step of the check: ``command(out_dir)`` run with ``limit_s`` seconds, its figures read
    by ``figures(result, out_dir)`` into markdown lines. ``outputs``: the files it writes in the
    report's folder (glob patterns), removed before the run so that no figure comes from an
    earlier one."""

    key: str
    title: str
    limit_s: int
    command: Callable[[Path], List[str]]
    figures: Callable[["PartResult", Path], List[str]]
    outputs: Tuple[str, ...] = ()


@dataclass
class PartResult:
    key: str
    command: List[str]
    limit_s: float
    status: str = "not run yet"
    """"ok", "failed", "timed out", "not run: budget", "interrupted" or "not run yet"."""
    returncode: Optional[int] = None
    wall_s: Optional[float] = None
    tail: str = ""
    figures: List[str] = field(default_factory=list)

    def status_text(self) -> str:
        if self.status == "failed":
            return f"failed rc {self.returncode}"
        if self.status == "timed out":
            return f"timed out after {self.limit_s:.0f} s"
        return self.status


# Running one part.

def _kill_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def output_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (empty when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def run_part(result: PartResult, log_path: Path, env: Optional[Dict[str, str]] = None,
             cwd: Path = ROOT) -> PartResult:
    """Run ``result.command`` in its own process group with stdout and stderr going to
    ``log_path``; after ``result.limit_s`` seconds the group gets SIGINT, then SIGKILL after
    ``GRACE_S``. Fills in status, returncode, wall_s and the output tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(result.command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                   start_new_session=True)
        try:
            try:
                result.returncode = process.wait(timeout=result.limit_s)
                result.status = "ok" if result.returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                result.status = "timed out"
                _kill_group(process, signal.SIGINT)
                try:
                    process.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
                _kill_group(process, signal.SIGKILL)
                result.returncode = process.wait()
        except KeyboardInterrupt:
            _kill_group(process, signal.SIGKILL)
            result.returncode = process.wait()
            result.status = "interrupted"
            raise
        finally:
            result.wall_s = time.monotonic() - began
            _kill_group(process, signal.SIGKILL)   # anything the part left running
            result.tail = output_tail(log_path)
    return result


# Reading figures.

def junit_counts(path: Path) -> dict:
    """{"passed", "failed", "errors", "skipped", "failing": [test ids]} from a pytest junit xml
    (each testcase counted once: failure, else error, else skipped, else passed). The nameless
    testcase pytest writes for a test cut short by SIGINT is not counted."""
    root = ElementTree.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failing": []}
    for case in root.iter("testcase"):
        if not case.get("name"):
            continue
        tags = {child.tag for child in case}
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        if "failure" in tags:
            counts["failed"] += 1
            counts["failing"].append(test_id)
        elif "error" in tags:
            counts["errors"] += 1
            counts["failing"].append(test_id)
        elif "skipped" in tags:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _ratio(measured, modeled) -> str:
    return "-" if measured is None or not modeled else f"{measured / modeled:.1f}"


def _read(path: Path, reader: Callable[[Path], List[str]]) -> List[str]:
    """``reader(path)``, or one line saying why the file could not be read."""
    if not path.exists():
        return [f"(no {path.name} was written)"]
    try:
        return reader(path)
    except Exception as error:  # a malformed file is reported, never fatal to the report
        return [f"(could not read {path.name}: {type(error).__name__}: {error})"]


def env_figures(result: PartResult, out_dir: Path) -> List[str]:
    def read(path):
        info = json.loads(path.read_text(encoding="utf-8"))
        rows = [(name, info.get(key, "-")) for name, key in (
            ("device", "device"), ("compute capability", "capability"), ("SMs", "sm_count"),
            ("memory (GiB)", "memory_gib"), ("driver", "driver"), ("CUDA (torch build)", "cuda"),
            ("torch", "torch"), ("triton", "triton"), ("python", "python"), ("host", "host"))]
        lines = markdown_table(("item", "value"), rows)
        if info.get("nvidia_smi"):
            lines += ["", "```", info["nvidia_smi"].rstrip(), "```"]
        return lines
    return _read(out_dir / "env.json", read)


def tests_figures(name: str) -> Callable[[PartResult, Path], List[str]]:
    def figures(result: PartResult, out_dir: Path) -> List[str]:
        def read(path):
            counts = junit_counts(path)
            lines = [f"passed {counts['passed']}, failed {counts['failed']}, errors "
                     f"{counts['errors']}, skipped {counts['skipped']}"
                     + (" (the tests that finished before the time limit)"
                        if result.status == "timed out" else "")]
            if counts["failing"]:
                shown = counts["failing"][:30]
                lines += ["", "Failing:", *(f"- `{test_id}`" for test_id in shown)]
                if len(counts["failing"]) > len(shown):
                    lines.append(f"- ... and {len(counts['failing']) - len(shown)} more")
            return lines
        return _read(out_dir / f"junit-{name}.xml", read)
    return figures


OPS_ROWS_PER_OP = 4


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ops_figures(result: PartResult, out_dir: Path) -> List[str]:
    """From bench.ops's ops.json: the copy bandwidth, then per op its ``OPS_ROWS_PER_OP`` timed
    triton rows that move the most bytes (the largest shapes): time, GB/s, % of the copy
    bandwidth and the speedup over the reference, beside the fast path's and torch.compile's."""
    def read(path):
        report = json.loads(path.read_text(encoding="utf-8"))
        metadata, rows = report["metadata"], report["rows"]
        copy = metadata.get("copy_bandwidth") or {}
        lines = [f"{len(rows)} rows in ops.json (ops.csv, ops.png beside it); copy bandwidth "
                 f"{_fmt(copy.get('gb_per_s'), '.0f')} GB/s (dst.copy_(src)); bytes: "
                 f"{metadata.get('bytes_basis', '-')}; timer: {metadata.get('timer', '-')}", ""]

        def same(row, other):
            return all(row[k] == other[k] for k in ("op", "shape", "params", "dtype", "mode"))

        table = []
        for op in dict.fromkeys(row["op"] for row in rows):
            timed = [r for r in rows if r["op"] == op and r["provider"] == "triton"
                     and r["time_ms"] is not None]
            if not timed:
                notes = {r["note"] for r in rows if r["op"] == op and r["provider"] == "triton"}
                table.append((op, "no triton row timed: " + "; ".join(sorted(notes)), *[""] * 8))
                continue
            timed.sort(key=lambda r: -(r["counted_bytes"] or 0))
            for row in timed[:OPS_ROWS_PER_OP]:
                peers = {r["provider"]: r for r in rows if same(r, row)}
                table.append((op, row["shape"], row["dtype"], row["mode"], _fmt(row["time_ms"], ".3f"),
                              _fmt(row["gb_per_s"], ".0f"), _fmt(row["pct_of_copy_bw"], ".1f"),
                              *(_fmt(peers.get(p, {}).get("speedup_vs_reference"), ".2f")
                                for p in ("triton", "fast", "compile"))))
        return lines + markdown_table(("op", "shape", "dtype", "mode", "triton ms", "GB/s",
                                       "% copy bw", "triton x ref", "fast x ref",
                                       "compile x ref"), table)
    return _read(out_dir / "ops.json", read)


def _tuned_files(out_dir: Path) -> List[Path]:
    return sorted((out_dir / "tuned").glob("sm_*.json"))


def tune_figures(result: PartResult, out_dir: Path) -> List[str]:
    """The tuner's winners file(s) in the report's folder (``tuned/sm_*.json``, tools.tune's
    schema): per kernel and shape key, the winning launch config, its time, and the spread over
    the candidates timed."""
    files = _tuned_files(out_dir)
    if not files:
        return ["(the tuner wrote no tuned/sm_*.json)"]
    lines = []
    for path in files:
        def read(path):
            winners = json.loads(path.read_text(encoding="utf-8"))["winners"]
            rows = []
            for kernel, keys in winners.items():
                for key, entry in keys.items():
                    timings = [t for t in (entry.get("timings") or {}).values() if t is not None]
                    rows.append((kernel, key, entry["config"], _fmt(entry.get("time_ms"), ".4f"),
                                 len(timings), _fmt(max(timings) if timings else None, ".4f")))
            return [f"`tuned/{path.name}` ({len(rows)} winners; installed into kernels/tuned/ "
                    f"only with --write-tuned):", ""] + markdown_table(
                ("kernel", "shape key", "winner", "ms", "candidates", "slowest ms"), rows)
        lines += _read(path, read) + [""]
    return lines[:-1]


def profile_figures(result: PartResult, out_dir: Path) -> List[str]:
    """Per scenario and stage: measured ms beside the modeled H100 ms of the same run, and their
    ratio, for the engine (triton) and the reference column."""
    config = result.key.split("-", 1)[1]

    def read(path):
        report = json.loads(path.read_text(encoding="utf-8"))
        lines = []
        for run in report["runs"]:
            lines.append(f"config {run['config']}, {run['frames']} frames at {run['image_size']}px, "
                         f"{run['device']} {run['dtype']}, engine backend "
                         f"{run['backends']['engine']}, median of {run['repeats']} after "
                         f"{run['warmup']} warm-up, {run['sample_steps']} DDIM steps")
            for scenario, scenario_result in run["scenarios"].items():
                rows = []
                entries = [(s["stage"], s["engine"], s["reference"]) for s in scenario_result["stages"]]
                total = scenario_result["total"]
                entries.append(("**total**", total["engine"], total["reference"]))
                for stage, e, r in entries:
                    rows.append((stage, _ms(e["measured_s"]), _ms(e["modeled_h100_s"]),
                                 _ratio(e["measured_s"], e["modeled_h100_s"]),
                                 _ms(r["measured_s"]), _ms(r["modeled_h100_s"]),
                                 _ratio(r["measured_s"], r["modeled_h100_s"])))
                lines += ["", f"{scenario}:", ""]
                lines += markdown_table(("stage", "engine measured ms", "engine modeled H100 ms",
                                         "measured/modeled", "ref measured ms", "ref modeled H100 ms",
                                         "measured/modeled"), rows)
        return lines
    return _read(out_dir / f"profile-{config}.json", read)


def wav_seconds(path: Path) -> Optional[float]:
    try:
        with wave.open(str(path), "rb") as audio:
            return audio.getnframes() / audio.getframerate()
    except (OSError, wave.Error, EOFError):
        return None


def animate_figures(result: PartResult, out_dir: Path) -> List[str]:
    if result.wall_s is None or result.status != "ok":
        return []
    speech = wav_seconds(ROOT / DEMO_DIR / "speech.wav")
    line = (f"wall time {result.wall_s:.1f} s for the whole command (process start, model load, "
            f"Triton compilation and video writing included)")
    if speech:
        line += f"; speech {speech:.2f} s, {result.wall_s / speech:.2f} s per second of speech"
    return [line]


def training_figures(result: PartResult, out_dir: Path) -> List[str]:
    def read(path):
        report = json.loads(path.read_text(encoding="utf-8"))
        variants = report["variants"]
        ref = variants.get("reference", {})
        rows = []
        for name, row in variants.items():
            step, peak = row["step_seconds_median"], row.get("peak_memory_bytes")
            rows.append((name, f"{step * 1e3:.1f}",
                         f"{ref['step_seconds_median'] / step:.2f}x" if ref else "-",
                         "-" if peak is None else f"{peak / 2**20:.0f}",
                         f"{row['saved_activations_bytes'] / 1e6:.1f}"))
        return [f"config {report['config']}, batch {report['batch']} clips, device "
                f"{report.get('device', 'cpu')}", ""] + markdown_table(
            ("variant", "step ms (median)", "speedup vs reference",
             "torch.cuda.max_memory_allocated (MiB)", "saved activations (MB)"), rows)
    return _read(out_dir / "training_step.json", read)


# The plan.

def _python(*args: str) -> List[str]:
    return [sys.executable, *args]


def _pytest(name: str, *args: str, workers: bool = False) -> Callable[[Path], List[str]]:
    """A pytest run writing junit-<name>.xml; ``workers``: spread over pytest-xdist processes
    (one per CPU core, at most 8) when it is installed (the dev extras), since on a machine
    that never ran these kernels most of the time is Triton compiling them, core by core."""
    def command(out: Path) -> List[str]:
        spread = []
        if workers and importlib.util.find_spec("xdist") is not None:
            spread = ["-n", str(max(1, min(8, os.cpu_count() or 1)))]
        return _python("-m", "pytest", *args, *spread, "-q", "-p", "no:cacheprovider",
                       f"--junitxml={out / f'junit-{name}.xml'}")
    return command


def _profile(config: str, repeats: int) -> Callable[[Path], List[str]]:
    return lambda out: _python("-m", "mim", "profile", "--config", config, "--backend", "triton",
                               "--device", "cuda", "--repeats", str(repeats), "--warmup", "1",
                               "--no-progress", "--json", str(out / f"profile-{config}.json"))


PARTS = (
    Part("env", "(a) device, driver and versions", 10,
         lambda out: _python("-m", "tools.gpu_check", "--env-json", str(out / "env.json")),
         env_figures, ("env.json",)),
    Part("tests-gpu", "(b) gpu-marked tests, compiled kernels", 45,
         _pytest("gpu", "-m", "gpu", "tests/gpu"), tests_figures("gpu"), ("junit-gpu.xml",)),
    Part("tests-kernels", "(b) kernel tests, compiled kernels", 110,
         _pytest("kernels", "tests/kernels", workers=True), tests_figures("kernels"), ("junit-kernels.xml",)),
    Part("bench-ops", "(c) op microbenchmarks", 80,
         lambda out: _python("-m", "bench.ops", "--device", "cuda", "--providers",
                             "reference,fast,triton", "--out-dir", str(out)),
         ops_figures, ("ops.csv", "ops.json", "ops.png")),
    Part("tune", "(d) launch-config tuner", 45,
         lambda out: _python("-m", "tools.tune", "--out-dir", str(out / "tuned")), tune_figures,
         ("tuned/sm_*.json",)),
    Part("profile-tiny", "(e) mim profile --config tiny, triton backend", 25,
         _profile("tiny", 3), profile_figures, ("profile-tiny.json",)),
    Part("profile-base", "(e) mim profile --config base, triton backend", 35,
         _profile("base", 1), profile_figures, ("profile-base.json",)),
    Part("animate", "(f) mim animate of the demo", 25,
         lambda out: _python("-m", "mim", "animate", "--image", str(DEMO_DIR / "portrait.png"), "--crop", "center",
                             "--audio", str(DEMO_DIR / "speech.wav"),
                             "--checkpoint", str(DEMO_DIR / "mim_tiny.safetensors"),
                             "--out", str(out / "demo.mp4"), "--device", "cuda",
                             "--backend", "triton", "--no-progress"),
         animate_figures, ("demo.mp4",)),
    Part("training-step", "(g) stage-1 training step, base shape", 35,
         lambda out: _python("-m", "bench.training_step", "--config", "base", "--device", "cuda",
                             "--repeats", "2", "--out-dir", str(out)),
         training_figures, ("training_step.md", "training_step.json")),
)


def device_dir_name(name: str) -> str:
    """A device name as one folder name, by bench.ops's rule (so both write one folder): runs of
    anything but letters, digits, '.', '_' and '-' become '_', leading and trailing '.' and '_'
    go ("NVIDIA H100 80GB HBM3" -> "NVIDIA_H100_80GB_HBM3")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "unknown"


def default_out_dir(device_name: Optional[str]) -> Path:
    """bench/results/gpu/<device name>/ (relative to ROOT); a placeholder name without a device."""
    folder = "<device name>" if device_name is None else device_dir_name(device_name)
    return Path("bench") / "results" / "gpu" / folder


def format_plan(out_dir: Path, budget_s: float) -> str:
    lines = [f"make gpu-check plan: {len(PARTS)} parts, limits {sum(p.limit_s for p in PARTS)} s "
             f"in all (budget {budget_s:g} s), report {out_dir / 'REPORT.md'}"]
    for part in PARTS:
        lines.append(f"  [{part.key}] {part.title}, limit {part.limit_s} s")
        lines.append(f"      {scrub(shlex.join(part.command(out_dir)))}")
    return "\n".join(lines)


# The report.

def scrub(text: str) -> str:
    """``text`` with this checkout's path shown as "." and the home folder as "~" (the report
    names no user folder)."""
    text = text.replace(str(ROOT), ".")
    home = os.path.expanduser("~")
    return text.replace(home, "~") if home not in ("", "/", "~") else text


def format_report(header: Dict[str, str], results: Sequence[PartResult],
                  parts: Optional[Sequence[Part]] = None) -> str:
    parts = PARTS if parts is None else parts
    lines = ["# make gpu-check report", ""]
    lines += [f"- {name}: {value}" for name, value in header.items()]
    lines += ["", "| part | status | wall s | limit s |", "| --- | --- | ---: | ---: |"]
    for part, result in zip(parts, results):
        wall = "-" if result.wall_s is None else f"{result.wall_s:.1f}"
        lines.append(f"| {part.key} | {result.status_text()} | {wall} | {result.limit_s:.0f} |")
    for part, result in zip(parts, results):
        lines += ["", f"## {part.title}", "", f"Status: **{result.status_text()}**"
                  + ("" if result.wall_s is None else f" ({result.wall_s:.1f} s)"), "",
                  f"Command: `{scrub(shlex.join(result.command))}`"]
        if result.figures:
            lines += ["", *result.figures]
        if result.status in ("failed", "timed out", "interrupted") and result.tail:
            lines += ["", "Output tail:", "", "```", result.tail, "```"]
    return scrub("\n".join(lines) + "\n")


def write_report(path: Path, text: str) -> None:
    with atomic_output(path) as temp:
        temp.write_text(text, encoding="utf-8")


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" (with uncommitted changes)" if dirty else "")


def part_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in INTERPRETER_SWITCHES}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_check(out_dir: Path, budget_s: float, header: Dict[str, str],
              parts: Optional[Sequence[Part]] = None, env: Optional[Dict[str, str]] = None,
              log: Callable[[str], None] = print) -> List[PartResult]:
    """Run ``parts`` (default ``PARTS``) in order within ``budget_s`` seconds, rewriting
    ``out_dir/REPORT.md`` after each; return the results."""
    parts = PARTS if parts is None else parts
    began = time.monotonic()
    files = ROOT / out_dir   # out_dir itself (relative to ROOT, or absolute) goes into the commands
    report = files / "REPORT.md"
    results = [PartResult(p.key, p.command(out_dir), p.limit_s) for p in parts]
    env = part_env() if env is None else env
    for part in parts:   # this run's files only: a part that writes nothing shows nothing
        for pattern in (*part.outputs, f"logs/{part.key}.log"):
            for path in files.glob(pattern):
                path.unlink()
    for part, result in zip(parts, results):
        left = budget_s - (time.monotonic() - began) - GRACE_S
        if left < min(part.limit_s, MIN_PART_S):
            result.status = "not run: budget"
        else:
            result.limit_s = min(part.limit_s, left)
            log(f"gpu-check: [{part.key}] {part.title} (limit {result.limit_s:.0f} s)")
            try:
                run_part(result, files / "logs" / f"{part.key}.log", env=env)
            except KeyboardInterrupt:
                write_report(report, format_report(header, results, parts))
                raise
            result.figures = part.figures(result, files)
            log(f"gpu-check: [{part.key}] {result.status_text()} in {result.wall_s:.1f} s")
        if part.key == "env":
            header.update(_header_from_env(files / "env.json"))
        write_report(report, format_report(header, results, parts))
    return results


def _header_from_env(path: Path) -> Dict[str, str]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {"versions": f"torch {info.get('torch')} (CUDA {info.get('cuda')}), triton "
                        f"{info.get('triton')}, driver {info.get('driver')}, python {info.get('python')}",
            "compute capability": str(info.get("capability")),
            "host": str(info.get("host"))}


def without_processes(nvidia_smi: str) -> str:
    """nvidia-smi's table without its "Processes" section, which lists the programs on the GPU
    (names and ids that are the user's business, not the report's)."""
    lines = nvidia_smi.splitlines()
    for index, line in enumerate(lines):
        if "Processes:" in line:
            start = index - 1 if index and lines[index - 1].startswith("+") else index
            return "\n".join(lines[:start] + ["(the Processes section is left out)"]) + "\n"
    return nvidia_smi


def collect_env(path: Path) -> None:
    """The ``env`` part: device and versions as JSON at ``path`` (run in a subprocess)."""
    import platform

    import torch

    from mim.runinfo import package_version

    from kernels.tuning import arch_label, device_arch

    props = torch.cuda.get_device_properties(0)
    info = {"device": props.name,
            "capability": f"{props.major}.{props.minor} ({arch_label(device_arch('cuda:0'))})",
            "sm_count": props.multi_processor_count,
            "memory_gib": f"{props.total_memory / 2**30:.1f}", "cuda": torch.version.cuda,
            "torch": torch.__version__, "triton": package_version("triton"),
            "python": platform.python_version(), "host": platform.node(),
            "driver": "-", "nvidia_smi": ""}
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=10)
        info["driver"] = query.stdout.strip().splitlines()[0] if query.stdout.strip() else "-"
        info["nvidia_smi"] = without_processes(subprocess.run(
            ["nvidia-smi"], capture_output=True, text=True, timeout=10).stdout)
    else:
        info["nvidia_smi"] = "(nvidia-smi not found on PATH)"
    print(json.dumps({k: v for k, v in info.items() if k != "nvidia_smi"}, indent=2))
    write_report(path, json.dumps(info, indent=2))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where REPORT.md and the parts' files go (default: "
                             "bench/results/gpu/<device name>/)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for all parts together (default {DEFAULT_BUDGET_S})")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (every part's command and limit) and write nothing")
    parser.add_argument("--write-tuned", action="store_true",
                        help="also install the tuner's winners into the package (kernels/tuned/)")
    parser.add_argument("--env-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.env_json is not None:
        collect_env(args.env_json)
        return 0
    if args.budget_s <= STARTUP_S:
        parser.error(f"--budget-s must be more than {STARTUP_S} s (this process's own start), "
                     f"got {args.budget_s:g}")

    import torch

    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if cuda else None
    if args.out_dir is not None:
        out_dir = args.out_dir.resolve()
        out_dir = out_dir.relative_to(ROOT) if out_dir.is_relative_to(ROOT) else out_dir
    else:
        out_dir = default_out_dir(device_name if cuda else None)
    if not cuda or args.dry_run:
        print(format_plan(out_dir, args.budget_s))
        reason = "--dry-run" if cuda else "no CUDA device (torch.cuda.is_available() is False)"
        print(f"gpu-check: {reason}: nothing run, nothing written")
        return 0
    header = {"device": device_name,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "git commit": git_commit(),
              "budget": f"{args.budget_s:g} s"}
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run_check(out_dir, args.budget_s - STARTUP_S, header)
    except KeyboardInterrupt:
        print(f"gpu-check: interrupted; the finished parts are in {ROOT / out_dir / 'REPORT.md'}")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.write_tuned:
        _install_tuned(out_dir, results)
    print(f"gpu-check: report written to {ROOT / out_dir / 'REPORT.md'}")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _install_tuned(out_dir: Path, results: Sequence[PartResult]) -> None:
    tuned = next(r for r in results if r.key == "tune")
    files = _tuned_files(ROOT / out_dir)
    if tuned.status != "ok" or not files:
        print("gpu-check: --write-tuned: the tuner did not finish; kernels/tuned/ left as it was")
        return
    from kernels.tuning import tuned_dir

    for path in files:
        target = tuned_dir() / path.name
        with atomic_output(target) as temp:
            shutil.copyfile(path, temp)
        print(f"gpu-check: installed {target}")


if __name__ == "__main__":
    sys.exit(main())
