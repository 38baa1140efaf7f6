"""Backend selection shared by every op.

Each op has three implementations of the same math:

- ``"reference"``: the literal math in PyTorch, used by the tests as ground truth;
- ``"fast"``: the op's own non-Triton fast path, for CPU and any device without Triton: PyTorch
  ops for most ops, numba-compiled loops for the selective scan's CPU path (each op's
  ``fast_path.FAST_PATH`` names it). ``"torch"``, its old name, is accepted as an alias;
- ``"triton"``: the Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

Precedence: an explicit ``backend=`` other than ``"auto"`` on the call wins; otherwise the
environment variable ``MIM_KERNEL_BACKEND`` (if set and not ``"auto"``) wins; otherwise ``"auto"``
picks triton for CUDA tensors and the fast path for everything else. ``resolve_backend`` returns
the concrete name, ``"reference"``, ``"fast"`` or ``"triton"`` (never the alias).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

BACKENDS = ("auto", "reference", "fast", "triton")
ALIASES = {"torch": "fast"}
"""Old backend names, still accepted, and the name each stands for."""
ENV_VAR = "MIM_KERNEL_BACKEND"


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on these tensors in this process."""


def triton_interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _check_name(name: str, source: str) -> str:
    if isinstance(name, str):
        key = name.strip().lower()
        key = ALIASES.get(key, key)
        if key in BACKENDS:
            return key
    raise ValueError(f"{source} must be one of {BACKENDS} (or {tuple(ALIASES)}, the old name of "
                     f"'fast'), got {name!r}")


def resolve_backend(backend: Optional[str], device: torch.device, op: str) -> str:
    """Return the concrete backend ("reference", "fast" or "triton") for tensors on ``device``.

    Raises ``ValueError`` for an unknown name and ``BackendUnavailableError`` when triton is asked
    for but cannot run here (not installed, or CPU tensors without ``TRITON_INTERPRET=1``).
    """
    chosen = "auto" if backend is None else _check_name(backend, "backend")
    if chosen == "auto":
        env = os.environ.get(ENV_VAR)
        if env:
            chosen = _check_name(env, f"environment variable {ENV_VAR}")
    if chosen == "auto":
        if device.type == "cuda" and triton_available():
            return "triton"
        return "fast"
    if chosen == "triton":
        if not triton_available():
            raise BackendUnavailableError(f"{op}: backend 'triton' requested but triton is not installed")
        if device.type == "cpu" and not triton_interpreting():
            raise BackendUnavailableError(
                f"{op}: backend 'triton' got CPU tensors; Triton kernels run on CUDA tensors, or on CPU "
                "only under the interpreter (set TRITON_INTERPRET=1 before importing triton). "
                "Use backend='fast' for the CPU path."
            )
        if device.type not in ("cpu", "cuda"):
            raise BackendUnavailableError(f"{op}: backend 'triton' does not support device {device}")
    return chosen
