"""Region-softmax warp + mask blend + leaky activation (LMDD to decoder): reference, torch path,
Triton kernels."""
from .op import RegionSoftmaxWarpFunction, region_softmax_warp
from .reference import region_softmax_warp_reference

__all__ = ["RegionSoftmaxWarpFunction", "region_softmax_warp", "region_softmax_warp_reference"]
