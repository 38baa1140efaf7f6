"""Cost model of grid_sample_3d: the traffic of its fused Triton kernels and the minimum any
implementation must move (``{"fwd": Traffic, "bwd": Traffic}``), and its cases for the traffic
table (``python -m bench.traffic``)."""
from __future__ import annotations

import functools

import torch

from ..cost import Traffic, TrafficCase
from .inputs import make_inputs
from .op import grid_sample_3d


# grid_sample_3d: input (N, C, D, H, W), grid (N, Do, Ho, Wo, 3), out (N, C, Do, Ho, Wo).

def fused_traffic(N: int, C: int, volume: int, points: int, itemsize: int
                              ) -> dict[str, Traffic]:
    """Traffic of the grid_sample_3d Triton kernels (gradients for input and grid).

    Forward, one launch: reads the grid once (3·N·P·s, P output points), gathers the 8 corners of
    every channel (counted as the input once, N·C·V·s, V = D·H·W: corners of neighbouring points
    are shared through L1/L2 when the grid is smooth), writes out once (N·C·P·s).

    Backward: a memset of the fp32 input-gradient buffer (N·C·V·4) and the kernel (plus a cast
    for 2-byte dtypes). The kernel reads grad_out (N·C·P·s), the grid and the input corners again
    (for the grid gradient), writes grad_grid (3·N·P·s), and its 8 fp32 atomic adds per point and
    channel are counted as one read and one write of the buffer (L2-resident).
    """
    fp32 = 4
    grid, out = 3 * N * points * itemsize, N * C * points * itemsize
    source, buffer = N * C * volume * itemsize, N * C * volume * fp32
    forward = Traffic(launches=1, bytes_read=grid + source, bytes_written=out)
    backward = Traffic(launches=2, bytes_read=out + grid + source + buffer,
                       bytes_written=buffer + grid + buffer)
    if itemsize < fp32:
        backward = backward + Traffic(launches=1, bytes_read=buffer, bytes_written=source)
    return {"fwd": forward, "bwd": backward}


def minimum_traffic(N: int, C: int, volume: int, points: int, itemsize: int
                                ) -> dict[str, Traffic]:
    """Each input read once, each output written once, one launch each way."""
    grid, out, source = 3 * N * points * itemsize, N * C * points * itemsize, N * C * volume * itemsize
    return {"fwd": Traffic(launches=1, bytes_read=grid + source, bytes_written=out),
            "bwd": Traffic(launches=1, bytes_read=out + grid + source, bytes_written=source + grid)}


def traffic_cases(N: int = 4, C: int = 32, D: int = 16, H: int = 64, W: int = 64) -> list[TrafficCase]:
    """grid_sample_3d over a base-shape volume, one output point per voxel, border padding, fp32."""
    volume = D * H * W
    sample = lambda backend: lambda *a: grid_sample_3d(*a, padding_mode="border",  # noqa: E731
                                                       backend=backend)
    # the fast path's row keeps its label "torch" (its backend's old name) across versions
    return [TrafficCase(op="grid_sample_3d", shape=f"N={N} C={C} D={D} H={H} W={W} (out = in)",
                 dtype=torch.float32,
                 make_inputs=functools.partial(make_inputs, N, C, D, H, W, dtype=torch.float32,
                                               requires_grad=True),
                 eager_paths={"reference": sample("reference"), "torch": sample("fast")},
                 fused=fused_traffic(N, C, volume, volume, 4),
                 minimum=minimum_traffic(N, C, volume, volume, 4))]
