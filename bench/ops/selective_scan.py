"""selective_scan: the Mamba-1 selective scan with D, z, delta_bias and softplus (as the Mamba
block calls it), fp32, B and C ungrouped.

Shapes (``bench/ops/shapes.py``): each config's Mamba-g and Mamba-l sequences (1 s of audio, a
stage-2 step) and mamba_ssm's benchmark shapes; on CPU tiny's sequences and a scaled-down
mamba_ssm shape (L = 512). ``torch.compile`` of the reference traces its Python loop over L step
by step (on this project's 2-core CPU: about 50 s forward and 100 s forward+backward at L = 20,
over 4 minutes at L = 100), so it runs only up to ``COMPILE_MAX_LENGTH``. The Triton interpreter
runs the scan's programs step by step too (over a minute for one forward at tiny's Mamba-g 1 s):
on CPU it runs only in ``--smoke``. Run alone: ``python -m bench.ops.selective_scan``.
"""
from __future__ import annotations

import sys
from typing import Dict, List

import torch

from bench.ops import harness, shapes

COMPILE_MAX_LENGTH = 32
COMPILE_SKIP = (f"not run: torch.compile unrolls the reference's Python loop over L; traced only "
                f"for L <= {COMPILE_MAX_LENGTH}")
INTERPRETER_SLOW = "not run on CPU: the Triton interpreter takes minutes at this shape"
FAST_IS_REFERENCE = ("not run: on CUDA the fast backend runs the reference (the numba fast path "
                     "reads CPU memory only); see the reference row")


def cases(device: str, smoke: bool) -> List[harness.Shape]:
    if smoke:
        return [harness.Shape("smoke", {"batch": 1, "dim": 4, "L": 8, "N": 4})]
    result = []
    for case in shapes.sequence_shapes(device):
        skip = {}
        if case["length"] > COMPILE_MAX_LENGTH:
            skip["compile"] = COMPILE_SKIP
        if device == "cpu":
            skip["triton"] = INTERPRETER_SLOW
        else:
            skip["fast"] = FAST_IS_REFERENCE
        result.append(harness.Shape(case["label"], {"batch": case["batch"], "dim": case["dim"],
                                                    "L": case["length"], "N": case["nstate"]}, skip))
    return result


def make(params: Dict[str, int], dtype: torch.dtype, device, requires_grad: bool) -> tuple:
    from kernels.selective_scan.inputs import make_inputs

    return make_inputs(params["batch"], params["dim"], params["L"], params["N"], dtype=dtype,
                       device=device, requires_grad=requires_grad, seed=0)


def _reference(*tensors):
    from kernels.selective_scan import selective_scan_reference

    return selective_scan_reference(*tensors, delta_softplus=True)


def _engine(backend: str):
    from kernels import selective_scan

    return lambda *tensors: selective_scan(*tensors, delta_softplus=True, backend=backend)


provider = harness.make_provider(_reference, _engine)


def counted_bytes(params: Dict[str, int], itemsize: int) -> Dict[str, int]:
    from kernels.selective_scan.cost import minimum_traffic

    traffic = minimum_traffic(params["batch"], params["dim"], params["L"], params["N"], 1, itemsize)
    return {mode: t.bytes for mode, t in traffic.items()}


BENCH = harness.OpBench("selective_scan", cases, make, provider, counted_bytes)

if __name__ == "__main__":
    sys.exit(harness.main(only="selective_scan"))
