"""The AOT C spec of selective_scan: its forward kernel in the C library (``python -m tools.aot``):
the C signature, the launch configuration as the Python launcher picks it, and the kernel
arguments. See ``kernels.aot_spec.AotOp`` for the fields."""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from ..aot_spec import AotOp


def constants() -> Mapping[str, Any]:
    m = importlib.import_module("kernels.selective_scan.triton_kernels")
    chunks = {c.constexprs["T_CHUNK"] for c in m.FORWARD_CONFIGS}
    if chunks != {m.T_CHUNK}:
        raise RuntimeError(f"selective_scan forward configs use T_CHUNK {sorted(chunks)}; the C "
                           f"API documents one checkpoint interval, {m.T_CHUNK}")
    widths = ", ".join(f"BLOCK_D {c.constexprs['BLOCK_D']} / {c.num_warps} warps"
                       for c in m.FORWARD_CONFIGS if c.constexprs["N_PAD"] == m.STATE_PADS[0])
    return {"MAX_N": m.MAX_N, "MAX_L": m.MAX_L, "STATE_PADS": ", ".join(map(str, m.STATE_PADS)),
            "N_STATE_PADS": len(m.STATE_PADS), "PROGRAMS_PER_SM": m.FORWARD_PROGRAMS_PER_SM,
            "T_CHUNK": m.T_CHUNK, "WIDTHS": widths}


AOT_OP = AotOp(
        op="selective_scan",
        kernel="_selective_scan_fwd_kernel",
        module="kernels.selective_scan.triton_kernels",
        python_launcher="selective_scan_forward_triton",
        params=(("mim_dtype", "dtype"), ("const void *", "u"), ("const void *", "delta"),
                ("const void *", "z"), ("const float *", "A"), ("const void *", "B"),
                ("const void *", "C"), ("const float *", "D"), ("const float *", "delta_bias"),
                ("const float *", "initial_state"), ("void *", "out"),
                ("float *", "checkpoints"), ("float *", "last_state"), ("int64_t", "batch"),
                ("int64_t", "dim"), ("int64_t", "L"), ("int64_t", "N"), ("int64_t", "groups"),
                ("int", "delta_softplus"), ("struct CUstream_st *", "stream")),
        doc="""\
selective_scan forward (Mamba-1, real A), as kernels.selective_scan(..., backend="triton"):
dt = delta + delta_bias (then softplus if delta_softplus), h_t = exp(dt_t * A) h_{t-1} +
dt_t * B_t * u_t, y_t = sum_n C_t h_t + D * u_t, out = y * silu(z).
  u, delta      [16] {dtype} (batch, dim, L)
  z             [16] {dtype} (batch, dim, L), or NULL: no gate
  A             [16] float32 (dim, N), N <= $MAX_N
  B, C          [16] {dtype} (batch, groups, N, L); channel d reads group d / (dim / groups)
                     (a 3-D (batch, N, L) B or C is groups = 1)
  D, delta_bias [16] float32 (dim,), or NULL
  initial_state [16] float32 (batch, dim, N), or NULL: zeros
  out           [16] {dtype} (batch, dim, L), written
  checkpoints   [16] float32 (batch, dim, ceil(L / MIM_SELECTIVE_SCAN_CHUNK), N), written: the
                     state at the start of every chunk, saved for the training backward (scratch
                     for inference)
  last_state    [16] float32 (batch, dim, N), written
Launch (as selective_scan_forward_triton): N_PAD = the first of $STATE_PADS >= N; of the
configs ($WIDTHS), the first whose grid
batch*groups*ceil((dim/groups) / BLOCK_D) reaches $PROGRAMS_PER_SM programs per SM of the current
device, else the last; T_CHUNK = $T_CHUNK.
Limits: L <= $MAX_L, groups divides dim, dim < 2^31.""",
        validate="""\
    int64_t group_dim, pad, n_chunks, target, rows;
    static const int64_t state_pads[$N_STATE_PADS] = {$STATE_PADS};
    const mim__variant *chosen = NULL;
    mim__device device;
    mim_status status;
    int i;
    MIM__REQUIRE_DTYPE("selective_scan", dtype);
    if (batch < 0 || dim < 0 || L < 0 || N < 0)
        return mim__fail(MIM_ERROR_INVALID_ARGUMENT,
                         "selective_scan: sizes must be >= 0, got batch=%lld dim=%lld L=%lld "
                         "N=%lld", (long long)batch, (long long)dim, (long long)L, (long long)N);
    if (groups < 1 || dim % groups != 0)
        return mim__fail(MIM_ERROR_INVALID_ARGUMENT,
                         "selective_scan: groups=%lld must be >= 1 and divide dim=%lld",
                         (long long)groups, (long long)dim);
    if (N > $MAX_N)
        return mim__fail(MIM_ERROR_UNSUPPORTED,
                         "selective_scan: N=%lld states; the kernels hold the state in registers "
                         "and take N <= $MAX_N", (long long)N);
    if (L > $MAX_L)
        return mim__fail(MIM_ERROR_UNSUPPORTED,
                         "selective_scan: L=%lld steps; the kernels take L <= $MAX_L (scan in "
                         "pieces with initial_state)", (long long)L);
    /* no channel: the launcher's grid is empty and nothing is launched */
    if (batch == 0 || dim == 0) return MIM_SUCCESS;""",
        plan="""\
    group_dim = dim / groups;
    rows = mim__mul(batch, groups);
    if (rows < 0) return mim__fail(MIM_ERROR_UNSUPPORTED, "selective_scan: batch*groups overflows");
    pad = state_pads[$N_STATE_PADS - 1];
    for (i = 0; i < $N_STATE_PADS; ++i) {
        if (state_pads[i] >= N) {
            pad = state_pads[i];
            break;
        }
    }
    /* launch_config(FORWARD_CONFIGS, FORWARD_PROGRAMS_PER_SM, ...): the first config (registry
       order) with N_PAD == pad that starts enough programs, else the last one */
    status = mim__current_device(&device);
    if (status != MIM_SUCCESS) return status;
    target = (int64_t)$PROGRAMS_PER_SM * device.sm_count;
    for (i = 0; i < k_kernel.n_variants; ++i) {
        const mim__variant *variant = &k_kernel.variants[i];
        if (variant->dtype != (int)dtype || variant->constexprs[CX_N_PAD] != pad) continue;
        chosen = variant;
        if (rows * mim__cdiv(group_dim, variant->constexprs[CX_BLOCK_D]) >= target) break;
    }
    if (chosen == NULL)
        return mim__fail(MIM_ERROR_NOT_COMPILED,
                         "selective_scan: no %s variant with N_PAD=%lld in this build (%s)",
                         mim__dtype_name((int)dtype), (long long)pad, mim__build_summary());
    for (i = 0; i < k_kernel.n_constexprs; ++i) constexprs[i] = chosen->constexprs[i];
    n_chunks = mim__cdiv(L, constexprs[CX_T_CHUNK]);
    launch_grid[0] = mim__mul(rows, mim__cdiv(group_dim, constexprs[CX_BLOCK_D]));
    launch_grid[1] = 1;
    launch_grid[2] = 1;""",
        args={"u_ptr": "u", "delta_ptr": "delta", "z_ptr": "z != NULL ? z : u", "A_ptr": "A",
              "B_ptr": "B", "C_ptr": "C", "D_ptr": "D != NULL ? (const void *)D : A",
              "delta_bias_ptr": "delta_bias != NULL ? (const void *)delta_bias : A",
              "initial_state_ptr": "initial_state != NULL ? (const void *)initial_state : A",
              "out_ptr": "out", "checkpoint_ptr": "checkpoints", "last_state_ptr": "last_state",
              "dim": "dim", "L": "L", "N": "N", "groups": "groups", "group_dim": "group_dim",
              "n_chunks": "n_chunks",
              # B and C are contiguous (batch, groups, N, L) in dtype: torch's strides for
              # that (a size of 0 counted as 1)
              "stride_B_batch": "groups * (N > 1 ? N : 1) * (L > 1 ? L : 1)",
              "stride_B_group": "(N > 1 ? N : 1) * (L > 1 ? L : 1)",
              "stride_B_n": "L > 1 ? L : 1", "stride_B_t": "1",
              "stride_C_batch": "groups * (N > 1 ? N : 1) * (L > 1 ? L : 1)",
              "stride_C_group": "(N > 1 ? N : 1) * (L > 1 ? L : 1)",
              "stride_C_n": "L > 1 ? L : 1", "stride_C_t": "1",
              "has_z": "z != NULL", "has_D": "D != NULL",
              "has_delta_bias": "delta_bias != NULL",
              "has_initial_state": "initial_state != NULL",
              "delta_softplus": "delta_softplus != 0"},
        constants=constants,
    )
