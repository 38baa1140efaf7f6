"""causal_conv1d: the Mamba block's depthwise causal convolution with a bias and silu, fp32.

Shapes (``bench/ops/shapes.py``): each config's Mamba-g and Mamba-l sequences (1 s of audio, a
stage-2 step; dim = d_inner, width = d_conv) and mamba_ssm's benchmark shapes (width 4); on CPU
tiny's sequences and a scaled-down mamba_ssm shape (L = 512), the Triton interpreter only at the
shapes listed in ``INTERPRETED``. Run alone: ``python -m bench.ops.causal_conv1d``.
"""
from __future__ import annotations

import sys
from typing import Dict, List

import torch

from bench.ops import harness, shapes

INTERPRETED = ("tiny Mamba-g 1 s",)
INTERPRETER_SLOW = "not run on CPU: the Triton interpreter takes minutes at this shape"


def cases(device: str, smoke: bool) -> List[harness.Shape]:
    if smoke:
        return [harness.Shape("smoke", {"batch": 1, "dim": 8, "L": 16, "W": 4})]
    result = []
    for case in shapes.sequence_shapes(device):
        skip = ({"triton": INTERPRETER_SLOW}
                if device == "cpu" and case["label"] not in INTERPRETED else {})
        result.append(harness.Shape(case["label"], {"batch": case["batch"], "dim": case["dim"],
                                                    "L": case["length"], "W": case["width"]}, skip))
    return result


def make(params: Dict[str, int], dtype: torch.dtype, device, requires_grad: bool) -> tuple:
    from kernels.causal_conv1d.inputs import make_inputs

    return make_inputs(params["batch"], params["dim"], params["L"], params["W"], dtype=dtype,
                       device=device, requires_grad=requires_grad, seed=0)


def _reference(x, weight, bias):
    from kernels.causal_conv1d import causal_conv1d_reference

    return causal_conv1d_reference(x, weight, bias, "silu")


def _engine(backend: str):
    from kernels import causal_conv1d

    return lambda x, weight, bias: causal_conv1d(x, weight, bias, "silu", backend=backend)


provider = harness.make_provider(_reference, _engine)


def counted_bytes(params: Dict[str, int], itemsize: int) -> Dict[str, int]:
    from kernels.causal_conv1d.cost import minimum_traffic

    traffic = minimum_traffic(params["batch"], params["dim"], params["L"], params["W"], itemsize)
    return {mode: t.bytes for mode, t in traffic.items()}


BENCH = harness.OpBench("causal_conv1d", cases, make, provider, counted_bytes)

if __name__ == "__main__":
    sys.exit(harness.main(only="causal_conv1d"))
