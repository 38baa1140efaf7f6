"""Region-softmax warp + mask blend + leaky activation (LMDD to decoder): reference, fast path,
Triton kernels."""
from .module import RegionSoftmaxWarp
from .op import RegionSoftmaxWarpFunction, region_softmax_warp
from .reference import region_softmax_warp_reference

__all__ = ["RegionSoftmaxWarp", "RegionSoftmaxWarpFunction", "region_softmax_warp",
           "region_softmax_warp_reference"]
