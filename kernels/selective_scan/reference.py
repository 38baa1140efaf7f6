"""The literal selective-scan recurrence (Mamba-1, real A): the ground truth for the tests.

With dt = delta (+ delta_bias) (→ softplus if asked), for every batch b, channel d, state n and
time t:

    h[b, d, n, t] = exp(dt[b, d, t] · A[d, n]) · h[b, d, n, t−1] + dt[b, d, t] · B[b, g(d), n, t] · u[b, d, t]
    y[b, d, t]    = Σ_n C[b, g(d), n, t] · h[b, d, n, t] + D[d] · u[b, d, t]
    out           = y · silu(z)  (when z is given)

with h[·, −1] = initial_state (zeros by default) and g(d) = d // (dim / G) the group of channel d
(B and C of shape (batch, N, L) are one group). With ``seq_idx`` (batch, L), h[b, ·, ·, t − 1] is
taken as 0 wherever seq_idx[b, t] != seq_idx[b, t − 1]: a new packed sequence starts there, and
``return_varlen_states`` also returns h at the last step of every sequence, (num_sequences, dim,
N) in ``sequence_ordinals`` order. One time step per iteration, in float32 (float64 for float64
inputs): slow, obviously right, differentiable by autograd.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._seq_idx import sequence_ordinals, sequence_starts


def _per_channel(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, N, L) or (batch, G, N, L) → (batch, dim, N, L), each channel seeing its group."""
    if x.dim() == 3:
        return x.unsqueeze(1).expand(x.shape[0], dim, *x.shape[1:])
    return x.repeat_interleave(dim // x.shape[1], dim=1)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                             delta_softplus=False, return_last_state=False,
                             initial_state: Optional[torch.Tensor] = None,
                             seq_idx: Optional[torch.Tensor] = None,
                             return_varlen_states: bool = False):
    if return_varlen_states and seq_idx is None:
        raise ValueError("return_varlen_states=True needs seq_idx: the per-sequence final states "
                         "are those of the sequences packed by seq_idx")
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, dim, length = u.shape
    u32, dt = u.to(compute), delta.to(compute)
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    A32 = A.to(compute)
    B_ch = _per_channel(B.to(compute), dim)
    C_ch = _per_channel(C.to(compute), dim)
    if initial_state is None:
        h = u32.new_zeros(batch, dim, A.shape[1])
    else:
        h = initial_state.to(compute)
    starts = None if seq_idx is None else sequence_starts(seq_idx)
    if return_varlen_states:
        ordinals, count = sequence_ordinals(seq_idx)
        ends = torch.ones_like(starts)  # the last step of each sequence
        ends[:, :-1] = starts[:, 1:]
        sequence_states = [None] * count
    ys = []
    for t in range(length):
        if starts is not None:
            h = torch.where(starts[:, t, None, None], 0.0, h)
        decay = torch.exp(dt[:, :, t, None] * A32)
        h = decay * h + (dt[:, :, t] * u32[:, :, t])[:, :, None] * B_ch[:, :, :, t]
        ys.append((h * C_ch[:, :, :, t]).sum(-1))
        if return_varlen_states:
            for b in ends[:, t].nonzero().flatten().tolist():
                sequence_states[int(ordinals[b, t])] = h[b]
    y = torch.stack(ys, dim=-1) if ys else u32.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(compute)[:, None] * u32
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(u.dtype)
    result = (out, h) if return_last_state else (out,)
    if return_varlen_states:
        varlen_states = (torch.stack(sequence_states) if sequence_states
                         else h.new_zeros(0, dim, A.shape[1]))
        result += (varlen_states,)
    return result if len(result) > 1 else out


def selective_scan_mamba_style(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """(out, last state) computed the way mamba_ssm's ``selective_scan_ref`` is structured (our own
    code): the peer the CPU benchmark and the traffic table measure the engine against. exp(Δ·A)
    and Δ·B·u are precomputed for all steps as (batch, dim, L, N) tensors by einsum, then one time
    step per Python iteration, y by einsum per step; autograd gives the backward. B, C (batch, N, L)."""
    dt = delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", dt, A))
    drive = torch.einsum("bdl,bnl,bdl->bdln", dt, B, u)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        state = decay[:, :, i] * state + drive[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, :, i]))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z), state
