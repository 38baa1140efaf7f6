"""Trilinear ``grid_sample`` on 5-D tensors (DESIGN op 4): reference, fast path, Triton kernels."""
from .module import GridSample3d
from .op import GridSample3dFunction, grid_sample_3d
from .reference import grid_sample_3d_reference

__all__ = ["GridSample3d", "GridSample3dFunction", "grid_sample_3d", "grid_sample_3d_reference"]
