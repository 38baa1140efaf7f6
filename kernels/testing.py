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
