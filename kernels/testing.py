"""Comparison helpers for checking an op against its float64 reference (used by the test suite,
and useful to anyone checking a drop-in module of their own).

Error measure: relative error of norms, ‖out − ref‖ / ‖ref‖. NaN or Inf never passes.
"""
from __future__ import annotations

import torch

FORWARD_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2,
                     torch.float64: 1e-10}
GRADIENT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2,
                      torch.float64: 1e-9}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (‖out − ref‖ alone when ref is all zeros)."""
    if out.shape != ref.shape:
        raise AssertionError(f"shape {tuple(out.shape)} differs from reference {tuple(ref.shape)}")
    out64, ref64 = out.detach().double(), ref.detach().double()
    diff = (out64 - ref64).norm().item()
    scale = ref64.norm().item()
    return diff / scale if scale > 0 else diff


def assert_close(name: str, out: torch.Tensor, ref: torch.Tensor, tolerance: float) -> float:
    """Raise AssertionError unless out is finite and within ``tolerance`` of ref; return the error."""
    if not torch.isfinite(out).all():
        bad = (~torch.isfinite(out)).sum().item()
        raise AssertionError(f"{name}: {bad} of {out.numel()} elements are NaN or Inf")
    err = relative_error(out, ref)
    if not err <= tolerance:
        raise AssertionError(f"{name}: relative error {err:.3e} exceeds {tolerance:.1e}")
    return err


# ---------------------------------------------------------------------------------------------
# Where the test suite runs the kernels
# ---------------------------------------------------------------------------------------------
# tests/conftest.py reads this file by its path, before anything imports triton (importing
# ``kernels.testing`` imports the package, whose import defines the Triton kernels), so these two
# functions use nothing but the standard library and the arguments they are given.

FORCE_INTERPRETER_VAR = "MIM_TEST_INTERPRET"
"""Set to 1 to run the test suite in Triton's interpreter on CPU tensors even where CUDA is."""

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def use_interpreter(environ, cuda_available: bool) -> bool:
    """True when the test suite must run the Triton kernels in Triton's interpreter (CPU
    tensors, ``TRITON_INTERPRET=1``): without a CUDA device, or when ``environ`` sets
    ``MIM_TEST_INTERPRET=1``. False on CUDA: the tests run the compiled kernels on CUDA tensors."""
    forced = str(environ.get(FORCE_INTERPRETER_VAR, "")).strip().lower()
    if forced not in _TRUE + _FALSE:
        raise ValueError(f"{FORCE_INTERPRETER_VAR} must be 1 (run the tests in Triton's interpreter) "
                         f"or 0, got {environ.get(FORCE_INTERPRETER_VAR)!r}")
    return forced in _TRUE or not cuda_available


def device_under_test(environ, cuda_available: bool) -> str:
    """"cuda" or "cpu": the device the tests build their tensors on (the CPU whenever
    ``use_interpreter`` holds, since the interpreter runs kernels on CPU tensors)."""
    return "cpu" if use_interpreter(environ, cuda_available) else "cuda"
