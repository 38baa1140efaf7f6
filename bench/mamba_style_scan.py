"""A selective scan written the way mamba_ssm's ``selective_scan_ref`` is (our own code, same
structure): the peer that the CPU benchmark and the traffic table measure the engine against.

exp(Δ·A) and Δ·B·u are precomputed for all steps as (batch, dim, L, N) float32 tensors by einsum,
then one time step per Python iteration, y by einsum per step; autograd gives the backward.
"""
import torch
import torch.nn.functional as F


def mamba_style_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """(out, last state) the way mamba_ssm's selective_scan_ref computes them (B, C ungrouped)."""
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
