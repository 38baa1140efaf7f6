"""The AOT C spec of grid_sample_3d: its forward kernel in the C library (``python -m tools.aot``):
the C signature, the launch configuration as the Python launcher picks it, and the kernel
arguments. See ``kernels.aot_spec.AotOp`` for the fields."""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from ..aot_spec import AotOp


def constants() -> Mapping[str, Any]:
    m = importlib.import_module("kernels.grid_sample_3d.triton_kernels")
    return {"BLOCK_P": m.BLOCK_P, "BLOCK_C": m.BLOCK_C, "NUM_WARPS": m.NUM_WARPS}


AOT_OP = AotOp(
        op="grid_sample_3d",
        kernel="_grid_sample_3d_fwd_kernel",
        module="kernels.grid_sample_3d.triton_kernels",
        python_launcher="grid_sample_3d_forward_triton",
        params=(("mim_dtype", "dtype"), ("const void *", "input"), ("const void *", "grid"),
                ("void *", "out"), ("int64_t", "N"), ("int64_t", "C"), ("int64_t", "D"),
                ("int64_t", "H"), ("int64_t", "W"), ("int64_t", "Do"), ("int64_t", "Ho"),
                ("int64_t", "Wo"), ("mim_padding", "padding"), ("int", "align_corners"),
                ("struct CUstream_st *", "stream")),
        doc="""\
grid_sample_3d forward: F.grid_sample(input, grid, mode="bilinear", padding_mode, align_corners)
on 5-D tensors (trilinear), as kernels.grid_sample_3d(..., backend="triton").
  input [16] {dtype} (N, C, D, H, W), D, H, W >= 1
  grid  [16] {dtype} (N, Do, Ho, Wo, 3): (x, y, z) normalized to [-1, 1]; x along W, y along H,
             z along D
  out   [16] {dtype} (N, C, Do, Ho, Wo), written
  padding: MIM_PADDING_ZEROS or MIM_PADDING_BORDER; align_corners: 0 or 1, PyTorch's meaning.
Launch (as grid_sample_3d_forward_triton): grid (ceil(Do*Ho*Wo / $BLOCK_P), N), $NUM_WARPS warps,
tiles of BLOCK_P = $BLOCK_P points x BLOCK_C = $BLOCK_C channels.
Limits: C, D, H, W and Do*Ho*Wo < 2^31 (int32 kernel arguments), N <= 65535 (grid y).""",
        validate="""\
    int64_t P;
    MIM__REQUIRE_DTYPE("grid_sample_3d", dtype);
    MIM__REQUIRE_PADDING("grid_sample_3d", padding);
    if (N < 0 || C < 0 || Do < 0 || Ho < 0 || Wo < 0)
        return mim__fail(MIM_ERROR_INVALID_ARGUMENT,
                         "grid_sample_3d: sizes must be >= 0, got N=%lld C=%lld Do=%lld Ho=%lld "
                         "Wo=%lld", (long long)N, (long long)C, (long long)Do, (long long)Ho,
                         (long long)Wo);
    if (D < 1 || H < 1 || W < 1)
        return mim__fail(MIM_ERROR_INVALID_ARGUMENT,
                         "grid_sample_3d: input must have non-empty spatial dimensions, got D=%lld "
                         "H=%lld W=%lld", (long long)D, (long long)H, (long long)W);
    P = mim__mul(mim__mul(Do, Ho), Wo);
    if (P < 0)
        return mim__fail(MIM_ERROR_UNSUPPORTED, "grid_sample_3d: Do*Ho*Wo overflows int64");
    /* The op launches nothing when N*C*P == 0. */
    if (N == 0 || C == 0 || P == 0) return MIM_SUCCESS;""",
        plan="""\
    /* forward_config(align_corners, border) */
    constexprs[CX_ALIGN_CORNERS] = align_corners != 0;
    constexprs[CX_BORDER] = padding == MIM_PADDING_BORDER;
    constexprs[CX_BLOCK_P] = $BLOCK_P;
    constexprs[CX_BLOCK_C] = $BLOCK_C;
    /* _grid(N, P) = (cdiv(P, BLOCK_P), N) */
    launch_grid[0] = mim__cdiv(P, $BLOCK_P);
    launch_grid[1] = N;
    launch_grid[2] = 1;""",
        args={"input_ptr": "input", "grid_ptr": "grid", "out_ptr": "out", "C": "C", "D": "D",
              "H": "H", "W": "W", "P": "P"},
        constants=constants,
    )
