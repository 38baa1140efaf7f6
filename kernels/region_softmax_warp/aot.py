"""The AOT C spec of region_softmax_warp: its forward kernel in the C library (``python -m tools.aot``):
the C signature, the launch configuration as the Python launcher picks it, and the kernel
arguments. See ``kernels.aot_spec.AotOp`` for the fields."""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from ..aot_spec import AotOp


def constants() -> Mapping[str, Any]:
    m = importlib.import_module("kernels.region_softmax_warp.triton_kernels")
    return {"BLOCK": m.BLOCK_VOXELS, "NUM_WARPS": m.CONFIG.num_warps}


AOT_OP = AotOp(
        op="region_softmax_warp",
        kernel="_warp_fwd_kernel",
        module="kernels.region_softmax_warp.triton_kernels",
        python_launcher="warp_forward_triton",
        params=(("mim_dtype", "dtype"), ("const void *", "feature"), ("const void *", "logits"),
                ("const void *", "displacement"), ("const void *", "mask"),
                ("const float *", "beta"), ("void *", "out"), ("int64_t", "B"),
                ("int64_t", "feature_batch"), ("int64_t", "C"), ("int64_t", "R"),
                ("int64_t", "D"), ("int64_t", "H"), ("int64_t", "W"),
                ("mim_padding", "padding"), ("int", "align_corners"),
                ("struct CUstream_st *", "stream")),
        doc="""\
region_softmax_warp forward (the renderer's 3-D warp), as kernels.region_softmax_warp(...,
backend="triton"): per voxel, w = softmax over the R regions of logits, flow = sum_r w_r *
displacement_r, warped = trilinear grid_sample of feature at identity + flow, m = mask * warped +
(1 - mask) * feature, out = m > 0 ? m : beta * m.
  feature      [16] {dtype} (feature_batch, C, D, H, W); feature_batch is B, or 1 (one feature
                    shared by every frame: read with batch stride 0, never copied)
  logits       [16] {dtype} (B, R, D, H, W), R >= 1
  displacement [16] {dtype} (B, R, 3, D, H, W): (x, y, z) offsets in normalized units
  mask         [16] {dtype} (B, 1, D, H, W)
  beta              float32, one value in device memory (the op's 0-dim beta tensor)
  out          [16] {dtype} (B, C, D, H, W), written
Launch (as warp_forward_triton): grid (ceil(B*D*H*W / $BLOCK)), $NUM_WARPS warps,
BLOCK = $BLOCK voxels.
Limits: B*D*H*W, C, R, D, H, W < 2^31 (int32 kernel arguments).""",
        validate="""\
    int64_t V, n_voxels, feature_batch_stride;
    MIM__REQUIRE_DTYPE("region_softmax_warp", dtype);
    MIM__REQUIRE_PADDING("region_softmax_warp", padding);
    if (B < 0 || C < 0 || D < 0 || H < 0 || W < 0)
        return mim__fail(MIM_ERROR_INVALID_ARGUMENT,
                         "region_softmax_warp: sizes must be >= 0, got B=%lld C=%lld D=%lld H=%lld "
                         "W=%lld", (long long)B, (long long)C, (long long)D, (long long)H,
                         (long long)W);
    if (R < 1)
        return mim__fail(MIM_ERROR_INVALID_ARGUMENT,
                         "region_softmax_warp: logits must hold R >= 1 regions, got R=%lld",
                         (long long)R);
    if (feature_batch != 1 && feature_batch != B)
        return mim__fail(MIM_ERROR_INVALID_ARGUMENT,
                         "region_softmax_warp: feature must have batch 1 (shared by every frame) "
                         "or B = %lld, got %lld", (long long)B, (long long)feature_batch);
    V = mim__mul(mim__mul(D, H), W);
    n_voxels = mim__mul(B, V);
    /* _launch_args: C*D*H*W when the feature has batch B, else 0 */
    feature_batch_stride = feature_batch == B ? mim__mul(C, V) : 0;
    if (V < 0 || n_voxels < 0 || feature_batch_stride < 0)
        return mim__fail(MIM_ERROR_UNSUPPORTED, "region_softmax_warp: sizes overflow int64");
    /* The op launches nothing when logits are empty or C == 0. */
    if (n_voxels == 0 || C == 0) return MIM_SUCCESS;""",
        plan="""\
    constexprs[CX_ALIGN_CORNERS] = align_corners != 0;
    constexprs[CX_BORDER] = padding == MIM_PADDING_BORDER;
    constexprs[CX_BLOCK] = $BLOCK;
    launch_grid[0] = mim__cdiv(n_voxels, $BLOCK);
    launch_grid[1] = 1;
    launch_grid[2] = 1;""",
        args={"feature_ptr": "feature", "logits_ptr": "logits",
              "displacement_ptr": "displacement", "mask_ptr": "mask", "beta_ptr": "beta",
              "out_ptr": "out", "n_voxels": "n_voxels", "C": "C", "R": "R", "D": "D", "H": "H",
              "W": "W", "feature_batch_stride": "feature_batch_stride"},
        constants=constants,
    )
