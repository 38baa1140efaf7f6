"""Ahead-of-time compile report for every registered Triton kernel; no GPU needed.

For each kernel in the registry (``kernels/_registry.py``), each target (sm_80, sm_90a, sm_100a and
sm_120a by default) and each dtype × launch config the kernel declares for that target (its own set
where the registry gives the architecture one), the kernel is compiled with ``triton.compile`` and
the result is read with the NVIDIA tools shipped in Triton's wheel:

- ``cuobjdump --dump-resource-usage`` on the cubin: registers, static shared memory, local memory
  and stack per thread; Triton's metadata gives the dynamic shared memory a launch requests;
- ``ptxas -v`` on the PTX, run with the flags Triton's own ``ptxas`` call uses: spill stores and
  loads (its register count is checked against the cubin's, so the figures describe that cubin);
- ``nvdisasm -c`` on the cubin: static SASS instruction counts (global loads and stores by access
  width, atomics, FMAs, MUFU by function, shared-memory loads and stores, barriers, the total).

Writes ``compile_report.json`` (one record per variant and target, with ``source_hash``, the
kernel's ``RegisteredKernel.source_hash()``, so a test can tell the committed report from a stale
one) and ``compile_report.md`` (a table per kernel) to ``--out-dir`` (default ``bench/results``),
prints the markdown, and exits 1
when any variant fails to compile, spills, uses local memory or requests more shared memory than
the target has; 2 when there is nothing to compile or Triton's interpreter is on.

``--sample`` compiles a bounded subset instead (``sample_jobs``: each kernel's heaviest config on
each target, its dtype alternating between fp32 and the kernel's first other dtype from one target
to the next, and each distinct tile a target's own set adds), for a quick check.

    python -m tools.compile_report [--out-dir DIR] [--targets 80,90,100,120] [--op NAME ...]
                                   [--jobs N] [--sample]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "bench" / "results"
REPORT_NAME = "compile_report"
# The architectures the report and the AOT library compile for: A100 (sm_80 serves 8.x), H100/H200
# (sm_90a), B200 (sm_100a) and the RTX 50 series (sm_120a). Triton names 9.0 and later with the
# "a" suffix (arch-specific features), so each of those cubins runs on that compute capability only.
DEFAULT_TARGETS = (80, 90, 100, 120)

# Largest dynamic shared memory one block may request (cudaDevAttrMaxSharedMemoryPerBlockOptin),
# by compute capability (CUDA programming guide, compute capabilities table: 163 KB on 8.0, 99 KB
# on 8.6/8.9/12.0, 227 KB on 9.0/10.0); Triton refuses to launch a kernel whose metadata asks for
# more.
MAX_SHARED_BYTES = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}

# ---------------------------------------------------------------------------------------------
# Registry entry -> triton.compile
# ---------------------------------------------------------------------------------------------


def ast_source(kernel, signature: Mapping[str, str], config) -> ASTSource:
    """The ``ASTSource`` for one kernel variant.

    ``signature`` maps argument names to types in ``triton.tools.compile``'s notation
    (``"*fp32:16"`` is a pointer divisible by 16, which becomes a ``tt.divisibility`` attribute);
    ``config`` is a ``LaunchConfig`` whose ``constexprs`` give every ``tl.constexpr`` argument
    without a default.
    """
    name = kernel.__name__
    unknown = (set(signature) | set(config.constexprs)) - set(kernel.arg_names)
    if unknown:
        raise ValueError(f"{name}: {sorted(unknown)} are not arguments of the kernel "
                         f"({', '.join(kernel.arg_names)})")
    types: Dict[str, str] = {}
    constexprs: Dict[str, Any] = {}
    attrs: Dict[tuple, list] = {}
    for index, (arg, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        declared = signature.get(arg)
        if arg in config.constexprs:
            if declared not in (None, "constexpr"):
                raise ValueError(f"{name}: argument {arg} has type {declared!r} in the signature "
                                 f"and a constexpr value in config {config.label()}")
            types[arg] = "constexpr"
            constexprs[arg] = config.constexprs[arg]
        elif declared not in (None, "constexpr"):
            arg_type, _, hint = declared.partition(":")
            if hint == "16":
                attrs[(index,)] = [["tt.divisibility", 16]]
            elif hint:
                raise ValueError(f"{name}: argument {arg} has hint ':{hint}' in {declared!r}; "
                                 "only ':16' (divisible by 16) is supported")
            types[arg] = arg_type
        elif param.is_constexpr and param.has_default:
            types[arg] = "constexpr"
            constexprs[arg] = param.default
        else:
            raise ValueError(f"{name}: argument {arg} has no type in the signature and no value "
                             f"in config {config.label()}")
    return ASTSource(fn=kernel, signature=types, constexprs=constexprs, attrs=attrs)


def compile_variant(kernel, signature: Mapping[str, str], config, capability: int):
    """Compile one variant for ``sm_<capability>``; returns Triton's ``CompiledKernel``. Options
    as every launcher passes them: its warps and stages, and floating-point fusion on (explicit,
    so the binary does not follow Triton's default, which version 3.10 flips), and the config's
    register limit (``maxnreg``) where it sets one."""
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages,
               "enable_fp_fusion": True}
    if config.maxnreg is not None:
        options["maxnreg"] = config.maxnreg
    return triton.compile(ast_source(kernel, signature, config),
                          target=GPUTarget("cuda", capability, 32), options=options)


# ---------------------------------------------------------------------------------------------
# Reading the binary
# ---------------------------------------------------------------------------------------------

# An instruction line of `nvdisasm -c`: "/*0220*/  @!P6 LDG.E.64 R10, desc[UR8][R4.64+0x8] ;"
_SASS_INSTRUCTION = re.compile(
    r"^\s*/\*[0-9a-fA-F]+\*/\s+(?:@!?U?P(?:T|\d+)\s+)?"
    r"(?P<opcode>[A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)(?P<operands>[^;]*)")
# Access width in bits of a load or store, by modifier; no width modifier means 32 bits.
_WIDTH_MODIFIERS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128, "256": 256}
_FMA_OPCODES = {"FFMA", "FFMA2", "FFMA32I", "HFMA2", "HFMA2_32I", "DFMA"}
_ATOMIC_OPCODES = {"ATOM", "ATOMG", "ATOMS", "RED", "REDG"}
_SHARED_LOAD_OPCODES = {"LDS", "LDSM"}
_SHARED_STORE_OPCODES = {"STS", "STSM"}


def _access_width(modifiers: Sequence[str]) -> str:
    for modifier in modifiers:
        if modifier in _WIDTH_MODIFIERS:
            return str(_WIDTH_MODIFIERS[modifier])
    return "32"


def _multiplies_by_zero(operands: str) -> bool:
    """True for an FMA whose multiplicand is the zero register: ptxas's register-move idiom
    (``HFMA2.MMA R4, -RZ, RZ, 0, 0``), not arithmetic."""
    factors = [op.strip().lstrip("-|") for op in operands.split(",")[1:3]]
    return "RZ" in factors


def count_sass(sass: str) -> Dict[str, Any]:
    """Static instruction counts of ``nvdisasm -c`` output.

    Returns ``total`` (instructions other than NOP), ``ldg``/``stg``/``ldgsts`` (global loads,
    global stores, global-to-shared async copies: {access width in bits: count}), ``lds``/``sts``
    (shared-memory loads and stores, ldmatrix/stmatrix included), ``atomics`` and ``fma``
    ({opcode: count}; an FMA by the zero register is a move, not counted), ``mufu`` ({function:
    count}, e.g. ``EX2``), ``bar`` (barriers) and ``opcodes`` ({opcode without modifiers: count}
    for every instruction).
    """
    opcodes: Counter = Counter()
    by_width = {"ldg": Counter(), "stg": Counter(), "ldgsts": Counter()}
    mufu: Counter = Counter()
    fma: Counter = Counter()
    for line in sass.splitlines():
        match = _SASS_INSTRUCTION.match(line)
        if not match:
            continue
        base, *modifiers = match.group("opcode").split(".")
        opcodes[base] += 1
        if base.lower() in by_width:
            by_width[base.lower()][_access_width(modifiers)] += 1
        elif base == "MUFU" and modifiers:
            mufu[modifiers[0]] += 1
        elif base in _FMA_OPCODES and not _multiplies_by_zero(match.group("operands")):
            fma[base] += 1

    def total_of(names: Iterable[str]) -> int:
        return sum(opcodes[n] for n in names)

    return {
        "total": sum(opcodes.values()) - opcodes["NOP"],
        **{kind: dict(counts) for kind, counts in by_width.items()},
        "lds": total_of(_SHARED_LOAD_OPCODES),
        "sts": total_of(_SHARED_STORE_OPCODES),
        "atomics": {n: opcodes[n] for n in sorted(_ATOMIC_OPCODES) if opcodes[n]},
        "fma": dict(sorted(fma.items())),
        "mufu": dict(sorted(mufu.items())),
        "bar": opcodes["BAR"],
        "opcodes": dict(sorted(opcodes.items())),
    }


def parse_resource_usage(text: str, function: str) -> Dict[str, int]:
    """Registers, static shared, local and stack bytes of ``function`` from
    ``cuobjdump --dump-resource-usage``."""
    match = re.search(rf"^\s*Function {re.escape(function)}:\s*\n(?P<usage>[^\n]*)", text,
                      re.MULTILINE)
    if not match:
        raise RuntimeError(f"cuobjdump reports no function {function}:\n{text}")
    usage = dict(re.findall(r"([A-Z_]+):(\d+)", match.group("usage")))
    missing = {"REG", "SHARED", "LOCAL", "STACK"} - set(usage)
    if missing:
        raise RuntimeError(f"cuobjdump resource usage of {function} lacks {sorted(missing)}: "
                           f"{match.group('usage')}")
    return {"regs": int(usage["REG"]), "shared_static": int(usage["SHARED"]),
            "local": int(usage["LOCAL"]), "stack": int(usage["STACK"])}


def parse_ptxas_log(text: str, function: str) -> Dict[str, int]:
    """Spill stores and loads (bytes, summed over every function) and the registers of
    ``function`` from ``ptxas -v``."""
    spills = re.findall(
        r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    regs = re.search(rf"Function properties for {re.escape(function)}\n.*?Used (\d+) registers",
                     text, re.DOTALL)
    if not spills or not regs:
        raise RuntimeError(f"ptxas -v printed no spill or register figures for {function}:\n{text}")
    return {"spill_stores": sum(int(s[1]) for s in spills),
            "spill_loads": sum(int(s[2]) for s in spills),
            "ptxas_regs": int(regs.group(1))}


def _run_tool(command: Sequence[str]) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} exited with {done.returncode}:\n"
                           f"{done.stderr or done.stdout}")
    return done


def ptxas_command(metadata, capability: int, ptx: Path, cubin: Path) -> List[str]:
    """``ptxas -v`` as Triton's NVIDIA backend runs it: same binary for the arch, same options
    that affect code generation (fused multiply-add, register allocation, extra ptxas options)."""
    command = [get_ptxas(capability).path, "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(capability)}"]
    if not metadata.enable_fp_fusion:
        command.append("--fmad=false")
    if metadata.ptx_options:
        command += metadata.ptx_options.split()
    return command + [str(ptx), "-o", str(cubin)]


def analyze(compiled, capability: int) -> Dict[str, Any]:
    """Resource figures and SASS counts of one ``CompiledKernel``."""
    name = compiled.metadata.name
    with tempfile.TemporaryDirectory(prefix="compile_report_") as tmp:
        cubin = Path(tmp, f"{name}.cubin")
        ptx = Path(tmp, f"{name}.ptx")
        cubin.write_bytes(compiled.asm["cubin"])
        ptx.write_text(compiled.asm["ptx"])
        usage = _run_tool([triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage", cubin])
        resources = parse_resource_usage(usage.stdout, name)
        ptxas = _run_tool(ptxas_command(compiled.metadata, capability, ptx, Path(tmp, "v.cubin")))
        spills = parse_ptxas_log(ptxas.stdout + ptxas.stderr, name)
        # -ndf: no dataflow analysis, which only annotates the listing and takes most of the time.
        sass = count_sass(
            _run_tool([triton.knobs.nvidia.nvdisasm.path, "-c", "-ndf", cubin]).stdout)
    if spills["ptxas_regs"] != resources["regs"]:
        raise RuntimeError(f"ptxas -v reports {spills['ptxas_regs']} registers but the cubin uses "
                           f"{resources['regs']}: its spill figures would not describe this cubin")
    return {**resources, "shared": compiled.metadata.shared,
            "spill_stores": spills["spill_stores"], "spill_loads": spills["spill_loads"],
            "sass": sass}


def problems_of(record: Mapping[str, Any], capability: int) -> List[str]:
    """What makes a compiled variant unfit to launch, or slow: spills, local memory, too much
    shared memory."""
    problems = []
    if record["spill_stores"] or record["spill_loads"]:
        problems.append(f"spills {record['spill_stores']} B stored / "
                        f"{record['spill_loads']} B loaded")
    if record["local"] or record["stack"]:
        problems.append(f"local memory {record['local']} B, stack {record['stack']} B")
    if record["shared"] > MAX_SHARED_BYTES[capability]:
        problems.append(f"shared memory {record['shared']} B > {MAX_SHARED_BYTES[capability]} B "
                        f"available on {sm_arch_from_capability(capability)}")
    return problems


# ---------------------------------------------------------------------------------------------
# Running every variant
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One variant of one registry entry for one target, by index (cheap to send to a worker)."""

    entry_index: int
    variant_index: int  # into the entry's ``variants(capability)``
    capability: int


def _registry():
    from kernels import registered_kernels  # importing kernels registers every op's kernels

    return registered_kernels()


def job_variant(job: Job):
    """(registry entry, dtype label, signature, config) of a job."""
    entry = _registry()[job.entry_index]
    return (entry, *list(entry.variants(job.capability))[job.variant_index])


def _base_record(job: Job) -> Dict[str, Any]:
    entry, dtype, _, config = job_variant(job)
    return {"op": entry.op, "kernel": entry.name, "dtype": dtype, "config": config.label(),
            "constexprs": dict(config.constexprs), "num_warps": config.num_warps,
            "num_stages": config.num_stages, "maxnreg": config.maxnreg,
            "target": sm_arch_from_capability(job.capability),
            "source_hash": entry.source_hash()}


def _failed(record: Dict[str, Any], stage: str, exc: BaseException) -> Dict[str, Any]:
    return {**record, "ok": False, "problems": [f"{stage} failed"],
            "error": f"{type(exc).__name__}: {exc}"}


def _short_error(error: str) -> str:
    """First and last lines of an error: a Triton CompilationError starts with the location and
    ends with the message; a tool's failure starts with its exit status."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"


def run_job(job: Job) -> Dict[str, Any]:
    """Compile and analyze one job; a failure becomes a record with ``ok`` false and ``error``."""
    entry, _, signature, config = job_variant(job)
    record = _base_record(job)
    # A report of failures, not a crash: every variant gets a record.
    try:
        compiled = compile_variant(entry.kernel, signature, config, job.capability)
    except Exception as exc:
        return _failed(record, "compile", exc)
    try:
        record.update(analyze(compiled, job.capability))
    except Exception as exc:
        return _failed(record, "analysis", exc)
    problems = problems_of(record, job.capability)
    return {**record, "ok": not problems, "problems": problems, "error": None}


def jobs_for(entry_indices: Iterable[int], capabilities: Sequence[int]) -> List[Job]:
    """Every variant of each entry for each target (the target's own configs), entry-major."""
    registry = _registry()
    return [Job(i, v, cap) for i in entry_indices for cap in capabilities
            for v in range(sum(1 for _ in registry[i].variants(cap)))]




def _weight(config) -> tuple:
    """How heavy a config is on registers: tile elements per thread (the product of its integer
    constexprs over its threads), then the tile itself."""
    tile = 1
    for value in config.constexprs.values():
        if isinstance(value, int) and not isinstance(value, bool):
            tile *= value
    return (tile / (32 * config.num_warps), tile)


def sample_jobs(entry_indices: Iterable[int], capabilities: Sequence[int]) -> List[Job]:
    """A bounded subset of ``jobs_for`` meant to catch a regression quickly (about a twentieth):
    for each entry and target, the heaviest config (``_weight``) of one dtype, the entry's first
    (fp32 where it has it) on the first, third... target and its second (fp16, or a mixed pair)
    on the others, so each kernel is compiled in both kinds and each target sees both; and every
    distinct (constexprs, warps) that a target's own set has and the default set lacks, once,
    with that dtype."""
    registry = _registry()
    jobs = []
    for i in entry_indices:
        entry = registry[i]
        default = {(tuple(sorted(c.constexprs.items())), c.num_warps) for c in entry.configs}
        for position, cap in enumerate(capabilities):
            variants = list(entry.variants(cap))
            labels = list(dict.fromkeys(label for label, _, _ in variants))
            label = labels[min(position % 2, len(labels) - 1)]
            chosen = [v for v, (dtype, _, _) in enumerate(variants) if dtype == label]
            heaviest = max(chosen, key=lambda v: _weight(variants[v][2]))
            own: Dict[Any, int] = {}
            for v in chosen:
                config = variants[v][2]
                shape = (tuple(sorted(config.constexprs.items())), config.num_warps)
                if shape not in default:
                    own.setdefault(shape, v)
            jobs += [Job(i, v, cap) for v in sorted({heaviest, *own.values()})]
    return jobs


def _progress_line(done: int, total: int, record: Mapping[str, Any]) -> str:
    what = (f"{record['regs']} regs, {record['shared']} B smem, {record['sass']['total']} SASS"
            if "sass" in record else _short_error(record["error"]))
    flag = "" if record["ok"] else "  <-- " + "; ".join(record["problems"])
    return (f"[{done}/{total}] {record['op']}/{record['kernel']} {record['dtype']} "
            f"{record['config']} {record['target']}: {what}{flag}")


def map_forked(fn, jobs: Sequence[Any], workers: int, on_worker_death, progress) -> List[Any]:
    """``fn(job)`` for every job, results in job order, on ``workers`` forked processes (they
    share the parent's kernel registry) or in-process when ``workers`` <= 1. A worker that dies
    gives ``on_worker_death(job, exc)`` as its result; ``progress(done, result)`` runs as each
    job finishes."""
    results: List[Any] = [None] * len(jobs)
    if workers <= 1:
        for index, job in enumerate(jobs):
            results[index] = fn(job)
            progress(index + 1, results[index])
        return results
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(fn, job): index for index, job in enumerate(jobs)}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            index = futures[future]
            try:
                results[index] = future.result()
            except Exception as exc:  # the worker process itself died
                results[index] = on_worker_death(jobs[index], exc)
            progress(done, results[index])
    return results


def run_jobs(jobs: Sequence[Job], workers: int) -> List[Dict[str, Any]]:
    """Records of every job, in job order; progress to stderr as jobs finish."""
    return map_forked(
        run_job, jobs, workers,
        on_worker_death=lambda job, exc: _failed(_base_record(job), "worker", exc),
        progress=lambda done, record: print(_progress_line(done, len(jobs), record),
                                            file=sys.stderr, flush=True))


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _widths(counts: Mapping[str, int]) -> str:
    by_width = sorted(counts.items(), key=lambda width_count: -int(width_count[0]))
    return " ".join(f"{n}×{width}b" for width, n in by_width) or "0"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_line(records: Sequence[Mapping[str, Any]]) -> str:
    compiled = [r for r in records if "sass" in r]
    kernel_count = len({(r["op"], r["kernel"]) for r in records})
    targets = ", ".join(dict.fromkeys(r["target"] for r in records))
    spilling = sum(1 for r in compiled if r["spill_stores"] or r["spill_loads"])
    local = sum(1 for r in compiled if r["local"] or r["stack"])
    not_ok = sum(1 for r in records if not r["ok"])
    line = (f"{len(compiled)}/{len(records)} variants of {kernel_count} kernels compiled for "
            f"{targets}: {len(records) - len(compiled)} failed, {spilling} spill, {local} use "
            f"local memory, {not_ok} not ok")
    if compiled:
        most = max(compiled, key=lambda r: r["regs"])
        line += (f"; most registers {most['regs']} ({most['kernel']} {most['dtype']} "
                 f"{most['config']} {most['target']})")
    return line


_COLUMNS = ("dtype", "config", "target", "regs", "smem", "local", "spills", "LDG", "STG",
            "atomics", "FFMA", "MUFU", "SASS", "check")
_LEGEND = (
    "regs: registers per thread. smem: dynamic shared memory a launch requests, bytes (the static "
    "shared memory cuobjdump reports is in the JSON). local: local memory / stack per thread, "
    "bytes. spills: ptxas spill stores / loads, bytes. LDG, STG: global load and store "
    "instructions, count × access width. atomics: atomic and reduction instructions. FFMA: fp32 "
    "fused multiply-add instructions (FFMA2 on sm_100 included). MUFU: special-function "
    "instructions by function. SASS: every instruction but NOP. Instruction counts are static "
    "(in the binary), not executed.")


def _row(record: Mapping[str, Any]) -> List[Any]:
    if "sass" not in record:
        cells = ["—"] * (len(_COLUMNS) - 4)
    else:
        sass = record["sass"]
        cells = [record["regs"], record["shared"], f"{record['local']}/{record['stack']}",
                 f"{record['spill_stores']}/{record['spill_loads']}", _widths(sass["ldg"]),
                 _widths(sass["stg"]), sum(sass["atomics"].values()),
                 sass["fma"].get("FFMA", 0) + sass["fma"].get("FFMA2", 0),
                 " ".join(f"{f}×{n}" for f, n in sass["mufu"].items()) or "0", sass["total"]]
    check = "ok" if record["ok"] else "; ".join(record["problems"])
    return [record["dtype"], record["config"], record["target"], *cells, check]


def render_markdown(records: Sequence[Mapping[str, Any]], header: Mapping[str, str]) -> str:
    lines = ["# Triton compile report", "",
             f"Generated by `python -m tools.compile_report` on {header['date']}, host "
             f"`{header['host']}`; Triton {header['triton']}, {header['ptxas']}.", "", _LEGEND]
    groups: Dict[tuple, List[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["op"], record["kernel"]), []).append(record)
    numeric = {"regs", "smem", "local", "spills", "atomics", "FFMA", "SASS"}
    for (op, kernel), rows in groups.items():
        lines += ["", f"## {op} / `{kernel}`", "", "| " + " | ".join(_COLUMNS) + " |",
                  "| " + " | ".join("---:" if c in numeric else "---" for c in _COLUMNS) + " |"]
        lines += ["| " + " | ".join(_cell(c) for c in _row(r)) + " |" for r in rows]
        errors = [r for r in rows if r["error"]]
        if errors:
            lines.append("")
            lines += [f"- {r['dtype']} {r['config']} {r['target']}: "
                      f"`{_cell(_short_error(r['error']))}`" for r in errors]
    lines += ["", "**Summary:** " + summary_line(records), ""]
    return "\n".join(lines)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False, encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(handle.name, 0o644)  # a results file, kept in git: not the temp file's 0600
    os.replace(handle.name, path)


def report_header(capabilities: Sequence[int]) -> Dict[str, str]:
    ptxas = ", ".join(f"ptxas {get_ptxas(cap).version} for {sm_arch_from_capability(cap)}"
                      for cap in capabilities)
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": f"{platform.node()} ({platform.platform()})", "triton": triton.__version__,
            "ptxas": ptxas}


def write_report(records: Sequence[Mapping[str, Any]], out_dir: Path,
                 capabilities: Sequence[int]) -> str:
    """Write the JSON and markdown reports into ``out_dir``; returns the markdown."""
    markdown = render_markdown(records, report_header(capabilities))
    # One record a line: compact, and a change in one variant is a one-line diff.
    lines = ",\n".join(json.dumps(record, default=str) for record in records)
    write_atomically(out_dir / f"{REPORT_NAME}.json", f"[\n{lines}\n]\n")
    write_atomically(out_dir / f"{REPORT_NAME}.md", markdown)
    return markdown


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_capabilities(text: str) -> List[int]:
    try:
        capabilities = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        capabilities = []
    if not capabilities or any(c not in MAX_SHARED_BYTES for c in capabilities):
        raise argparse.ArgumentTypeError(
            f"expected compute capabilities among {', '.join(map(str, MAX_SHARED_BYTES))}, "
            f"comma separated; got {text!r}")
    return capabilities


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.compile_report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help="where compile_report.json and .md go (default: bench/results)")
    parser.add_argument("--targets", type=parse_capabilities, default=list(DEFAULT_TARGETS),
                        help="compute capabilities, comma separated (default: "
                             f"{','.join(map(str, DEFAULT_TARGETS))})")
    parser.add_argument("--op", action="append", default=[],
                        help="only this op's kernels (repeatable; default: every op)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel compiles (default: CPU count)")
    parser.add_argument("--sample", action="store_true",
                        help="compile a bounded sample (each kernel's heaviest config on each "
                             "target, fp32 and another dtype in turn, and the tiles a target's "
                             "own set adds), not every variant")
    return parser.parse_args(argv)


def _fail(message: str) -> int:
    print(f"compile_report: {message}", file=sys.stderr)
    return 2


def interpreter_error(module: str) -> str | None:
    """Why ``python -m module`` cannot compile kernels here, or None when it can."""
    if triton.knobs.runtime.interpret:
        return ("TRITON_INTERPRET is on, so @triton.jit gives interpreted functions, which "
                f"cannot be compiled. Run without it: env -u TRITON_INTERPRET python -m {module}")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    error = interpreter_error("tools.compile_report")
    if error:
        return _fail(error)
    registry = _registry()
    if not registry:
        return _fail("no kernel is registered (kernels.registered_kernels() is empty)")
    ops = {entry.op for entry in registry}
    unknown = sorted(set(args.op) - ops)
    if unknown:
        return _fail(f"no registered kernel belongs to op {', '.join(unknown)}; the ops are "
                     f"{', '.join(sorted(ops))}")
    selected = [i for i, entry in enumerate(registry) if not args.op or entry.op in args.op]
    jobs = (sample_jobs if args.sample else jobs_for)(selected, args.targets)
    workers = max(1, min(args.jobs, len(jobs)))
    print(f"compile_report: {len(jobs)} compiles ({len(selected)} kernels, "
          f"{'a sample of the variants' if args.sample else 'every variant'}, "
          f"{len(args.targets)} targets) on {workers} workers", file=sys.stderr)
    records = run_jobs(jobs, workers)
    print(write_report(records, args.out_dir, args.targets))
    bad = [r for r in records if not r["ok"]]
    for r in bad:
        error = f" ({_short_error(r['error'])})" if r["error"] else ""
        print(f"NOT OK: {r['op']}/{r['kernel']} {r['dtype']} {r['config']} {r['target']}: "
              f"{'; '.join(r['problems'])}{error}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
