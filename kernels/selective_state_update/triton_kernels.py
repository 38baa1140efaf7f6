"""Triton kernel of the recurrence step (streaming inference) and its launcher.

One program per (batch b, block of BLOCK_D channels): the program's (BLOCK_D, N) tile of the
state is loaded into registers once (upcast to fp32), advanced one step (h ← exp(dt·A)·h + dt·x·B),
stored back in place once in the state's own dtype, and reduced against C in registers
(y = Σ_n C·h + D·x, times silu(z)). With ``state_batch_indices`` the program of batch element b
updates row state_batch_indices[b] of a larger state cache instead of row b. The Mamba-2 heads
layout reaches the kernel flattened to channels (h·p of them, groups over heads become groups over
channels), so one kernel serves both layouts.

Traffic per step, with s bytes per element of x and s_h per element of the state: the state is
read once and written once (2·batch·dim·N·s_h bytes, the bulk); x, dt, z are read once and out written once (4·batch·dim·s);
B and C once per program (each program gathers the rows of its channels' groups, served from L1);
A (dim·N·4), D and dt_bias (dim·4 each) are shared by the batch and served from L2 after the
first batch. Missing optional inputs (D, z, dt_bias) are not read.

The optional inputs and the softplus are runtime flags (bool arguments, which Triton does not
specialize on), tested by branches uniform across the launch: one binary per (tile, dtype) serves
every combination of them (16 constexpr combinations would multiply the binaries, and the compile
report's work, by 16), and the branches cost nothing next to the state's traffic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._registry import LaunchConfig, register_kernel
from ..tuning import dtype_label, pow2_bucket, shape_key, tuned_config

MAX_STATE = 256  # largest N: the program's state tile lives in registers


@triton.jit
def _state_update_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr,
                         state_batch_indices_ptr, out_ptr, dim, N, channels_per_group, dim_blocks,
                         stride_state_batch, stride_state_dim, stride_x_batch, stride_dt_batch,
                         stride_z_batch, stride_B_batch, stride_B_group, stride_C_batch,
                         stride_C_group, has_D, has_z, has_dt_bias, dt_softplus,
                         has_state_batch_indices, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """state (cache batch, dim, N) fp32, fp16 or bf16 (unit stride along N); x, dt, z (batch, dim)
    unit stride along dim, in one dtype; A (dim, N) fp32 contiguous; B, C (batch, G, N) in x's
    dtype, unit stride along N; D, dt_bias (dim,) fp32; state_batch_indices (batch,) int64, the
    state row of each batch element; out (batch, dim) contiguous. Row offsets are int64; offsets
    within one row are int32 (dim·N < 2^31)."""
    pid = tl.program_id(0)
    b = (pid // dim_blocks).to(tl.int64)
    state_row = b
    if has_state_batch_indices:
        state_row = tl.load(state_batch_indices_ptr + b)
    channels = (pid % dim_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, BLOCK_N)
    in_dim = channels < dim
    tile = in_dim[:, None] & (states < N)[None, :]
    groups = channels // channels_per_group

    state_at = (state_ptr + state_row * stride_state_batch + channels[:, None] * stride_state_dim
                + states[None, :])
    h = tl.load(state_at, mask=tile, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * stride_x_batch + channels, mask=in_dim, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * stride_dt_batch + channels, mask=in_dim, other=0.0).to(tl.float32)
    if has_dt_bias:
        dt += tl.load(dt_bias_ptr + channels, mask=in_dim, other=0.0)
    if dt_softplus:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    A = tl.load(A_ptr + channels[:, None] * N + states[None, :], mask=tile, other=0.0)
    B = tl.load(B_ptr + b * stride_B_batch + groups[:, None] * stride_B_group + states[None, :],
                mask=tile, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + b * stride_C_batch + groups[:, None] * stride_C_group + states[None, :],
                mask=tile, other=0.0).to(tl.float32)

    h = h * tl.exp(A * dt[:, None]) + B * (dt * x)[:, None]
    tl.store(state_at, h.to(state_ptr.dtype.element_ty), mask=tile)
    y = tl.sum(h * C, axis=1)
    if has_D:
        y += x * tl.load(D_ptr + channels, mask=in_dim, other=0.0)
    if has_z:
        z = tl.load(z_ptr + b * stride_z_batch + channels, mask=in_dim, other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
    tl.store(out_ptr + b * dim + channels, y.to(out_ptr.dtype.element_ty), mask=in_dim)


def launch_config(N: int) -> LaunchConfig:
    """The launch configuration used for N states: tiles of 512 fp32 (1024 for N > 128)."""
    block_n = max(16, triton.next_power_of_2(N))
    block_d = max(4, 512 // block_n)
    return LaunchConfig({"BLOCK_D": block_d, "BLOCK_N": block_n},
                        num_warps=4 if block_d * block_n <= 512 else 8)


# The tuner's alternatives (``kernels.tuning``) at the model's N = 16: narrower channel blocks on
# fewer warps (4 state elements a thread, as the heuristic's), 2× and 4× the programs for the
# decode step's small batch·dim.
TUNING_CONFIGS = (LaunchConfig({"BLOCK_D": 16, "BLOCK_N": 16}, num_warps=2),
                  LaunchConfig({"BLOCK_D": 8, "BLOCK_N": 16}, num_warps=1))
ALL_CONFIGS = (tuple(launch_config(1 << k) for k in range(4, MAX_STATE.bit_length()))
               + TUNING_CONFIGS)


def call_config(N: int, dtype: torch.dtype, state_dtype: torch.dtype, rows: int,
                device) -> LaunchConfig:
    """The config for N states: the tuned winner of the device's architecture among the
    registered configs of launch_config(N)'s BLOCK_N (shape key: BLOCK_N, the input and state
    dtypes, rows = batch·dim to a power of two), else launch_config(N)."""
    heuristic = launch_config(N)
    block_n = heuristic.constexprs["BLOCK_N"]
    candidates = [c for c in ALL_CONFIGS if c.constexprs["BLOCK_N"] == block_n]
    key = shape_key(BLOCK_N=block_n, dtype=f"{dtype_label(dtype)}/{dtype_label(state_dtype)}",
                    rows=pow2_bucket(rows))
    return tuned_config("selective_state_update", _state_update_kernel.__name__, key, candidates,
                        device) or heuristic

_SIGNATURE = {
    "state_ptr": "*{state_dtype}:16", "x_ptr": "*{dtype}:16", "dt_ptr": "*{dtype}:16",
    "A_ptr": "*fp32:16", "B_ptr": "*{dtype}", "C_ptr": "*{dtype}", "D_ptr": "*fp32:16",
    "z_ptr": "*{dtype}:16", "dt_bias_ptr": "*fp32:16", "state_batch_indices_ptr": "*i64:16",
    "out_ptr": "*{dtype}:16",
    "dim": "i32:16", "N": "i32:16", "channels_per_group": "i32:16", "dim_blocks": "i32",
    "stride_state_batch": "i32:16", "stride_state_dim": "i32:16", "stride_x_batch": "i32:16",
    "stride_dt_batch": "i32:16", "stride_z_batch": "i32:16",
    "stride_B_batch": "i32", "stride_B_group": "i32", "stride_C_batch": "i32", "stride_C_group": "i32",
    "has_D": "u1", "has_z": "u1", "has_dt_bias": "u1", "dt_softplus": "u1",
    "has_state_batch_indices": "u1",
}
_TYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# (inputs' dtype, state dtype): an fp32 state with inputs of any dtype, or a state in the inputs'
# dtype (mamba_ssm's inference cache in the model's dtype). Other mixes run on fp32 inputs.
DTYPE_PAIRS = tuple((x, "fp32") for x in ("fp32", "fp16", "bf16")) + (
    ("fp16", "fp16"), ("bf16", "bf16"), ("fp32", "fp16"), ("fp32", "bf16"))
register_kernel(
    "selective_state_update", _state_update_kernel, _SIGNATURE, ALL_CONFIGS,
    dtypes=tuple((("dtype", x), ("state_dtype", h)) for x, h in DTYPE_PAIRS),
    notes="specialized as kernels.Mamba.step calls it: dim, N (16) and the x/z row strides divisible "
          "by 16; B and C are slices of x_proj's output, so neither their pointers nor strides are")


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """t itself when its last dimension has unit stride (row strides are passed), else a copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def input_dtype(state_dtype: torch.dtype, *inputs: torch.Tensor) -> torch.dtype:
    """The dtype the kernel reads x, dt, z, B and C in: theirs when they share one and it pairs
    with the state's in ``DTYPE_PAIRS``, else float32 (exact for every input dtype; these inputs
    are batch·dim and batch·G·N elements, small beside the state)."""
    dtypes = {t.dtype for t in inputs}
    if len(dtypes) == 1:
        (dtype,) = dtypes
        if (_TYPE_NAMES[dtype], _TYPE_NAMES[state_dtype]) in DTYPE_PAIRS:
            return dtype
    return torch.float32


def selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                  state_batch_indices=None):
    """Launches the kernel on the Mamba-1 layout (the heads layout arrives flattened): ``state``
    (fp32, fp16 or bf16; (cache batch, dim, N) with ``state_batch_indices``) is updated in place,
    out (batch, dim) in x's dtype is returned."""
    batch, dim = x.shape
    N = state.shape[2]
    out_dtype = x.dtype
    dtype = input_dtype(state.dtype, *(t for t in (x, dt, z, B, C) if t is not None))
    x, dt, B, C = (t.to(dtype) for t in (x, dt, B, C))
    z = None if z is None else z.to(dtype)
    out = torch.empty((batch, dim), device=x.device, dtype=dtype)
    if out.numel() == 0:
        return out.to(out_dtype)
    flags = (D is not None, z is not None, dt_bias is not None, bool(dt_softplus),
             state_batch_indices is not None)
    # The kernel writes the state through its strides; only a state whose N axis is strided goes
    # through a contiguous copy (written back below).
    work = state if state.stride(2) == 1 else state.contiguous()
    x, dt = _unit_stride(x), _unit_stride(dt)
    B = _unit_stride(B if B.dim() == 3 else B.unsqueeze(1))
    C = _unit_stride(C if C.dim() == 3 else C.unsqueeze(1))
    A = A.to(torch.float32).contiguous()
    # A missing input's argument is a stand-in of the right type (A, x), never read: its flag is off.
    D = D.to(torch.float32).contiguous() if D is not None else A
    dt_bias = dt_bias.to(torch.float32).contiguous() if dt_bias is not None else A
    z = _unit_stride(z) if z is not None else x
    rows = (state_batch_indices.to(torch.int64).contiguous() if state_batch_indices is not None
            else torch.empty(0, dtype=torch.int64, device=x.device))
    cfg = call_config(N, dtype, state.dtype, batch * dim, x.device)
    dim_blocks = triton.cdiv(dim, cfg.constexprs["BLOCK_D"])
    _state_update_kernel[(batch * dim_blocks,)](
        work, x, dt, A, B, C, D, z, dt_bias, rows, out, dim, N, dim // B.shape[1], dim_blocks,
        work.stride(0), work.stride(1), x.stride(0), dt.stride(0), z.stride(0),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), *flags,
        num_warps=cfg.num_warps, enable_fp_fusion=True, **cfg.constexprs)
    if work is not state:
        state.copy_(work)
    return out.to(out_dtype)
