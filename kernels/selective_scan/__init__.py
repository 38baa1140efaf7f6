"""Mamba-1 selective scan (real A): reference, fast path (numba), Triton kernels."""
from .module import SelectiveScan
from .op import SelectiveScanFunction, selective_scan
from .reference import selective_scan_reference

__all__ = ["SelectiveScan", "SelectiveScanFunction", "selective_scan", "selective_scan_reference"]
