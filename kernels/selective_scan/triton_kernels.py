"""Triton kernels of the Mamba-1 selective scan (real A), forward and backward, their launchers and
the custom ops the op's autograd Function (``op.SelectiveScanFunction``) calls on the triton path.

Shapes: u, delta, z, out (batch, dim, L); A (dim, N); B, C (batch, G, N, L) (a 3-D B/C is G = 1)
read through their (batch, group, n, t) strides, so a constant (dim, N) B or C is a stride-0 view
(G = dim, strides (0, N, 1, 0)), not a copy; B and C in u's dtype or both fp32 (with fp16/bf16 u);
D, delta_bias (dim,); initial and last state (batch, dim, N) in fp32. Channel d reads the B/C of
group g = d // (dim / G). With dt = delta + delta_bias (softplus if asked):
h_t = exp(dt_t·A)·h_{t−1} + dt_t·B_t·u_t, y_t = Σ_n C_t·h_t + D·u_t, out = y·silu(z).

Tiling. A program owns BLOCK_D channels of one group of one batch row and walks time in chunks of
T_CHUNK steps with the state h (BLOCK_D, N) in registers. Per chunk it loads (BLOCK_D, T_CHUNK)
tiles of u, delta and z, contiguous along L (a warp reads 32 consecutive steps of a row), applies
delta_bias and softplus, then for each state n loads the rows B[n] and C[n] of its group and scans
the pairs (exp(dt·A[:, n]), dt·u·B[n]) along time with ``tl.associative_scan`` (T_CHUNK = 32 is
one warp: the scan is register shuffles). The scan's cumulative decay times column n of the
carried state, plus its cumulative input, is h[:, n] over the chunk; its last step becomes the new
column n. y accumulates C[n]·h[:, n]; D·u and the silu(z) gate are applied before out is stored.
Looping over n keeps every tile 2-D: a (BLOCK_D, N, T_CHUNK) tile holds N times the registers, so
at N = 16 it would leave BLOCK_D·T_CHUNK ≈ 256, and either the checkpoints (4·N/T_CHUNK bytes per
(b, d, t) each way) or backward's dB/dC partials (16·N/BLOCK_D bytes per (b, d, t), below) would
outweigh u itself. Reading and replacing column n of the carried state is 2·BLOCK_D·N_PAD selects
per n, beside the BLOCK_D·T_CHUNK elements scanned (each a few operations and 5 shuffle levels).

Traffic in bytes, with P = batch·dim, s the input dtype's size, n_c = ceil(L / T_CHUNK), J =
ceil((dim / G) / BLOCK_D) programs per group, [x] = 1 when x is given, else 0:
- forward reads u, delta (and z) once, B and C once (the J programs of a group run side by side
  and share them through L2; a constant B, C is dim·N elements, read by every program from L2,
  in place of the 2·batch·G·N·L·s below; s is B's and C's own size there when they are fp32
  with half-precision u), A, D, delta_bias and the initial state once; it writes out once, one
  fp32 checkpoint of the state at the start of every chunk (saved for backward) and the last
  state:
      P·L·s·(3 + [z]) + 2·batch·G·N·L·s + P·N·4·(n_c + 1 + [initial_state])
        + dim·4·(N + [D] + [delta_bias]).
- backward walks the chunks in reverse. For each it recomputes the chunk's states from its
  checkpoint (the forward scan again) and y (for dz), then scans the adjoint
  dh_t = C_t·dy_t + exp(dt_{t+1}·A)·dh_{t+1} backward in time (reverse=True) from the gradient
  carried in from the chunk after it (the last state's gradient for the last chunk); dt_{t+1} is a
  second, shifted load of the delta tile, and grad_out, z and delta are loaded again after the loop
  over n for dz and softplus' rather than held in registers through it: those re-reads are of
  lines the program has just read (L1/L2), not device memory. No (batch, dim, L, N) tensor
  exists. dB and dC sum over the channels of a group, which live in J programs: each program
  writes its (N, L) rows of dB and dC to a (batch, G, J, N, L) fp32 buffer that torch sums over J
  (deterministic, unlike float atomics; per (b, d, t) that is 16·N/BLOCK_D bytes written and read,
  8 at N = 16 with the wide config). dA (batch, dim, N), dD and ddelta_bias (batch, dim) sum over
  time in registers and over batch in torch. The kernel moves
      P·L·s·(5 + 2·[z]) + 2·batch·G·N·L·s + P·N·4·(n_c + 2 + [grad_last_state])
        + 2·batch·G·J·N·L·4 + (P + dim)·4·([D] + [delta_bias]) + dim·N·4,
  and torch's sums then read 2·batch·G·J·N·L·4 + P·4·(N + [D] + [delta_bias]) and write dB, dC
  (2·batch·G·N·L·4; when s < 4 read once more and written in s bytes), dA, dD, ddelta_bias.

Optional inputs are runtime flags, not constexprs: an absent D, delta_bias, initial state or
last-state gradient is a masked-off load (no bytes), z and softplus are uniform branches, so each
(config, dtype) is one binary.

Packed sequences (seq_idx (batch, L) int32, non-decreasing per row) are the exception: the
kernels ``_selective_scan_fwd_seq_idx_kernel`` / ``_bwd_seq_idx_kernel`` run the same programs
(``_scan_forward`` / ``_scan_backward``) with the constexpr HAS_SEQ_IDX, and the plain kernels
compile without a trace of it. A step where seq_idx changes gets the decay exp(dt·A) = 0: the
scan's cumulative decay drops the state carried in (and the checkpoint before it), and in
backward the adjoint scan gets decay 0 at the step before a start (within a chunk; across a
chunk boundary the carried gradient is that of a step with decay 0), so no adjoint, dA or dΔ
crosses it. Extra traffic: each program reads its row's seq_idx (forward once per chunk at t
and t − 1; backward at t − 1, t and t + 1 once per state n, which keeps the masks out of the
registers held through the loop over n: held there, they made the narrow config spill), 4 bytes
per (b, t) from device memory, the repeats from L1/L2: batch·L·4 bytes per launch, beside the
P·L·s·(3 + [z]) of u, delta and z.

The per-sequence final states (``return_varlen_states``) are two more kernels,
``_selective_scan_fwd_varlen_kernel`` / ``_bwd_varlen_kernel``: the same programs with a second
constexpr, HAS_VARLEN, so the plain and seq_idx kernels compile as before. They read ordinal
(batch, L) int32, the sequence each step belongs to, numbered row by row (``sequence_ordinals``,
on the host). Forward: at a step that ends a sequence (t = L − 1, or ordinal[t + 1] !=
ordinal[t]), one masked store of h[:, n] per state n to row ordinal[t] of varlen_states
(num_sequences, dim, N) fp32, from an int64 base at the chunk's first sequence plus int32
offsets below T_CHUNK·dim·N: num_sequences·dim·N·4 bytes written, plus ordinal (batch·L·4, read
once per chunk at t and t + 1). Backward: its resets come from the ordinals too (t − 1, t, t + 1
once per n, in place of seq_idx's), and the gradient of row ordinal[t] is loaded (masked to the
ends, int64 offsets) and added to the adjoint's input at that step, where the adjoint from the
next sequence is zero: num_sequences·dim·N·4 bytes read. Its narrow configs run on 4 warps
(``BACKWARD_VARLEN_CONFIGS``). Without a gradient for the varlen states the seq_idx backward runs.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from .._custom_op import custom_op
from .._checks import KERNEL_DTYPES, check_tensor
from .._registry import LaunchConfig, device_arch, register_kernel
from ..tuning import dtype_label, shape_key, tuned_config

T_CHUNK = 32
STATE_PADS = (16, 32, 64)
MAX_N = STATE_PADS[-1]
# Offsets inside a program are int32: BLOCK_D·L, N·L and BLOCK_D·n_chunks·N stay below 2^31.
MAX_L = 2 ** 31 // (2 * MAX_N) - 1
# SMs of the GPU a launch is planned for when there is none (the interpreter): an H100's.
SM_COUNT_CPU = 132


@triton.jit
def _first_order_combine(decay_left, value_left, decay_right, value_right):
    """Compose h ↦ decay_left·h + value_left, then h ↦ decay_right·h + value_right."""
    return decay_left * decay_right, decay_right * value_left + value_right


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) as torch computes it (x itself above 20), with an accurate log1p(e):
    log(w)·e / (w − 1) for w = 1 + e, and e itself where w rounds to 1."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    log1p_e = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, log1p_e)


@triton.jit
def _program_channels(pid, dim, groups, group_dim, BLOCK_D: tl.constexpr):
    """The program's (batch, group, first channel, first row of batch·dim) from its int64 id."""
    blocks = tl.cdiv(group_dim, BLOCK_D)
    group = (pid // blocks) % groups
    batch = pid // (blocks * groups)
    first_channel = group * group_dim + (pid % blocks) * BLOCK_D
    return batch, group, first_channel, batch * dim + first_channel


@triton.jit
def _channel_tiles(channel_in_group, group_dim, N, D_ptr, delta_bias_ptr, has_D, has_delta_bias,
                   BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, T_CHUNK: tl.constexpr):
    """The program's index vectors and masks, and its channels' D and delta_bias (0 when absent:
    a flag (0 or 1) times a bound masks the load off, so no bytes are read)."""
    rows = tl.arange(0, BLOCK_D)
    in_dim = channel_in_group + rows < group_dim
    steps = tl.arange(0, T_CHUNK)
    states = tl.arange(0, N_PAD)
    state_mask = in_dim[:, None] & (states < N)[None, :]
    state_offsets = rows[:, None] * N + states[None, :]
    D = tl.load(D_ptr + rows, mask=in_dim & (rows < BLOCK_D * has_D), other=0.0)
    bias = tl.load(delta_bias_ptr + rows, mask=in_dim & (rows < BLOCK_D * has_delta_bias),
                   other=0.0)
    return rows, in_dim, steps, states, state_mask, state_offsets, D, bias


@triton.jit
def _sequence_starts(seq_idx_ptr, t, in_time):
    """(T_CHUNK,) bool: True at the steps t of the row ``seq_idx_ptr`` points to where a packed
    sequence starts (seq_idx[t] != seq_idx[t − 1], never at t = 0 or past L)."""
    seq = tl.load(seq_idx_ptr + t, mask=in_time, other=0)
    seq_before = tl.load(seq_idx_ptr + t - 1, mask=in_time & (t > 0), other=0)
    return in_time & (t > 0) & (seq != seq_before)


@triton.jit
def _sequence_ends(ordinal_ptr, t, in_time, L):
    """((T_CHUNK,) bool, (T_CHUNK,) int32): True at the steps t of the row ``ordinal_ptr`` points
    to where a packed sequence ends (t = L − 1, or ordinal[t + 1] != ordinal[t]), and ordinal[t]
    (the sequence's number; 0 where in_time is False)."""
    ordinal = tl.load(ordinal_ptr + t, mask=in_time, other=0)
    ordinal_after = tl.load(ordinal_ptr + t + 1, mask=in_time & (t + 1 < L), other=0)
    return in_time & ((t == L - 1) | (ordinal != ordinal_after)), ordinal


@triton.jit
def _scan_forward(
        u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr, initial_state_ptr,
        out_ptr, checkpoint_ptr, last_state_ptr, seq_idx_ptr, ordinal_ptr, varlen_states_ptr,
        dim, L, N, groups, group_dim, n_chunks,
        stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
        stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
        has_z, has_D, has_delta_bias, has_initial_state, delta_softplus,
        HAS_SEQ_IDX: tl.constexpr, HAS_VARLEN: tl.constexpr, BLOCK_D: tl.constexpr,
        N_PAD: tl.constexpr, T_CHUNK: tl.constexpr):
    """The forward program, for the three forward kernels: HAS_SEQ_IDX compiles the resets in,
    HAS_VARLEN (with HAS_SEQ_IDX) the stores of each sequence's final state."""
    pid = tl.program_id(0).to(tl.int64)
    batch, group, first_channel, first_row = _program_channels(pid, dim, groups, group_dim, BLOCK_D)
    # Program-wide int64 bases; offsets inside a program stay below BLOCK_D·L, N·L < 2^31 (B's
    # and C's n·stride_n + t·stride_t too: the launcher checks their span, ``grouped``).
    u_ptr += first_row * L
    delta_ptr += first_row * L
    z_ptr += first_row * L
    out_ptr += first_row * L
    B_ptr += batch * stride_B_batch + group * stride_B_group
    C_ptr += batch * stride_C_batch + group * stride_C_group
    A_ptr += first_channel * N
    D_ptr += first_channel
    delta_bias_ptr += first_channel
    initial_state_ptr += first_row * N
    last_state_ptr += first_row * N
    checkpoint_ptr += first_row * n_chunks * N
    if HAS_SEQ_IDX:
        seq_idx_ptr += batch * L
    if HAS_VARLEN:
        ordinal_ptr += batch * L
        varlen_states_ptr += first_channel * N
    rows, in_dim, steps, states, state_mask, state_offsets, D, bias = _channel_tiles(
        first_channel - group * group_dim, group_dim, N, D_ptr, delta_bias_ptr, has_D,
        has_delta_bias, BLOCK_D, N_PAD, T_CHUNK)
    state = tl.load(initial_state_ptr + state_offsets,
                    mask=in_dim[:, None] & (states < N * has_initial_state)[None, :], other=0.0)
    for chunk in range(n_chunks):
        t = chunk * T_CHUNK + steps
        in_time = t < L
        tile = in_dim[:, None] & in_time[None, :]
        offsets = rows[:, None] * L + t[None, :]
        u = tl.load(u_ptr + offsets, mask=tile, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + offsets, mask=tile, other=0.0).to(tl.float32) + bias[:, None]
        if delta_softplus != 0:
            dt = _softplus(dt)
        dt = tl.where(tile, dt, 0.0)
        dt_u = dt * u
        y = D[:, None] * u
        if HAS_SEQ_IDX:
            starts = _sequence_starts(seq_idx_ptr, t, in_time)
        if HAS_VARLEN:
            # The steps that end a sequence and where their rows of the varlen states are: an
            # int64 base at the chunk's first sequence, first_ordinal · dim · N, plus int32
            # offsets (ordinal − first_ordinal) · dim · N < T_CHUNK · dim · N (checked on the
            # host), fewer registers held through the loop over n than int64 offsets.
            ends, ordinal = _sequence_ends(ordinal_ptr, t, in_time, L)
            first_ordinal = tl.load(ordinal_ptr + chunk * T_CHUNK)
            chunk_varlen_ptr = varlen_states_ptr + first_ordinal.to(tl.int64) * dim * N
            varlen_offsets = (ordinal - first_ordinal) * (dim * N)
        tl.store(checkpoint_ptr + rows[:, None] * (n_chunks * N) + chunk * N + states[None, :],
                 state, mask=state_mask)
        for n in range(N):
            A_n = tl.load(A_ptr + rows * N + n, mask=in_dim, other=0.0)
            B_n = tl.load(B_ptr + n * stride_B_n + t * stride_B_t, mask=in_time,
                          other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + n * stride_C_n + t * stride_C_t, mask=in_time,
                          other=0.0).to(tl.float32)
            step_decay = tl.exp(dt * A_n[:, None])
            if HAS_SEQ_IDX:  # a new sequence: the state before it is forgotten
                step_decay = tl.where(starts[None, :], 0.0, step_decay)
            decay, drive = tl.associative_scan((step_decay, dt_u * B_n[None, :]),
                                               axis=1, combine_fn=_first_order_combine)
            h_start = tl.sum(tl.where(states[None, :] == n, state, 0.0), axis=1)
            h = decay * h_start[:, None] + drive
            y += h * C_n[None, :]
            if HAS_VARLEN:  # a sequence's final state, at its last step
                tl.store(chunk_varlen_ptr + varlen_offsets[None, :] + rows[:, None] * N + n, h,
                         mask=in_dim[:, None] & ends[None, :])
            h_end = tl.sum(tl.where(steps[None, :] == T_CHUNK - 1, h, 0.0), axis=1)
            state = tl.where(states[None, :] == n, h_end[:, None], state)
        if has_z != 0:
            z = tl.load(z_ptr + offsets, mask=tile, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=tile)
    tl.store(last_state_ptr + state_offsets, state, mask=state_mask)


@triton.jit
def _selective_scan_fwd_kernel(
        u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr, initial_state_ptr,
        out_ptr, checkpoint_ptr, last_state_ptr,
        dim, L, N, groups, group_dim, n_chunks,
        stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
        stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
        has_z, has_D, has_delta_bias, has_initial_state, delta_softplus,
        BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, T_CHUNK: tl.constexpr):
    """BLOCK_D channels of one (batch, group): out (batch, dim, L), checkpoint (batch, dim, n_c, N)
    (the state at each chunk's start), last state (batch, dim, N)."""
    _scan_forward(u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr,
                  initial_state_ptr, out_ptr, checkpoint_ptr, last_state_ptr, u_ptr, u_ptr,
                  last_state_ptr, dim, L, N, groups, group_dim, n_chunks,
                  stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
                  stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
                  has_z, has_D, has_delta_bias, has_initial_state, delta_softplus,
                  False, False, BLOCK_D, N_PAD, T_CHUNK)


@triton.jit
def _selective_scan_fwd_seq_idx_kernel(
        u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr, initial_state_ptr,
        out_ptr, checkpoint_ptr, last_state_ptr, seq_idx_ptr,
        dim, L, N, groups, group_dim, n_chunks,
        stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
        stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
        has_z, has_D, has_delta_bias, has_initial_state, delta_softplus,
        BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, T_CHUNK: tl.constexpr):
    """``_selective_scan_fwd_kernel`` over packed sequences: seq_idx (batch, L) int32; the state
    restarts from zero at every step where seq_idx changes."""
    _scan_forward(u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr,
                  initial_state_ptr, out_ptr, checkpoint_ptr, last_state_ptr, seq_idx_ptr,
                  seq_idx_ptr, last_state_ptr, dim, L, N, groups, group_dim, n_chunks,
                  stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
                  stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
                  has_z, has_D, has_delta_bias, has_initial_state, delta_softplus,
                  True, False, BLOCK_D, N_PAD, T_CHUNK)


@triton.jit
def _selective_scan_fwd_varlen_kernel(
        u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr, initial_state_ptr,
        out_ptr, checkpoint_ptr, last_state_ptr, seq_idx_ptr, ordinal_ptr, varlen_states_ptr,
        dim, L, N, groups, group_dim, n_chunks,
        stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
        stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
        has_z, has_D, has_delta_bias, has_initial_state, delta_softplus,
        BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, T_CHUNK: tl.constexpr):
    """``_selective_scan_fwd_seq_idx_kernel`` that also writes every sequence's final state: h at
    each sequence's last step t to row ordinal[b, t] of varlen_states (num_sequences, dim, N)
    fp32 (ordinal (batch, L) int32, see ``sequence_ordinals``)."""
    _scan_forward(u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr,
                  initial_state_ptr, out_ptr, checkpoint_ptr, last_state_ptr, seq_idx_ptr,
                  ordinal_ptr, varlen_states_ptr, dim, L, N, groups, group_dim, n_chunks,
                  stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
                  stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
                  has_z, has_D, has_delta_bias, has_initial_state, delta_softplus,
                  True, True, BLOCK_D, N_PAD, T_CHUNK)


@triton.jit
def _scan_backward(
        u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr, checkpoint_ptr,
        grad_out_ptr, grad_last_state_ptr,
        grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_initial_state_ptr,
        grad_B_part_ptr, grad_C_part_ptr, grad_A_part_ptr, grad_D_part_ptr,
        grad_delta_bias_part_ptr, seq_idx_ptr, ordinal_ptr, grad_varlen_states_ptr,
        dim, L, N, groups, group_dim, n_chunks,
        stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
        stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
        has_z, has_D, has_delta_bias, has_grad_last_state, delta_softplus,
        HAS_SEQ_IDX: tl.constexpr, HAS_VARLEN: tl.constexpr, BLOCK_D: tl.constexpr,
        N_PAD: tl.constexpr, T_CHUNK: tl.constexpr):
    """The backward program, for the three backward kernels: HAS_SEQ_IDX compiles the resets
    in, HAS_VARLEN (with HAS_SEQ_IDX) the gradient of each sequence's final state."""
    pid = tl.program_id(0).to(tl.int64)
    batch, group, first_channel, first_row = _program_channels(pid, dim, groups, group_dim, BLOCK_D)
    # Program-wide int64 bases; offsets inside a program stay below BLOCK_D·L, N·L < 2^31 (B's
    # and C's n·stride_n + t·stride_t too: the launcher checks their span, ``grouped``).
    u_ptr += first_row * L
    delta_ptr += first_row * L
    z_ptr += first_row * L
    grad_out_ptr += first_row * L
    grad_u_ptr += first_row * L
    grad_delta_ptr += first_row * L
    grad_z_ptr += first_row * L
    B_ptr += batch * stride_B_batch + group * stride_B_group
    C_ptr += batch * stride_C_batch + group * stride_C_group
    grad_B_part_ptr += pid * N * L
    grad_C_part_ptr += pid * N * L
    A_ptr += first_channel * N
    D_ptr += first_channel
    delta_bias_ptr += first_channel
    grad_last_state_ptr += first_row * N
    grad_initial_state_ptr += first_row * N
    grad_A_part_ptr += first_row * N
    grad_D_part_ptr += first_row
    grad_delta_bias_part_ptr += first_row
    checkpoint_ptr += first_row * n_chunks * N
    if HAS_SEQ_IDX:
        seq_idx_ptr += batch * L
    if HAS_VARLEN:
        ordinal_ptr += batch * L
        grad_varlen_states_ptr += first_channel * N
    rows, in_dim, steps, states, state_mask, state_offsets, D, bias = _channel_tiles(
        first_channel - group * group_dim, group_dim, N, D_ptr, delta_bias_ptr, has_D,
        has_delta_bias, BLOCK_D, N_PAD, T_CHUNK)
    # The gradient reaching the state at the end of the current chunk from the steps after it.
    grad_state = tl.load(grad_last_state_ptr + state_offsets,
                         mask=in_dim[:, None] & (states < N * has_grad_last_state)[None, :],
                         other=0.0)
    grad_A = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
    grad_D = tl.zeros([BLOCK_D], dtype=tl.float32)
    grad_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for back in range(n_chunks):
        chunk = n_chunks - 1 - back
        t = chunk * T_CHUNK + steps
        in_time = t < L
        tile = in_dim[:, None] & in_time[None, :]
        offsets = rows[:, None] * L + t[None, :]
        u = tl.load(u_ptr + offsets, mask=tile, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + offsets, mask=tile, other=0.0).to(tl.float32) + bias[:, None]
        # dt one step later, inside this chunk; 0 past its end makes the adjoint's decay 1 there.
        has_next = tile & (steps < T_CHUNK - 1)[None, :] & (t + 1 < L)[None, :]
        dt_next = tl.load(delta_ptr + offsets + 1, mask=has_next, other=0.0).to(tl.float32)
        dt_next += bias[:, None]
        if delta_softplus != 0:
            dt = _softplus(dt)
            dt_next = _softplus(dt_next)
        dt = tl.where(tile, dt, 0.0)
        dt_next = tl.where(has_next, dt_next, 0.0)
        if HAS_SEQ_IDX:
            next_in_chunk = in_time & (steps < T_CHUNK - 1) & (t + 1 < L)
        grad_y = tl.load(grad_out_ptr + offsets, mask=tile, other=0.0).to(tl.float32)
        if has_z != 0:
            z = tl.load(z_ptr + offsets, mask=tile, other=0.0).to(tl.float32)
            grad_y = grad_y * z * tl.sigmoid(z)
        y = D[:, None] * u
        grad_u = D[:, None] * grad_y
        grad_dt = tl.zeros([BLOCK_D, T_CHUNK], dtype=tl.float32)
        grad_D += tl.sum(grad_y * u, axis=1)
        for n in range(N):
            A_n = tl.load(A_ptr + rows * N + n, mask=in_dim, other=0.0)
            B_n = tl.load(B_ptr + (t * stride_B_t + n * stride_B_n), mask=in_time,
                          other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + (t * stride_C_t + n * stride_C_n), mask=in_time,
                          other=0.0).to(tl.float32)
            h_start = tl.load(checkpoint_ptr + rows * (n_chunks * N) + chunk * N + n, mask=in_dim,
                              other=0.0)
            step_decay = tl.exp(dt * A_n[:, None])
            next_decay = tl.exp(dt_next * A_n[:, None])
            if HAS_VARLEN:
                # As below, from the ordinals (they change where seq_idx does): three loads give
                # the starts, the steps before a start, the ends and the ordinal.
                ordinal_before = tl.load(ordinal_ptr + t - 1, mask=in_time & (t > 0), other=0)
                ordinal = tl.load(ordinal_ptr + t, mask=in_time, other=0)
                ordinal_after = tl.load(ordinal_ptr + t + 1, mask=in_time & (t + 1 < L), other=0)
                starts = in_time & (t > 0) & (ordinal != ordinal_before)
                starts_after = in_time & (t + 1 < L) & (ordinal_after != ordinal)
                step_decay = tl.where(starts[None, :], 0.0, step_decay)
                next_decay = tl.where((starts_after & next_in_chunk)[None, :], 0.0, next_decay)
                ends = (starts_after | (t == L - 1)) & in_time
            elif HAS_SEQ_IDX:
                # Steps that start a sequence, and steps whose successor in this chunk does: the
                # adjoint does not flow back across either (the next chunk's first step is seen
                # by the gradient it carries in, zero when a sequence starts there). Loaded for
                # each n (from L1) rather than held in registers through the loop.
                starts = _sequence_starts(seq_idx_ptr, t, in_time)
                starts_next = _sequence_starts(seq_idx_ptr, t + 1, next_in_chunk)
                step_decay = tl.where(starts[None, :], 0.0, step_decay)
                next_decay = tl.where(starts_next[None, :], 0.0, next_decay)
            step_drive = dt * u * B_n[None, :]
            decay, drive = tl.associative_scan((step_decay, step_drive), axis=1,
                                               combine_fn=_first_order_combine)
            h = decay * h_start[:, None] + drive
            y += h * C_n[None, :]
            grad_input = C_n[None, :] * grad_y
            if HAS_VARLEN:
                # A sequence's final-state gradient joins the adjoint at its last step (where
                # the adjoint from the next sequence is zero); int64 offsets ordinal · dim · N.
                varlen_offsets = ordinal.to(tl.int64) * dim * N
                grad_input += tl.load(
                    grad_varlen_states_ptr + varlen_offsets[None, :] + rows[:, None] * N + n,
                    mask=in_dim[:, None] & ends[None, :], other=0.0)
            grad_decay, grad_drive = tl.associative_scan(
                (next_decay, grad_input), axis=1,
                combine_fn=_first_order_combine, reverse=True)
            grad_end = tl.sum(tl.where(states[None, :] == n, grad_state, 0.0), axis=1)
            grad_h = grad_decay * grad_end[:, None] + grad_drive
            grad_h_dt = grad_h * dt
            grad_u += grad_h_dt * B_n[None, :]
            decayed = h - step_drive  # exp(dt_t·A)·h_{t−1}
            grad_dt += grad_h * (u * B_n[None, :] + A_n[:, None] * decayed)
            tl.store(grad_B_part_ptr + n * L + t, tl.sum(grad_h_dt * u, axis=0), mask=in_time)
            tl.store(grad_C_part_ptr + n * L + t, tl.sum(grad_y * h, axis=0), mask=in_time)
            grad_A_n = tl.sum(grad_h_dt * decayed, axis=1)
            grad_A += tl.where(states[None, :] == n, grad_A_n[:, None], 0.0)
            grad_start = tl.sum(tl.where(steps[None, :] == 0, grad_h * step_decay, 0.0), axis=1)
            grad_state = tl.where(states[None, :] == n, grad_start[:, None], grad_state)
        tl.store(grad_u_ptr + offsets, grad_u.to(grad_u_ptr.dtype.element_ty), mask=tile)
        # grad_out, z and delta again (from L1/L2: this program read them above) for dz and
        # softplus', rather than holding them in registers through the loop over n.
        if has_z != 0:
            grad_out = tl.load(grad_out_ptr + offsets, mask=tile, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + offsets, mask=tile, other=0.0).to(tl.float32)
            gate = tl.sigmoid(z)
            grad_z = grad_out * y * gate * (1.0 + z * (1.0 - gate))
            tl.store(grad_z_ptr + offsets, grad_z.to(grad_z_ptr.dtype.element_ty), mask=tile)
        grad_dt = tl.where(tile, grad_dt, 0.0)
        if delta_softplus != 0:
            delta = tl.load(delta_ptr + offsets, mask=tile, other=0.0).to(tl.float32)
            delta += bias[:, None]
            grad_dt = tl.where(delta > 20.0, grad_dt, grad_dt * tl.sigmoid(delta))
        tl.store(grad_delta_ptr + offsets, grad_dt.to(grad_delta_ptr.dtype.element_ty), mask=tile)
        grad_bias += tl.sum(grad_dt, axis=1)
    tl.store(grad_initial_state_ptr + state_offsets, grad_state, mask=state_mask)
    tl.store(grad_A_part_ptr + state_offsets, grad_A, mask=state_mask)
    tl.store(grad_D_part_ptr + rows, grad_D, mask=in_dim & (rows < BLOCK_D * has_D))
    tl.store(grad_delta_bias_part_ptr + rows, grad_bias,
             mask=in_dim & (rows < BLOCK_D * has_delta_bias))


@triton.jit
def _selective_scan_bwd_kernel(
        u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr, checkpoint_ptr,
        grad_out_ptr, grad_last_state_ptr,
        grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_initial_state_ptr,
        grad_B_part_ptr, grad_C_part_ptr, grad_A_part_ptr, grad_D_part_ptr,
        grad_delta_bias_part_ptr,
        dim, L, N, groups, group_dim, n_chunks,
        stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
        stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
        has_z, has_D, has_delta_bias, has_grad_last_state, delta_softplus,
        BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, T_CHUNK: tl.constexpr):
    """BLOCK_D channels of one (batch, group), chunks in reverse: du, ddelta, dz (batch, dim, L),
    d initial state (batch, dim, N); partials dB, dC (batch, G, J, N, L), dA (batch, dim, N),
    dD, ddelta_bias (batch, dim), all fp32 but du/ddelta/dz."""
    _scan_backward(u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr,
                   checkpoint_ptr, grad_out_ptr, grad_last_state_ptr,
                   grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_initial_state_ptr,
                   grad_B_part_ptr, grad_C_part_ptr, grad_A_part_ptr, grad_D_part_ptr,
                   grad_delta_bias_part_ptr, u_ptr, u_ptr, grad_last_state_ptr,
                   dim, L, N, groups, group_dim, n_chunks,
                   stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
                   stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
                   has_z, has_D, has_delta_bias, has_grad_last_state, delta_softplus,
                   False, False, BLOCK_D, N_PAD, T_CHUNK)


@triton.jit
def _selective_scan_bwd_seq_idx_kernel(
        u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr, checkpoint_ptr,
        grad_out_ptr, grad_last_state_ptr,
        grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_initial_state_ptr,
        grad_B_part_ptr, grad_C_part_ptr, grad_A_part_ptr, grad_D_part_ptr,
        grad_delta_bias_part_ptr, seq_idx_ptr,
        dim, L, N, groups, group_dim, n_chunks,
        stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
        stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
        has_z, has_D, has_delta_bias, has_grad_last_state, delta_softplus,
        BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, T_CHUNK: tl.constexpr):
    """``_selective_scan_bwd_kernel`` over packed sequences (seq_idx (batch, L) int32): no
    adjoint, dA or dΔ crosses a step where seq_idx changes."""
    _scan_backward(u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr,
                   checkpoint_ptr, grad_out_ptr, grad_last_state_ptr,
                   grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_initial_state_ptr,
                   grad_B_part_ptr, grad_C_part_ptr, grad_A_part_ptr, grad_D_part_ptr,
                   grad_delta_bias_part_ptr, seq_idx_ptr, seq_idx_ptr, grad_last_state_ptr,
                   dim, L, N, groups, group_dim, n_chunks,
                   stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
                   stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
                   has_z, has_D, has_delta_bias, has_grad_last_state, delta_softplus,
                   True, False, BLOCK_D, N_PAD, T_CHUNK)


@triton.jit
def _selective_scan_bwd_varlen_kernel(
        u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr, checkpoint_ptr,
        grad_out_ptr, grad_last_state_ptr,
        grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_initial_state_ptr,
        grad_B_part_ptr, grad_C_part_ptr, grad_A_part_ptr, grad_D_part_ptr,
        grad_delta_bias_part_ptr, ordinal_ptr, grad_varlen_states_ptr,
        dim, L, N, groups, group_dim, n_chunks,
        stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
        stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
        has_z, has_D, has_delta_bias, has_grad_last_state, delta_softplus,
        BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, T_CHUNK: tl.constexpr):
    """``_selective_scan_bwd_seq_idx_kernel`` with the gradient of every sequence's final state,
    grad_varlen_states (num_sequences, dim, N) fp32: row ordinal[b, t] joins the state's adjoint
    at that sequence's last step t. The resets are read from the ordinals (ordinal (batch, L)
    int32, see ``sequence_ordinals``), which change exactly where seq_idx does."""
    _scan_backward(u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, delta_bias_ptr,
                   checkpoint_ptr, grad_out_ptr, grad_last_state_ptr,
                   grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_initial_state_ptr,
                   grad_B_part_ptr, grad_C_part_ptr, grad_A_part_ptr, grad_D_part_ptr,
                   grad_delta_bias_part_ptr, ordinal_ptr, ordinal_ptr, grad_varlen_states_ptr,
                   dim, L, N, groups, group_dim, n_chunks,
                   stride_B_batch, stride_B_group, stride_B_n, stride_B_t,
                   stride_C_batch, stride_C_group, stride_C_n, stride_C_t,
                   has_z, has_D, has_delta_bias, has_grad_last_state, delta_softplus,
                   True, True, BLOCK_D, N_PAD, T_CHUNK)


def _configs(block_d: int, num_warps: int):
    return tuple(LaunchConfig({"BLOCK_D": block_d, "N_PAD": pad, "T_CHUNK": T_CHUNK}, num_warps)
                 for pad in STATE_PADS)


# Widest first; a launcher takes the widest that starts enough programs (see launch_config).
# Forward: 4 warps, 4 tile elements per thread, about 100 registers, so several programs share an
# SM: ask for 2 per SM. Backward: 16 warps of at most 128 registers fill an SM's register file:
# ask for 1 per SM. The narrow configs serve grids the wide ones leave short (small batch·dim).
FORWARD_CONFIGS = _configs(16, 4) + _configs(4, 2)
BACKWARD_CONFIGS = _configs(32, 16) + _configs(8, 8)
# The backward with the varlen states' gradient runs its narrow configs on 4 warps (140-170
# registers): on 8, where ptxas held it to 80 registers, the gather of that gradient spilled
# 4-12 B in some sm_90a variants.
BACKWARD_VARLEN_CONFIGS = _configs(32, 16) + _configs(8, 4)
FORWARD_PROGRAMS_PER_SM = 2
BACKWARD_PROGRAMS_PER_SM = 1

# Blackwell (sm_100a, sm_120a; ptxas 13): without a register limit ptxas trades registers for
# occupancy and spilled 4-12 B in the narrow backward (8 warps held to 64 registers), the sm_100a
# forward at N_PAD 64 (128 registers) and the sm_120a wide backward (at 16 warps' 128-register
# ceiling). There every config carries maxnreg = its share of the register file at the programs
# per SM its launcher asks for (65536 / (32 * warps * programs), at most 255), and sm_120a runs
# the wide backward as BLOCK_D 16 on 8 warps (the same tile elements per thread, about 160
# registers). sm_80 and sm_90a keep the default sets.
_REGISTER_FILE = 65536


def _budgeted(configs, programs_per_sm: int):
    budget = [_REGISTER_FILE // (32 * c.num_warps * programs_per_sm) for c in configs]
    return tuple(LaunchConfig(c.constexprs, c.num_warps, c.num_stages, maxnreg=min(255, regs))
                 for c, regs in zip(configs, budget))


def _half_wide(configs):
    """BLOCK_D 32 on 16 warps as BLOCK_D 16 on 8; the other configs as they are."""
    return tuple(LaunchConfig({**c.constexprs, "BLOCK_D": 16}, 8, c.num_stages)
                 if (c.constexprs["BLOCK_D"], c.num_warps) == (32, 16) else c for c in configs)


# Default config's label -> its replacement, by architecture (``configs_for_arch``).
ARCH_CONFIGS = {
    100: {c.label(): r for configs, per_sm in ((FORWARD_CONFIGS, FORWARD_PROGRAMS_PER_SM),
                                               (BACKWARD_CONFIGS, BACKWARD_PROGRAMS_PER_SM),
                                               (BACKWARD_VARLEN_CONFIGS, BACKWARD_PROGRAMS_PER_SM))
          for c, r in zip(configs, _budgeted(configs, per_sm))},
    120: {c.label(): r for configs, per_sm, change in (
        (FORWARD_CONFIGS, FORWARD_PROGRAMS_PER_SM, tuple),
        (BACKWARD_CONFIGS, BACKWARD_PROGRAMS_PER_SM, _half_wide),
        (BACKWARD_VARLEN_CONFIGS, BACKWARD_PROGRAMS_PER_SM, _half_wide))
          for c, r in zip(configs, _budgeted(change(configs), per_sm))},
}


def configs_for_arch(configs, arch: Optional[int]):
    """``configs`` (a default set or a subset of one) as architecture ``arch`` runs them
    (``device_arch``'s number; None, or one without its own set: unchanged)."""
    by_label = ARCH_CONFIGS.get(arch, {})
    return tuple(by_label.get(c.label(), c) for c in configs)


_COMMON_SIGNATURE = {
    "dim": "i32", "L": "i32", "N": "i32", "groups": "i32", "group_dim": "i32", "n_chunks": "i32",
    "has_z": "i32", "has_D": "i32", "has_delta_bias": "i32", "delta_softplus": "i32",
    "BLOCK_D": "constexpr", "N_PAD": "constexpr", "T_CHUNK": "constexpr",
    # B's and C's (batch, group, n, t) strides; the batch stride may pass 2^31.
    **{f"stride_{x}_{axis}": "i64" if axis == "batch" else "i32"
       for x in "BC" for axis in ("batch", "group", "n", "t")},
}
_INPUT_SIGNATURE = {
    "u_ptr": "*{dtype}:16", "delta_ptr": "*{dtype}:16", "z_ptr": "*{dtype}:16",
    "A_ptr": "*fp32:16", "B_ptr": "*{bc_dtype}:16", "C_ptr": "*{bc_dtype}:16", "D_ptr": "*fp32:16",
    "delta_bias_ptr": "*fp32:16",
}
_FWD_SIGNATURE = {
    **_INPUT_SIGNATURE, "initial_state_ptr": "*fp32:16", "out_ptr": "*{dtype}:16",
    "checkpoint_ptr": "*fp32:16", "last_state_ptr": "*fp32:16", **_COMMON_SIGNATURE,
    "has_initial_state": "i32",
}
_BWD_SIGNATURE = {
    **_INPUT_SIGNATURE, "checkpoint_ptr": "*fp32:16", "grad_out_ptr": "*{dtype}:16",
    "grad_last_state_ptr": "*fp32:16", "grad_u_ptr": "*{dtype}:16", "grad_delta_ptr": "*{dtype}:16",
    "grad_z_ptr": "*{dtype}:16", "grad_initial_state_ptr": "*fp32:16",
    "grad_B_part_ptr": "*fp32:16", "grad_C_part_ptr": "*fp32:16", "grad_A_part_ptr": "*fp32:16",
    "grad_D_part_ptr": "*fp32:16", "grad_delta_bias_part_ptr": "*fp32:16", **_COMMON_SIGNATURE,
    "has_grad_last_state": "i32",
}
_NOTES = "A, D, delta_bias and states in fp32; N_PAD = the state size N rounded up to 16, 32, 64"
_SEQ_IDX_NOTES = _NOTES + "; packed sequences: seq_idx (batch, L) int32"
_VARLEN_NOTES = (_SEQ_IDX_NOTES + "; every sequence's final state (num_sequences, dim, N) fp32 "
                 "at ordinal (batch, L) int32")
# (u, B/C) dtypes: B and C in u's dtype, or fp32 B and C with fp16 or bf16 u (mamba_ssm's fp32
# weights). A plain dtype fills both placeholders. The mixed pairs run the wide configs only
# (``configs_for``): every config for them would add about 70 s to the compile report.
DTYPES = ("fp32", "fp16", "bf16", (("dtype", "fp16"), ("bc_dtype", "fp32")),
          (("dtype", "bf16"), ("bc_dtype", "fp32")))
_MIXED_LABELS = ("dtype=fp16,bc_dtype=fp32", "dtype=bf16,bc_dtype=fp32")


def _wide(configs):
    """The widest config of each N_PAD (the first of each in ``configs``)."""
    return tuple(c for c in configs if c.constexprs["BLOCK_D"] == configs[0].constexprs["BLOCK_D"])


def _register(kernel, signature, configs, notes):
    register_kernel("selective_scan", kernel, signature, configs, dtypes=DTYPES, notes=notes,
                    dtype_configs={label: _wide(configs) for label in _MIXED_LABELS},
                    arch_configs={arch: configs_for_arch(configs, arch) for arch in ARCH_CONFIGS},
                    arch_dtype_configs={arch: {label: configs_for_arch(_wide(configs), arch)
                                               for label in _MIXED_LABELS}
                                        for arch in ARCH_CONFIGS})


_register(_selective_scan_fwd_kernel, _FWD_SIGNATURE, FORWARD_CONFIGS, _NOTES)
_register(_selective_scan_bwd_kernel, _BWD_SIGNATURE, BACKWARD_CONFIGS, _NOTES)
_register(_selective_scan_fwd_seq_idx_kernel, {**_FWD_SIGNATURE, "seq_idx_ptr": "*i32:16"},
          FORWARD_CONFIGS, _SEQ_IDX_NOTES)
_register(_selective_scan_bwd_seq_idx_kernel, {**_BWD_SIGNATURE, "seq_idx_ptr": "*i32:16"},
          BACKWARD_CONFIGS, _SEQ_IDX_NOTES)
_register(_selective_scan_fwd_varlen_kernel,
          {**_FWD_SIGNATURE, "seq_idx_ptr": "*i32:16", "ordinal_ptr": "*i32:16",
           "varlen_states_ptr": "*fp32:16"}, FORWARD_CONFIGS, _VARLEN_NOTES)
_register(_selective_scan_bwd_varlen_kernel,
          {**_BWD_SIGNATURE, "ordinal_ptr": "*i32:16", "grad_varlen_states_ptr": "*fp32:16"},
          BACKWARD_VARLEN_CONFIGS, _VARLEN_NOTES)


def configs_for(configs, u_dtype: torch.dtype, bc_dtype: torch.dtype):
    """The configs a launcher may pick for u and B/C of these dtypes: all of them when B and C
    are in u's dtype, the wide ones for fp32 B and C with fp16 or bf16 u (as registered)."""
    return configs if bc_dtype == u_dtype else _wide(configs)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return SM_COUNT_CPU


def launch_config(configs, programs_per_sm: int, batch: int, groups: int, group_dim: int, N: int,
                  device: torch.device, t_chunk: Optional[int] = None, kernel: Optional[str] = None,
                  dtypes: str = "") -> LaunchConfig:
    """The widest of ``configs`` for N states (and chunks of ``t_chunk`` steps, if given) that
    starts ``programs_per_sm`` programs per SM, else the narrowest. Given the ``kernel``'s name
    (and the call's ``dtypes``, ``call_dtypes``), the tuned winner of the device's architecture
    among those configs comes first (``kernels.tuning``; shape key: N_PAD, the dtypes,
    rows = batch·groups and group_dim, what the grid of each config follows from)."""
    pad = next(p for p in STATE_PADS if p >= N)
    configs = configs_for_arch(configs, device_arch(device))
    candidates = [c for c in configs if c.constexprs["N_PAD"] == pad
                  and t_chunk in (None, c.constexprs["T_CHUNK"])]
    if kernel is not None:
        key = shape_key(N_PAD=pad, dtype=dtypes, rows=batch * groups, group_dim=group_dim)
        tuned = tuned_config("selective_scan", kernel, key, candidates, device)
        if tuned is not None:
            return tuned
    target = programs_per_sm * _sm_count(device)
    for cfg in candidates:
        if batch * groups * triton.cdiv(group_dim, cfg.constexprs["BLOCK_D"]) >= target:
            return cfg
    return candidates[-1]


def call_dtypes(u_dtype: torch.dtype, bc_dtype: torch.dtype) -> str:
    """The dtypes of a call in shape keys: ``bf16``, or ``bf16/fp32`` for fp32 B and C."""
    u = dtype_label(u_dtype)
    return u if bc_dtype == u_dtype else f"{u}/{dtype_label(bc_dtype)}"


def _forward_kernel(seq_idx, ordinals):
    """(name, kernel): the forward kernel of a call, plain, with packed sequences, or with their
    final states; the name (the registry's) keys its tuned winners."""
    if seq_idx is None:
        return "_selective_scan_fwd_kernel", _selective_scan_fwd_kernel
    if ordinals is None:
        return "_selective_scan_fwd_seq_idx_kernel", _selective_scan_fwd_seq_idx_kernel
    return "_selective_scan_fwd_varlen_kernel", _selective_scan_fwd_varlen_kernel


def _forward_config(u: torch.Tensor, B: torch.Tensor, A: torch.Tensor, name: str) -> LaunchConfig:
    """The config forward kernel ``name`` runs with for u (batch, dim, L), B (batch, G, N, L)."""
    batch, dim, _ = u.shape
    groups = B.shape[1]
    return launch_config(configs_for(FORWARD_CONFIGS, u.dtype, B.dtype), FORWARD_PROGRAMS_PER_SM,
                         batch, groups, dim // groups, A.shape[1], u.device,
                         kernel=name, dtypes=call_dtypes(u.dtype, B.dtype))


def bc_kernel_dtype(u_dtype: torch.dtype, B_dtype: torch.dtype,
                    C_dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels read B and C in (one for both, a registered (u, B/C) pair): float32
    when either is float32 (mamba_ssm's fp32 weights with bf16 or fp16 inputs keep their
    precision), else u's dtype."""
    return torch.float32 if torch.float32 in (B_dtype, C_dtype) else u_dtype


def grouped(x: torch.Tensor) -> torch.Tensor:
    """B or C as a (batch, G, N, L) view, kept as it is (a constant one's stride-0 view over
    batch and time included: the kernels read it through its strides, no copy) unless an offset
    inside one (batch, group), n·stride_n + t·stride_t, or the group stride, can pass 2^31: then
    a contiguous copy."""
    x = x.unsqueeze(1) if x.dim() == 3 else x
    _, _, N, L = x.shape
    _, stride_group, stride_n, stride_t = x.stride()
    if stride_group >= 2 ** 31 or max(N - 1, 0) * stride_n + max(L - 1, 0) * stride_t >= 2 ** 31:
        return x.contiguous()
    return x


def _bc_strides(x: torch.Tensor) -> Tuple[int, int, int, int]:
    """The (batch, group, n, t) strides of a (batch, G, N, L) B or C, as the kernels take them
    (the batch stride may pass 2^31: the kernels multiply it in int64)."""
    return tuple(x.stride())


def _fp32(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if x is None else x.to(torch.float32).contiguous()


def selective_scan_forward_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool,
                                  initial_state, seq_idx=None, ordinals=None, num_sequences=0):
    """Contiguous u, delta, z (batch, dim, L), B, C (batch, G, N, L) in one dtype; A (dim, N), D,
    delta_bias (dim,), initial_state (batch, dim, N) fp32 or None; seq_idx (batch, L) int32
    contiguous or None, and with it optionally ordinals (batch, L) int32 contiguous and
    num_sequences (``sequence_ordinals``) → (out, last_state, checkpoints (batch, dim, n_chunks,
    N) fp32, the T_CHUNK between checkpoints, varlen states (num_sequences, dim, N) fp32, each
    sequence's final state, (0, dim, N) without ordinals)."""
    batch, dim, L = u.shape
    groups, N = B.shape[1], A.shape[1]
    name, kernel = _forward_kernel(seq_idx, ordinals)
    cfg = _forward_config(u, B, A, name)
    n_chunks = triton.cdiv(L, cfg.constexprs["T_CHUNK"])
    out = torch.empty_like(u)
    checkpoints = torch.empty((batch, dim, n_chunks, N), device=u.device, dtype=torch.float32)
    last_state = torch.empty((batch, dim, N), device=u.device, dtype=torch.float32)
    varlen_states = torch.empty((num_sequences if ordinals is not None else 0, dim, N),
                                device=u.device, dtype=torch.float32)
    grid = (batch * groups * triton.cdiv(dim // groups, cfg.constexprs["BLOCK_D"]),)
    if grid[0] == 0:  # no channel: every output is empty
        return out, last_state, checkpoints, cfg.constexprs["T_CHUNK"], varlen_states
    if seq_idx is None:
        packed = ()
    elif ordinals is None:
        packed = (seq_idx,)
    else:
        packed = (seq_idx, ordinals, varlen_states)
    kernel[grid](
        u, delta, u if z is None else z, A, B, C, A if D is None else D,
        A if delta_bias is None else delta_bias, A if initial_state is None else initial_state,
        out, checkpoints, last_state, *packed,
        dim, L, N, groups, dim // groups, n_chunks, *_bc_strides(B), *_bc_strides(C),
        int(z is not None), int(D is not None), int(delta_bias is not None),
        int(initial_state is not None), int(delta_softplus),
        num_warps=cfg.num_warps, maxnreg=cfg.maxnreg, enable_fp_fusion=True, **cfg.constexprs)
    return out, last_state, checkpoints, cfg.constexprs["T_CHUNK"], varlen_states


def selective_scan_backward_triton(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias,
                                   delta_softplus: bool, checkpoints, t_chunk: int, seq_idx=None,
                                   ordinals=None, grad_varlen_states=None):
    """Inputs as for the forward (seq_idx and ordinals included), its checkpoints and T_CHUNK,
    grad_out (batch, dim, L) contiguous in u's dtype, grad_last_state (batch, dim, N) fp32 or
    None, grad_varlen_states (num_sequences, dim, N) fp32 contiguous or None → (du, ddelta, dA,
    dB (batch, G, N, L), dC, dD, dz, ddelta_bias, d initial_state); dA, dB, dC, dD, ddelta_bias
    and d initial state in fp32, the gradients of absent inputs None."""
    batch, dim, L = u.shape
    groups, N = B.shape[1], A.shape[1]
    group_dim = dim // groups
    n_chunks = checkpoints.shape[2]
    if seq_idx is None:
        kernel, packed, configs = _selective_scan_bwd_kernel, (), BACKWARD_CONFIGS
        name = "_selective_scan_bwd_kernel"
    elif ordinals is None or grad_varlen_states is None:
        kernel, packed, configs = _selective_scan_bwd_seq_idx_kernel, (seq_idx,), BACKWARD_CONFIGS
        name = "_selective_scan_bwd_seq_idx_kernel"
    else:
        kernel, packed = _selective_scan_bwd_varlen_kernel, (ordinals, grad_varlen_states)
        configs, name = BACKWARD_VARLEN_CONFIGS, "_selective_scan_bwd_varlen_kernel"
    cfg = launch_config(configs_for(configs, u.dtype, B.dtype), BACKWARD_PROGRAMS_PER_SM, batch,
                        groups, group_dim, N, u.device, t_chunk, kernel=name,
                        dtypes=call_dtypes(u.dtype, B.dtype))
    blocks = triton.cdiv(group_dim, cfg.constexprs["BLOCK_D"])
    fp32 = dict(device=u.device, dtype=torch.float32)
    grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
    grad_z = None if z is None else torch.empty_like(z)
    grad_initial_state = torch.empty((batch, dim, N), **fp32)
    grad_B_part = torch.empty((batch, groups, blocks, N, L), **fp32)
    grad_C_part = torch.empty((batch, groups, blocks, N, L), **fp32)
    grad_A_part = torch.empty((batch, dim, N), **fp32)
    grad_D_part = None if D is None else torch.empty((batch, dim), **fp32)
    grad_bias_part = None if delta_bias is None else torch.empty((batch, dim), **fp32)
    grid = (batch * groups * blocks,)
    if grid[0] > 0:  # with no channel every buffer is empty and each sum over one is zero
        kernel[grid](
            u, delta, u if z is None else z, A, B, C, A if D is None else D,
            A if delta_bias is None else delta_bias, checkpoints,
            grad_out, A if grad_last_state is None else grad_last_state,
            grad_u, grad_delta, grad_u if z is None else grad_z, grad_initial_state,
            grad_B_part, grad_C_part, grad_A_part,
            grad_A_part if D is None else grad_D_part,
            grad_A_part if delta_bias is None else grad_bias_part, *packed,
            dim, L, N, groups, group_dim, n_chunks, *_bc_strides(B), *_bc_strides(C),
            int(z is not None), int(D is not None), int(delta_bias is not None),
            int(grad_last_state is not None), int(delta_softplus),
            num_warps=cfg.num_warps, maxnreg=cfg.maxnreg, enable_fp_fusion=True, **cfg.constexprs)
    grad_D = None if D is None else grad_D_part.sum(0)
    grad_bias = None if delta_bias is None else grad_bias_part.sum(0)
    return (grad_u, grad_delta, grad_A_part.sum(0), grad_B_part.sum(2), grad_C_part.sum(2), grad_D,
            grad_z, grad_bias, grad_initial_state)


def _forward_t_chunk(u: torch.Tensor, B: torch.Tensor, A: torch.Tensor, seq_idx, ordinals) -> int:
    """The steps between the forward's checkpoints: T_CHUNK of the config its launcher picks."""
    return _forward_config(u, B, A, _forward_kernel(seq_idx, ordinals)[0]).constexprs["T_CHUNK"]


@custom_op("mim::selective_scan_triton_fwd", mutates_args=())
def _forward_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                delta_bias: Optional[torch.Tensor], delta_softplus: bool,
                initial_state: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
                ordinals: Optional[torch.Tensor], num_sequences: int
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, last state, checkpoints, varlen states); fp32 A, D, delta_bias, initial_state;
    grouped B, C."""
    out, last_state, checkpoints, _, varlen_states = selective_scan_forward_triton(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, ordinals,
        num_sequences)
    return out, last_state, checkpoints, varlen_states


@_forward_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, ordinals,
      num_sequences):
    batch, dim, L = u.shape
    n_chunks = -(-L // _forward_t_chunk(u, B, A, seq_idx, ordinals))
    state = u.new_empty((batch, dim, A.shape[1]), dtype=torch.float32)
    sequences = num_sequences if ordinals is not None else 0
    return (torch.empty_like(u), state,
            u.new_empty((batch, dim, n_chunks, A.shape[1]), dtype=torch.float32),
            u.new_empty((sequences, dim, A.shape[1]), dtype=torch.float32))


@custom_op("mim::selective_scan_triton_bwd", mutates_args=())
def _backward_op(grad_out: torch.Tensor, grad_last_state: Optional[torch.Tensor], u: torch.Tensor,
                 delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                 delta_bias: Optional[torch.Tensor], delta_softplus: bool,
                 checkpoints: torch.Tensor, t_chunk: int,
                 seq_idx: Optional[torch.Tensor], ordinals: Optional[torch.Tensor],
                 grad_varlen_states: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """Gradients of u, delta, A, B, C, D, z, delta_bias, initial_state; an absent input's gradient
    is an empty tensor (a custom op cannot return None)."""
    grads = selective_scan_backward_triton(grad_out, grad_last_state, u, delta, A, B, C, D, z,
                                           delta_bias, delta_softplus, checkpoints, t_chunk,
                                           seq_idx, ordinals, grad_varlen_states)
    return [u.new_empty(0) if g is None else g for g in grads]


@_backward_op.register_fake
def _(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, checkpoints,
      t_chunk, seq_idx, ordinals, grad_varlen_states):
    fp32 = torch.float32
    like = lambda t, dtype=None: u.new_empty(0) if t is None else torch.empty_like(t, dtype=dtype)  # noqa: E731
    return [torch.empty_like(u), torch.empty_like(delta), like(A, fp32), like(B, fp32), like(C, fp32),
            like(D, fp32), like(z), like(delta_bias, fp32),
            u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=fp32)]


def triton_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, initial_state,
                   seq_idx, ordinals, num_sequences: int):
    """The forward the op's autograd Function runs on this path (contiguous u, delta, z, seq_idx
    and ordinals; B and C (batch, G, N, L) as ``grouped`` leaves them, in one dtype) → (out in
    u's dtype, last state fp32, checkpoints to save for backward, varlen states (num_sequences,
    dim, N) fp32, empty without ``ordinals``)."""
    return _forward_op(u, delta, _fp32(A), B, C, _fp32(D), z, _fp32(delta_bias), delta_softplus,
                       _fp32(initial_state), seq_idx, ordinals, num_sequences)


def triton_backward(grad_out, grad_last, grad_varlen, checkpoints, u, delta, A, B, C, D, z,
                    delta_bias, delta_softplus: bool, initial_state, seq_idx, ordinals) -> list:
    """The backward the op's autograd Function runs on this path: the gradients of (u, delta, A,
    B, C, D, z, delta_bias, initial_state), each in its input's dtype, None for an absent input.
    A gradient that is None (an output nothing depends on) is a masked-off load (grad_last,
    grad_varlen) or zeros (grad_out)."""
    grad_out = torch.zeros_like(u) if grad_out is None else grad_out.contiguous()
    (grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_z, grad_bias,
     grad_initial_state) = _backward_op(
        grad_out, _fp32(grad_last), u, delta, _fp32(A), B, C, _fp32(D), z, _fp32(delta_bias),
        delta_softplus, checkpoints, _forward_t_chunk(u, B, A, seq_idx, ordinals), seq_idx,
        ordinals, _fp32(grad_varlen))
    return [grad_u, grad_delta, grad_A.to(A.dtype), grad_B.to(B.dtype), grad_C.to(C.dtype),
            None if D is None else grad_D.to(D.dtype), None if z is None else grad_z,
            None if delta_bias is None else grad_bias.to(delta_bias.dtype),
            None if initial_state is None else grad_initial_state.to(initial_state.dtype)]
