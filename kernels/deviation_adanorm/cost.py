"""Cost model of deviation_adanorm: the traffic of its fused Triton kernels and the minimum any
implementation must move (``{"fwd": Traffic, "bwd": Traffic}``), and its cases for the traffic
table (``python -m bench.traffic``)."""
from __future__ import annotations

import functools
from typing import Sequence

import torch

from ..cost import Traffic, TrafficCase
from .inputs import make_inputs
from .op import deviation_adanorm
from .reference import deviation_adanorm_reference


# deviation_adanorm: v (B, N+1, G), scale/shift/out (B, N, R, G).

def fused_traffic(B: int, N: int, R: int, G: int, itemsize: int) -> dict[str, Traffic]:
    """Traffic of the fused deviation_adanorm Triton kernels, s = ``itemsize`` bytes per element.

    Forward, one launch: reads v (B·(N+1)·G·s; v_0 is shared by a batch's N rows and served from
    L2), scale and shift (2·B·N·R·G·s); writes out (B·N·R·G·s) and each row's fp32 mean and 1/std
    (8·B·N bytes).

    Backward, two launches (a memset of the B int32 arrival counters, then the kernel): reads
    grad_out and scale (2·B·N·R·G·s), v (B·(N+1)·G·s) and the rows' mean and 1/std (8·B·N);
    writes grad_scale (B·N·R·G·s) and grad_v (B·(N+1)·G·s). The last program of each batch
    re-reads the batch's N frame-gradient rows to form grad_v_0 (B·N·G·s); the memset writes 4·B
    bytes. grad_shift is grad_out itself: nothing is written for it.
    """
    frames = B * (N + 1) * G * itemsize  # v, grad_v
    regions = B * N * R * G * itemsize  # each of scale, shift, out, grad_out, grad_scale
    row_stats = 2 * 4 * B * N  # fp32 mean and 1/std per row (b, i)
    frame_gradients = B * N * G * itemsize  # grad_v_1..N, re-read for grad_v_0
    arrival_counters = 4 * B
    return {
        "fwd": Traffic(launches=1, bytes_read=frames + 2 * regions,
                       bytes_written=regions + row_stats),
        "bwd": Traffic(launches=2, bytes_read=2 * regions + frames + row_stats + frame_gradients,
                       bytes_written=regions + frames + arrival_counters),
    }


def minimum_traffic(B: int, N: int, R: int, G: int, itemsize: int) -> dict[str, Traffic]:
    """The fewest bytes deviation_adanorm can move, in one launch each way.

    Forward reads v, scale and shift once and writes out once. Backward reads grad_out and the
    saved inputs v and scale once and writes grad_v and grad_scale once (grad_shift equals
    grad_out, so it needs no bytes).
    """
    frames = B * (N + 1) * G * itemsize
    regions = B * N * R * G * itemsize
    return {
        "fwd": Traffic(launches=1, bytes_read=frames + 2 * regions, bytes_written=regions),
        "bwd": Traffic(launches=1, bytes_read=2 * regions + frames, bytes_written=regions + frames),
    }


def traffic_cases(B: int = 4, N: int = 24, R: int = 10, G: int = 768,
                  dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16)) -> list[TrafficCase]:
    """deviation_adanorm at the model's shape: B clips of T = N + 1 frames, R = λ regions."""
    itemsizes = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in dtypes}
    # the fast path's rows keep their label "torch" (its backend's old name) across versions
    return [TrafficCase(op="deviation_adanorm", shape=f"B={B} N={N} (T={N + 1}) R={R} G={G}", dtype=dtype,
                 make_inputs=functools.partial(make_inputs, B, N + 1, R, G, dtype=dtype,
                                               requires_grad=True),
                 eager_paths={"reference": deviation_adanorm_reference,
                              "torch": functools.partial(deviation_adanorm, backend="fast")},
                 fused=fused_traffic(B, N, R, G, itemsizes[dtype]),
                 minimum=minimum_traffic(B, N, R, G, itemsizes[dtype]))
            for dtype in dtypes]
