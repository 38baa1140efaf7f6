"""region_softmax_warp: softmax over regions, the weighted displacement, trilinear warp of F_id,
mask blend and leaky activation (β = the config's beta), border padding.

Shapes: each config's render window and stage-1 step (``bench/ops/shapes.py``): B frames warped
from one shared F_id (feature batch 1). On CPU only tiny's, and the Triton interpreter only at the
stage-1 step's forward. Run alone: ``python -m bench.ops.region_softmax_warp``.
"""
from __future__ import annotations

import sys
from typing import Dict, List

import torch

from bench.ops import harness, shapes

INTERPRETER_SLOW = "not run on CPU: the Triton interpreter takes minutes at this shape"
BETA = 0.2  # RendererConfig.beta in both configs, passed as a float as the model passes it


def cases(device: str, smoke: bool) -> List[harness.Shape]:
    if smoke:
        return [harness.Shape("smoke", {"B": 2, "C": 3, "R": 2, "D": 2, "H": 6, "W": 7})]
    result = []
    for config in (("tiny",) if device == "cpu" else shapes.CONFIGS):
        for case in shapes.renderer_shapes(config):
            params = {"B": case["frames"], "C": case["feature_channels"], "R": case["regions"],
                      "D": case["depth"], "H": case["size"], "W": case["size"]}
            skip = {}
            if device == "cpu":  # the interpreter: the stage-1 step's forward only
                skip = {"triton" if "render window" in case["label"] else "triton:fwd+bwd":
                        INTERPRETER_SLOW}
            result.append(harness.Shape(case["label"], params, skip))
    return result


def make(params: Dict[str, int], dtype: torch.dtype, device, requires_grad: bool) -> tuple:
    from kernels.region_softmax_warp.inputs import make_inputs

    return make_inputs(params["B"], params["C"], params["R"], params["D"], params["H"],
                       params["W"], 1, dtype=dtype, device=device, requires_grad=requires_grad,
                       seed=0, beta=None, displacement_scale=0.05)


def _reference(feature, logits, displacement, mask):
    from kernels.region_softmax_warp import region_softmax_warp_reference

    return region_softmax_warp_reference(feature, logits, displacement, mask, BETA)


def _engine(backend: str):
    from kernels import region_softmax_warp

    return lambda *tensors: region_softmax_warp(*tensors, BETA, backend=backend)


provider = harness.make_provider(_reference, _engine)


def counted_bytes(params: Dict[str, int], itemsize: int) -> Dict[str, int]:
    from kernels.region_softmax_warp.cost import minimum_traffic

    traffic = minimum_traffic(params["B"], params["C"], params["R"], params["D"], params["H"],
                              params["W"], 1, itemsize)
    return {mode: t.bytes for mode, t in traffic.items()}


BENCH = harness.OpBench("region_softmax_warp", cases, make, provider, counted_bytes)

if __name__ == "__main__":
    sys.exit(harness.main(only="region_softmax_warp"))
