"""Inputs for the ``gpu`` tests: the four fused ops at the base model's shapes (those of each op's
``cost.traffic_cases``, the rows of bench/results/traffic.md), built on CUDA by the ops' own
``make_inputs``; and CUDA float32 without TF32, so a float32 result is a float32 reference."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import pytest
import torch

from kernels import deviation_adanorm, grid_sample_3d, region_softmax_warp, selective_scan
from kernels.deviation_adanorm.inputs import make_inputs as adanorm_inputs
from kernels.grid_sample_3d.inputs import make_inputs as grid_sample_inputs
from kernels.region_softmax_warp.inputs import make_inputs as warp_inputs
from kernels.selective_scan.inputs import make_inputs as scan_inputs

FUSED_OPS = ("grid_sample_3d", "region_softmax_warp", "deviation_adanorm", "selective_scan")
BETA = 0.2
"""region_softmax_warp's β, as traffic_cases passes it."""


@dataclass
class OpCase:
    """One op's inputs (CUDA tensors, in the op's positional order) and ``call(*inputs,
    backend=...)``, the op's public function with the rest of its arguments fixed."""

    name: str
    shape: str
    inputs: Tuple[torch.Tensor, ...]
    call: Callable[..., torch.Tensor]

    def run(self, backend: str, inputs: Optional[Tuple[torch.Tensor, ...]] = None) -> torch.Tensor:
        return self.call(*(self.inputs if inputs is None else inputs), backend=backend)


def build_case(name: str, dtype: torch.dtype = torch.float32, requires_grad: bool = False,
               seed: int = 0, scan_length: int = 2048) -> OpCase:
    common = dict(dtype=dtype, device="cuda", requires_grad=requires_grad, seed=seed)
    if name == "grid_sample_3d":
        return OpCase(name, "N=4 C=32 D=16 H=64 W=64, border",
                      grid_sample_inputs(4, 32, 16, 64, 64, **common),
                      lambda volume, grid, backend: grid_sample_3d(volume, grid, "border",
                                                                   backend=backend))
    if name == "region_softmax_warp":
        return OpCase(name, "B=4 C=32 R=10 D=16 H=64 W=64 F_b=1",
                      warp_inputs(4, 32, 10, 16, 64, 64, 1, beta=None, displacement_scale=0.05,
                                  **common),
                      lambda *tensors, backend: region_softmax_warp(*tensors, BETA, backend=backend))
    if name == "deviation_adanorm":
        return OpCase(name, "B=4 T=25 R=10 G=768", adanorm_inputs(4, 25, 10, 768, **common),
                      lambda v, scale, shift, backend: deviation_adanorm(v, scale, shift,
                                                                         backend=backend))
    if name == "selective_scan":
        return OpCase(name, f"batch=2 dim=256 L={scan_length} N=16, D z delta_bias softplus",
                      scan_inputs(2, 256, scan_length, 16, **common),
                      lambda *tensors, backend: selective_scan(*tensors, delta_softplus=True,
                                                               backend=backend))
    raise ValueError(f"unknown op {name!r}; the gpu tests build {FUSED_OPS}")


@pytest.fixture
def op_case():
    """``build_case``: an op's inputs at the base model's shape on CUDA."""
    return build_case


@pytest.fixture(autouse=True)
def _float32_without_tf32():
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
