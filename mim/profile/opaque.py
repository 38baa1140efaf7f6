"""Kernels out of ``TrafficCounter``'s sight, added from the ops' cost models.

The fused Triton kernels (``deviation_adanorm``, ``region_softmax_warp``, ``selective_scan``,
``causal_conv1d``), the ``causal_conv1d`` package and the numba selective scan of the CPU path address memory through raw
pointers: the ATen counter never sees them. :func:`opaque_kernel_hooks` puts forward hooks on the
modules that call them; each hook adds the kernel's analytic forward traffic (``kernels.<op>.cost``)
to the stage that is being counted.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterable

import torch

__all__ = ["opaque_kernel_hooks"]


def _adanorm_hook(recorder, module, args, output):
    from kernels import resolve_backend
    from kernels.deviation_adanorm.cost import fused_traffic

    v, scale = args[0], args[1]
    if (recorder.mode != "count"
            or resolve_backend(module.backend, v.device, "deviation_adanorm") != "triton"):
        return
    batch, frames, features = v.shape
    recorder.add_opaque(fused_traffic(batch, frames - 1, scale.shape[2], features,
                                      v.element_size())["fwd"])


def _warp_hook(recorder, module, args, output):
    from kernels import resolve_backend
    from kernels.region_softmax_warp.cost import fused_traffic

    feature, logits = args[0], args[1]
    if (recorder.mode != "count"
            or resolve_backend(module.backend, logits.device, "region_softmax_warp") != "triton"):
        return
    batch, regions, depth, height, width = logits.shape
    recorder.add_opaque(fused_traffic(batch, feature.shape[1], regions, depth, height, width,
                                      feature.shape[0], logits.element_size())["fwd"])


def _mamba_hook(recorder, module, args, output):
    from kernels import resolve_backend
    from kernels.causal_conv1d.cost import fused_traffic as conv_fused_traffic
    from kernels.causal_conv1d.cost import package_traffic
    from kernels.causal_conv1d.op import package_supports
    from kernels.selective_scan.cost import fast_path_traffic, fused_traffic

    if recorder.mode != "count":
        return
    hidden = args[0]
    batch, length, _ = hidden.shape
    dim, nstate, itemsize = module.d_inner, module.d_state, hidden.element_size()
    scan = resolve_backend(module.backend, hidden.device, "selective_scan")
    if scan == "triton":
        recorder.add_opaque(fused_traffic(batch, dim, length, nstate, 1, itemsize)["fwd"])
    elif scan == "fast" and hidden.device.type == "cpu":
        recorder.add_opaque(fast_path_traffic(batch, dim, length, nstate,
                                              8 if hidden.dtype == torch.float64 else 4))
    weight = module.conv1d.weight.squeeze(1)
    if resolve_backend(module.backend, hidden.device, "causal_conv1d") == "triton":
        # the package's CUDA kernel where it is installed and takes the call, else the engine's
        # own Triton kernels (the block's x is channel-first: a chunk of (batch, 2·d_inner, L))
        if package_supports(hidden, weight, module.conv1d.bias):
            recorder.add_opaque(package_traffic(batch, dim, length, weight.shape[1], itemsize))
        else:
            recorder.add_opaque(conv_fused_traffic(batch, dim, length, weight.shape[1],
                                                   itemsize)["fwd"])


@contextlib.contextmanager
def opaque_kernel_hooks(modules: Iterable[torch.nn.Module], recorder):
    """For the block, every ``DeviationAdaNorm``, ``RegionSoftmaxWarp`` and ``Mamba`` inside
    ``modules`` reports the analytic traffic of the opaque kernels it runs to ``recorder`` (a
    ``StageRecorder`` in "count" mode; in the other modes the hooks add nothing)."""
    from kernels import Mamba
    from kernels import DeviationAdaNorm, RegionSoftmaxWarp

    hooks = {DeviationAdaNorm: _adanorm_hook, RegionSoftmaxWarp: _warp_hook, Mamba: _mamba_hook}
    handles = []
    try:
        for root in modules:
            for module in root.modules():
                for kind, hook in hooks.items():
                    if isinstance(module, kind):
                        handles.append(module.register_forward_hook(functools.partial(hook, recorder)))
        yield
    finally:
        for handle in handles:
            handle.remove()
