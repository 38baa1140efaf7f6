"""Triton kernels of trilinear ``grid_sample_3d``, forward and backward, and their launchers.

Shapes: input (N, C, D, H, W), grid (N, Do, Ho, Wo, 3) in (x, y, z), out (N, C, Do, Ho, Wo);
P = Do·Ho·Wo output points, V = D·H·W voxels, s bytes per element of input/grid/out.
Index math is ATen's (``kernels/_trilinear.py``). A program takes BLOCK_P output points of one
batch element and every channel, BLOCK_C channels at a time, as a (BLOCK_C, BLOCK_P) tile (points along the
threads, so a thread keeps one point's offsets and weights and out is stored coalesced): each
grid point is read and turned into 8 corner offsets and weights once, then reused for all C.

Traffic:
- forward reads the grid once (3·N·P·s), gathers 8 corners per output element (at most
  8·N·C·P·s, less where neighbouring points share corners through cache; at least the input's
  N·C·V·s when the grid covers it), writes out once (N·C·P·s).
- backward recomputes the corner offsets and weights from the grid (nothing of forward is
  saved), reads grad_out once (N·C·P·s) and the grid once (3·N·P·s); for grad_grid it gathers the
  8 corners again (up to 8·N·C·P·s) and writes grad_grid once (3·N·P·s); for grad_input it does
  8 fp32 atomic adds per grad_out element (8·N·C·P·4 bytes of read-modify-write) into a zeroed
  fp32 buffer (N·C·V·4 written by the memset, then one cast to the input dtype when that is
  fp16/bf16: N·C·V·(4 + s)).

Why atomics for grad_input: the scatter pattern is data dependent (which output points land in a
voxel's cell depends on the grid values), so a gather formulation (one program per input voxel
summing its contributions) needs the inverse map of the grid, which is a sort of all N·P points
by cell. Atomic adds make the sum order, so the bits of grad_input, vary from run to run; the op
raises under ``torch.use_deterministic_algorithms(True)`` (see ``op.py``). grad_grid has no
atomics and is deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._registry import LaunchConfig, register_kernel
from ..tuning import dtype_label, pow2_bucket, shape_key, tuned_config
from .._trilinear import axis_cell, source_index, trilinear_corners


@triton.jit
def _source_indices(grid_ptr, at, in_range, D, H, W, ALIGN_CORNERS: tl.constexpr,
                    BORDER: tl.constexpr):
    """Source indices of the grid points at ``at`` (x along W, y along H, z along D), their
    derivatives with respect to the normalized coordinates, and whether all three are numbers."""
    x, dx, x_defined = source_index(
        tl.load(grid_ptr + at, mask=in_range, other=0.0).to(tl.float32), W, ALIGN_CORNERS, BORDER)
    y, dy, y_defined = source_index(
        tl.load(grid_ptr + at + 1, mask=in_range, other=0.0).to(tl.float32), H, ALIGN_CORNERS, BORDER)
    z, dz, z_defined = source_index(
        tl.load(grid_ptr + at + 2, mask=in_range, other=0.0).to(tl.float32), D, ALIGN_CORNERS, BORDER)
    return x, dx, y, dy, z, dz, x_defined & y_defined & z_defined


@triton.jit
def _grid_sample_3d_fwd_kernel(input_ptr, grid_ptr, out_ptr, C, D, H, W, P,
                               ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr,
                               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[n, :, p] for BLOCK_P points p of batch element n = program_id(1)."""
    n = tl.program_id(1).to(tl.int64)
    first = tl.program_id(0).to(tl.int64) * BLOCK_P  # the block's first point (int64 scalar)
    lanes = tl.arange(0, BLOCK_P)
    in_range = lanes < P - first
    x, _, y, _, z, _, _ = _source_indices(grid_ptr + (n * P + first) * 3, lanes.to(tl.int64) * 3,
                                          in_range, D, H, W, ALIGN_CORNERS, BORDER)
    offsets, weights, masks = trilinear_corners(x, y, z, D, H, W)
    volume = input_ptr + n * C * D * H * W
    out_block = out_ptr + n * C * P + first
    for c0 in range(0, C, BLOCK_C):
        channels = c0 + tl.arange(0, BLOCK_C)
        tile = (channels < C)[:, None] & in_range[None, :]
        channel_base = volume + (channels.to(tl.int64) * D * H * W)[:, None]
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for i in tl.static_range(8):
            value = tl.load(channel_base + offsets[i][None, :], mask=tile & masks[i][None, :],
                            other=0.0).to(tl.float32)
            acc += weights[i][None, :] * value
        out_at = (channels.to(tl.int64) * P)[:, None] + lanes[None, :]
        tl.store(out_block + out_at, acc.to(out_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _grid_sample_3d_bwd_kernel(grad_out_ptr, input_ptr, grid_ptr, grad_input_ptr, grad_grid_ptr,
                               C, D, H, W, P,
                               ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr,
                               INPUT_GRAD: tl.constexpr, GRID_GRAD: tl.constexpr,
                               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """grad_input (fp32, zeroed, atomically accumulated) and grad_grid for BLOCK_P points."""
    n = tl.program_id(1).to(tl.int64)
    first = tl.program_id(0).to(tl.int64) * BLOCK_P  # the block's first point (int64 scalar)
    lanes = tl.arange(0, BLOCK_P)
    in_range = lanes < P - first
    block_grid = (n * P + first) * 3
    at = lanes.to(tl.int64) * 3
    x, dx, y, dy, z, dz, defined = _source_indices(grid_ptr + block_grid, at, in_range, D, H, W,
                                                   ALIGN_CORNERS, BORDER)
    corner_offsets, weights, masks = trilinear_corners(x, y, z, D, H, W)
    # offsets within a channel are < D·H·W < 2^31 (checked by the launcher): int32 keeps 8
    # registers free (at 128 registers on sm_80, int64 offsets spilled)
    offsets = (corner_offsets[0].to(tl.int32), corner_offsets[1].to(tl.int32),
               corner_offsets[2].to(tl.int32), corner_offsets[3].to(tl.int32),
               corner_offsets[4].to(tl.int32), corner_offsets[5].to(tl.int32),
               corner_offsets[6].to(tl.int32), corner_offsets[7].to(tl.int32))
    _, fx = axis_cell(x, W)
    _, fy = axis_cell(y, H)
    _, fz = axis_cell(z, D)
    wx = (1.0 - fx, fx)
    wy = (1.0 - fy, fy)
    wz = (1.0 - fz, fz)
    voxels = n * C * D * H * W
    grad_out_block = grad_out_ptr + n * C * P + first
    grad_x = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    grad_y = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    grad_z = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        channels = c0 + tl.arange(0, BLOCK_C)
        tile = (channels < C)[:, None] & in_range[None, :]
        out_at = (channels.to(tl.int64) * P)[:, None] + lanes[None, :]
        grad_out = tl.load(grad_out_block + out_at, mask=tile, other=0.0).to(tl.float32)
        if BORDER:  # a NaN point: forward read the border, backward sees it outside (as ATen)
            grad_out = tl.where(defined[None, :], grad_out, 0.0)
        channel_at = (voxels + channels.to(tl.int64) * D * H * W)[:, None]
        for i in tl.static_range(8):
            corner = tile & masks[i][None, :]
            corner_at = channel_at + offsets[i][None, :]
            if INPUT_GRAD:
                tl.atomic_add(grad_input_ptr + corner_at, weights[i][None, :] * grad_out,
                              mask=corner, sem="relaxed")
            if GRID_GRAD:
                value = tl.load(input_ptr + corner_at, mask=corner, other=0.0).to(tl.float32)
                pull = grad_out * value
                # corner bits (z, y, x) = (i >> 2, (i >> 1) & 1, i & 1); d weight / d x = ±wy·wz
                grad_x += ((2 * (i & 1) - 1) * (wy[(i >> 1) & 1] * wz[i >> 2]))[None, :] * pull
                grad_y += ((2 * ((i >> 1) & 1) - 1) * (wx[i & 1] * wz[i >> 2]))[None, :] * pull
                grad_z += ((2 * (i >> 2) - 1) * (wx[i & 1] * wy[(i >> 1) & 1]))[None, :] * pull
    if GRID_GRAD:
        element = grad_grid_ptr.dtype.element_ty
        grad_grid_at = grad_grid_ptr + block_grid + at
        tl.store(grad_grid_at, (tl.sum(grad_x, axis=0) * dx).to(element), mask=in_range)
        tl.store(grad_grid_at + 1, (tl.sum(grad_y, axis=0) * dy).to(element), mask=in_range)
        tl.store(grad_grid_at + 2, (tl.sum(grad_z, axis=0) * dz).to(element), mask=in_range)


BLOCK_P = 128
BLOCK_C = 4
NUM_WARPS = 4
_FLAGS = ((False, False), (False, True), (True, False), (True, True))
_GRAD_FLAGS = ((True, True), (True, False), (False, True))
# (BLOCK_P, warps) of each call class: the heuristic's first, then the tuner's alternative
# (``kernels.tuning``): half the points on half the warps (one point a thread, as the heuristic),
# twice the programs for small outputs.
TILES = ((BLOCK_P, NUM_WARPS), (64, 2))


def forward_config(align_corners: bool, border: bool, block_p: int = BLOCK_P,
                   num_warps: int = NUM_WARPS) -> LaunchConfig:
    """The launch configuration of the forward kernel (BLOCK_P points × BLOCK_C channels a step;
    channels beyond a multiple of BLOCK_C are masked lanes)."""
    return LaunchConfig({"ALIGN_CORNERS": align_corners, "BORDER": border,
                         "BLOCK_P": block_p, "BLOCK_C": BLOCK_C}, num_warps=num_warps)


def backward_config(align_corners: bool, border: bool, input_grad: bool, grid_grad: bool,
                    block_p: int = BLOCK_P, num_warps: int = NUM_WARPS) -> LaunchConfig:
    return LaunchConfig({"ALIGN_CORNERS": align_corners, "BORDER": border,
                         "INPUT_GRAD": input_grad, "GRID_GRAD": grid_grad,
                         "BLOCK_P": block_p, "BLOCK_C": BLOCK_C}, num_warps=num_warps)


def call_config(kernel, candidates, flags: dict, dtype: torch.dtype, points: int,
                device) -> LaunchConfig:
    """The tuned winner of the device's architecture among ``candidates`` (one call class's
    configs, the heuristic's first; shape key: the flags, dtype, N·Do·Ho·Wo output points to a
    power of two), else the first."""
    key = shape_key(**flags, dtype=dtype_label(dtype), points=pow2_bucket(points))
    return tuned_config("grid_sample_3d", kernel.__name__, key, candidates, device) or candidates[0]


_FWD_SIGNATURE = {
    "input_ptr": "*{dtype}:16", "grid_ptr": "*{dtype}:16", "out_ptr": "*{dtype}:16",
    "C": "i32", "D": "i32", "H": "i32", "W": "i32", "P": "i32",
    "ALIGN_CORNERS": "constexpr", "BORDER": "constexpr", "BLOCK_P": "constexpr", "BLOCK_C": "constexpr",
}
_BWD_SIGNATURE = {
    "grad_out_ptr": "*{dtype}:16", "input_ptr": "*{dtype}:16", "grid_ptr": "*{dtype}:16",
    "grad_input_ptr": "*fp32:16", "grad_grid_ptr": "*{dtype}:16",
    "C": "i32", "D": "i32", "H": "i32", "W": "i32", "P": "i32",
    "ALIGN_CORNERS": "constexpr", "BORDER": "constexpr", "INPUT_GRAD": "constexpr",
    "GRID_GRAD": "constexpr", "BLOCK_P": "constexpr", "BLOCK_C": "constexpr",
}
register_kernel("grid_sample_3d", _grid_sample_3d_fwd_kernel, _FWD_SIGNATURE,
                [forward_config(ac, border, *tile) for tile in TILES for ac, border in _FLAGS],
                dtypes=("fp32", "fp16", "bf16"))
register_kernel("grid_sample_3d", _grid_sample_3d_bwd_kernel, _BWD_SIGNATURE,
                [backward_config(ac, border, ig, gg, *tile) for tile in TILES
                 for ac, border in _FLAGS for ig, gg in _GRAD_FLAGS],
                dtypes=("fp32", "fp16", "bf16"),
                notes="grad_input accumulates in fp32 by atomics; cast outside the kernel")


def _grid(N: int, P: int, cfg: LaunchConfig):
    return (triton.cdiv(P, cfg.constexprs["BLOCK_P"]), N)


def grid_sample_3d_forward_triton(input: torch.Tensor, grid: torch.Tensor, border: bool,
                                  align_corners: bool) -> torch.Tensor:
    """Contiguous input (N, C, D, H, W), grid (N, Do, Ho, Wo, 3) of one dtype → out (N, C, Do, Ho, Wo)."""
    N, C, D, H, W = input.shape
    Do, Ho, Wo = grid.shape[1:4]
    P = Do * Ho * Wo
    out = torch.empty((N, C, Do, Ho, Wo), device=input.device, dtype=input.dtype)
    cfg = call_config(_grid_sample_3d_fwd_kernel,
                      [forward_config(align_corners, border, *tile) for tile in TILES],
                      dict(align_corners=align_corners, border=border), input.dtype, N * P,
                      input.device)
    _grid_sample_3d_fwd_kernel[_grid(N, P, cfg)](input, grid, out, C, D, H, W, P,
                                            num_warps=cfg.num_warps, enable_fp_fusion=True,
                                            **cfg.constexprs)
    return out


def grid_sample_3d_backward_triton(grad_out: torch.Tensor, input: torch.Tensor, grid: torch.Tensor,
                                   border: bool, align_corners: bool, input_grad: bool, grid_grad: bool):
    """Contiguous grad_out, input, grid → (grad_input or None, grad_grid or None)."""
    N, C, D, H, W = input.shape
    if D * H * W >= 2 ** 31:
        raise ValueError(f"input has {D * H * W} voxels per channel; the triton backward of "
                         "grid_sample_3d takes fewer than 2^31 (int32 corner offsets); use "
                         "backend='fast'")
    P = grad_out.shape[2] * grad_out.shape[3] * grad_out.shape[4]
    grad_input = torch.zeros(input.shape, device=input.device, dtype=torch.float32) if input_grad else None
    grad_grid = torch.empty_like(grid) if grid_grad else None
    cfg = call_config(_grid_sample_3d_bwd_kernel,
                      [backward_config(align_corners, border, input_grad, grid_grad, *tile)
                       for tile in TILES],
                      dict(align_corners=align_corners, border=border, input_grad=input_grad,
                           grid_grad=grid_grad), input.dtype, N * P, input.device)
    _grid_sample_3d_bwd_kernel[_grid(N, P, cfg)](
        grad_out, input, grid,
        grad_input if input_grad else torch.zeros(1, device=input.device, dtype=torch.float32),
        grad_grid if grid_grad else grid, C, D, H, W, P, num_warps=cfg.num_warps,
        enable_fp_fusion=True, **cfg.constexprs)
    if input_grad and input.dtype != torch.float32:
        grad_input = grad_input.to(input.dtype)
    return grad_input, grad_grid
