"""mim-engine kernels: the engine's ops, each with reference, fast and triton paths.

Every op lives in its own folder, ``kernels/<op>/`` (the names in ``OPS``), with the same files:
reference.py, fast_path.py, triton_kernels.py, op.py, module.py, cost.py, aot.py, inputs.py and a
README. Importing the package registers every Triton kernel (see ``registered_kernels``) when
triton is installed; the ops themselves import triton only when the triton backend is used.
Importing it changes no process environment: every Triton launch passes its options (floating-point
fusion included) explicitly.

The import name ``kernels`` is also that of the Hugging Face kernel hub's package (distribution
"kernels", which transformers imports); both install a top-level ``kernels`` folder, so one
overwrites the other's files. On import, a warning says so when that distribution is installed
too: use a separate virtual environment for mim-engine.
"""
import importlib.metadata as _metadata
import warnings as _warnings

from ._dispatch import BACKENDS, BackendUnavailableError, resolve_backend, triton_available
from ._registry import LaunchConfig, RegisteredKernel, registered_kernels
from .causal_conv1d import CausalConv1d, causal_conv1d, causal_conv1d_update
from .deviation_adanorm import DeviationAdaNorm, deviation_adanorm
from .grid_sample_3d import GridSample3d, grid_sample_3d
from .mamba import Mamba
from .region_softmax_warp import RegionSoftmaxWarp, region_softmax_warp
from .selective_scan import SelectiveScan, selective_scan
from .selective_state_update import SelectiveStateUpdate, selective_state_update

if triton_available():
    from .causal_conv1d import triton_kernels as _conv_kernels  # noqa: F401
    from .deviation_adanorm import triton_kernels as _adanorm_kernels  # noqa: F401
    from .grid_sample_3d import triton_kernels as _grid_sample_kernels  # noqa: F401
    from .region_softmax_warp import triton_kernels as _warp_kernels  # noqa: F401
    from .selective_scan import triton_kernels as _selective_scan_kernels  # noqa: F401
    from .selective_state_update import triton_kernels as _state_update_kernels  # noqa: F401

__version__ = "0.1.0"

OPS = ("grid_sample_3d", "region_softmax_warp", "deviation_adanorm", "selective_scan",
       "selective_state_update", "causal_conv1d")
"""The op folders, ``kernels/<op>/``: the drivers (``python -m bench.traffic``, ``tools.aot``,
``tools.compile_report``) and the folder-contract test walk them in this order."""


def _warn_on_name_clash() -> None:
    """Warn when the distribution "kernels" (the Hugging Face kernel hub; mim-engine's own is
    "mim-engine") is installed too: one look-up by distribution name, no scan of the environment."""
    try:
        other = _metadata.distribution("kernels")
    except _metadata.PackageNotFoundError:
        return
    _warnings.warn(
        f"the distribution 'kernels' {other.version} (the Hugging Face kernel hub, imported by "
        "transformers) is installed in this environment beside mim-engine, and both provide the "
        "top-level import name 'kernels': installing one overwrites the other's files, so "
        "'import kernels' may load the wrong one. Install mim-engine in a separate virtual "
        "environment.", UserWarning, stacklevel=2)


_warn_on_name_clash()

__all__ = [
    "BACKENDS", "OPS", "BackendUnavailableError", "CausalConv1d", "DeviationAdaNorm",
    "GridSample3d", "LaunchConfig", "Mamba", "RegionSoftmaxWarp", "RegisteredKernel",
    "SelectiveScan", "SelectiveStateUpdate", "causal_conv1d", "causal_conv1d_update",
    "deviation_adanorm", "grid_sample_3d", "region_softmax_warp", "registered_kernels",
    "resolve_backend", "selective_scan", "selective_state_update",
]
