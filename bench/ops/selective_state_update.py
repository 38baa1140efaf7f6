"""selective_state_update: one streaming step of the Mamba-1 recurrence with D, z, dt_bias and
softplus, advancing the state in place. Forward only: the op has no autograd (it is inference's
step), so its fwd+bwd rows carry that note and no time.

Shapes (``bench/ops/shapes.py``): each config's step (batch 1, dim = d_inner, N = d_state) and
mamba_ssm's (batch 2, dim 256 and 2048, N 16); on CPU tiny's step and mamba_ssm's dim 256.
Run alone: ``python -m bench.ops.selective_state_update``.
"""
from __future__ import annotations

import sys
from typing import Dict, List

import torch

from bench.ops import harness, shapes



def cases(device: str, smoke: bool) -> List[harness.Shape]:
    if smoke:
        return [harness.Shape("smoke", {"batch": 1, "dim": 8, "N": 4})]
    result = []
    for config in (("tiny",) if device == "cpu" else shapes.CONFIGS):
        block = shapes.mamba_block(config)
        result.append(harness.Shape(f"{config} step", {"batch": 1, "dim": block["dim"],
                                                       "N": block["nstate"]}))
    dims = shapes.MAMBA_SSM_DIMS[:1] if device == "cpu" else shapes.MAMBA_SSM_DIMS
    return result + [harness.Shape(f"mamba_ssm dim={dim}", {"batch": shapes.MAMBA_SSM_BATCH,
                                                             "dim": dim, "N": shapes.MAMBA_SSM_NSTATE})
                     for dim in dims]


def make(params: Dict[str, int], dtype: torch.dtype, device, requires_grad: bool) -> tuple:
    from kernels.selective_state_update.inputs import make_inputs

    return make_inputs(params["batch"], params["dim"], params["N"], dtype=dtype, device=device,
                       seed=0)


def _reference(*tensors):
    from kernels.selective_state_update import selective_state_update_reference

    return selective_state_update_reference(*tensors, dt_softplus=True)


def _engine(backend: str):
    from kernels import selective_state_update

    return lambda *tensors: selective_state_update(*tensors, dt_softplus=True, backend=backend)


provider = harness.make_provider(_reference, _engine)


def counted_bytes(params: Dict[str, int], itemsize: int) -> Dict[str, int]:
    from kernels.selective_state_update.cost import minimum_traffic

    traffic = minimum_traffic(params["batch"], params["dim"], params["N"], 1, itemsize)
    return {mode: t.bytes for mode, t in traffic.items()}


BENCH = harness.OpBench("selective_state_update", cases, make, provider, counted_bytes,
                        autograd=False)

if __name__ == "__main__":
    sys.exit(harness.main(only="selective_state_update"))
