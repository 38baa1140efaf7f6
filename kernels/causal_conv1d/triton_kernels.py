"""Triton kernels of the depthwise causal convolution (forward, backward, one step) and launchers.

Shapes: x, out, grad_out, grad_x (batch, dim, L) in fp32, fp16 or bf16; weight (dim, W) and bias
(dim,) read in fp32 (the launchers convert them once: dim·(W + 1) elements); seq_idx (batch, L)
int32. Any width W ≥ 1 (a runtime loop over the taps: one binary per tile and dtype).

Layouts: a program's tile is BLOCK_D channels × BLOCK_T time steps. x has unit stride along time
(channel-first, (batch, dim, L) memory, as ``kernels.Mamba`` passes its slice of in_proj's output)
or along dim (channel-last, (batch, L, dim) memory seen as (batch, dim, L)); the constexpr
CHANNEL_LAST picks which axis the addresses are contiguous along, and each layout has its own tile
shape (``launch_config``). out and grad_x are written in x's layout; any other x goes through one
contiguous copy, and grad_out through one copy into x's layout when it is not already in it (a
stride-0 gradient of ``out.sum()``).

Forward: grid (⌈L / BLOCK_T⌉, ⌈dim / BLOCK_D⌉, batch). A program reads its tile of x shifted by
each tap k, x[t − (W − 1) + k] for k = 0 .. W − 1: the W − 1 inputs before the tile are the
neighbour tile's, served from L1/L2, so device memory sees x about once. Traffic: x read once, out
written once (B·dim·L·s each), weight and bias (dim·(W + 1)·4) once per (time block, batch), from
L2. With seq_idx the program also reads its row's seq_idx (at t and at each tap) and drops a tap
whose input belongs to another sequence.

Backward (one kernel, then one reduction): grid as forward. With silu the pre-activation
p = bias + Σ_k w_k·x[t − (W − 1) + k] is recomputed (nothing but the inputs is saved), and
g = grad_out · σ(p)·(1 + p·(1 − σ(p))).
- grad_x[t] = Σ_s w[W − 1 − s]·g[t + s] over the taps s = 0 .. W − 1 whose output t + s is in the
  sequence (and the row) of t: the program reads grad_out at its tile shifted forward by s (and,
  with silu, recomputes p there, W taps each: W² shifted reads of x from cache).
- grad_weight[k] = Σ_t g[t]·x[t − (W − 1) + k] and grad_bias = Σ_t g[t]: each program writes its
  tile's partial sums over its BLOCK_T steps, (W + 1) fp32 vectors of BLOCK_D, into a
  (batch·⌈L / BLOCK_T⌉, W + 1, dim) buffer that one ``sum`` over its first axis reduces: no
  atomics, and the result does not depend on the order programs run in.
Traffic: x and grad_out read once, grad_x written once (B·dim·L·s each); the partials are written
and read once (B·⌈L / BLOCK_T⌉·(W + 1)·dim·4 each way, 1/BLOCK_T of a sequence per tap).

Step (``causal_conv1d_update``): grid (⌈dim / BLOCK_D⌉, batch). A program reads its channels' x
and the newest W − 1 entries of conv_state (batch, dim, S), writes out, then shifts the state left
by one in place (state[j] ← state[j + 1], state[S − 1] ← x) chunk by chunk of BLOCK_S entries,
with a barrier between a chunk's reads and its writes (every thread's reads of the entries it
overwrites are done before any write). Traffic: the state read once and written once
(2·batch·dim·S·s), x read and out written once (batch·dim·s each).

Offsets: batch, channel and time offsets are int64 before they multiply a stride, so a tensor of
more than 2^31 elements is addressed correctly. The optional inputs and the activation are runtime
flags (branches uniform across the launch), so one binary per (tile, dtype) serves them all.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .._registry import LaunchConfig, register_kernel
from ..tuning import dtype_label, pow2_bucket, shape_key, tuned_config


@triton.jit
def _tap_input(x_base, seq_row, channels64, in_dim, out_times, out_valid, out_seq, k, width,
               stride_x_row, has_seq_idx, CHANNEL_LAST: tl.constexpr):
    """(BLOCK_D, BLOCK_T) fp32: the input tap k multiplies for the outputs at ``out_times``,
    x[t − (W − 1) + k]; zero before the start, where ``out_valid`` is false, and (with seq_idx)
    outside the sequence ``out_seq`` of its output."""
    source = out_times - (width - 1) + k
    valid = out_valid & (source >= 0)
    if has_seq_idx:
        valid = valid & (tl.load(seq_row + source, mask=valid, other=0) == out_seq)
    return tl.load(_tile(x_base, channels64, source, stride_x_row, CHANNEL_LAST),
                   mask=in_dim[:, None] & valid[None, :], other=0.0).to(tl.float32)


@triton.jit
def _pre_activation(x_base, weight_ptr, bias_ptr, seq_row, channels64, in_dim, out_times, out_valid,
                    out_seq, width, stride_x_row, has_bias, has_seq_idx,
                    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, CHANNEL_LAST: tl.constexpr):
    """(BLOCK_D, BLOCK_T) fp32: bias + Σ_k w_k·x[t − (W − 1) + k] at the output times ``out_times``
    (valid where ``out_valid``), a tap counting only inside the sequence ``out_seq`` of its output."""
    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    for k in range(width):
        x = _tap_input(x_base, seq_row, channels64, in_dim, out_times, out_valid, out_seq, k, width,
                       stride_x_row, has_seq_idx, CHANNEL_LAST)
        w = tl.load(weight_ptr + channels64 * width + k, mask=in_dim, other=0.0)
        acc += w[:, None] * x
    if has_bias:
        acc += tl.load(bias_ptr + channels64, mask=in_dim, other=0.0)[:, None]
    return acc


@triton.jit
def _tile(base, channels, times, stride_row, CHANNEL_LAST: tl.constexpr):
    """(BLOCK_D, BLOCK_T) pointers to (channel, time) of one batch row at ``base``: the strided
    axis's offsets in int64 (one vector), the unit-stride axis's added in int32."""
    if CHANNEL_LAST:
        return (base + times.to(tl.int64) * stride_row)[None, :] + channels[:, None]
    return (base + channels.to(tl.int64) * stride_row)[:, None] + times[None, :]


@triton.jit
def _causal_conv1d_fwd_kernel(x_ptr, weight_ptr, bias_ptr, seq_idx_ptr, out_ptr, dim, L, width,
                              stride_x_batch, stride_x_row, stride_out_batch, stride_out_row,
                              has_bias, has_seq_idx, silu, BLOCK_D: tl.constexpr,
                              BLOCK_T: tl.constexpr, CHANNEL_LAST: tl.constexpr):
    """One (BLOCK_D, BLOCK_T) tile of out = act(bias + Σ_k w_k·x[t − (W − 1) + k]).

    x, out (batch, dim, L), unit stride along time (CHANNEL_LAST false) or dim (true), the other
    stride ``*_row``; weight (dim, W) fp32 contiguous; bias (dim,) fp32; seq_idx (batch, L) int32
    contiguous. A missing bias or seq_idx is a stand-in pointer its flag keeps unread."""
    b = tl.program_id(2).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    times = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    channels64 = channels.to(tl.int64)
    in_dim = channels < dim
    in_time = times < L
    seq_row = seq_idx_ptr + b * L
    seq = tl.zeros([BLOCK_T], dtype=tl.int32)
    if has_seq_idx:
        seq = tl.load(seq_row + times, mask=in_time, other=0)
    pre = _pre_activation(x_ptr + b * stride_x_batch, weight_ptr, bias_ptr, seq_row, channels64,
                          in_dim, times, in_time, seq, width, stride_x_row, has_bias, has_seq_idx,
                          BLOCK_D, BLOCK_T, CHANNEL_LAST)
    if silu:
        pre = pre * tl.sigmoid(pre)
    out_at = _tile(out_ptr + b * stride_out_batch, channels64, times, stride_out_row, CHANNEL_LAST)
    tl.store(out_at, pre.to(out_ptr.dtype.element_ty), mask=in_dim[:, None] & in_time[None, :])


@triton.jit
def _causal_conv1d_bwd_kernel(x_ptr, weight_ptr, bias_ptr, seq_idx_ptr, grad_out_ptr, grad_x_ptr,
                              partials_ptr, dim, L, width, stride_x_batch, stride_x_row,
                              stride_grad_out_batch, stride_grad_out_row, stride_grad_x_batch,
                              stride_grad_x_row, has_bias, has_seq_idx, silu,
                              BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
                              CHANNEL_LAST: tl.constexpr):
    """One (BLOCK_D, BLOCK_T) tile of grad_x, and its partial sums of grad_weight and grad_bias.

    x as in forward; grad_out and grad_x (batch, dim, L) in x's layout; partials (batch·⌈L / BLOCK_T⌉, W + 1, dim) fp32: row W is grad_bias's
    (written only with a bias)."""
    t_block = tl.program_id(0)
    b = tl.program_id(2).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    times = t_block * BLOCK_T + tl.arange(0, BLOCK_T)
    channels64 = channels.to(tl.int64)
    in_dim = channels < dim
    in_time = times < L
    x_base = x_ptr + b * stride_x_batch
    grad_out_base = grad_out_ptr + b * stride_grad_out_batch
    seq_row = seq_idx_ptr + b * L
    seq = tl.zeros([BLOCK_T], dtype=tl.int32)
    if has_seq_idx:
        seq = tl.load(seq_row + times, mask=in_time, other=0)

    # g at the tile's own steps: the gradient of the pre-activation there.
    tile = in_dim[:, None] & in_time[None, :]
    g_own = tl.load(_tile(grad_out_base, channels64, times, stride_grad_out_row, CHANNEL_LAST),
                    mask=tile, other=0.0).to(tl.float32)
    if silu:
        pre = _pre_activation(x_base, weight_ptr, bias_ptr, seq_row, channels64, in_dim, times,
                              in_time, seq, width, stride_x_row, has_bias, has_seq_idx,
                              BLOCK_D, BLOCK_T, CHANNEL_LAST)
        sig = tl.sigmoid(pre)
        g_own = g_own * sig * (1.0 + pre * (1.0 - sig))

    # grad_weight[k] and grad_bias: partial sums over this tile's output steps.
    # Row k of this program's (W + 1, dim) slab; the pointer advances by dim a tap (no k · dim).
    partial_at = partials_ptr + (b * tl.num_programs(0) + t_block) * (width + 1) * dim + channels64
    for k in range(width):
        x = _tap_input(x_base, seq_row, channels64, in_dim, times, in_time, seq, k, width,
                       stride_x_row, has_seq_idx, CHANNEL_LAST)
        tl.store(partial_at, tl.sum(g_own * x, axis=1), mask=in_dim)
        partial_at += dim
    if has_bias:
        tl.store(partial_at, tl.sum(g_own, axis=1), mask=in_dim)

    # grad_x[t] = Σ_s w[W − 1 − s]·g[t + s], over outputs t + s in t's row and sequence.
    w_last = tl.load(weight_ptr + channels64 * width + (width - 1), mask=in_dim, other=0.0)
    grad_x = w_last[:, None] * g_own
    for s in range(1, width):
        out_times = times + s
        out_valid = in_time & (out_times < L)
        out_seq = seq
        if has_seq_idx:
            out_seq = tl.load(seq_row + out_times, mask=out_valid, other=0)
            out_valid = out_valid & (out_seq == seq)
        g = tl.load(_tile(grad_out_base, channels64, out_times, stride_grad_out_row, CHANNEL_LAST),
                    mask=in_dim[:, None] & out_valid[None, :], other=0.0).to(tl.float32)
        if silu:
            pre_s = _pre_activation(x_base, weight_ptr, bias_ptr, seq_row, channels64, in_dim,
                                    out_times, out_valid, out_seq, width, stride_x_row, has_bias,
                                    has_seq_idx, BLOCK_D, BLOCK_T, CHANNEL_LAST)
            sig_s = tl.sigmoid(pre_s)
            g = g * sig_s * (1.0 + pre_s * (1.0 - sig_s))
        w = tl.load(weight_ptr + channels64 * width + (width - 1 - s), mask=in_dim, other=0.0)
        grad_x += w[:, None] * g
    tl.store(_tile(grad_x_ptr + b * stride_grad_x_batch, channels64, times, stride_grad_x_row,
                   CHANNEL_LAST),
             grad_x.to(grad_x_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _causal_conv1d_update_kernel(x_ptr, state_ptr, weight_ptr, bias_ptr, out_ptr, dim, state_len,
                                 width, stride_x_batch, stride_state_batch, stride_state_dim,
                                 has_bias, silu, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """One step for BLOCK_D channels of one batch row: x (batch, dim) unit stride along dim;
    conv_state (batch, dim, S) in x's dtype, unit stride along S, S ≥ W − 1, updated in place;
    weight (dim, W) fp32 contiguous; bias (dim,) fp32; out (batch, dim) contiguous."""
    b = tl.program_id(1).to(tl.int64)
    channels = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    channels64 = channels.to(tl.int64)
    in_dim = channels < dim
    x = tl.load(x_ptr + b * stride_x_batch + channels64, mask=in_dim, other=0.0)
    state_row = state_ptr + b * stride_state_batch + channels64 * stride_state_dim
    acc = tl.load(weight_ptr + channels64 * width + (width - 1), mask=in_dim, other=0.0) * x.to(tl.float32)
    for k in range(width - 1):  # taps 0 .. W − 2 read the state's newest W − 1 inputs
        held = tl.load(state_row + (state_len - (width - 1) + k), mask=in_dim, other=0.0)
        acc += tl.load(weight_ptr + channels64 * width + k, mask=in_dim, other=0.0) * held.to(tl.float32)
    if has_bias:
        acc += tl.load(bias_ptr + channels64, mask=in_dim, other=0.0)
    if silu:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + b * dim + channels64, acc.to(out_ptr.dtype.element_ty), mask=in_dim)
    for start in range(0, state_len, BLOCK_S):
        entries = start + tl.arange(0, BLOCK_S)
        at = state_row[:, None] + entries[None, :]
        newer = tl.load(at + 1, mask=in_dim[:, None] & (entries + 1 < state_len)[None, :], other=0.0)
        shifted = tl.where((entries == state_len - 1)[None, :], x[:, None], newer)
        tl.debug_barrier()  # every read of this chunk (and the window above) before any write
        tl.store(at, shifted.to(state_ptr.dtype.element_ty),
                 mask=in_dim[:, None] & (entries < state_len)[None, :])


# ---------------------------------------------------------------------------------------------
# Launch configurations and registration
# ---------------------------------------------------------------------------------------------

CHANNEL_FIRST_CONFIG = LaunchConfig({"BLOCK_D": 16, "BLOCK_T": 128, "CHANNEL_LAST": False}, num_warps=4)
CHANNEL_LAST_CONFIG = LaunchConfig({"BLOCK_D": 64, "BLOCK_T": 32, "CHANNEL_LAST": True}, num_warps=4)
# Backward holds about twice forward's live tiles (g, grad_x, the recomputed pre-activation):
# half the channels of forward's tile on 8 warps (4 elements a thread) keep it under the 80
# registers ptxas allots a thread of a 256-thread block on sm_80, without spilling.
CHANNEL_FIRST_BWD_CONFIG = LaunchConfig({"BLOCK_D": 8, "BLOCK_T": 128, "CHANNEL_LAST": False}, num_warps=8)
CHANNEL_LAST_BWD_CONFIG = LaunchConfig({"BLOCK_D": 32, "BLOCK_T": 32, "CHANNEL_LAST": True}, num_warps=8)
UPDATE_CONFIG = LaunchConfig({"BLOCK_D": 256, "BLOCK_S": 4}, num_warps=4)
# The tuner's alternatives (``kernels.tuning``): forward's tiles on 8 warps; backward on 4 warps,
# channel-first the same tile, channel-last half the channels (32 × 32 on 4 warps spilled 4 B
# in fp32 on sm_90a); BLOCK_T, hence backward's partials, unchanged. The step: narrower channel
# blocks (2× and 4× the programs of a small batch).
FORWARD_CONFIGS = (CHANNEL_FIRST_CONFIG, CHANNEL_LAST_CONFIG,
                   LaunchConfig({**CHANNEL_FIRST_CONFIG.constexprs}, num_warps=8),
                   LaunchConfig({**CHANNEL_LAST_CONFIG.constexprs}, num_warps=8))
BACKWARD_CONFIGS = (CHANNEL_FIRST_BWD_CONFIG, CHANNEL_LAST_BWD_CONFIG,
                    LaunchConfig({**CHANNEL_FIRST_BWD_CONFIG.constexprs}, num_warps=4),
                    LaunchConfig({**CHANNEL_LAST_BWD_CONFIG.constexprs, "BLOCK_D": 16}, num_warps=4))
UPDATE_CONFIGS = (UPDATE_CONFIG, LaunchConfig({"BLOCK_D": 128, "BLOCK_S": 4}, num_warps=4),
                  LaunchConfig({"BLOCK_D": 64, "BLOCK_S": 4}, num_warps=2))


def launch_config(channel_last: bool, backward: bool = False) -> LaunchConfig:
    """The tile for x's layout: 16 channels × 128 steps when steps are contiguous (each warp row
    reads 512 contiguous bytes of fp32), 64 channels × 32 steps when channels are, on 4 warps;
    backward 8 × 128 and 32 × 32 on 8 warps."""
    if backward:
        return CHANNEL_LAST_BWD_CONFIG if channel_last else CHANNEL_FIRST_BWD_CONFIG
    return CHANNEL_LAST_CONFIG if channel_last else CHANNEL_FIRST_CONFIG


def call_config(x: torch.Tensor, channel_last: bool, backward: bool = False) -> LaunchConfig:
    """The config of a forward (or backward) over x (batch, dim, L): the tuned winner of the
    device's architecture among the registered configs of x's layout (shape key: the layout,
    dtype, batch·dim·L to a power of two), else launch_config(channel_last, backward)."""
    kernel = _causal_conv1d_bwd_kernel if backward else _causal_conv1d_fwd_kernel
    candidates = [c for c in (BACKWARD_CONFIGS if backward else FORWARD_CONFIGS)
                  if c.constexprs["CHANNEL_LAST"] == channel_last]
    key = shape_key(CHANNEL_LAST=channel_last, dtype=dtype_label(x.dtype),
                    elements=pow2_bucket(x.numel()))
    return (tuned_config("causal_conv1d", kernel.__name__, key, candidates, x.device)
            or launch_config(channel_last, backward))


def update_config(x: torch.Tensor) -> LaunchConfig:
    """The config of a step over x (batch, dim): the tuned winner of the device's architecture
    (shape key: dtype, batch·dim to a power of two), else UPDATE_CONFIG."""
    key = shape_key(dtype=dtype_label(x.dtype), rows=pow2_bucket(x.numel()))
    return (tuned_config("causal_conv1d", _causal_conv1d_update_kernel.__name__, key,
                         UPDATE_CONFIGS, x.device) or UPDATE_CONFIG)


_FWD_SIGNATURE = {
    "x_ptr": "*{dtype}:16", "weight_ptr": "*fp32:16", "bias_ptr": "*fp32:16",
    "seq_idx_ptr": "*i32:16", "out_ptr": "*{dtype}:16",
    "dim": "i32:16", "L": "i32:16", "width": "i32",
    "stride_x_batch": "i32:16", "stride_x_row": "i32:16", "stride_out_batch": "i32:16",
    "stride_out_row": "i32:16", "has_bias": "u1", "has_seq_idx": "u1", "silu": "u1",
}
_BWD_SIGNATURE = {
    "x_ptr": "*{dtype}:16", "weight_ptr": "*fp32:16", "bias_ptr": "*fp32:16",
    "seq_idx_ptr": "*i32:16", "grad_out_ptr": "*{dtype}:16", "grad_x_ptr": "*{dtype}:16",
    "partials_ptr": "*fp32:16", "dim": "i32:16", "L": "i32:16", "width": "i32",
    "stride_x_batch": "i32:16", "stride_x_row": "i32:16", "stride_grad_out_batch": "i32:16",
    "stride_grad_out_row": "i32:16", "stride_grad_x_batch": "i32:16", "stride_grad_x_row": "i32:16",
    "has_bias": "u1", "has_seq_idx": "u1", "silu": "u1",
}
_UPDATE_SIGNATURE = {
    "x_ptr": "*{dtype}:16", "state_ptr": "*{dtype}:16", "weight_ptr": "*fp32:16",
    "bias_ptr": "*fp32:16", "out_ptr": "*{dtype}:16", "dim": "i32:16", "state_len": "i32",
    "width": "i32", "stride_x_batch": "i32:16", "stride_state_batch": "i32:16",
    "stride_state_dim": "i32", "has_bias": "u1", "silu": "u1",
}
_DTYPES = ("fp32", "fp16", "bf16")
_NOTES = ("specialized as kernels.Mamba calls it: dim, L and the row strides divisible by 16 "
          "(d_inner = 512, L a multiple of 16); x a slice of in_proj's (batch, 2·d_inner, L) output")
register_kernel("causal_conv1d", _causal_conv1d_fwd_kernel, _FWD_SIGNATURE, FORWARD_CONFIGS,
                dtypes=_DTYPES, notes=_NOTES)
register_kernel("causal_conv1d", _causal_conv1d_bwd_kernel, _BWD_SIGNATURE, BACKWARD_CONFIGS,
                dtypes=_DTYPES, notes=_NOTES)
register_kernel("causal_conv1d", _causal_conv1d_update_kernel, _UPDATE_SIGNATURE, UPDATE_CONFIGS,
                dtypes=_DTYPES, notes="specialized as kernels.Mamba.step calls it: dim and the x row "
                "stride divisible by 16 (x a slice of in_proj's (batch, 2·d_inner) output), S = W = 4")


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def is_channel_last(x: torch.Tensor) -> bool:
    """Whether the kernels read x channel-last: unit stride along dim but not along time (a
    size-1 axis has unit stride whatever its recorded stride)."""
    time_unit = x.stride(2) == 1 or x.shape[2] == 1
    dim_unit = x.stride(1) == 1 or x.shape[1] == 1
    return dim_unit and not time_unit


def in_layout(t: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """``t`` itself when it has unit stride along the layout's contiguous axis, else a copy that
    is contiguous in that layout ((batch, L, dim) memory for channel-last)."""
    if channel_last:
        if t.stride(1) == 1 or t.shape[1] == 1:
            return t
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    return t if t.stride(2) == 1 or t.shape[2] == 1 else t.contiguous()


def empty_in_layout(x: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """A new tensor of x's shape and dtype, contiguous in the layout."""
    batch, dim, length = x.shape
    if channel_last:
        return torch.empty((batch, length, dim), dtype=x.dtype, device=x.device).transpose(1, 2)
    return torch.empty((batch, dim, length), dtype=x.dtype, device=x.device)


def _row_stride(t: torch.Tensor, channel_last: bool) -> int:
    return t.stride(2) if channel_last else t.stride(1)


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def causal_conv1d_forward_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                 seq_idx: Optional[torch.Tensor], silu: bool) -> torch.Tensor:
    """x (batch, dim, L) fp32/fp16/bf16, weight (dim, W), bias (dim,) or None, seq_idx (batch, L)
    int32 or None → out (batch, dim, L) in x's dtype and x's layout (channel-last or not)."""
    channel_last = is_channel_last(x)
    x = in_layout(x, channel_last)
    out = empty_in_layout(x, channel_last)
    if out.numel() == 0:
        return out
    batch, dim, length = x.shape
    w = _fp32(weight)
    b = _fp32(bias) if bias is not None else w
    seq = seq_idx.contiguous() if seq_idx is not None else torch.empty(0, dtype=torch.int32, device=x.device)
    cfg = call_config(x, channel_last)
    grid = (triton.cdiv(length, cfg.constexprs["BLOCK_T"]), triton.cdiv(dim, cfg.constexprs["BLOCK_D"]),
            batch)
    _causal_conv1d_fwd_kernel[grid](
        x, w, b, seq, out, dim, length, weight.shape[1], x.stride(0), _row_stride(x, channel_last),
        out.stride(0), _row_stride(out, channel_last), bias is not None, seq_idx is not None,
        bool(silu), num_warps=cfg.num_warps, enable_fp_fusion=True, **cfg.constexprs)
    return out


def causal_conv1d_backward_triton(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                  bias: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
                                  silu: bool):
    """→ (grad_x in x's dtype and layout, parameter gradients (W + 1, dim) fp32: row k < W is
    grad_weight[:, k], row W grad_bias (not written, so undefined, without a bias))."""
    channel_last = is_channel_last(x)
    x = in_layout(x, channel_last)
    grad_out = in_layout(grad_out, channel_last)
    batch, dim, length = x.shape
    width = weight.shape[1]
    cfg = call_config(x, channel_last, backward=True)
    time_blocks = triton.cdiv(length, cfg.constexprs["BLOCK_T"])
    grad_x = empty_in_layout(x, channel_last)
    partials = torch.empty((batch * time_blocks, width + 1, dim), dtype=torch.float32, device=x.device)
    if grad_x.numel() > 0:
        w = _fp32(weight)
        b = _fp32(bias) if bias is not None else w
        seq = (seq_idx.contiguous() if seq_idx is not None
               else torch.empty(0, dtype=torch.int32, device=x.device))
        grid = (time_blocks, triton.cdiv(dim, cfg.constexprs["BLOCK_D"]), batch)
        _causal_conv1d_bwd_kernel[grid](
            x, w, b, seq, grad_out, grad_x, partials, dim, length, width, x.stride(0),
            _row_stride(x, channel_last), grad_out.stride(0), _row_stride(grad_out, channel_last),
            grad_x.stride(0), _row_stride(grad_x, channel_last),
            bias is not None, seq_idx is not None, bool(silu), num_warps=cfg.num_warps,
            enable_fp_fusion=True, **cfg.constexprs)
    return grad_x, partials.sum(dim=0)


def causal_conv1d_update_triton(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                                bias: Optional[torch.Tensor], silu: bool) -> torch.Tensor:
    """x (batch, dim), conv_state (batch, dim, S ≥ W − 1) in x's dtype, rolled in place →
    out (batch, dim) in x's dtype."""
    batch, dim = x.shape
    out = torch.empty((batch, dim), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    x = x if x.stride(1) == 1 else x.contiguous()
    work = conv_state if conv_state.stride(2) == 1 or conv_state.shape[2] <= 1 else conv_state.contiguous()
    w = _fp32(weight)
    b = _fp32(bias) if bias is not None else w
    cfg = update_config(x)
    grid = (triton.cdiv(dim, cfg.constexprs["BLOCK_D"]), batch)
    _causal_conv1d_update_kernel[grid](
        x, work, w, b, out, dim, conv_state.shape[2], weight.shape[1], x.stride(0), work.stride(0),
        work.stride(1), bias is not None, bool(silu), num_warps=cfg.num_warps,
        enable_fp_fusion=True, **cfg.constexprs)
    if work is not conv_state:
        conv_state.copy_(work)
    return out
