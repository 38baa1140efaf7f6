"""Cost model of selective_state_update: the traffic of its fused Triton kernels and the minimum any
implementation must move (``{"fwd": Traffic, "bwd": Traffic}``), and its cases for the traffic
table (``python -m bench.traffic``)."""
from __future__ import annotations

import functools

import torch

from ..cost import Traffic, TrafficCase
from .inputs import make_inputs
from .op import selective_state_update


# selective_state_update: state (batch, dim, N) fp32 in place; x, dt, z, out (batch, dim);
# B, C (batch, G, N); A (dim, N); D, dt_bias (dim,). Inference only: forward.

def fused_traffic(batch: int, dim: int, N: int, G: int, itemsize: int) -> dict[str, Traffic]:
    """The recurrence-step Triton kernel (with D, z, dt_bias), which is also the minimum: one launch
    reads the fp32 state once and writes it back once in place (2·batch·dim·N·4), reads x, dt, z
    and writes out once (4·batch·dim·s), reads B and C (2·batch·G·N·s), A (dim·N·4), D and dt_bias
    (2·dim·4)."""
    fp32 = 4
    state = batch * dim * N * fp32
    read = (state + 3 * batch * dim * itemsize + 2 * batch * G * N * itemsize
            + dim * N * fp32 + 2 * dim * fp32)
    step = Traffic(launches=1, bytes_read=read, bytes_written=state + batch * dim * itemsize)
    return {"fwd": step}


def minimum_traffic(batch: int, dim: int, N: int, G: int, itemsize: int) -> dict[str, Traffic]:
    """The fewest bytes one step can move: the fused kernel's own traffic (it reads every input and
    the state once and writes the state and out once)."""
    return fused_traffic(batch, dim, N, G, itemsize)


def traffic_cases(batch: int = 2, dim: int = 512, N: int = 16) -> list[TrafficCase]:
    """One streaming step of a Mamba block (d_model 256, expand 2: dim 512), fp32."""
    fused, minimum = fused_traffic(batch, dim, N, 1, 4), minimum_traffic(batch, dim, N, 1, 4)
    step = lambda backend: lambda *a: selective_state_update(*a, dt_softplus=True,  # noqa: E731
                                                             backend=backend)
    return [TrafficCase(op="selective_state_update", shape=f"batch={batch} dim={dim} N={N} G=1",
                 dtype=torch.float32,
                 make_inputs=functools.partial(make_inputs, batch, dim, N, dtype=torch.float32),
                 eager_paths={"reference": step("reference"), "torch": step("fast")},
                 fused=fused, minimum=minimum, directions=("fwd",))]
