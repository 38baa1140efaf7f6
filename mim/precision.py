"""Numerical precision of a run: ``"fp32"`` (the default) or ``"bf16"``.

``bf16`` is autocast to bfloat16 with fp32 weights, for inference (``mim animate``, ``mim reenact``)
and training (``mim train stage1|stage2``: fp32 master weights, Adam state and gradients; the
forward's matmuls and convolutions run in bf16). Autocast casts a weight to bf16 once per
autocast region, not once per call (its cast cache), so inference keeps the fp32 checkpoint as
it is: one set of weights serves both precisions.

Under autocast, matmuls, convolutions and attention read and write bf16. What stays fp32 (the
tests assert each):

- the diffusion schedule (ᾱ_t, β_t: float64 tables, gathered into the sampler's fp32) and the
  DDIM / DDPM update arithmetic: the sampled motion x_t, x̂_0, ε̂ and the classifier-free
  guidance combination are fp32, the denoiser's bf16 output is cast to fp32 before any of it;
- softmax statistics (the region softmax of the warp: max and sum in fp32 registers in every
  backend; attention's softmax inside torch's SDPA kernels, which accumulate in fp32);
- the selective scan's state h (fp32 in every backend) and Mamba's A, D and Δ bias (fp32);
- normalization statistics: GroupNorm and LayerNorm compute mean and variance in fp32 for bf16
  inputs (torch's kernels use an fp32 accumulator; a test checks the bf16 result is the fp32
  result rounded), ``deviation_adanorm`` keeps its per-row mean and 1/std in fp32 and runs on
  fp32 inputs (V_nor is fp32; its scale and shift are cast up: they are B·T·λ·G values);
- the audio features (log-mel and its normalization: numpy float32, outside autocast);
- the losses' reductions in training (the trainers cast predictions to fp32 first).

On a CPU without bf16 instructions (no AVX-512 BF16 or AMX: :func:`native_bf16_cpu`), PyTorch
runs bf16 convolutions through its reference kernels (``slow_conv3d``, ``_slow_conv2d``) and
bf16 GEMMs through an emulated path: 30-75x slower than fp32 on this project's 2-core AVX2 VM
(bench/NOTES.md). There a bf16 run computes its convolutions and matmuls the way a GPU's
tensor cores do (:func:`bf16_compute`): bf16 operands, products and sums in fp32, the result
rounded to bf16. The operands are widened to fp32 (exact), the op runs in fp32 and its result is
rounded to bf16, so every tensor the model sees, and every op a profile counts, is the bf16 op
autocast asked for; only the CPU's route to its result differs (the same values up to the order
of the fp32 sums, a test checks: within one bf16 ulp). ``MIM_BF16_CPU=native`` turns this off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import ContextManager, Optional

import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack
from torch.utils._pytree import tree_map

__all__ = ["PRECISIONS", "check_precision", "autocast", "render_state", "training_autocast_enabled",
           "native_bf16_cpu", "conv3d_memory_format", "bf16_compute", "Bf16ThroughFp32"]

PRECISIONS = ("fp32", "bf16")

log = logging.getLogger("mim")


def check_precision(precision, name: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming ``name``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def native_bf16_cpu() -> bool:
    """Whether this processor has bf16 instructions oneDNN uses (AVX-512 BF16 or AMX); without
    them bf16 on the CPU is correct but emulated (converted to fp32 and back around each op)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


_BF16_CPU_MODES = ("fp32", "native")


class Bf16ThroughFp32(TorchDispatchMode):
    """Runs the bf16 convolutions and matmuls of CPU tensors as fp32 ops on their widened
    operands, the results rounded back to bf16 (module docstring): forward and backward
    (``convolution``, ``convolution_backward``, ``mm``, ``addmm``, ``bmm``, ``baddbmm``); every
    other op, and any op with an fp32 or non-CPU operand, runs as it is. Modes entered inside
    this one (a profile's counters) see the bf16 op, not its fp32 route."""

    OPS = frozenset({torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default,
                     torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
                     torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default})

    @classmethod
    def ignore_compile_internals(cls) -> bool:   # compiled code is not routed through it
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPS and not kwargs.get("out") and _all_bf16_cpu(args):
            widened = tree_map(_widen, args)
            result = func(*widened, **kwargs)
            return tree_map(_round_bf16, result)
        return func(*args, **kwargs)


def _all_bf16_cpu(args) -> bool:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return bool(tensors) and all(t.dtype == torch.bfloat16 and t.device.type == "cpu"
                                 for t in tensors)


def _widen(value):
    return value.float() if isinstance(value, torch.Tensor) else value


def _round_bf16(value):
    return value.to(torch.bfloat16) if isinstance(value, torch.Tensor) else value


def _bf16_cpu_mode() -> str:
    mode = os.environ.get("MIM_BF16_CPU", "fp32")
    if mode not in _BF16_CPU_MODES:
        raise ValueError(f"MIM_BF16_CPU must be one of {', '.join(_BF16_CPU_MODES)}, got {mode!r}")
    return mode


def bf16_compute(precision: str, device) -> ContextManager:
    """Where a ``precision`` run on ``device`` needs it, :class:`Bf16ThroughFp32`: bf16 on a CPU
    without native bf16 (:func:`native_bf16_cpu`) unless ``MIM_BF16_CPU=native``; nothing
    elsewhere, and nothing when one is already active (enter it outermost, beneath any counting
    mode, so counters see the bf16 ops)."""
    if (check_precision(precision) != "bf16" or torch.device(device).type != "cpu"
            or native_bf16_cpu() or _bf16_cpu_mode() == "native"
            or any(isinstance(m, Bf16ThroughFp32) for m in _get_current_dispatch_mode_stack())):
        return contextlib.nullcontext()
    return Bf16ThroughFp32()


def autocast(precision: str, device) -> ContextManager:
    """The region of a ``precision`` run on ``device`` (a ``torch.device`` or its type):
    ``torch.autocast(device type, torch.bfloat16)`` for ``"bf16"`` (with :func:`bf16_compute`
    on a CPU without bf16 instructions), nothing for ``"fp32"``."""
    check_precision(precision)
    kind = torch.device(device).type
    if precision == "bf16":
        return _bf16_region(kind)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _bf16_region(kind: str):
    with bf16_compute("bf16", kind), torch.autocast(kind, dtype=torch.bfloat16):
        yield


def render_state(state, precision: str):
    """The source state (a ``mim.models.SourceState``, encoded in fp32) that a ``precision``
    render reads: for bf16, F_id stored in bf16 (the warp then reads it in bf16, half the bytes),
    F_A and M_0 kept fp32. The source is encoded once per portrait, in fp32: encoding it under
    autocast cost 4 dB of PSNR against fp32 on the tiny test model (40.1 against 44.1 dB;
    bench/NOTES.md), for one image's work."""
    if check_precision(precision) == "bf16":
        return dataclasses.replace(state, feature=state.feature.to(torch.bfloat16))
    return state


def conv3d_memory_format(module: torch.nn.Module, memory_format: torch.memory_format) -> torch.nn.Module:
    """``module`` with the weights of its ``nn.Conv3d`` layers in ``memory_format``
    (``torch.channels_last_3d`` or ``torch.contiguous_format``); other parameters are left as
    they are (a 4-D weight has no channels_last_3d layout). A convolution whose weight is
    channels_last_3d writes its output so, and the layout follows through the 3-D layers."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv3d):
            layer.to(memory_format=memory_format)
    return module


def training_autocast_enabled(precision: Optional[str], config_amp: bool, device) -> bool:
    """Whether a trainer runs its forward under bf16 autocast: ``precision`` None keeps the
    config's ``amp`` (bf16 on CUDA only, the default before ``precision`` existed); ``"bf16"``
    turns it on on any device, ``"fp32"`` off."""
    kind = torch.device(device).type
    if precision is None:
        return bool(config_amp) and kind == "cuda"
    if check_precision(precision) == "bf16" and kind == "cpu" and not native_bf16_cpu():
        log.warning("bf16 autocast on a CPU without native bf16 instructions (no AVX-512 BF16 or "
                    "AMX): convolutions and matmuls computed in fp32 from bf16 operands, rounded "
                    "to bf16 (mim.precision.bf16_compute)")
    return precision == "bf16"
