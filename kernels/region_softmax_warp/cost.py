"""Cost model of region_softmax_warp: the traffic of its fused Triton kernels and the minimum any
implementation must move (``{"fwd": Traffic, "bwd": Traffic}``), and its cases for the traffic
table (``python -m bench.traffic``)."""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from ..cost import Traffic, TrafficCase
from .inputs import make_inputs
from .op import region_softmax_warp
from .reference import region_softmax_warp_reference


# region_softmax_warp: feature F_id (F_b, C, D, H, W) with F_b = 1 (shared) or B; logits
# (B, R, D, H, W); displacement (B, R, 3, D, H, W); mask (B, 1, D, H, W); out (B, C, D, H, W).

def fused_traffic(B: int, C: int, R: int, D: int, H: int, W: int, feature_batch: int,
                       itemsize: int) -> dict[str, Traffic]:
    """Traffic of the region_softmax_warp Triton kernels (one program per 128 output voxels).

    Forward, one launch: reads logits and displacement once (4·N·R·s, N = B·D·H·W), the mask
    (N·s), F_id (F_b·C·V·s distinct bytes, V = D·H·W: the 8 trilinear corners of every channel are
    gathered around the voxel's own position and counted once, which holds for flows of a few
    voxels), β; writes out once (B·C·V·s).

    Backward: a memset of the fp32 feature-gradient buffer (F_b·C·V·4), the kernel, the sum of
    the per-program β partials (and a cast of the feature gradient for 2-byte dtypes). The kernel
    reads grad_out (B·C·V·s), the mask, F_id, and logits and displacement twice (8·N·R·s, the
    worst case: the second pass may come from L2); writes grad_logits and grad_displacement
    (4·N·R·s), grad_mask (N·s), a β partial per program; its 9 fp32 atomic adds per voxel and
    channel land in the feature-gradient buffer, counted as one read and one write of it (it
    stays in L2 at the base shape: 8.4 MB).
    """
    fp32 = 4
    voxels, volume = B * D * H * W, D * H * W
    programs = math.ceil(voxels / 128)
    per_region = voxels * R * itemsize
    out_bytes = B * C * volume * itemsize
    feature = feature_batch * C * volume * itemsize
    grad_buffer = feature_batch * C * volume * fp32
    forward = Traffic(launches=1, bytes_read=4 * per_region + voxels * itemsize + feature + fp32,
                      bytes_written=out_bytes)
    backward = Traffic(
        launches=3,
        bytes_read=out_bytes + voxels * itemsize + feature + 8 * per_region + grad_buffer
        + programs * fp32,
        bytes_written=grad_buffer + 4 * per_region + voxels * itemsize + grad_buffer
        + programs * fp32 + fp32)
    if itemsize < fp32:
        backward = backward + Traffic(launches=1, bytes_read=grad_buffer, bytes_written=feature)
    return {"fwd": forward, "bwd": backward}


def minimum_traffic(B: int, C: int, R: int, D: int, H: int, W: int, feature_batch: int,
                         itemsize: int) -> dict[str, Traffic]:
    """Each input read once and each output written once, one launch each way (β ignored)."""
    voxels, volume = B * D * H * W, D * H * W
    per_region = voxels * R * itemsize
    feature = feature_batch * C * volume * itemsize
    out_bytes = B * C * volume * itemsize
    inputs = 4 * per_region + voxels * itemsize + feature
    return {"fwd": Traffic(launches=1, bytes_read=inputs, bytes_written=out_bytes),
            "bwd": Traffic(launches=1, bytes_read=inputs + out_bytes,
                           bytes_written=feature + 4 * per_region + voxels * itemsize)}


def traffic_cases(B: int = 4, C: int = 32, R: int = 10, D: int = 16, H: int = 64, W: int = 64,
               dtypes: Sequence[torch.dtype] = (torch.float32,)) -> list[TrafficCase]:
    """region_softmax_warp at the base model's shape: B frames warped from one shared F_id."""
    beta = 0.2
    cases = []
    for dtype in dtypes:
        itemsize = torch.empty((), dtype=dtype).element_size()
        cases.append(TrafficCase(
            op="region_softmax_warp", shape=f"B={B} C={C} R={R} D={D} H={H} W={W} F_b=1",
            dtype=dtype, make_inputs=functools.partial(make_inputs, B, C, R, D, H, W, 1, dtype=dtype,
                                                       requires_grad=True, beta=None,
                                                       displacement_scale=0.05),
            # β a float, as the model passes it; the fast path's rows keep their label "torch"
            eager_paths={"reference": lambda *a: region_softmax_warp_reference(*a, beta),
                         "torch": lambda *a: region_softmax_warp(*a, beta, backend="fast")},
            fused=fused_traffic(B, C, R, D, H, W, 1, itemsize),
            minimum=minimum_traffic(B, C, R, D, H, W, 1, itemsize)))
    return cases
