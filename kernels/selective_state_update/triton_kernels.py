"""Triton kernel of the recurrence step (streaming inference) and its launcher.

One program per (batch b, block of BLOCK_D channels): the program's (BLOCK_D, N) tile of the fp32
state is loaded into registers once, advanced one step (h ← exp(dt·A)·h + dt·x·B), stored back in
place once, and reduced against C in registers (y = Σ_n C·h + D·x, times silu(z)).

Traffic per step, with s bytes per element of x: the state is read once and written once
(2·batch·dim·N·4 bytes, the bulk); x, dt, z are read once and out written once (4·batch·dim·s);
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

MAX_STATE = 256  # largest N: the program's state tile lives in registers


@triton.jit
def _state_update_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr,
                         out_ptr, dim, N, channels_per_group, dim_blocks,
                         stride_state_batch, stride_state_dim, stride_x_batch, stride_dt_batch,
                         stride_z_batch, stride_B_batch, stride_B_group, stride_C_batch,
                         stride_C_group, has_D, has_z, has_dt_bias, dt_softplus,
                         BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """state (batch, dim, N) fp32 (unit stride along N); x, dt, z (batch, dim) unit stride along
    dim; A (dim, N) fp32 contiguous; B, C (batch, G, N) unit stride along N; D, dt_bias (dim,) fp32;
    out (batch, dim) contiguous. Offsets within one batch row are int32 (dim·N < 2^31)."""
    pid = tl.program_id(0)
    b = (pid // dim_blocks).to(tl.int64)
    channels = (pid % dim_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, BLOCK_N)
    in_dim = channels < dim
    tile = in_dim[:, None] & (states < N)[None, :]
    groups = channels // channels_per_group

    state_at = state_ptr + b * stride_state_batch + channels[:, None] * stride_state_dim + states[None, :]
    h = tl.load(state_at, mask=tile, other=0.0)
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
    tl.store(state_at, h, mask=tile)
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


ALL_CONFIGS = tuple(launch_config(1 << k) for k in range(4, MAX_STATE.bit_length()))

_SIGNATURE = {
    "state_ptr": "*fp32:16", "x_ptr": "*{dtype}:16", "dt_ptr": "*{dtype}:16", "A_ptr": "*fp32:16",
    "B_ptr": "*{dtype}", "C_ptr": "*{dtype}", "D_ptr": "*fp32:16", "z_ptr": "*{dtype}:16",
    "dt_bias_ptr": "*fp32:16", "out_ptr": "*{dtype}:16",
    "dim": "i32:16", "N": "i32:16", "channels_per_group": "i32:16", "dim_blocks": "i32",
    "stride_state_batch": "i32:16", "stride_state_dim": "i32:16", "stride_x_batch": "i32:16",
    "stride_dt_batch": "i32:16", "stride_z_batch": "i32:16",
    "stride_B_batch": "i32", "stride_B_group": "i32", "stride_C_batch": "i32", "stride_C_group": "i32",
    "has_D": "u1", "has_z": "u1", "has_dt_bias": "u1", "dt_softplus": "u1",
}
register_kernel(
    "selective_state_update", _state_update_kernel, _SIGNATURE, ALL_CONFIGS,
    dtypes=("fp32", "fp16", "bf16"),
    notes="specialized as kernels.Mamba.step calls it: dim, N (16) and the x/z row strides divisible "
          "by 16; B and C are slices of x_proj's output, so neither their pointers nor strides are")


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """t itself when its last dimension has unit stride (row strides are passed), else a copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """Launches the kernel; ``state`` (fp32) is updated in place, out (batch, dim) is returned."""
    batch, dim, N = state.shape
    out = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    flags = (D is not None, z is not None, dt_bias is not None, bool(dt_softplus))
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
    cfg = launch_config(N)
    dim_blocks = triton.cdiv(dim, cfg.constexprs["BLOCK_D"])
    _state_update_kernel[(batch * dim_blocks,)](
        work, x, dt, A, B, C, D, z, dt_bias, out, dim, N, dim // B.shape[1], dim_blocks,
        work.stride(0), work.stride(1), x.stride(0), dt.stride(0), z.stride(0),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), *flags,
        num_warps=cfg.num_warps, **cfg.constexprs)
    if work is not state:
        state.copy_(work)
    return out
