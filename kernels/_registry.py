"""The registry of every Triton kernel the engine can launch.

Each op registers its ``@triton.jit`` kernels with the argument signature they are launched with
and every launch configuration the launcher can pick (autotune configs included). The compile
report (``python -m tools.compile_report``) compiles every entry ahead of time for sm_80 and
sm_90a and reads the cubin; later, the AOT kernel library is built from the same entries.

Signature strings follow ``triton.tools.compile``: ``"*fp32"`` is a pointer, ``"i32"`` an int,
``"fp32"`` a float; a suffix ``":16"`` says the launcher guarantees divisibility by 16 (device
allocations are 16-byte aligned, so the JIT specializes pointers that way). ``"{dtype}"`` in a
type is replaced by each of the kernel's ``dtypes`` in turn (an entry of ``dtypes`` may also fill
several named placeholders, e.g. ``"{state_dtype}"``; a plain type fills every placeholder).
``dtype_configs`` may give a dtype (by its label) fewer launch configs than ``configs``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch


@dataclass(frozen=True)
class LaunchConfig:
    """One way a launcher can start a kernel: its constexpr values, warps and stages."""

    constexprs: Mapping[str, Any]
    num_warps: int
    num_stages: int = 1

    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.constexprs.items())]
        parts += [f"warps={self.num_warps}", f"stages={self.num_stages}"]
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

    @property
    def name(self) -> str:
        return self.kernel.__name__

    def variants(self) -> Iterator[Tuple[str, Dict[str, str], LaunchConfig]]:
        """Yield (dtype, concrete signature, config) for every specialization to compile. An entry
        of ``dtypes`` is a type that fills "{dtype}" and every other placeholder, or pairs
        (placeholder, type) filling several placeholders (its label is
        "dtype=bf16,state_dtype=fp32"); a label in ``dtype_configs`` takes those configs."""
        for dtype in self.dtypes:
            fills = {"dtype": dtype} if isinstance(dtype, str) else dict(dtype)
            label = dtype if isinstance(dtype, str) else ",".join(f"{k}={v}" for k, v in fills.items())
            sig = dict(self.signature)
            for placeholder, type_name in fills.items():
                sig = {k: v.replace("{" + placeholder + "}", type_name) for k, v in sig.items()}
            if isinstance(dtype, str):
                sig = {k: re.sub(r"\{\w+\}", dtype, v) for k, v in sig.items()}
            for cfg in self.dtype_configs.get(label, self.configs):
                yield label, sig, cfg


_REGISTRY: List[RegisteredKernel] = []


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
                    dtype_configs=None) -> RegisteredKernel:
    entry = RegisteredKernel(op=op, kernel=kernel, signature=dict(signature),
                             configs=tuple(configs), dtypes=tuple(dtypes), notes=notes,
                             dtype_configs={k: tuple(v) for k, v in (dtype_configs or {}).items()})
    labels = {d if isinstance(d, str) else ",".join(f"{k}={v}" for k, v in d) for d in entry.dtypes}
    unknown = set(entry.dtype_configs) - labels
    if unknown:
        raise ValueError(f"kernel {entry.name}: dtype_configs names dtypes {sorted(unknown)} "
                         "that it does not register")
    if any(e.op == op and e.name == entry.name for e in _REGISTRY):
        raise ValueError(f"kernel {entry.name} of op {op} is registered twice")
    _REGISTRY.append(entry)
    return entry


def registered_kernels() -> Tuple[RegisteredKernel, ...]:
    """Every registered kernel, in registration order."""
    return tuple(_REGISTRY)
