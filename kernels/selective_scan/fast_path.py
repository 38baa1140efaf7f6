"""The selective scan's fast path (backend "fast"): fused numba-compiled loops on the CPU, forward
and a memory-lean backward (``FAST_PATH = "numba"``).

Shapes (as ``selective_scan``): u, delta, z (batch, dim, L); A (dim, N); B, C (batch, G, N, L)
(G = 1 when given as (batch, N, L)); D, delta_bias (dim,); initial_state (batch, dim, N);
seq_idx (batch, L) int32, optional.
Arithmetic is float32 (float64 for float64 inputs); fp16/bf16 inputs are upcast once on entry.

Forward: dt = softplus(delta + delta_bias) is one vectorized torch op; then one numba task per
(batch, channel) runs the recurrence h_t = exp(dt_t·A)·h_{t−1} + dt_t·B_t·u_t,
y_t = C_t·h_t + D·u_t with h (N values) held locally, and gates y·silu(z) in a second, vectorized
loop over the row. With ``seq_idx``, h is set to zero before each step that starts a packed
sequence (one byte per (batch, step) read, from a (batch, L) mask of the starts), and when the
per-sequence final states are asked for, h is also written at each sequence's last step to row
``ordinals[b, t]`` of a (num_sequences, dim, N) array. The loop over
the N states is vectorized: the float32 exp is a polynomial the compiler vectorizes (with libm's
scalar expf the forward took 3× as long). Reads u, dt, z, B, C once; writes out, the last state,
and a checkpoint of h every ``CHUNK`` steps (batch·dim·⌈L/CHUNK⌉·N floats: CHUNK times fewer
than all the states).

Backward: one numba task per (batch, group, slice of the group's channels). For each channel it
walks the chunks last to first: recompute the chunk's states, decays and pre-gate y from its
checkpoint into a per-task (CHUNK + 1, N) scratch, then run the adjoint recurrence backwards
through it. A step that starts a packed sequence gets the decay 0: the recomputed state forgets
what came before, and no adjoint, dA or dΔ flows back across it; the gradient of a sequence's
final state joins the adjoint at that sequence's last step. dB and dC sum over the
channels of a group: each task adds into its own (L, N) slab (no races; batch·G·slices·L·N
floats, summed afterwards), and dA, dD are reduced over the batch in torch, as is the softplus
backward. Nothing of size (batch, dim, L, N) is ever stored.

The op's autograd Function (``op.SelectiveScanFunction``) saves the inputs and the checkpoints
only. Forward and backward are the custom ops ``mim::selective_scan_fast_fwd`` / ``_bwd`` (with
fake implementations; ``fast_forward`` / ``fast_backward`` call them), so ``torch.compile``
traces through the Function without a graph break. The kernels use as many
threads as ``torch.get_num_threads()`` (at most numba's ``NUMBA_NUM_THREADS``), and are compiled
once per dtype (float32, float64) and cached on disk (numba ``cache=True``).

numba runs on CPU memory only: ``selective_scan`` runs the reference on any other device (CUDA
tensors with ``backend="fast"``), the step-by-step recurrence differentiated by autograd.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numba
import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .._custom_op import custom_op
from .._seq_idx import sequence_starts

FAST_PATH = "numba"
"""What the fast path runs: numba-compiled loops (CPU tensors)."""

CHUNK = 64
"""Time steps between state checkpoints (and the length of backward's per-task scratch)."""

# Reassociation lets the compiler vectorize the sums over the N states; nothing else is relaxed
# (NaN and Inf propagate as in IEEE arithmetic).
_FASTMATH = {"reassoc", "contract", "nsz"}


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (a register move the vectorizer
    keeps)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = args[0] if bits.bitwidth == 32 else builder.trunc(args[0], ir.IntType(32))
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


def vector_exp(x):
    """exp(x), in the scan's compute precision (see its numba overload)."""
    return math.exp(x)


@overload(vector_exp)
def _vector_exp_overload(x):
    if x != types.float32:
        return lambda x: math.exp(x)

    def exp_float32(x):
        # exp(x) = 2^k · exp(r), k = round(x / ln 2), r = x − k·ln 2 (ln 2 split in two parts
        # so r is exact), exp(r) by a degree-7 polynomial on |r| <= ln2/2: within 2 ulp of expf.
        # Clamped to [−87.3, 88]: below it returns the smallest normal float (~1e-38) instead
        # of a subnormal or 0, above it exp(88) instead of overflowing to Inf.
        x = min(max(x, np.float32(-87.33654)), np.float32(88.0))
        k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * r * r + r + np.float32(1.0)
        return p * _float32_from_bits((np.int32(k) + 127) << 23)

    return exp_float32


@njit(inline="always")
def _silu(x):
    return x / (np.float32(1.0) + vector_exp(-x))


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _forward_kernel(u, dt, A, Bt, Ct, D, z, h0, starts, ordinals, has_z, has_seq, has_varlen,
                    chunk, out, last, checkpoints, varlen_states):
    """u, dt, z (batch, dim, L); A (dim, N); Bt, Ct (batch, G, L, N) (time-major, so the N values
    of a step are contiguous); D (dim,) (zeros when absent); h0 (batch, dim, N); starts (batch, L)
    uint8, 1 where a packed sequence starts (read when has_seq); ordinals (batch, L) int32, the
    sequence of each step (read when has_varlen, which needs has_seq).
    Writes out (batch, dim, L) (y, gated when has_z), last (batch, dim, N), checkpoints
    (batch, dim, ⌈L/chunk⌉, N): the state before steps 0, chunk, 2·chunk, ..., and when
    has_varlen varlen_states (num_sequences, dim, N): h at each sequence's last step.

    Loops index arrays element by element: a sliced view inside the loop would touch the shared
    reference count of its parent on every step, from every thread."""
    batch, dim, length = u.shape
    per_group = dim // Bt.shape[1]
    nstate = A.shape[1]
    for task in prange(batch * dim):
        b, d = task // dim, task % dim
        g = d // per_group
        h = np.empty(nstate, dtype=A.dtype)
        for n in range(nstate):
            h[n] = h0[b, d, n]
        for t in range(length):
            if t % chunk == 0:
                for n in range(nstate):
                    checkpoints[b, d, t // chunk, n] = h[n]
            if has_seq and starts[b, t] != 0:
                for n in range(nstate):
                    h[n] = 0
            step, ut = dt[b, d, t], u[b, d, t]
            step_u = step * ut
            y = D[d] * ut
            for n in range(nstate):
                state = vector_exp(step * A[d, n]) * h[n] + step_u * Bt[b, g, t, n]
                h[n] = state
                y += Ct[b, g, t, n] * state
            out[b, d, t] = y
            if has_varlen and (t == length - 1 or starts[b, t + 1] != 0):
                for n in range(nstate):
                    varlen_states[ordinals[b, t], d, n] = h[n]
        if has_z:
            for t in range(length):
                out[b, d, t] = out[b, d, t] * _silu(z[b, d, t])
        for n in range(nstate):
            last[b, d, n] = h[n]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _backward_kernel(u, dt, A, Bt, Ct, D, z, starts, ordinals, has_z, has_seq, has_varlen, chunk,
                     checkpoints, grad_out, grad_last, grad_varlen, slices, grad_u, grad_dt, grad_z,
                     grad_h0, grad_A_parts, grad_D_parts, grad_B_parts, grad_C_parts):
    """Inputs as ``_forward_kernel`` plus checkpoints, grad_out (batch, dim, L), grad_last
    (batch, dim, N) and, read when has_varlen, grad_varlen (num_sequences, dim, N): added to the
    state's adjoint at each sequence's last step. Writes grad_u, grad_dt, grad_z (batch, dim, L), grad_h0 (batch, dim, N), and
    per-batch parts grad_A_parts (batch, dim, N), grad_D_parts (batch, dim); adds into
    grad_B_parts, grad_C_parts (batch, G, slices, L, N), which must start at zero."""
    batch, dim, length = u.shape
    groups = Bt.shape[1]
    per_group = dim // groups
    nstate = A.shape[1]
    n_chunks = checkpoints.shape[2]
    for task in prange(batch * groups * slices):
        b, g, s = task // (groups * slices), (task // slices) % groups, task % slices
        states = np.empty((chunk + 1, nstate), dtype=A.dtype)  # row i: the state before step i
        decays = np.empty((chunk, nstate), dtype=A.dtype)
        grad_ys = np.empty(chunk, dtype=A.dtype)
        grad_h = np.empty(nstate, dtype=A.dtype)
        grad_a = np.empty(nstate, dtype=A.dtype)
        first = g * per_group + (s * per_group) // slices
        stop = g * per_group + ((s + 1) * per_group) // slices
        for d in range(first, stop):
            for n in range(nstate):
                grad_h[n] = grad_last[b, d, n]
                grad_a[n] = 0
            grad_d = np.float32(0.0)
            for c in range(n_chunks - 1, -1, -1):
                start = c * chunk
                steps = min(chunk, length - start)
                for n in range(nstate):
                    states[0, n] = checkpoints[b, d, c, n]
                for i in range(steps):
                    t = start + i
                    step, ut = dt[b, d, t], u[b, d, t]
                    step_u = step * ut
                    y = D[d] * ut
                    keep = np.float32(1.0)  # 0 where a packed sequence starts: h forgets h_{t−1}
                    if has_seq and starts[b, t] != 0:
                        keep = np.float32(0.0)
                    for n in range(nstate):
                        e = vector_exp(step * A[d, n]) * keep
                        state = e * states[i, n] + step_u * Bt[b, g, t, n]
                        decays[i, n] = e
                        states[i + 1, n] = state
                        y += Ct[b, g, t, n] * state
                    grad_ys[i] = y  # the pre-gate y, turned into its gradient below
                if has_z:
                    for i in range(steps):
                        t = start + i
                        zt = z[b, d, t]
                        sig = np.float32(1.0) / (np.float32(1.0) + vector_exp(-zt))
                        dsilu = sig * (np.float32(1.0) + zt * (np.float32(1.0) - sig))
                        grad_z[b, d, t] = grad_out[b, d, t] * grad_ys[i] * dsilu
                        grad_ys[i] = grad_out[b, d, t] * zt * sig
                else:
                    for i in range(steps):
                        grad_ys[i] = grad_out[b, d, start + i]
                for i in range(steps - 1, -1, -1):
                    t = start + i
                    step, ut, grad_y = dt[b, d, t], u[b, d, t], grad_ys[i]
                    step_u = step * ut
                    grad_d += grad_y * ut
                    grad_step = np.float32(0.0)
                    sum_gb = np.float32(0.0)
                    if has_varlen and (t == length - 1 or starts[b, t + 1] != 0):
                        for n in range(nstate):
                            grad_h[n] += grad_varlen[ordinals[b, t], d, n]
                    for n in range(nstate):
                        gh = grad_h[n] + grad_y * Ct[b, g, t, n]
                        grad_C_parts[b, g, s, t, n] += grad_y * states[i + 1, n]
                        grad_B_parts[b, g, s, t, n] += gh * step_u
                        w = gh * states[i, n] * decays[i, n]
                        grad_step += w * A[d, n]
                        grad_a[n] += w * step
                        sum_gb += gh * Bt[b, g, t, n]
                        grad_h[n] = gh * decays[i, n]
                    grad_u[b, d, t] = grad_y * D[d] + sum_gb * step
                    grad_dt[b, d, t] = grad_step + sum_gb * ut
            for n in range(nstate):
                grad_h0[b, d, n] = grad_h[n]
                grad_A_parts[b, d, n] = grad_a[n]
            grad_D_parts[b, d] = grad_d


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _time_steps(delta, delta_bias, delta_softplus, compute):
    """(delta + delta_bias, dt): the pre-activation and the time step Δ, in the compute dtype."""
    pre = delta.detach().to(compute)
    if delta_bias is not None:
        pre = pre + delta_bias.detach().to(compute)[:, None]
    return pre, F.softplus(pre) if delta_softplus else pre


def _kernel_inputs(u, dt, A, B, C, D, z):
    """numpy views (copies only where a dtype or layout change is needed) of the kernels' inputs;
    B, C become time-major (batch, G, L, N); an absent D is zeros, an absent z a 1-element dummy."""
    compute = dt.dtype

    def dense(x):
        return x.detach().to(compute).contiguous().numpy()

    def time_major(x):
        x = x.detach() if x.dim() == 4 else x.detach().unsqueeze(1)
        return x.to(compute).transpose(-1, -2).contiguous().numpy()

    absent_D = torch.zeros(u.shape[1], dtype=compute, device="cpu")
    absent_z = torch.zeros(1, 1, 1, dtype=compute, device="cpu")
    return (dense(u), dense(dt), dense(A), time_major(B), time_major(C),
            dense(D if D is not None else absent_D), dense(z if z is not None else absent_z))


def _starts(seq_idx, batch):
    """(uint8 (batch, L) mask of the steps that start a packed sequence, has_seq); a 1×1 dummy
    when seq_idx is None."""
    if seq_idx is None:
        return np.zeros((1, 1), dtype=np.uint8), False
    return sequence_starts(seq_idx).to(torch.uint8).numpy(), True


def _ordinals(ordinals):
    """(int32 (batch, L) sequence ordinals, has_varlen); a 1×1 dummy when None."""
    if ordinals is None:
        return np.zeros((1, 1), dtype=np.int32), False
    return ordinals.contiguous().numpy(), True


def _set_threads() -> int:
    """Run the kernels on torch's thread count (capped by numba's pool); returns it."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads


def _channel_slices(batch: int, groups: int, per_group: int, threads: int) -> int:
    """Split each group's channels so that backward has about two tasks per thread."""
    wanted = -(-2 * threads // max(batch * groups, 1))
    return max(1, min(per_group, wanted))


def scan_forward_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                     seq_idx=None, ordinals=None, num_sequences=0):
    """(out in u's dtype, last state, checkpoints (batch, dim, ⌈L/CHUNK⌉, N), varlen states
    (num_sequences, dim, N), each sequence's final state: written when ``ordinals`` (see
    ``sequence_ordinals``) is given, else (0, dim, N)); all but out in float32 (float64 for
    float64 inputs)."""
    compute = _compute_dtype(u)
    batch, dim, length = u.shape
    nstate = A.shape[1]
    _, dt = _time_steps(delta, delta_bias, delta_softplus, compute)
    if initial_state is None:
        h0 = torch.zeros(batch, dim, nstate, dtype=compute, device="cpu")
    else:
        h0 = initial_state.detach().to(compute).contiguous()
    out = torch.empty(batch, dim, length, dtype=compute, device="cpu")
    last = torch.empty(batch, dim, nstate, dtype=compute, device="cpu")
    checkpoints = torch.empty(batch, dim, -(-length // CHUNK), nstate, dtype=compute, device="cpu")
    varlen_states = torch.empty(num_sequences if ordinals is not None else 0, dim, nstate,
                                dtype=compute, device="cpu")
    _set_threads()
    starts, has_seq = _starts(seq_idx, batch)
    ordinals, has_varlen = _ordinals(ordinals)
    _forward_kernel(*_kernel_inputs(u, dt, A, B, C, D, z), h0.numpy(), starts, ordinals,
                    z is not None, has_seq, has_varlen, CHUNK, out.numpy(), last.numpy(),
                    checkpoints.numpy(), varlen_states.numpy())
    return out.to(u.dtype), last, checkpoints, varlen_states


def scan_backward_cpu(grad_out, grad_last, checkpoints, u, delta, A, B, C, D, z, delta_bias,
                      delta_softplus, seq_idx=None, ordinals=None, grad_varlen=None):
    """Gradients for (u, delta, A, B, C, D, z, delta_bias, initial_state), each in its input's
    dtype (None for an absent input; the initial state's in the compute dtype). grad_varlen
    (num_sequences, dim, N), with ``ordinals``, is the gradient of the per-sequence final
    states."""
    compute = _compute_dtype(u)
    batch, dim, length = u.shape
    nstate = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    slices = _channel_slices(batch, groups, dim // groups, _set_threads())
    pre, dt = _time_steps(delta, delta_bias, delta_softplus, compute)
    grad_out = grad_out.to(compute).contiguous()
    grad_last = grad_last.to(compute).contiguous()
    grad_u = torch.empty(batch, dim, length, dtype=compute, device="cpu")
    grad_dt = torch.empty(batch, dim, length, dtype=compute, device="cpu")
    grad_z = torch.empty(batch, dim, length if z is not None else 0, dtype=compute, device="cpu")
    grad_h0 = torch.empty(batch, dim, nstate, dtype=compute, device="cpu")
    grad_A_parts = torch.empty(batch, dim, nstate, dtype=compute, device="cpu")
    grad_D_parts = torch.empty(batch, dim, dtype=compute, device="cpu")
    grad_B_parts = torch.zeros(batch, groups, slices, length, nstate, dtype=compute, device="cpu")
    grad_C_parts = torch.zeros(batch, groups, slices, length, nstate, dtype=compute, device="cpu")
    starts, has_seq = _starts(seq_idx, batch)
    if ordinals is None or grad_varlen is None:
        ordinals, grad_varlen = None, torch.zeros(1, 1, 1, dtype=compute, device="cpu")
    ordinals, has_varlen = _ordinals(ordinals)
    grad_varlen = grad_varlen.to(compute).contiguous()
    _backward_kernel(*_kernel_inputs(u, dt, A, B, C, D, z), starts, ordinals, z is not None,
                     has_seq, has_varlen, CHUNK, checkpoints.numpy(), grad_out.numpy(),
                     grad_last.numpy(), grad_varlen.numpy(), slices,
                     grad_u.numpy(), grad_dt.numpy(), grad_z.numpy(), grad_h0.numpy(),
                     grad_A_parts.numpy(), grad_D_parts.numpy(), grad_B_parts.numpy(),
                     grad_C_parts.numpy())
    grad_pre = (torch.ops.aten.softplus_backward(grad_dt, pre, 1.0, 20.0) if delta_softplus
                else grad_dt)

    def grouped_back(parts, like):
        grad = parts.sum(2).transpose(-1, -2)
        return (grad.squeeze(1) if like.dim() == 3 else grad).to(like.dtype)

    return (grad_u.to(u.dtype), grad_pre.to(delta.dtype), grad_A_parts.sum(0).to(A.dtype),
            grouped_back(grad_B_parts, B), grouped_back(grad_C_parts, C),
            grad_D_parts.sum(0).to(D.dtype) if D is not None else None,
            grad_z.to(z.dtype) if z is not None else None,
            grad_pre.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None,
            grad_h0)


@custom_op("mim::selective_scan_fast_fwd", mutates_args=())
def _forward_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                delta_bias: Optional[torch.Tensor], delta_softplus: bool,
                initial_state: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
                ordinals: Optional[torch.Tensor], num_sequences: int
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, last state, state checkpoints, varlen states) of the numba forward."""
    return scan_forward_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                            seq_idx, ordinals, num_sequences)


@_forward_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, ordinals,
      num_sequences):
    compute = _compute_dtype(u)
    batch, dim, length = u.shape
    nstate = A.shape[1]
    sequences = num_sequences if ordinals is not None else 0
    return (torch.empty_like(u), u.new_empty((batch, dim, nstate), dtype=compute),
            u.new_empty((batch, dim, -(-length // CHUNK), nstate), dtype=compute),
            u.new_empty((sequences, dim, nstate), dtype=compute))


@custom_op("mim::selective_scan_fast_bwd", mutates_args=())
def _backward_op(grad_out: torch.Tensor, grad_last: torch.Tensor, checkpoints: torch.Tensor,
                 u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                 delta_bias: Optional[torch.Tensor], delta_softplus: bool,
                 seq_idx: Optional[torch.Tensor], ordinals: Optional[torch.Tensor],
                 grad_varlen: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """Gradients for (u, delta, A, B, C, D, z, delta_bias, initial_state); an absent input's
    gradient is an empty tensor."""
    grads = scan_backward_cpu(grad_out, grad_last, checkpoints, u, delta, A, B, C, D, z,
                              delta_bias, delta_softplus, seq_idx, ordinals, grad_varlen)
    return [g if g is not None else u.new_empty(0) for g in grads]


@_backward_op.register_fake
def _(grad_out, grad_last, checkpoints, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
      seq_idx, ordinals, grad_varlen):
    like = [u, delta, A, B, C, D, z, delta_bias]
    return ([torch.empty_like(t) if t is not None else u.new_empty(0) for t in like]
            + [torch.empty_like(grad_last)])


def fast_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, initial_state,
                 seq_idx, ordinals, num_sequences: int):
    """The forward the op's autograd Function runs on this path (CPU tensors, B and C grouped
    (batch, G, N, L) or (batch, N, L)) → (out in u's dtype, last state, checkpoints to save for
    backward, varlen states (num_sequences, dim, N), empty without ``ordinals``)."""
    return _forward_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                       seq_idx, ordinals, num_sequences)


def fast_backward(grad_out, grad_last, grad_varlen, checkpoints, u, delta, A, B, C, D, z,
                  delta_bias, delta_softplus: bool, initial_state, seq_idx, ordinals) -> list:
    """The backward the op's autograd Function runs on this path: the gradients of (u, delta, A,
    B, C, D, z, delta_bias, initial_state), each in its input's dtype, None for an absent input.
    A gradient that is None (an output nothing depends on) counts as zeros."""
    grad_out = torch.zeros_like(u) if grad_out is None else grad_out.contiguous()
    grad_last = (u.new_zeros(checkpoints.shape[:2] + checkpoints.shape[3:], dtype=checkpoints.dtype)
                 if grad_last is None else grad_last.contiguous())
    grads = _backward_op(grad_out, grad_last, checkpoints, u, delta, A, B, C, D, z, delta_bias,
                         delta_softplus, seq_idx, ordinals, grad_varlen)
    present = (True, True, True, True, True, D is not None, z is not None,
               delta_bias is not None, initial_state is not None)
    grads = [g if keep else None for g, keep in zip(grads, present)]
    if initial_state is not None:
        grads[8] = grads[8].to(initial_state.dtype)
    return grads
