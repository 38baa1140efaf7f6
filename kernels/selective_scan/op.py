"""``selective_scan`` (Mamba-1 selective scan, real A): input checks, the autograd Function and
backend dispatch. The Function runs the fast path's (numba) or the triton path's forward and
backward, each a custom op (``mim::selective_scan_fast_fwd``/``_bwd`` in fast_path.py,
``mim::selective_scan_triton_fwd``/``_bwd`` in triton_kernels.py), so ``torch.compile`` traces
through it without a graph break."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._checks import KERNEL_DTYPES, check_grouped, check_same, check_tensor
from .._dispatch import resolve_backend
from .._seq_idx import check_seq_idx, sequence_ordinals
from .reference import selective_scan_reference


def _path(backend: str):
    """(forward, backward) of the fast or the triton path; triton is imported only when used."""
    if backend == "triton":
        from .triton_kernels import triton_backward, triton_forward
        return triton_forward, triton_backward
    from .fast_path import fast_backward, fast_forward
    return fast_forward, fast_backward


class SelectiveScanFunction(torch.autograd.Function):
    """The scan on the fast path (``backend="fast"``, CPU tensors) or the triton path.

    Saves the inputs and the state checkpoints, one (batch, dim, N) state every chunk of steps
    (CHUNK = 64 on the fast path, T_CHUNK = 32 on triton): backward rebuilds each chunk's states
    from them instead of storing (batch, dim, L, N) or rescanning from the start."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx,
                ordinals, num_sequences, backend):
        forward, _ = _path(backend)
        out, last, checkpoints, varlen_states = forward(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, ordinals,
            num_sequences)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx,
                              ordinals, checkpoints)
        ctx.delta_softplus, ctx.backend = delta_softplus, backend
        ctx.set_materialize_grads(False)
        return out, last, varlen_states

    @staticmethod
    def backward(ctx, grad_out, grad_last, grad_varlen):
        (u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, ordinals,
         checkpoints) = ctx.saved_tensors
        _, backward = _path(ctx.backend)
        grads = backward(grad_out, grad_last, grad_varlen, checkpoints, u, delta, A, B, C, D, z,
                         delta_bias, ctx.delta_softplus, initial_state, seq_idx, ordinals)
        grads = grads[:8] + [None] + grads[8:] + [None, None, None, None]
        return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad))


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state):
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        check_tensor(name, t)
    optional = [(n, t) for n, t in (("D", D), ("z", z), ("delta_bias", delta_bias),
                                    ("initial_state", initial_state)) if t is not None]
    for name, t in optional:
        check_tensor(name, t)
    check_same(("u", "delta") + (("z",) if z is not None else ()),
               (u, delta) + ((z,) if z is not None else ()))
    # B and C may have their own dtype (fp32 B, C with bf16 u, as selective_scan_fn takes them).
    devices = [("A", A), ("B", B), ("C", C)] + [(n, t) for n, t in optional if n != "z"]
    for name, t in devices:
        if t.device != u.device:
            raise ValueError(f"{name} is on {t.device} but u is on {u.device}; pass tensors on one device")
    if u.dim() != 3:
        raise ValueError(f"u must be 3-D (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have the shape of u (batch, dim, L) = {tuple(u.shape)}, "
                         f"got {tuple(delta.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have the shape of u (batch, dim, L) = {tuple(u.shape)}, got {tuple(z.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be 2-D (dim, N) = ({dim}, N), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise TypeError("A must be real; complex A is not supported")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:  # constant over batch and time, per channel (mamba_ssm's is_variable_B)
            if tuple(t.shape) != (dim, state):
                raise ValueError(f"{name} must be (dim, N) = ({dim}, {state}) when 2-D (constant over "
                                 f"batch and time), got shape {tuple(t.shape)}")
        else:
            check_grouped(name, t, batch, dim, (state, length), "N, L")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{name} must have shape (dim,) = ({dim},), got {tuple(t.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, state):
        raise ValueError(f"initial_state must have shape (batch, dim, N) = ({batch}, {dim}, {state}), "
                         f"got {tuple(initial_state.shape)}")


def _check_triton(u: torch.Tensor, A: torch.Tensor, return_varlen_states: bool) -> None:
    """The limits of the triton kernels, each a clear error naming the fast path instead."""
    from .triton_kernels import MAX_L, MAX_N, T_CHUNK

    check_tensor("u", u, KERNEL_DTYPES)
    N = A.shape[1]
    if N > MAX_N:
        raise ValueError(f"A has N={N} states; the triton kernels hold the state in registers and "
                         f"take N <= {MAX_N}; use backend='fast'")
    if u.shape[2] > MAX_L:
        raise ValueError(f"u has L={u.shape[2]} steps; the triton kernels take L <= {MAX_L}; "
                         "scan it in pieces with initial_state, or use backend='fast'")
    if return_varlen_states and T_CHUNK * u.shape[1] * N >= 2 ** 31:
        raise ValueError(f"u has dim={u.shape[1]} channels and A N={N} states: the triton "
                         f"kernels' varlen states take T_CHUNK·dim·N < 2^31 (T_CHUNK = {T_CHUNK}); "
                         "use backend='fast'")


def _common_groups(B: torch.Tensor, C: torch.Tensor, batch: int, dim: int, length: int):
    """B and C as (batch, G, N, L) with one G, the layout every backend's kernel reads: a constant
    (dim, N) one as one group per channel (a stride-0 view over batch and time), a 3-D one as one
    group, and both at the least common multiple of their group counts (a divisor of dim). Views
    where possible; autograd sums the gradients of broadcast copies back."""
    def groups(t):
        return dim if t.dim() == 2 else 1 if t.dim() == 3 else t.shape[1]

    if B.dim() == C.dim() != 2 and groups(B) == groups(C):
        return B, C  # already one layout (the usual call): passed on untouched
    common = math.lcm(groups(B), groups(C))

    def regroup(t):
        if t.dim() == 2:
            t = t[None, :, :, None].expand(batch, dim, t.shape[1], length)
        elif t.dim() == 3:
            t = t.unsqueeze(1)
        if t.shape[1] == common:
            return t
        if t.shape[1] == 1:
            return t.expand(batch, common, *t.shape[2:])
        return t.repeat_interleave(common // t.shape[1], dim=1)

    return regroup(B), regroup(C)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                   return_last_state: bool = False, initial_state: Optional[torch.Tensor] = None,
                   backend: Optional[str] = None, seq_idx: Optional[torch.Tensor] = None,
                   return_varlen_states: bool = False):
    """The Mamba-1 selective scan, as ``mamba_ssm``'s ``selective_scan_fn`` for real A.

    Args:
        u, delta: (batch, dim, L) input and time step Δ; z (optional) the same shape, the gate.
        A: (dim, N) real state matrix (negative for a stable scan).
        B, C: each (batch, N, L), (batch, G, N, L) with G groups dividing dim, or (dim, N), constant
            over batch and time (mamba_ssm's non-variable B, C); B and C may differ in layout and
            groups, and in dtype from u (e.g. fp32 B, C with bf16 u). The scan runs in float32
            (float64 for float64 u); the triton kernels read B and C in u's dtype or, when either
            is float32, both in float32 (as mamba_ssm's CUDA kernel reads fp32 weights with bf16
            inputs); another dtype is cast to that first. A constant or differently grouped B, C
            reaches the fast and triton kernels broadcast to one group count G (the lcm of the
            two; dim for a constant one): the triton kernels read a constant one through its
            stride-0 view (no copy; its gradient is still computed per (batch, dim, N, L), in
            fp32, and summed to (dim, N)); the fast path copies it to (batch, G, N, L), up to N
            times u's size. B and C with different group counts are repeated to the lcm (a copy)
            on both paths.
        D, delta_bias: (dim,) optional skip weight and Δ bias.
        delta_softplus: apply softplus to Δ (+ bias).
        return_last_state: also return h at the last step, (batch, dim, N), float32.
        initial_state: optional h before the first step, (batch, dim, N); gradients flow through it
            and through the returned last state, so a long sequence can be scanned in chunks.
            This is the one intended difference from ``selective_scan_fn``, whose backward ignores
            the gradient of the last state: here a loss on ``last_state`` reaches every input.
        backend: "auto", "reference", "fast" (alias "torch") or "triton" (see
            ``kernels._dispatch``).
        seq_idx: optional int32 (batch, L), non-decreasing along each row: several sequences
            packed into one row (see ``kernels._seq_idx``). The state restarts from zero where
            seq_idx changes, so out and every gradient equal those of separate calls on the
            sequences. initial_state is the state before the first sequence of each row (the
            later ones start from zero), and the last state is that of the row's last sequence.
        return_varlen_states: also return every packed sequence's final state (h at its last
            step), ``varlen_states`` (num_sequences, dim, N), float32 — the name and layout of
            mamba_ssm's Mamba-2 varlen final states (``return_varlen_states``, (num_seqs, ...)).
            Sequences are numbered in order of appearance, row by row: row 0's in position
            order, then row 1's, ... (the ordinal of position (b, t) is the number of sequence
            starts, every row's t = 0 included, up to it in row-major order, minus one; see
            ``kernels._seq_idx.sequence_ordinals``). Gradients flow through them on every
            backend. Needs seq_idx (a ValueError otherwise). Sizing the output costs one host
            sync (num_sequences read from the device).

    Returns:
        out (batch, dim, L) in u's dtype, then the last state when ``return_last_state``, then
        the varlen states when ``return_varlen_states``: a tuple when anything but out is asked
        for, else out.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    check_seq_idx(seq_idx, u.shape[0], u.shape[2], u.device)
    if return_varlen_states and seq_idx is None:
        raise ValueError("return_varlen_states=True needs seq_idx (batch, L): the varlen states "
                         "are the final states of the sequences seq_idx packs")
    chosen = resolve_backend(backend, u.device, "selective_scan")
    if chosen == "fast" and u.device.type != "cpu":
        chosen = "reference"  # numba runs on CPU memory only
    if chosen == "triton":
        _check_triton(u, A, return_varlen_states)
        from .triton_kernels import bc_kernel_dtype
        # Cast before the broadcast, so a cast never copies a broadcast B or C.
        bc_dtype = bc_kernel_dtype(u.dtype, B.dtype, C.dtype)
        B, C = B.to(bc_dtype), C.to(bc_dtype)
    B, C = _common_groups(B, C, *u.shape)
    if chosen == "reference":
        result = selective_scan_reference(u, delta, A, B, C, D, z, delta_bias,
                                          bool(delta_softplus), return_last_state=True,
                                          initial_state=initial_state, seq_idx=seq_idx,
                                          return_varlen_states=bool(return_varlen_states))
    else:
        ordinals, num_sequences = None, 0
        if return_varlen_states:
            ordinals, num_sequences = sequence_ordinals(seq_idx)
            ordinals = ordinals.contiguous()
        if chosen == "triton":
            from .triton_kernels import grouped
            u, delta, B, C = u.contiguous(), delta.contiguous(), grouped(B), grouped(C)
            z = None if z is None else z.contiguous()
            seq_idx = None if seq_idx is None else seq_idx.contiguous()
        result = SelectiveScanFunction.apply(u, delta, A, B, C, D, z, delta_bias,
                                             bool(delta_softplus), initial_state, seq_idx,
                                             ordinals, num_sequences, chosen)
        if not return_varlen_states:
            result = result[:2]
    out, last, *varlen_states = result
    result = (out,) + ((last,) if return_last_state else ()) + tuple(varlen_states)
    return result if len(result) > 1 else out
