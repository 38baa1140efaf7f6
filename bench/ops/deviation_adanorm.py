"""deviation_adanorm: the DIT's deviation maps Δ (paper eq. 2), ε = 1e-5.

Shapes: each config's render window (one clip, T = window + 1) and stage-1 step (batch_size
clips, T = num_driving + 1), R = regions, G = motion_dim (``bench/ops/shapes.py``). On CPU only
tiny's. Run alone: ``python -m bench.ops.deviation_adanorm``.
"""
from __future__ import annotations

import sys
from typing import Dict, List

import torch

from bench.ops import harness, shapes

EPS = 1e-5  # RendererConfig.eps


def cases(device: str, smoke: bool) -> List[harness.Shape]:
    if smoke:
        return [harness.Shape("smoke", {"B": 1, "T": 3, "R": 2, "G": 64})]
    return [harness.Shape(case["label"], {"B": case["clips"], "T": case["frames"] + 1,
                                          "R": case["regions"], "G": case["motion_dim"]})
            for config in (("tiny",) if device == "cpu" else shapes.CONFIGS)
            for case in shapes.renderer_shapes(config)]


def make(params: Dict[str, int], dtype: torch.dtype, device, requires_grad: bool) -> tuple:
    from kernels.deviation_adanorm.inputs import make_inputs

    return make_inputs(params["B"], params["T"], params["R"], params["G"], dtype=dtype,
                       device=device, requires_grad=requires_grad, seed=0)


def _reference(v, scale, shift):
    from kernels.deviation_adanorm import deviation_adanorm_reference

    return deviation_adanorm_reference(v, scale, shift, EPS)


def _engine(backend: str):
    from kernels import deviation_adanorm

    return lambda v, scale, shift: deviation_adanorm(v, scale, shift, EPS, backend=backend)


provider = harness.make_provider(_reference, _engine)


def counted_bytes(params: Dict[str, int], itemsize: int) -> Dict[str, int]:
    from kernels.deviation_adanorm.cost import minimum_traffic

    traffic = minimum_traffic(params["B"], params["T"] - 1, params["R"], params["G"], itemsize)
    return {mode: t.bytes for mode, t in traffic.items()}


BENCH = harness.OpBench("deviation_adanorm", cases, make, provider, counted_bytes)

if __name__ == "__main__":
    sys.exit(harness.main(only="deviation_adanorm"))
