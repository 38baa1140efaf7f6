"""grid_sample_3d: trilinear sampling of a 5-D volume, border padding (the warp's sampling step).

Shapes: each config's render window and stage-1 step (``bench/ops/shapes.py``): F_id's
(C, depth, size, size) volume expanded to the frames (N), one point per voxel. On CPU only tiny's,
and the Triton interpreter only at the stage-1 step. Run alone: ``python -m bench.ops.grid_sample_3d``.
"""
from __future__ import annotations

import sys
from typing import Dict, List

import torch

from bench.ops import harness, shapes

INTERPRETER_SLOW = "not run on CPU: the Triton interpreter takes minutes at this shape"


def cases(device: str, smoke: bool) -> List[harness.Shape]:
    if smoke:
        return [harness.Shape("smoke", {"N": 1, "C": 4, "D": 2, "H": 6, "W": 7})]
    result = []
    for config in (("tiny",) if device == "cpu" else shapes.CONFIGS):
        for case in shapes.renderer_shapes(config):
            params = {"N": case["frames"], "C": case["feature_channels"], "D": case["depth"],
                      "H": case["size"], "W": case["size"]}
            skip = ({"triton": INTERPRETER_SLOW}
                    if device == "cpu" and "render window" in case["label"] else {})
            result.append(harness.Shape(case["label"], params, skip))
    return result


def make(params: Dict[str, int], dtype: torch.dtype, device, requires_grad: bool) -> tuple:
    from kernels.grid_sample_3d.inputs import make_inputs

    return make_inputs(params["N"], params["C"], params["D"], params["H"], params["W"],
                       dtype=dtype, device=device, requires_grad=requires_grad, seed=0)


def _reference(volume, grid):
    from kernels.grid_sample_3d import grid_sample_3d_reference

    return grid_sample_3d_reference(volume, grid, "border", False)


def _engine(backend: str):
    from kernels import grid_sample_3d

    return lambda volume, grid: grid_sample_3d(volume, grid, "border", False, backend=backend)


provider = harness.make_provider(_reference, _engine)


def counted_bytes(params: Dict[str, int], itemsize: int) -> Dict[str, int]:
    from kernels.grid_sample_3d.cost import minimum_traffic

    volume = params["D"] * params["H"] * params["W"]
    traffic = minimum_traffic(params["N"], params["C"], volume, volume, itemsize)
    return {mode: t.bytes for mode, t in traffic.items()}


BENCH = harness.OpBench("grid_sample_3d", cases, make, provider, counted_bytes)

if __name__ == "__main__":
    sys.exit(harness.main(only="grid_sample_3d"))
