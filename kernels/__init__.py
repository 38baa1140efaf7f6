"""mim-engine kernels: the engine's ops, each with reference, torch and triton paths.

Importing the package registers every Triton kernel (see ``registered_kernels``) when triton is
installed; the ops themselves import triton only when the triton backend is used.
"""
import os

# Triton 3.9 warns that its FMA-contraction default flips in 3.10: pin it so results do not
# change with the Triton version (the compile report and the runtime agree on this setting).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from ._dispatch import BACKENDS, BackendUnavailableError, resolve_backend, triton_available  # noqa: E402
from ._registry import LaunchConfig, RegisteredKernel, registered_kernels  # noqa: E402
from .causal_conv1d import CausalConv1d, causal_conv1d, causal_conv1d_update  # noqa: E402
from .deviation_adanorm import DeviationAdaNorm, deviation_adanorm  # noqa: E402
from .grid_sample_3d import GridSample3d, grid_sample_3d  # noqa: E402
from .mamba import Mamba  # noqa: E402
from .region_softmax_warp import RegionSoftmaxWarp, region_softmax_warp  # noqa: E402
from .selective_scan import selective_scan  # noqa: E402
from .selective_state_update import selective_state_update  # noqa: E402

if triton_available():
    from .causal_conv1d import triton_kernels as _conv_kernels  # noqa: E402,F401
    from .deviation_adanorm import triton_kernels as _adanorm_kernels  # noqa: E402,F401
    from .grid_sample_3d import triton_kernels as _grid_sample_kernels  # noqa: E402,F401
    from .region_softmax_warp import triton_kernels as _warp_kernels  # noqa: E402,F401
    from .selective_scan import triton_kernels as _selective_scan_kernels  # noqa: E402,F401
    from .selective_state_update import triton_kernels as _state_update_kernels  # noqa: E402,F401

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendUnavailableError", "DeviationAdaNorm", "GridSample3d", "LaunchConfig",
    "Mamba", "RegionSoftmaxWarp", "RegisteredKernel", "causal_conv1d", "causal_conv1d_update",
    "deviation_adanorm", "grid_sample_3d", "region_softmax_warp", "registered_kernels",
    "resolve_backend", "selective_scan", "selective_state_update",
]
