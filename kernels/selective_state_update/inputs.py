"""``make_inputs``: the one builder of selective_state_update's inputs, for the tests, the bench/
microbenchmarks and the traffic case (``cost.traffic_cases``)."""
from __future__ import annotations

from typing import Optional, Union

import torch


def make_inputs(batch: int = 2, dim: int = 4, nstate: int = 3, *,
                dtype: torch.dtype = torch.float32, device: Union[str, torch.device, None] = None,
                requires_grad: bool = False, seed: Optional[int] = None,
                groups: Optional[int] = None, headdim: Optional[int] = None,
                per_head_views: bool = True, state_dtype: torch.dtype = torch.float32,
                D: bool = True, z: bool = True, dt_bias: bool = True) -> tuple:
    """(state, x, dt, A, B, C, D, z, dt_bias), selective_state_update's positional tensors (D, z,
    dt_bias None where switched off).

    Mamba-1 layout (``headdim`` None): state (batch, dim, N) standard normal in ``state_dtype``;
    x, z (batch, dim) standard normal and dt (batch, dim) uniform in [−0.5, 0.5), in ``dtype``;
    A = −2·rand (dim, N), D standard normal and dt_bias uniform in [0, 1) (dim,), in float32;
    B, C (batch, N), or (batch, G, N) with ``groups`` = G, in ``dtype``.

    Heads layout (``headdim`` set, Mamba-2's step; ``dim`` is then nheads): state (batch, nheads,
    headdim, N), x and z (batch, nheads, headdim); dt, A, D and dt_bias are drawn per head and
    expanded over headdim (and A over N) as stride-0 views (``per_head_views``, as mamba_ssm's
    Mamba2.step passes them) or as contiguous copies; B, C per group of heads.

    Drawn in float32 on the CPU (from torch's global generator, or a fresh one seeded with
    ``seed``), then cast and moved to ``device`` (None: torch's default device); with
    ``requires_grad`` every drawn tensor is a leaf that requires grad (the per-head views are
    views of such leaves)."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    device = torch.get_default_device() if device is None else device

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device="cpu")

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device="cpu")

    def leaf(t, kind):
        return t.to(device=device, dtype=kind).requires_grad_(requires_grad)

    lead = (dim,) if headdim is None else (dim, headdim)
    bc_shape = (batch, nstate) if groups is None else (batch, groups, nstate)
    state = leaf(randn(batch, *lead, nstate), state_dtype)
    x = leaf(randn(batch, *lead), dtype)
    step = rand(batch, dim) - 0.5
    A = rand(dim, 1 if headdim is not None else nstate) * -2.0
    B, C = leaf(randn(*bc_shape), dtype), leaf(randn(*bc_shape), dtype)
    skip = randn(dim) if D else None
    gate = leaf(randn(batch, *lead), dtype) if z else None
    bias = rand(dim) if dt_bias else None
    step, A = leaf(step, dtype), leaf(A, torch.float32)
    skip = None if skip is None else leaf(skip, torch.float32)
    bias = None if bias is None else leaf(bias, torch.float32)
    if headdim is not None:
        def per_head(t, shape):
            view = t[..., None].expand(*shape) if t.dim() < len(shape) else t.expand(*shape)
            return view if per_head_views else view.contiguous()

        step = per_head(step, (batch, dim, headdim))
        A = per_head(A, (dim, headdim, nstate))
        skip = None if skip is None else per_head(skip, (dim, headdim))
        bias = None if bias is None else per_head(bias, (dim, headdim))
    return state, x, step, A, B, C, skip, gate, bias
