"""Mamba-1 selective scan (real A): reference, fast CPU path, Triton kernels."""
from .op import selective_scan
from .reference import selective_scan_reference

__all__ = ["selective_scan", "selective_scan_reference"]
