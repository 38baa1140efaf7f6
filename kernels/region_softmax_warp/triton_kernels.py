"""Triton kernels of the region-softmax warp, forward and backward, and their launchers.

One program handles BLOCK output voxels (b, z, y, x) of the B·D·H·W; per voxel it runs an online
softmax over the R region logits ℓ that accumulates flow = Σ_r w_r·Δ_r in the same pass, adds the
identity grid, maps the grid point to source indices (``kernels._trilinear``: PyTorch's
``grid_sample`` index math), and then, channel by channel, gathers the 8 trilinear corners of F_id,
blends with the mask and applies the leaky activation. w, flow, grid and warped live in registers
only. A feature of batch 1 is read through a batch stride of 0 (shared, never copied).

Traffic, with N = B·D·H·W output voxels, V = D·H·W, F_b the feature's batch (1 or B) and s bytes
per element (fp32 atomics and β partials are 4 bytes):
- forward reads logits N·R·s and displacement 3·N·R·s once, the mask N·s, β; reads F_id's voxel
  at the output position (B·C·V·s accesses, F_b·C·V·s distinct bytes) and its 8 trilinear corners
  per channel (gathered around the same position: served from L1/L2, F_b·C·V·s distinct bytes for
  small flows); writes out B·C·V·s once. Minimum: N·(4R + 1)·s + F_b·C·V·s + B·C·V·s.
- backward reads grad_out B·C·V·s, the mask N·s and F_id as forward; reads logits and displacement
  twice (the softmax statistics and flow first, then w_r and Δ_r again for their gradients: 8·N·R·s
  worst case, the second pass mostly from L2); writes grad_logits N·R·s, grad_displacement
  3·N·R·s and grad_mask N·s once, one fp32 β partial per program; ∂L/∂F_id goes to a zeroed fp32
  buffer (F_b·C·V·4 bytes) through 9 fp32 atomic adds per output voxel and channel (the blend's
  direct term (1 − M)·g_m and the 8-corner scatter of M·g_m·weights), then is cast to the
  feature's dtype in torch (read F_b·C·V·4, write F_b·C·V·s; skipped for fp32).
Backward recomputes w, flow, grid and warped; forward saves nothing but its inputs. The atomics
make the feature gradient's summation order, hence its last bits, vary from run to run.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._registry import LaunchConfig, register_kernel
from ..tuning import dtype_label, pow2_bucket, shape_key, tuned_config
from .._trilinear import axis_cell, source_index, trilinear_corners

BLOCK_VOXELS = 128
CONFIG = LaunchConfig({"BLOCK": BLOCK_VOXELS}, num_warps=4)


@triton.jit
def _grid_point(logits_ptr, displacement_ptr, voxel, valid, R, D, H, W,
                ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr):
    """Online softmax over R and flow for each voxel, then the source indices of the grid point.
    Returns (spatial index, running max, softmax sum, flow x/y/z, source index x/y/z, their
    derivatives d index / d grid, and whether the three indices are numbers)."""
    V = D.to(tl.int64) * H * W
    b = voxel // V
    spatial = voxel - b * V
    x = spatial % W
    row = spatial // W
    y = row % H
    z = row // H
    logit_at = logits_ptr + b * R * V + spatial
    shift_at = displacement_ptr + b * R * 3 * V + spatial
    running_max = tl.full(voxel.shape, float("-inf"), tl.float32)
    total = tl.zeros(voxel.shape, tl.float32)
    flow_x = tl.zeros(voxel.shape, tl.float32)
    flow_y = tl.zeros(voxel.shape, tl.float32)
    flow_z = tl.zeros(voxel.shape, tl.float32)
    for r in range(R):
        logit = tl.load(logit_at + r * V, mask=valid, other=0.0).to(tl.float32)
        new_max = tl.maximum(running_max, logit)
        rescale = tl.exp(running_max - new_max)
        p = tl.exp(logit - new_max)
        total = total * rescale + p
        at = shift_at + r * (3 * V)
        flow_x = flow_x * rescale + p * tl.load(at, mask=valid, other=0.0).to(tl.float32)
        flow_y = flow_y * rescale + p * tl.load(at + V, mask=valid, other=0.0).to(tl.float32)
        flow_z = flow_z * rescale + p * tl.load(at + 2 * V, mask=valid, other=0.0).to(tl.float32)
        running_max = new_max
    flow_x = flow_x / total
    flow_y = flow_y / total
    flow_z = flow_z / total
    if ALIGN_CORNERS:
        base_x = tl.where(W > 1, x.to(tl.float32) * (2.0 / tl.maximum(W - 1, 1)) - 1.0, -1.0)
        base_y = tl.where(H > 1, y.to(tl.float32) * (2.0 / tl.maximum(H - 1, 1)) - 1.0, -1.0)
        base_z = tl.where(D > 1, z.to(tl.float32) * (2.0 / tl.maximum(D - 1, 1)) - 1.0, -1.0)
    else:
        base_x = (2.0 * x.to(tl.float32) + 1.0) / W - 1.0
        base_y = (2.0 * y.to(tl.float32) + 1.0) / H - 1.0
        base_z = (2.0 * z.to(tl.float32) + 1.0) / D - 1.0
    index_x, slope_x, defined_x = source_index(base_x + flow_x, W, ALIGN_CORNERS, BORDER)
    index_y, slope_y, defined_y = source_index(base_y + flow_y, H, ALIGN_CORNERS, BORDER)
    index_z, slope_z, defined_z = source_index(base_z + flow_z, D, ALIGN_CORNERS, BORDER)
    return (spatial, running_max, total, flow_x, flow_y, flow_z,
            index_x, index_y, index_z, slope_x, slope_y, slope_z, defined_x & defined_y & defined_z)


@triton.jit
def _warp_fwd_kernel(feature_ptr, logits_ptr, displacement_ptr, mask_ptr, beta_ptr, out_ptr,
                     n_voxels, C, R, D, H, W, feature_batch_stride,
                     ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr, BLOCK: tl.constexpr):
    """feature (F_b, C, D, H, W), logits (B, R, D, H, W), displacement (B, R, 3, D, H, W),
    mask (B, 1, D, H, W), β (fp32 scalar) → out (B, C, D, H, W); feature_batch_stride is C·V,
    or 0 for a shared feature."""
    voxel = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    valid = voxel < n_voxels
    (spatial, _, _, _, _, _, index_x, index_y, index_z, _, _, _, _) = _grid_point(
        logits_ptr, displacement_ptr, voxel, valid, R, D, H, W, ALIGN_CORNERS, BORDER)
    offsets, weights, inside = trilinear_corners(index_x, index_y, index_z, D, H, W)
    V = D.to(tl.int64) * H * W
    b = voxel // V
    blend = tl.load(mask_ptr + voxel, mask=valid, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr)
    source = feature_ptr + b * feature_batch_stride
    out_at = out_ptr + b * C * V + spatial
    for c in range(C):
        plane = source + c * V
        warped = tl.zeros([BLOCK], tl.float32)
        for k in tl.static_range(8):
            corner = tl.load(plane + offsets[k], mask=inside[k] & valid, other=0.0).to(tl.float32)
            warped += weights[k] * corner
        centre = tl.load(plane + spatial, mask=valid, other=0.0).to(tl.float32)
        blended = centre + blend * (warped - centre)
        out = tl.where(blended > 0.0, blended, beta * blended)
        tl.store(out_at + c * V, out.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _warp_bwd_kernel(grad_out_ptr, feature_ptr, logits_ptr, displacement_ptr, mask_ptr, beta_ptr,
                     grad_feature_ptr, grad_logits_ptr, grad_displacement_ptr, grad_mask_ptr,
                     grad_beta_ptr, n_voxels, C, R, D, H, W, feature_batch_stride,
                     ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr, FEATURE_GRAD: tl.constexpr,
                     BLOCK: tl.constexpr):
    """Gradients for the voxels of one block: grad_feature (F_b, C, D, H, W) fp32, zeroed, takes
    atomic adds (only with FEATURE_GRAD); grad_logits, grad_displacement, grad_mask are written
    once; grad_beta holds one fp32 partial sum per program."""
    pid = tl.program_id(0)
    voxel = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    valid = voxel < n_voxels
    (spatial, running_max, total, flow_x, flow_y, flow_z, index_x, index_y, index_z,
     slope_x, slope_y, slope_z, defined) = _grid_point(logits_ptr, displacement_ptr, voxel, valid,
                                                       R, D, H, W, ALIGN_CORNERS, BORDER)
    corner_offsets, _, corner_inside = trilinear_corners(index_x, index_y, index_z, D, H, W)
    # spatial offsets are < D·H·W < 2^31 (checked by the launcher): int32 keeps 8 registers free
    offsets = (corner_offsets[0].to(tl.int32), corner_offsets[1].to(tl.int32),
               corner_offsets[2].to(tl.int32), corner_offsets[3].to(tl.int32),
               corner_offsets[4].to(tl.int32), corner_offsets[5].to(tl.int32),
               corner_offsets[6].to(tl.int32), corner_offsets[7].to(tl.int32))
    inside = (corner_inside[0] & valid, corner_inside[1] & valid, corner_inside[2] & valid,
              corner_inside[3] & valid, corner_inside[4] & valid, corner_inside[5] & valid,
              corner_inside[6] & valid, corner_inside[7] & valid)
    _, fx = axis_cell(index_x, W)
    _, fy = axis_cell(index_y, H)
    _, fz = axis_cell(index_z, D)
    gx = 1.0 - fx
    gy = 1.0 - fy
    gz = 1.0 - fz
    V = D.to(tl.int64) * H * W
    b = voxel // V
    blend = tl.load(mask_ptr + voxel, mask=valid, other=0.0).to(tl.float32)
    if BORDER:  # a NaN grid point: forward read the border, backward sees it outside (as ATen)
        blend_scatter = tl.where(defined, blend, 0.0)
    else:
        blend_scatter = blend
    beta = tl.load(beta_ptr)
    source = feature_ptr + b * feature_batch_stride
    grad_source = grad_feature_ptr + b * feature_batch_stride
    grad_out_at = grad_out_ptr + b * C * V + spatial
    grad_index_x = tl.zeros([BLOCK], tl.float32)
    grad_index_y = tl.zeros([BLOCK], tl.float32)
    grad_index_z = tl.zeros([BLOCK], tl.float32)
    grad_blend = tl.zeros([BLOCK], tl.float32)
    grad_beta = tl.zeros([BLOCK], tl.float32)
    for c in range(C):
        plane = source + c * V
        v000 = tl.load(plane + offsets[0], mask=inside[0], other=0.0).to(tl.float32)
        v001 = tl.load(plane + offsets[1], mask=inside[1], other=0.0).to(tl.float32)
        v010 = tl.load(plane + offsets[2], mask=inside[2], other=0.0).to(tl.float32)
        v011 = tl.load(plane + offsets[3], mask=inside[3], other=0.0).to(tl.float32)
        v100 = tl.load(plane + offsets[4], mask=inside[4], other=0.0).to(tl.float32)
        v101 = tl.load(plane + offsets[5], mask=inside[5], other=0.0).to(tl.float32)
        v110 = tl.load(plane + offsets[6], mask=inside[6], other=0.0).to(tl.float32)
        v111 = tl.load(plane + offsets[7], mask=inside[7], other=0.0).to(tl.float32)
        # trilinear as three lerps: no per-corner weight stays live across the channel loop
        diff_00 = v001 - v000
        diff_01 = v011 - v010
        diff_10 = v101 - v100
        diff_11 = v111 - v110
        along_x_00 = v000 + fx * diff_00
        along_x_01 = v010 + fx * diff_01
        along_x_10 = v100 + fx * diff_10
        along_x_11 = v110 + fx * diff_11
        along_y_0 = along_x_00 + fy * (along_x_01 - along_x_00)
        along_y_1 = along_x_10 + fy * (along_x_11 - along_x_10)
        warped = along_y_0 + fz * (along_y_1 - along_y_0)
        centre = tl.load(plane + spatial, mask=valid, other=0.0).to(tl.float32)
        grad = tl.load(grad_out_at + c * V, mask=valid, other=0.0).to(tl.float32)
        blended = centre + blend * (warped - centre)
        negative = blended <= 0.0
        grad_beta += tl.where(negative, grad * blended, 0.0)
        grad_blended = tl.where(negative, beta * grad, grad)
        grad_blend += grad_blended * (warped - centre)
        grad_warped = grad_blended * blend_scatter
        if FEATURE_GRAD:
            grad_plane = grad_source + c * V
            tl.atomic_add(grad_plane + spatial, grad_blended - grad_blended * blend, mask=valid,
                          sem="relaxed")
            low_z = grad_warped * gz
            high_z = grad_warped * fz
            scatter = (low_z * gy * gx, low_z * gy * fx, low_z * fy * gx, low_z * fy * fx,
                       high_z * gy * gx, high_z * gy * fx, high_z * fy * gx, high_z * fy * fx)
            for k in tl.static_range(8):
                tl.atomic_add(grad_plane + offsets[k], scatter[k], mask=inside[k], sem="relaxed")
        grad_index_x += grad_warped * (gz * (gy * diff_00 + fy * diff_01)
                                       + fz * (gy * diff_10 + fy * diff_11))
        grad_index_y += grad_warped * (gz * (along_x_01 - along_x_00) + fz * (along_x_11 - along_x_10))
        grad_index_z += grad_warped * (along_y_1 - along_y_0)
    tl.store(grad_mask_ptr + voxel, grad_blend.to(grad_mask_ptr.dtype.element_ty), mask=valid)
    tl.store(grad_beta_ptr + pid, tl.sum(tl.where(valid, grad_beta, 0.0), axis=0))
    grad_flow_x = grad_index_x * slope_x
    grad_flow_y = grad_index_y * slope_y
    grad_flow_z = grad_index_z * slope_z
    along_flow = grad_flow_x * flow_x + grad_flow_y * flow_y + grad_flow_z * flow_z
    logit_at = b * R * V + spatial
    shift_at = b * R * 3 * V + spatial
    for r in range(R):
        logit = tl.load(logits_ptr + logit_at + r * V, mask=valid, other=0.0).to(tl.float32)
        weight = tl.exp(logit - running_max) / total
        at = shift_at + r * (3 * V)
        shift_x = tl.load(displacement_ptr + at, mask=valid, other=0.0).to(tl.float32)
        shift_y = tl.load(displacement_ptr + at + V, mask=valid, other=0.0).to(tl.float32)
        shift_z = tl.load(displacement_ptr + at + 2 * V, mask=valid, other=0.0).to(tl.float32)
        along_region = grad_flow_x * shift_x + grad_flow_y * shift_y + grad_flow_z * shift_z
        tl.store(grad_logits_ptr + logit_at + r * V,
                 (weight * (along_region - along_flow)).to(grad_logits_ptr.dtype.element_ty),
                 mask=valid)
        out_ty = grad_displacement_ptr.dtype.element_ty
        tl.store(grad_displacement_ptr + at, (weight * grad_flow_x).to(out_ty), mask=valid)
        tl.store(grad_displacement_ptr + at + V, (weight * grad_flow_y).to(out_ty), mask=valid)
        tl.store(grad_displacement_ptr + at + 2 * V, (weight * grad_flow_z).to(out_ty), mask=valid)


_SIZES = {"n_voxels": "i32", "C": "i32", "R": "i32", "D": "i32", "H": "i32", "W": "i32",
          "feature_batch_stride": "i64"}
_FWD_SIGNATURE = {
    "feature_ptr": "*{dtype}:16", "logits_ptr": "*{dtype}:16", "displacement_ptr": "*{dtype}:16",
    "mask_ptr": "*{dtype}:16", "beta_ptr": "*fp32", "out_ptr": "*{dtype}:16", **_SIZES,
    "ALIGN_CORNERS": "constexpr", "BORDER": "constexpr", "BLOCK": "constexpr",
}
_BWD_SIGNATURE = {
    "grad_out_ptr": "*{dtype}:16", "feature_ptr": "*{dtype}:16", "logits_ptr": "*{dtype}:16",
    "displacement_ptr": "*{dtype}:16", "mask_ptr": "*{dtype}:16", "beta_ptr": "*fp32",
    "grad_feature_ptr": "*fp32:16", "grad_logits_ptr": "*{dtype}:16",
    "grad_displacement_ptr": "*{dtype}:16", "grad_mask_ptr": "*{dtype}:16",
    "grad_beta_ptr": "*fp32:16", **_SIZES,
    "ALIGN_CORNERS": "constexpr", "BORDER": "constexpr", "BLOCK": "constexpr",
}
# (BLOCK, warps): the heuristic's, then the tuner's alternative (``kernels.tuning``): half the
# voxels on half the warps (one voxel a thread, as the heuristic), twice the programs.
TILES = ((BLOCK_VOXELS, CONFIG.num_warps), (64, 2))
FORWARD_CONFIGS = tuple(LaunchConfig({"BLOCK": block, "ALIGN_CORNERS": align, "BORDER": border},
                                     num_warps=warps)
                        for block, warps in TILES for align in (False, True)
                        for border in (False, True))
BACKWARD_CONFIGS = tuple(LaunchConfig({**cfg.constexprs, "FEATURE_GRAD": feature_grad},
                                      num_warps=cfg.num_warps)
                         for cfg in FORWARD_CONFIGS for feature_grad in (True, False))
_NOTES = "one block size; ALIGN_CORNERS × BORDER (padding zeros/border) are the four variants"
register_kernel("region_softmax_warp", _warp_fwd_kernel, _FWD_SIGNATURE, FORWARD_CONFIGS,
                dtypes=("fp32", "fp16", "bf16"), notes=_NOTES)
register_kernel("region_softmax_warp", _warp_bwd_kernel, _BWD_SIGNATURE, BACKWARD_CONFIGS,
                dtypes=("fp32", "fp16", "bf16"),
                notes=_NOTES + ", each with and without the feature gradient (FEATURE_GRAD)")


def call_config(kernel, candidates, feature, logits) -> LaunchConfig:
    """The tuned winner of the device's architecture among ``candidates`` (one call class's
    configs, the heuristic's first; shape key: the flags, dtype, B·D·H·W voxels to a power of
    two), else the first."""
    flags = {k: v for k, v in candidates[0].constexprs.items() if k != "BLOCK"}
    B, _, D, H, W = logits.shape
    key = shape_key(**flags, dtype=dtype_label(feature.dtype), voxels=pow2_bucket(B * D * H * W))
    return (tuned_config("region_softmax_warp", kernel.__name__, key, candidates, feature.device)
            or candidates[0])


def _candidates(configs, **flags):
    return [c for c in configs if all(c.constexprs[k] == v for k, v in flags.items())]


def _launch_args(feature, logits, block: int):
    B, R, D, H, W = logits.shape
    C = feature.shape[1]
    n_voxels = B * D * H * W
    feature_batch_stride = C * D * H * W if feature.shape[0] == B else 0
    grid = (triton.cdiv(n_voxels, block),)
    return grid, (n_voxels, C, R, D, H, W, feature_batch_stride)


def warp_forward_triton(feature, logits, displacement, mask, beta, padding_mode, align_corners):
    """Contiguous inputs, β a 0-dim tensor → out (B, C, D, H, W) in feature's dtype."""
    B, _, D, H, W = logits.shape
    out = torch.empty((B, feature.shape[1], D, H, W), dtype=feature.dtype, device=feature.device)
    cfg = call_config(_warp_fwd_kernel, _candidates(FORWARD_CONFIGS, ALIGN_CORNERS=align_corners,
                                                    BORDER=padding_mode == "border"),
                      feature, logits)
    grid, sizes = _launch_args(feature, logits, cfg.constexprs["BLOCK"])
    beta32 = beta.detach().to(device=feature.device, dtype=torch.float32)
    _warp_fwd_kernel[grid](feature, logits, displacement, mask, beta32, out, *sizes,
                           num_warps=cfg.num_warps, enable_fp_fusion=True, **cfg.constexprs)
    return out


def warp_backward_triton(grad_out, feature, logits, displacement, mask, beta, padding_mode,
                         align_corners, feature_grad):
    """Contiguous grad_out and inputs → (grad_feature, grad_logits, grad_displacement, grad_mask,
    grad_beta); the feature gradient is accumulated with fp32 atomics (not deterministic), and
    has 0 elements when feature_grad is False (the kernel then does no atomics)."""
    cfg = call_config(_warp_bwd_kernel, _candidates(BACKWARD_CONFIGS, ALIGN_CORNERS=align_corners,
                                                    BORDER=padding_mode == "border",
                                                    FEATURE_GRAD=feature_grad),
                      feature, logits)
    grid, sizes = _launch_args(feature, logits, cfg.constexprs["BLOCK"])
    if feature[0, 0].numel() >= 2 ** 31:
        raise ValueError(f"feature has {feature[0, 0].numel()} voxels per channel; the triton "
                         "backward takes fewer than 2^31 (int32 corner offsets); use backend='fast'")
    grad_feature = torch.zeros(feature.shape if feature_grad else (1,), dtype=torch.float32,
                               device=feature.device)
    grad_logits = torch.empty_like(logits)
    grad_displacement = torch.empty_like(displacement)
    grad_mask = torch.empty_like(mask)
    grad_beta = torch.empty(grid[0], dtype=torch.float32, device=feature.device)
    beta32 = beta.detach().to(device=feature.device, dtype=torch.float32)
    _warp_bwd_kernel[grid](grad_out, feature, logits, displacement, mask, beta32, grad_feature,
                           grad_logits, grad_displacement, grad_mask, grad_beta, *sizes,
                           num_warps=cfg.num_warps, enable_fp_fusion=True, **cfg.constexprs)
    grad_feature = grad_feature.to(feature.dtype) if feature_grad else feature.new_empty((0,))
    return grad_feature, grad_logits, grad_displacement, grad_mask, grad_beta.sum().to(beta.dtype)
