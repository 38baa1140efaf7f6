"""Ahead-of-time kernel library: the forward Triton kernels of the 3-D warp and its neighbours as
plain C, callable without Python (from C/C++ or a TensorRT plugin); no GPU needed to generate.

For each of four ops (``grid_sample_3d``, ``region_softmax_warp``, ``deviation_adanorm``,
``selective_scan``) the forward kernel's registry entry (``kernels/_registry.py``) gives every
(dtype, launch config) its Python launcher can pick; each is compiled with the compile report's
``compile_variant`` for sm_80, sm_90a, sm_100a and sm_120a (each target's own config set where
the registry gives one: the same tiles and warps, so one C variant table serves every target),
checked (one kernel entry, the PTX parameters match the
signature, no scratch memory, no clusters), and written to ``--out-dir`` as:

- ``mim_kernels.h``: the public C header (extern "C"), one ``mim_<op>_fwd`` launcher per op;
- ``mim_<op>_fwd.c``: the op's cubins as byte arrays (every target), its variant table and its
  launcher, which validates the sizes, picks the launch configuration and grid as the Python
  launcher does, and passes the arguments in the kernel's order;
- ``mim_kernels_runtime.c`` and ``mim_kernels_internal.h`` (copied from ``csrc/aot/``): the CUDA
  driver shim (dlopen of libcuda.so.1), the per-context module cache and the launch;
- ``mim_kernels_build.h`` (the version string) and ``mim_kernels_manifest.json`` (every variant,
  its cubins' sizes and sha256).

A file whose content did not change is not rewritten. Exit status 1 when a variant fails to
compile or check, 2 on bad arguments or when Triton's interpreter is on. See docs/aot.md.

    python -m tools.aot [--out-dir DIR] [--targets 80,90,100,120] [--dtypes fp32,fp16,bf16]
                        [--op NAME ...] [--jobs N]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import triton
from triton.backends.nvidia.compiler import sm_arch_from_capability

from kernels import OPS as KERNEL_OPS  # importing kernels registers every op's kernels
from kernels import registered_kernels
from kernels.aot_spec import AotOp
from tools.compile_report import (DEFAULT_TARGETS, Job, compile_variant, interpreter_error,
                                  job_variant, jobs_for, map_forked, parse_capabilities,
                                  write_atomically)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "build" / "aot"
STATIC_DIR = REPO_ROOT / "csrc" / "aot"
STATIC_FILES = ("mim_kernels_internal.h", "mim_kernels_runtime.c")
API_VERSION = 1

# Compute capability -> cubin slot in the C tables (MIM__TARGET_* in mim_kernels_internal.h).
TARGET_SLOTS = {80: 0, 90: 1, 100: 2, 120: 3}
# Registry dtype -> mim_dtype enumerator, in the enum's order.
DTYPES = {"fp32": "MIM_FLOAT32", "fp16": "MIM_FLOAT16", "bf16": "MIM_BFLOAT16"}
# Registry argument type -> (C type of the launch parameter, PTX parameter type).
SCALAR_TYPES = {"i32": ("int32_t", ".u32"), "i64": ("int64_t", ".u64"), "fp32": ("float", ".f32")}
POINTER_TYPE = ("uint64_t", ".u64")
# Triton 3.x appends two pointers to every kernel: global and profile scratch (both unused here).
SCRATCH_PARAMS = ("global_scratch", "profile_scratch")


# Ops with a forward kernel in the C library, in ``kernels.OPS``'s order (the header's): each op
# folder's aot.py holds its spec, AOT_OP, None for the ops the library leaves out.
OPS: Tuple[AotOp, ...] = tuple(
    spec for spec in (importlib.import_module(f"kernels.{name}.aot").AOT_OP for name in KERNEL_OPS)
    if spec is not None)
OP_NAMES = tuple(op.op for op in OPS)
GENERATED_FILES = ("mim_kernels.h", "mim_kernels_build.h", *STATIC_FILES,
                   *(op.source_name for op in OPS), "mim_kernels_manifest.json")

# ---------------------------------------------------------------------------------------------
# The kernels' arguments
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelArg:
    name: str
    type: str          # registry type: "*fp32", "i32", "fp32", ... ("{dtype}" substituted)
    divisible_16: bool

    @property
    def is_pointer(self) -> bool:
        return self.type.startswith("*")

    @property
    def c_type(self) -> str:
        return POINTER_TYPE[0] if self.is_pointer else SCALAR_TYPES[self.type][0]

    @property
    def ptx_type(self) -> str:
        return POINTER_TYPE[1] if self.is_pointer else SCALAR_TYPES[self.type][1]


def constexpr_names(entry) -> List[str]:
    """The constexprs every launch config of ``entry`` sets, in the kernel's argument order."""
    keys = {frozenset(c.constexprs) for c in entry.configs}
    if len(keys) != 1:
        raise RuntimeError(f"{entry.name}: launch configs set different constexprs {keys}")
    (names,) = keys
    return [a for a in entry.kernel.arg_names if a in names]


def runtime_args(entry, signature: Mapping[str, str]) -> List[KernelArg]:
    """The kernel's arguments a launch passes, in order: those with a type in the signature that
    no config makes a constexpr (what ``ast_source`` compiles as parameters)."""
    constexprs = set(constexpr_names(entry))
    args = []
    for name in entry.kernel.arg_names:
        declared = signature.get(name)
        if declared in (None, "constexpr") or name in constexprs:
            continue
        arg_type, _, hint = declared.partition(":")
        if not arg_type.startswith("*") and arg_type not in SCALAR_TYPES:
            raise RuntimeError(f"{entry.name}: argument {name} has type {arg_type}, which the "
                               f"C launchers do not pass (known: pointers, "
                               f"{', '.join(SCALAR_TYPES)})")
        args.append(KernelArg(name, arg_type, hint == "16"))
    return args


def ptx_param_types(ptx: str, name: str) -> List[str]:
    """The parameter types of entry ``name`` in Triton's PTX (``.u64``, ``.u32``, ``.f32``...)."""
    entries = re.findall(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, re.DOTALL)
    if [e[0] for e in entries] != [name]:
        raise RuntimeError(f"expected one PTX entry {name}, found {[e[0] for e in entries]}")
    return re.findall(r"\.param\s+(\.\w+)", entries[0][1])


# ---------------------------------------------------------------------------------------------
# Compiling
# ---------------------------------------------------------------------------------------------


def _registry():
    return registered_kernels()


def compile_job(job: Job) -> Dict[str, Any]:
    """Compile one variant for one target and check it can be launched by the C runtime; the
    result holds the cubin, or ``error``."""
    entry, dtype, signature, config = job_variant(job)
    result: Dict[str, Any] = {"job": job, "dtype": dtype, "error": None}
    try:
        compiled = compile_variant(entry.kernel, signature, config, job.capability)
        meta = compiled.metadata
        expected = [a.ptx_type for a in runtime_args(entry, signature)] + \
            [POINTER_TYPE[1]] * len(SCRATCH_PARAMS)
        found = ptx_param_types(compiled.asm["ptx"], entry.name)
        problems = []
        if found != expected:
            problems.append(f"PTX parameters {found}, the C launcher passes {expected}")
        if meta.name != entry.name:
            problems.append(f"kernel symbol {meta.name}, expected {entry.name}")
        if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
            problems.append("needs global or profile scratch memory")
        if getattr(meta, "num_ctas", 1) != 1 or getattr(meta, "launch_cooperative_grid", False) \
                or getattr(meta, "launch_pdl", False) or getattr(meta, "tmem_size", 0):
            problems.append("needs clusters, a cooperative launch, PDL or tensor memory")
        if meta.num_warps != config.num_warps:
            problems.append(f"compiled for {meta.num_warps} warps, config says {config.num_warps}")
        if problems:
            raise RuntimeError("; ".join(problems))
        result.update(cubin=bytes(compiled.asm["cubin"]), shared=int(meta.shared),
                      num_warps=int(meta.num_warps))
    except Exception as exc:  # reported per variant
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


def compile_all(jobs: Sequence[Job], workers: int) -> List[Dict[str, Any]]:
    """Results of every job, in job order; progress on stderr. Workers are forked (they share
    the parent's kernel registry), as in the compile report."""
    def progress(done: int, result: Mapping[str, Any]) -> None:
        entry = _registry()[result["job"].entry_index]
        what = result["error"] or f"{len(result['cubin'])} bytes"
        print(f"[{done}/{len(jobs)}] {entry.name} {result['dtype']} variant "
              f"{result['job'].variant_index} {sm_arch_from_capability(result['job'].capability)}:"
              f" {what}", file=sys.stderr, flush=True)

    return map_forked(compile_job, jobs, workers,
                      on_worker_death=lambda job, exc: {"job": job, "dtype": "?",
                                                        "error": f"worker: {type(exc).__name__}: {exc}"},
                      progress=progress)


# ---------------------------------------------------------------------------------------------
# Writing C
# ---------------------------------------------------------------------------------------------

HEADER = """\
/* mim_kernels.h: C API of the mim-engine AOT kernel library.
 *
 * Generated by `python -m tools.aot` from the Triton kernels in kernels/ (Triton $TRITON); do
 * not edit. Build and usage: docs/aot.md.
 *
 * The forward kernels of four ops, compiled ahead of time for sm_80 (serves every compute
 * capability 8.x), sm_90a (9.0: H100, H200), sm_100a (10.0: B200) and sm_120a (12.0: RTX 50
 * series), embedded as cubins and launched with the CUDA
 * driver API. The driver is opened at run time (dlopen "libcuda.so.1", or the file named by
 * $$MIM_KERNELS_LIBCUDA), so the library links against nothing but libc/libdl.
 *
 * Every launcher:
 * - takes device pointers to contiguous row-major (C-order) tensors of the documented shapes
 *   (the kernels index them densely; the Python ops make their inputs contiguous first). A
 *   pointer marked [16] must be 16-byte aligned (cudaMalloc returns 256-byte aligned memory);
 *   {dtype} marks tensors of the element type `dtype`, the others are float32;
 * - picks the launch configuration and grid exactly as the op's Python launcher does (each
 *   function's comment says how) and enqueues one kernel on `stream` (a CUstream or
 *   cudaStream_t; NULL is the legacy default stream) in the calling thread's current CUDA
 *   context, without synchronizing;
 * - loads a variant's module into the current context on its first call there (make one call
 *   before capturing a CUDA graph);
 * - returns MIM_SUCCESS, or an error whose detail mim_kernels_last_error() gives. An empty
 *   output launches nothing and returns MIM_SUCCESS.
 */
#ifndef MIM_KERNELS_H
#define MIM_KERNELS_H

#include <stdint.h>

#if defined(MIM_KERNELS_BUILDING) && defined(__GNUC__)
#define MIM_KERNELS_API __attribute__((visibility("default")))
#else
#define MIM_KERNELS_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define MIM_KERNELS_API_VERSION $API_VERSION
/* selective_scan's checkpoints hold the state every MIM_SELECTIVE_SCAN_CHUNK steps. */
#define MIM_SELECTIVE_SCAN_CHUNK $T_CHUNK

/* CUstream (driver API) and cudaStream_t (runtime API) both point to this type. */
struct CUstream_st;

typedef enum mim_status {
  MIM_SUCCESS = 0,
  MIM_ERROR_NO_DRIVER = 1,          /* libcuda.so.1 cannot be loaded, or lacks an entry point */
  MIM_ERROR_DRIVER_INIT = 2,        /* cuInit failed: no device, or a driver/GPU problem */
  MIM_ERROR_NO_CONTEXT = 3,         /* no current CUDA context on the calling thread */
  MIM_ERROR_UNSUPPORTED_DEVICE = 4, /* compute capability without a cubin (8.x, 9.0, 10.0 and
                                       12.0 have one), or too little shared memory */
  MIM_ERROR_INVALID_ARGUMENT = 5,   /* bad enum, negative size, NULL pointer, shape contract */
  MIM_ERROR_MISALIGNED = 6,         /* a [16] pointer is not 16-byte aligned */
  MIM_ERROR_UNSUPPORTED = 7,        /* valid input the compiled kernels do not cover: sizes
                                       beyond int32, G not a multiple of 16, N > 64, ... */
  MIM_ERROR_NOT_COMPILED = 8,       /* dtype or target left out when the library was generated */
  MIM_ERROR_CUDA = 9,               /* a driver call (module load, launch) failed */
  MIM_ERROR_OUT_OF_HOST_MEMORY = 10
} mim_status;

typedef enum mim_dtype { MIM_FLOAT32 = 0, MIM_FLOAT16 = 1, MIM_BFLOAT16 = 2 } mim_dtype;

typedef enum mim_padding { MIM_PADDING_ZEROS = 0, MIM_PADDING_BORDER = 1 } mim_padding;

/* Loads the CUDA driver and calls cuInit(0), once; the launchers do it on first use.
 * MIM_ERROR_NO_DRIVER when libcuda.so.1 cannot be loaded, MIM_ERROR_DRIVER_INIT when cuInit
 * fails (e.g. no GPU). Thread-safe. */
MIM_KERNELS_API mim_status mim_kernels_init(void);

/* "mim_kernels <API version> (Triton version; targets; dtypes; cubins and their hash)". */
MIM_KERNELS_API const char *mim_kernels_version(void);

/* A static description of `status`. */
MIM_KERNELS_API const char *mim_kernels_strerror(mim_status status);

/* The detail of the last failed call on the calling thread ("" before any failure). */
MIM_KERNELS_API const char *mim_kernels_last_error(void);

/* Unloads the modules this library loaded into the current context and forgets the context:
 * call it before destroying a context when the process goes on using the library. */
MIM_KERNELS_API mim_status mim_kernels_release_context(void);

$DECLARATIONS
#ifdef __cplusplus
}
#endif

#endif /* MIM_KERNELS_H */
"""


def _comment(text: str) -> str:
    lines = text.splitlines()
    return "\n".join(["/* " + lines[0]] + [(" * " + line).rstrip() for line in lines[1:]]) + " */"


def _prototype(op: AotOp, prefix: str) -> str:
    """``prefix`` + ``mim_status <function>(<params>)``, wrapped at 100 columns with the
    parameters aligned after the parenthesis."""
    head = f"{prefix}mim_status {op.function}("
    parts = [f"{ctype}{'' if ctype.endswith('*') else ' '}{name}" for ctype, name in op.params]
    lines, line = [], head
    for i, part in enumerate(parts):
        piece = part + ("," if i < len(parts) - 1 else ")")
        if len(line) + len(piece) > 99 and line != head:
            lines.append(line.rstrip())
            line = " " * len(head)
        line += piece + " "
    lines.append(line.rstrip())
    return "\n".join(lines)


def render_header(constants: Mapping[str, Mapping[str, Any]]) -> str:
    declarations = []
    for op in OPS:
        doc = string.Template(op.doc).substitute(constants[op.op])
        declarations.append(f"{_comment(doc)}\n{_prototype(op, 'MIM_KERNELS_API ')};\n")
    scan = constants["selective_scan"]
    return string.Template(HEADER).substitute(
        TRITON=triton.__version__, API_VERSION=API_VERSION, T_CHUNK=scan["T_CHUNK"],
        DECLARATIONS="\n".join(declarations))


def _c_string(data: bytes) -> str:
    """``data`` as C string-literal lines of 32 escaped bytes (compiles far faster than a list of
    integers)."""
    lines = []
    for start in range(0, len(data), 32):
        hexed = data[start:start + 32].hex()
        lines.append('    "\\x' + "\\x".join(hexed[i:i + 2] for i in range(0, len(hexed), 2)) + '"')
    return "\n".join(lines)


@dataclass
class Variant:
    index: int
    dtype: str
    constexprs: Dict[str, Any]
    num_warps: int
    num_stages: int
    cubins: Dict[int, Dict[str, Any]]  # capability -> {"cubin", "shared"}


def render_source(op: AotOp, entry, variants: Sequence[Variant],
                  constants: Mapping[str, Any]) -> str:
    names = constexpr_names(entry)
    signature = {k: re.sub(r"\{\w+\}", "fp32", v) for k, v in entry.signature.items()}
    args = runtime_args(entry, signature)
    if set(op.args) != {a.name for a in args}:
        raise RuntimeError(f"{op.op}: the C launcher maps {sorted(op.args)} but {entry.name} "
                           f"takes {[a.name for a in args]}")
    out = [f"/* {op.function}: {entry.name} ({op.op}'s forward kernel), ahead of time.",
           " *",
           f" * Generated by `python -m tools.aot` from {op.module} (Triton {triton.__version__});",
           " * do not edit. The launch mirrors the Python launcher "
           f"{op.python_launcher}(). */",
           "#include <stddef.h>", "#include <stdint.h>", "",
           '#include "mim_kernels_internal.h"', "",
           "enum { " + ", ".join(f"CX_{n} = {i}" for i, n in enumerate(names))
           + f", N_CONSTEXPRS = {len(names)} }};", "",
           "static const char *const k_constexpr_names[N_CONSTEXPRS] = {"
           + ", ".join(f'"{n}"' for n in names) + "};", ""]
    table = []
    for v in variants:
        cx = ", ".join(str(int(v.constexprs[n])) for n in names)
        out.append(f"/* variant {v.index}: {v.dtype}, "
                   + ", ".join(f"{n}={v.constexprs[n]}" for n in names)
                   + f", {v.num_warps} warps */")
        out.append(f"static const int64_t k_constexprs_{v.index}[N_CONSTEXPRS] = {{{cx}}};")
        slots = ["{NULL, 0, 0}"] * len(TARGET_SLOTS)
        for capability, binary in sorted(v.cubins.items()):
            symbol = f"k_cubin_{v.index}_{sm_arch_from_capability(capability)}"
            data = binary["cubin"]
            out.append(f"/* {sm_arch_from_capability(capability)}: {len(data)} bytes, "
                       f"{binary['shared']} bytes of dynamic shared memory */")
            out.append(f"static _Alignas(16) const unsigned char {symbol}[{len(data) + 1}] =")
            out.append(_c_string(data) + ";")
            slots[TARGET_SLOTS[capability]] = f"{{{symbol}, {len(data)}u, {binary['shared']}u}}"
        out.append("")
        table.append(f"    {{{DTYPES[v.dtype]}, k_constexprs_{v.index}, {v.num_warps}, "
                     f"{{{', '.join(slots)}}}}},")
    if variants:
        out += ["static const mim__variant k_variants[] = {", *table, "};", ""]
    out += ["static const mim__kernel k_kernel = {",
            f'    "{op.op}", "{entry.name}", N_CONSTEXPRS, k_constexpr_names,',
            f"    {len(variants)}, {'k_variants' if variants else 'NULL'}}};", ""]

    validate = string.Template(op.validate).substitute(constants)
    plan = string.Template(op.plan).substitute(constants)
    pointer_checks, integer_checks, values = [], [], []
    for arg in args:
        expr = op.args[arg.name]
        label = expr if expr.isidentifier() else arg.name.removesuffix("_ptr")
        if arg.is_pointer:
            pointer_checks += [
                f"    const void *ptr_{arg.name} = (const void *)({expr});",
                f"    if (ptr_{arg.name} == NULL)",
                "        return mim__fail(MIM_ERROR_INVALID_ARGUMENT, "
                f'"{op.op}: {label} is NULL");']
            if arg.divisible_16:
                pointer_checks += [
                    f"    if ((uintptr_t)ptr_{arg.name} % 16 != 0)",
                    "        return mim__fail(MIM_ERROR_MISALIGNED,",
                    f'                         "{op.op}: {label}=%p is not 16-byte aligned", '
                    f"ptr_{arg.name});"]
            values.append(f"    uint64_t arg_{arg.name} = (uint64_t)(uintptr_t)ptr_{arg.name};")
        elif arg.type == "fp32":
            values.append(f"    float arg_{arg.name} = (float)({expr});")
        else:
            integer_checks.append(f"    const int64_t value_{arg.name} = (int64_t)({expr});")
            is_flag = "!=" in expr or "==" in expr  # 0 or 1
            if arg.type == "i32" and not is_flag:
                integer_checks += [
                    f"    if (value_{arg.name} < INT32_MIN || value_{arg.name} > INT32_MAX)",
                    "        return mim__fail(MIM_ERROR_UNSUPPORTED,",
                    f'                         "{op.op}: {label}=%lld is beyond the int32 range '
                    f'the kernel takes",',
                    f"                         (long long)value_{arg.name});"]
            if arg.divisible_16:
                integer_checks += [
                    f"    if (value_{arg.name} % 16 != 0)",
                    "        return mim__fail(MIM_ERROR_UNSUPPORTED,",
                    f'                         "{op.op}: {label}=%lld is not a multiple of 16 '
                    f'(the kernel is compiled with that specialization)",',
                    f"                         (long long)value_{arg.name});"]
            values.append(f"    {arg.c_type} arg_{arg.name} = ({arg.c_type})value_{arg.name};")
    params = [f"&arg_{a.name}" for a in args] + [f"&{s}" for s in SCRATCH_PARAMS]
    out += [_prototype(op, "MIM_KERNELS_API ") + " {",
            "    int64_t constexprs[N_CONSTEXPRS];",
            "    int64_t launch_grid[3];",
            validate,
            "    /* pointer arguments: non-NULL, 16-byte aligned where the kernel assumes it */",
            *pointer_checks,
            "    /* launch configuration and grid, as the Python launcher */",
            plan,
            "    /* integer arguments: the range and divisibility the kernel was compiled for */",
            *integer_checks,
            f"    /* {entry.name}'s arguments in its order (constexprs are compiled in), then",
            "       Triton's global and profile scratch pointers (unused: 0) */",
            *values,
            "    uint64_t " + ", ".join(f"{s} = 0" for s in SCRATCH_PARAMS) + ";",
            f"    void *params[{len(params)}] = {{",
            *_wrap(", ".join(params), "        "),
            "    };",
            "    return mim__launch(&k_kernel, (int)dtype, constexprs, launch_grid, params, "
            "stream);",
            "}", ""]
    return "\n".join(out)


def _wrap(text: str, indent: str, width: int = 99) -> List[str]:
    """``text`` broken at spaces into lines of at most ``width`` columns after ``indent``."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(indent) + len(line) + 1 + len(word) > width:
            lines.append(indent + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + [indent + line] if line else lines


def write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_atomically(path, text)
    return True


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _dtypes(text: str) -> List[str]:
    dtypes = [part.strip() for part in text.split(",") if part.strip()]
    if not dtypes or any(d not in DTYPES for d in dtypes):
        raise argparse.ArgumentTypeError(f"expected dtypes among {', '.join(DTYPES)}, comma "
                                         f"separated; got {text!r}")
    return list(dict.fromkeys(dtypes))


def _targets(text: str) -> List[int]:
    capabilities = parse_capabilities(text)
    if any(c not in TARGET_SLOTS for c in capabilities):
        raise argparse.ArgumentTypeError(
            f"the C runtime holds cubins for {', '.join(map(str, TARGET_SLOTS))} "
            f"(sm_80 serves 8.x, sm_90a 9.0, sm_100a 10.0, sm_120a 12.0); got {text!r}")
    return sorted(set(capabilities))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.aot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help="where the C sources go (default: build/aot)")
    parser.add_argument("--targets", type=_targets, default=list(DEFAULT_TARGETS),
                        help="compute capabilities, comma separated (default: "
                             f"{','.join(map(str, DEFAULT_TARGETS))})")
    parser.add_argument("--dtypes", type=_dtypes, default=list(DTYPES),
                        help="tensor dtypes to compile, comma separated (default: fp32,fp16,bf16);"
                             " the launchers return MIM_ERROR_NOT_COMPILED for the others")
    parser.add_argument("--op", action="append", default=[], choices=OP_NAMES,
                        help="only this op's kernel (repeatable; default: all four); the others' "
                             "launchers are still written and return MIM_ERROR_NOT_COMPILED")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel compiles (default: CPU count)")
    return parser.parse_args(argv)


def _fail(message: str) -> int:
    print(f"aot: {message}", file=sys.stderr)
    return 2


def group_variants(results: Sequence[Mapping[str, Any]], registry) -> Dict[str, List[Variant]]:
    """The compiled variants of each op, in registry order, with their cubins by target."""
    variants: Dict[str, List[Variant]] = {op.op: [] for op in OPS}
    by_key: Dict[Tuple[int, int], Variant] = {}
    for result in results:
        job = result["job"]
        entry = registry[job.entry_index]
        key = (job.entry_index, job.variant_index)
        _, _, _, config = job_variant(job)
        if key not in by_key:
            by_key[key] = Variant(len(variants[entry.op]), result["dtype"],
                                  dict(config.constexprs), config.num_warps, config.num_stages, {})
            variants[entry.op].append(by_key[key])
        variant = by_key[key]
        if (dict(config.constexprs), config.num_warps, config.num_stages) != \
                (variant.constexprs, variant.num_warps, variant.num_stages):
            # one C table row launches the cubin of whichever target the device is
            raise RuntimeError(f"{entry.name} variant {job.variant_index}: "
                               f"{sm_arch_from_capability(job.capability)} runs "
                               f"{config.label()}, another target {variant.constexprs} on "
                               f"{variant.num_warps} warps; the C launchers need the same tiles "
                               "and warps on every target (a register limit may differ)")
        by_key[key].cubins[job.capability] = {"cubin": result["cubin"],
                                              "shared": result["shared"]}
    return variants


def manifest_record(op: AotOp, entry, variants: Sequence[Variant]) -> Dict[str, Any]:
    signature = {k: re.sub(r"\{\w+\}", "fp32", v) for k, v in entry.signature.items()}
    params = [{"name": a.name, "type": entry.signature[a.name], "c_type": a.c_type}
              for a in runtime_args(entry, signature)]
    params += [{"name": s, "type": "*i8", "c_type": POINTER_TYPE[0]} for s in SCRATCH_PARAMS]

    def cubins(v: Variant) -> Dict[str, Any]:
        return {sm_arch_from_capability(c): {
            "symbol": f"k_cubin_{v.index}_{sm_arch_from_capability(c)}",
            "bytes": len(b["cubin"]), "shared": b["shared"],
            "sha256": hashlib.sha256(b["cubin"]).hexdigest()} for c, b in sorted(v.cubins.items())}

    return {"op": op.op, "kernel": entry.name, "function": op.function, "source": op.source_name,
            "python_launcher": f"{op.module}.{op.python_launcher}",
            "constexpr_names": constexpr_names(entry), "params": params,
            "variants": [{"index": v.index, "dtype": v.dtype, "constexprs": v.constexprs,
                          "num_warps": v.num_warps, "num_stages": v.num_stages,
                          "cubins": cubins(v)} for v in variants]}


def write_library(out_dir: Path, registry, entries: Mapping[str, int],
                  variants: Mapping[str, Sequence[Variant]], ops: Sequence[str],
                  dtypes: Sequence[str], capabilities: Sequence[int]) -> Tuple[str, List[str]]:
    """Write every file of the library into ``out_dir``; returns the version string and the
    files whose content changed."""
    constants = {op.op: dict(op.constants()) for op in OPS}
    targets = ", ".join(sm_arch_from_capability(c) for c in capabilities)
    digest = hashlib.sha256()
    for op in OPS:
        for v in variants[op.op]:
            for capability in sorted(v.cubins):
                digest.update(v.cubins[capability]["cubin"])
    count = sum(len(v.cubins) for vs in variants.values() for v in vs)
    info = (f"mim_kernels {API_VERSION} (Triton {triton.__version__}; {targets}; "
            f"{', '.join(dtypes)}; {', '.join(ops)}; {count} cubins, sha256 "
            f"{digest.hexdigest()[:16]})")
    build_h = (f"/* Generated by `python -m tools.aot`; do not edit. */\n"
               f"#ifndef MIM_KERNELS_BUILD_H\n#define MIM_KERNELS_BUILD_H\n"
               f"#define MIM__BUILD_INFO {json.dumps(info)}\n"
               f"#define MIM__BUILD_DTYPES {json.dumps(', '.join(dtypes))}\n"
               f"#define MIM__BUILD_TARGETS {json.dumps(targets)}\n"
               f"#define MIM__BUILD_OPS {json.dumps(', '.join(ops))}\n#endif\n")
    manifest = {"api_version": API_VERSION, "version": info, "triton": triton.__version__,
                "targets": [sm_arch_from_capability(c) for c in capabilities],
                "dtypes": list(dtypes), "ops": list(ops),
                "kernels": [manifest_record(op, registry[entries[op.op]], variants[op.op])
                            for op in OPS]}
    outputs = {op.source_name: render_source(op, registry[entries[op.op]], variants[op.op],
                                             constants[op.op]) for op in OPS}
    outputs.update({"mim_kernels.h": render_header(constants), "mim_kernels_build.h": build_h,
                    "mim_kernels_manifest.json": json.dumps(manifest, indent=1) + "\n"})
    outputs.update({name: (STATIC_DIR / name).read_text(encoding="utf-8")
                    for name in STATIC_FILES})
    assert set(outputs) == set(GENERATED_FILES)
    out_dir.mkdir(parents=True, exist_ok=True)
    return info, [name for name, text in outputs.items()
                  if write_if_changed(out_dir / name, text)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    error = interpreter_error("tools.aot")
    if error:
        return _fail(error)
    registry = _registry()
    entries: Dict[str, int] = {}
    for op in OPS:
        found = [i for i, e in enumerate(registry) if e.op == op.op and e.name == op.kernel]
        if len(found) != 1:
            return _fail(f"the registry has {len(found)} kernels {op.kernel} of op {op.op}")
        entries[op.op] = found[0]
    selected = [op.op for op in OPS if not args.op or op.op in args.op]
    jobs = [job for job in jobs_for([entries[op] for op in selected], args.targets)
            if list(registry[job.entry_index].variants())[job.variant_index][0] in args.dtypes]
    workers = max(1, min(args.jobs, len(jobs)))
    print(f"aot: {len(jobs)} compiles ({len(selected)} kernels, dtypes {','.join(args.dtypes)}, "
          f"targets {','.join(sm_arch_from_capability(c) for c in args.targets)}) on {workers} "
          "workers", file=sys.stderr)
    results = compile_all(jobs, workers)
    failed = [r for r in results if r["error"]]
    for r in failed:
        entry = registry[r["job"].entry_index]
        print(f"FAILED: {entry.name} {r['dtype']} variant {r['job'].variant_index} "
              f"{sm_arch_from_capability(r['job'].capability)}: {r['error']}", file=sys.stderr)
    if failed:
        return 1
    info, changed = write_library(args.out_dir, registry, entries,
                                  group_variants(results, registry), selected, args.dtypes,
                                  args.targets)
    print(f"aot: {info}\naot: wrote {len(changed)} of {len(GENERATED_FILES)} files in "
          f"{args.out_dir} ({', '.join(changed) or 'all up to date'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
