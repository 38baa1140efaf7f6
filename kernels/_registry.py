"""The registry of every Triton kernel the engine can launch.

Each op registers its ``@triton.jit`` kernels with the argument signature they are launched with
and every launch configuration the launcher can pick (autotune configs included). The compile
report (``python -m tools.compile_report``) compiles every entry ahead of time for sm_80, sm_90a,
sm_100a and sm_120a and reads the cubin; the AOT kernel library is built from the same entries.

Signature strings follow ``triton.tools.compile``: ``"*fp32"`` is a pointer, ``"i32"`` an int,
``"fp32"`` a float; a suffix ``":16"`` says the launcher guarantees divisibility by 16 (device
allocations are 16-byte aligned, so the JIT specializes pointers that way). ``"{dtype}"`` in a
type is replaced by each of the kernel's ``dtypes`` in turn (an entry of ``dtypes`` may also fill
several named placeholders, e.g. ``"{state_dtype}"``; a plain type fills every placeholder).
``dtype_configs`` may give a dtype (by its label) fewer launch configs than ``configs``.

``arch_configs`` replaces the whole set on one architecture (by ``device_arch``'s number: 100, 120)
where a default config cannot serve it (it spills there); ``arch_dtype_configs`` then gives that
architecture's set for each dtype of ``dtype_configs``. ``variants(target)`` yields a target's own
set; a launcher picks from the set of ``device_arch(device)``, the default set when that is None
or has no entry.
"""
from __future__ import annotations

import hashlib
import inspect
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class LaunchConfig:
    """One way a launcher can start a kernel: its constexpr values, warps and stages, and, where
    set, the most registers per thread ptxas may use (Triton's ``maxnreg``: with it ptxas stops
    trading registers for occupancy, which it otherwise may do by spilling)."""

    constexprs: Mapping[str, Any]
    num_warps: int
    num_stages: int = 1
    maxnreg: Optional[int] = None

    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.constexprs.items())]
        parts += [f"warps={self.num_warps}", f"stages={self.num_stages}"]
        if self.maxnreg is not None:
            parts.append(f"maxnreg={self.maxnreg}")
        return ",".join(parts)


@dataclass(frozen=True)
class RegisteredKernel:
    op: str
    kernel: Callable  # a triton JITFunction (an InterpretedFunction under TRITON_INTERPRET=1)
    signature: Mapping[str, str]
    configs: Tuple[LaunchConfig, ...]
    dtypes: Tuple[str, ...] = ("fp32",)
    notes: str = ""
    dtype_configs: Mapping[str, Tuple[LaunchConfig, ...]] = field(default_factory=dict)
    arch_configs: Mapping[int, Tuple[LaunchConfig, ...]] = field(default_factory=dict)
    arch_dtype_configs: Mapping[int, Mapping[str, Tuple[LaunchConfig, ...]]] = field(
        default_factory=dict)

    @property
    def name(self) -> str:
        return self.kernel.__name__

    def configs_for(self, arch: Optional[int] = None, dtype: Optional[str] = None
                    ) -> Tuple[LaunchConfig, ...]:
        """The launch configs of architecture ``arch`` (``device_arch``'s number; None: the
        default set) for the dtype labelled ``dtype`` (None: the set of a plain dtype)."""
        if arch in self.arch_configs:
            by_dtype, configs = self.arch_dtype_configs.get(arch, {}), self.arch_configs[arch]
        else:
            by_dtype, configs = self.dtype_configs, self.configs
        return by_dtype.get(dtype, configs) if dtype is not None else configs

    def variants(self, target: Optional[int] = None
                 ) -> Iterator[Tuple[str, Dict[str, str], LaunchConfig]]:
        """Yield (dtype, concrete signature, config) for every specialization to compile for
        compute capability ``target`` (None: the default set). An entry of ``dtypes`` is a type
        that fills "{dtype}" and every other placeholder, or pairs (placeholder, type) filling
        several placeholders (its label is "dtype=bf16,state_dtype=fp32"); a label in
        ``dtype_configs`` takes those configs."""
        for dtype in self.dtypes:
            fills = {"dtype": dtype} if isinstance(dtype, str) else dict(dtype)
            label = dtype if isinstance(dtype, str) else ",".join(f"{k}={v}" for k, v in fills.items())
            sig = dict(self.signature)
            for placeholder, type_name in fills.items():
                sig = {k: v.replace("{" + placeholder + "}", type_name) for k, v in sig.items()}
            if isinstance(dtype, str):
                sig = {k: re.sub(r"\{\w+\}", dtype, v) for k, v in sig.items()}
            for cfg in self.configs_for(target, label):
                yield label, sig, cfg

    def source_hash(self) -> str:
        """sha256 (hex) of the kernel's source and of every ``@triton.jit`` function it calls,
        transitively, with the module-level constants they read: what the compiled binary depends
        on besides its signature and launch config. The same with and without TRITON_INTERPRET
        (it reads the Python functions under either wrapper), so a report written by a compile
        can be checked for freshness in the interpreted test suite."""
        digest = hashlib.sha256()
        for name, text in _jit_sources(self.kernel):
            digest.update(f"{name}\n{text}\n".encode())
        return digest.hexdigest()


_REGISTRY: List[RegisteredKernel] = []


def _code_names(code) -> List[str]:
    """The global names a code object reads, its nested functions' included."""
    names = list(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names += _code_names(const)
    return names


def _jit_sources(kernel) -> List[Tuple[str, str]]:
    """(qualified name, dedented source) of ``kernel`` and of each ``@triton.jit`` function it
    reaches through global names, in a fixed order, each once; module-level constants
    (``tl.constexpr``, numbers, strings) a function reads are appended to its source."""
    seen: Dict[str, str] = {}
    pending = [kernel]
    while pending:
        jitted = pending.pop()
        fn = jitted.fn
        key = f"{fn.__module__}.{fn.__qualname__}"
        if key in seen:
            continue
        text = textwrap.dedent(inspect.getsource(fn))
        for name in sorted(set(_code_names(fn.__code__))):
            value = fn.__globals__.get(name)
            if isinstance(value, triton.runtime.KernelInterface) and hasattr(value, "fn"):
                pending.append(value)
            elif isinstance(value, tl.constexpr):
                text += f"\n# {name} = {value.value!r}"
            elif isinstance(value, (bool, int, float, str)):
                text += f"\n# {name} = {value!r}"
        seen[key] = text
    return sorted(seen.items())


def device_arch(device) -> Optional[int]:
    """The compute capability of a CUDA device as one number (major·10 + minor: 80, 90, 100,
    120), the key of per-architecture launch configs and tuned winners; None for any other
    device (the CPU, where kernels run in Triton's interpreter)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def arch_label(arch: int) -> str:
    """``sm_90`` for 90: the name of an architecture in file names and reports."""
    return f"sm_{arch}"


def register_kernel(op: str, kernel: Callable, signature: Mapping[str, str],
                    configs, dtypes=("fp32",), notes: str = "",
                    dtype_configs=None, arch_configs=None,
                    arch_dtype_configs=None) -> RegisteredKernel:
    """Register ``kernel``. ``arch_configs`` ({100: (...)}) replaces ``configs`` on that
    architecture; ``arch_dtype_configs`` ({100: {label: (...)}}) gives that architecture's set
    for every dtype label ``dtype_configs`` names."""
    entry = RegisteredKernel(
        op=op, kernel=kernel, signature=dict(signature), configs=tuple(configs),
        dtypes=tuple(dtypes), notes=notes,
        dtype_configs={k: tuple(v) for k, v in (dtype_configs or {}).items()},
        arch_configs={int(a): tuple(v) for a, v in (arch_configs or {}).items()},
        arch_dtype_configs={int(a): {k: tuple(v) for k, v in by_dtype.items()}
                            for a, by_dtype in (arch_dtype_configs or {}).items()})
    labels = {d if isinstance(d, str) else ",".join(f"{k}={v}" for k, v in d) for d in entry.dtypes}
    unknown = set(entry.dtype_configs).union(
        *(by_dtype.keys() for by_dtype in entry.arch_dtype_configs.values())) - labels
    if unknown:
        raise ValueError(f"kernel {entry.name}: dtype_configs names dtypes {sorted(unknown)} "
                         "that it does not register")
    for arch, by_dtype in entry.arch_dtype_configs.items():
        if arch not in entry.arch_configs:
            raise ValueError(f"kernel {entry.name}: arch_dtype_configs gives {arch_label(arch)} "
                             "configs but arch_configs has no set for it")
    for arch, configs_here in entry.arch_configs.items():
        missing = set(entry.dtype_configs) - set(entry.arch_dtype_configs.get(arch, {}))
        if missing:
            raise ValueError(f"kernel {entry.name}: dtypes {sorted(missing)} have their own "
                             f"configs (dtype_configs) but arch_dtype_configs gives none for "
                             f"{arch_label(arch)}, whose set arch_configs replaces")
        if not configs_here:
            raise ValueError(f"kernel {entry.name}: arch_configs gives {arch_label(arch)} "
                             "no config")
    if any(e.op == op and e.name == entry.name for e in _REGISTRY):
        raise ValueError(f"kernel {entry.name} of op {op} is registered twice")
    _REGISTRY.append(entry)
    return entry


def registered_kernels() -> Tuple[RegisteredKernel, ...]:
    """Every registered kernel, in registration order."""
    return tuple(_REGISTRY)
