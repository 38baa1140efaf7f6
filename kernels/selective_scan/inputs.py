"""``make_inputs``: the one builder of selective_scan's inputs, for the tests, the bench/
microbenchmarks and the traffic case (``cost.traffic_cases``)."""
from __future__ import annotations

from typing import Optional, Union

import torch

BCLayout = Union[None, int, str]
"""How B or C is laid out: None (batch, N, L), one group; an int G (batch, G, N, L), G groups
dividing dim; "constant" (dim, N), constant over batch and time."""


def _projection(layout: BCLayout, batch: int, dim: int, nstate: int, length: int,
                generator) -> torch.Tensor:
    if layout is None:
        return torch.randn(batch, nstate, length, generator=generator, device="cpu")
    if layout == "constant":
        return torch.randn(dim, nstate, generator=generator, device="cpu")
    if isinstance(layout, int) and not isinstance(layout, bool) and layout > 0:
        return torch.randn(batch, layout, nstate, length, generator=generator, device="cpu")
    raise ValueError(f"a B or C layout is None, a group count G > 0 or 'constant', got {layout!r}")


def make_inputs(batch: int = 2, dim: int = 4, length: int = 7, nstate: int = 3, *,
                dtype: torch.dtype = torch.float32, device: Union[str, torch.device, None] = None,
                requires_grad: bool = False, seed: Optional[int] = None,
                groups: BCLayout = None, C_groups: BCLayout = "same",
                param_dtype: torch.dtype = torch.float32, bc_dtype: Optional[torch.dtype] = None,
                D: bool = True, z: bool = True, delta_bias: bool = True,
                delta_softplus: bool = True, initial_state: bool = False) -> tuple:
    """(u, delta, A, B, C, D, z, delta_bias), selective_scan's positional tensors, and with
    ``initial_state=True`` a ninth, the initial state (batch, dim, N) (pass it as
    ``initial_state=``). D, z, delta_bias are None where switched off.

    u, z: standard normal (batch, dim, L); A = −exp(0.5·randn) (dim, N), a stable scan; B (and
    C) laid out as ``groups`` (``C_groups``, by default the same; see ``BCLayout``), standard
    normal; D standard normal (dim,); delta (batch, dim, L): with ``delta_softplus`` 0.5·randn − 1
    and delta_bias 0.5·rand − 0.25, so softplus(delta + delta_bias) ≈ 0.1 … 1; without it
    0.3·rand + 0.02 (Δ itself, positive) and delta_bias 0.02·rand. u, delta, z in ``dtype``;
    B, C in ``bc_dtype`` (default ``dtype``); A, D, delta_bias and the initial state in
    ``param_dtype`` (mamba_ssm keeps A and D in float32). Drawn in float32 on the CPU (from
    torch's global generator, or a fresh one seeded with ``seed``), then cast and moved to
    ``device`` (None: torch's default device); every tensor a leaf with ``requires_grad`` as asked."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    device = torch.get_default_device() if device is None else device
    C_groups = groups if C_groups == "same" else C_groups

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device="cpu")

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device="cpu")

    u = randn(batch, dim, length)
    if delta_softplus:
        delta = randn(batch, dim, length) * 0.5 - 1.0
    else:
        delta = rand(batch, dim, length) * 0.3 + 0.02
    A = -torch.exp(randn(dim, nstate) * 0.5)
    B = _projection(groups, batch, dim, nstate, length, generator)
    C = _projection(C_groups, batch, dim, nstate, length, generator)
    skip = randn(dim) if D else None
    gate = randn(batch, dim, length) if z else None
    bias = None
    if delta_bias:
        bias = rand(dim) * 0.5 - 0.25 if delta_softplus else rand(dim) * 0.02
    state = randn(batch, dim, nstate) if initial_state else None
    bc_dtype = dtype if bc_dtype is None else bc_dtype
    typed = [(u, dtype), (delta, dtype), (A, param_dtype), (B, bc_dtype), (C, bc_dtype),
             (skip, param_dtype), (gate, dtype), (bias, param_dtype)]
    if initial_state:
        typed.append((state, param_dtype))
    return tuple(None if t is None else
                 t.to(device=device, dtype=kind).requires_grad_(requires_grad)
                 for t, kind in typed)
