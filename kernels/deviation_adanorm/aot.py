"""The AOT C spec of deviation_adanorm: its forward kernel in the C library (``python -m tools.aot``):
the C signature, the launch configuration as the Python launcher picks it, and the kernel
arguments. See ``kernels.aot_spec.AotOp`` for the fields."""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from ..aot_spec import AotOp


def constants() -> Mapping[str, Any]:
    m = importlib.import_module("kernels.deviation_adanorm.triton_kernels")
    smallest = m.launch_config(1)
    return {"MAX_G": m.MAX_G, "MIN_BLOCK_G": smallest.constexprs["BLOCK_G"]}


AOT_OP = AotOp(
        op="deviation_adanorm",
        kernel="_adanorm_fwd_kernel",
        module="kernels.deviation_adanorm.triton_kernels",
        python_launcher="adanorm_forward_triton",
        params=(("mim_dtype", "dtype"), ("const void *", "v"), ("const void *", "scale"),
                ("const void *", "shift"), ("void *", "out"), ("float *", "mean"),
                ("float *", "rstd"), ("int64_t", "B"), ("int64_t", "T"), ("int64_t", "R"),
                ("int64_t", "G"), ("float", "eps"), ("struct CUstream_st *", "stream")),
        doc="""\
deviation_adanorm forward (paper eq. 2), as kernels.deviation_adanorm(..., backend="triton"):
for frames i = 1 .. T-1 and regions r, with d = v[:, i] - v[:, 0],
out[:, i-1, r] = d / sqrt(var(d) + eps) * scale[:, i-1, r] + shift[:, i-1, r]
(population variance over the G features; statistics in fp32).
  v            [16] {dtype} (B, T, G), T >= 2 (frame 0 is the source)
  scale, shift [16] {dtype} (B, T-1, R, G)
  out          [16] {dtype} (B, T-1, R, G), written
  mean, rstd   [16] float32 (B, T-1), written: the mean of d and 1/sqrt(var(d) + eps) per row
Launch (as adanorm_forward_triton): grid (B*(T-1)), BLOCK_G = max($MIN_BLOCK_G, next power of two
>= G), warps = BLOCK_G / 256 clamped to 1 .. 16.
Limits: G <= $MAX_G and a multiple of 16 (the kernels are compiled with G's divisibility by 16,
the specialization the model's G = 768 gets), eps finite and > 0. B = 0 or R = 0 launches
nothing (mean and rstd are not written), as the op.""",
        validate="""\
    int64_t N, block_g;
    MIM__REQUIRE_DTYPE("deviation_adanorm", dtype);
    if (B < 0 || R < 0)
        return mim__fail(MIM_ERROR_INVALID_ARGUMENT,
                         "deviation_adanorm: sizes must be >= 0, got B=%lld R=%lld", (long long)B,
                         (long long)R);
    if (T < 2)
        return mim__fail(MIM_ERROR_INVALID_ARGUMENT,
                         "deviation_adanorm: v must hold T >= 2 frames (frame 0 is the source), "
                         "got T=%lld", (long long)T);
    if (G < 1)
        return mim__fail(MIM_ERROR_INVALID_ARGUMENT,
                         "deviation_adanorm: v must have G >= 1 features, got G=%lld",
                         (long long)G);
    if (!(eps > 0.0f) || !(eps <= 3.402823466e38f))
        return mim__fail(MIM_ERROR_INVALID_ARGUMENT,
                         "deviation_adanorm: eps must be a finite number > 0, got %g", (double)eps);
    if (G > $MAX_G)
        return mim__fail(MIM_ERROR_UNSUPPORTED,
                         "deviation_adanorm: G=%lld features; the kernel holds a row in registers "
                         "and takes G <= $MAX_G", (long long)G);
    N = T - 1;
    /* scale.numel() == 0: the op returns an empty tensor without a launch */
    if (B == 0 || R == 0) return MIM_SUCCESS;""",
        plan="""\
    /* launch_config(G): BLOCK_G = max($MIN_BLOCK_G, next_power_of_2(G)) */
    block_g = $MIN_BLOCK_G;
    while (block_g < G) block_g *= 2;
    constexprs[CX_BLOCK_G] = block_g;
    launch_grid[0] = mim__mul(B, N);
    launch_grid[1] = 1;
    launch_grid[2] = 1;
    if (launch_grid[0] < 0)
        return mim__fail(MIM_ERROR_UNSUPPORTED, "deviation_adanorm: B*(T-1) overflows int64");""",
        args={"v_ptr": "v", "scale_ptr": "scale", "shift_ptr": "shift", "out_ptr": "out",
              "mean_ptr": "mean", "rstd_ptr": "rstd", "N": "N", "R": "R", "G": "G",
              "eps": "eps"},
        constants=constants,
    )
