"""``make_inputs`` and ``make_update_inputs``: the one builder of causal_conv1d's inputs (and of
its one-step form's), for the tests, the benchmarks and the traffic cases (``cost.traffic_cases``)."""
from __future__ import annotations

from typing import Optional, Union

import torch


def _generator(seed: Optional[int]) -> Optional[torch.Generator]:
    return None if seed is None else torch.Generator().manual_seed(seed)


def _finish(t: Optional[torch.Tensor], dtype, device, requires_grad) -> Optional[torch.Tensor]:
    if t is None:
        return None
    return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)


def make_inputs(batch: int = 2, dim: int = 5, length: int = 17, width: int = 4, *,
                dtype: torch.dtype = torch.float32, device: Union[str, torch.device, None] = None,
                requires_grad: bool = False, seed: Optional[int] = None, bias: bool = True,
                channel_last: bool = False, sequences: int = 0) -> tuple:
    """(x (batch, dim, L), weight (dim, W), bias (dim,) or None), and seq_idx when ``sequences``
    > 0: standard normal x and bias, weight scaled by 1/√W (outputs of unit scale), drawn in
    float32 on the CPU (from torch's global generator, or a fresh one seeded with ``seed``), cast
    to ``dtype`` and moved to ``device`` (None: torch's default device), each a leaf with
    ``requires_grad`` as asked.

    ``channel_last``: x is a (batch, dim, L) view of (batch, L, dim) memory (unit stride along dim).
    ``sequences`` > 0: a fourth element, seq_idx (batch, L) int32 packing up to that many
    sequences per row, with boundaries drawn at random (for the ``seq_idx=`` keyword)."""
    generator = _generator(seed)
    device = torch.get_default_device() if device is None else device
    if channel_last:
        x = torch.randn(batch, length, dim, generator=generator, device="cpu").transpose(1, 2)
    else:
        x = torch.randn(batch, dim, length, generator=generator, device="cpu")
    weight = torch.randn(dim, width, generator=generator, device="cpu") / width ** 0.5
    b = torch.randn(dim, generator=generator, device="cpu") if bias else None
    tensors = tuple(_finish(t, dtype, device, requires_grad) for t in (x, weight, b))
    if sequences <= 0:
        return tensors
    starts = torch.rand(batch, length, generator=generator, device="cpu") < (sequences - 1) / max(length, 1)
    starts[:, 0] = False
    seq_idx = starts.to(torch.int32).cumsum(dim=1, dtype=torch.int32)
    return tensors + (seq_idx.to(device),)


def make_update_inputs(batch: int = 2, dim: int = 5, width: int = 4, state_len: Optional[int] = None,
                       *, dtype: torch.dtype = torch.float32, device: Union[str, torch.device, None] = None,
                       seed: Optional[int] = None, bias: bool = True) -> tuple:
    """(x (batch, dim), conv_state (batch, dim, S), weight (dim, W), bias (dim,) or None): the
    positional arguments of ``causal_conv1d_update``, S = ``state_len`` (default W); drawn as in
    ``make_inputs`` (the state standard normal), no gradients (the step is inference)."""
    generator = _generator(seed)
    device = torch.get_default_device() if device is None else device
    state_len = width if state_len is None else state_len
    x = torch.randn(batch, dim, generator=generator, device="cpu")
    conv_state = torch.randn(batch, dim, state_len, generator=generator, device="cpu")
    weight = torch.randn(dim, width, generator=generator, device="cpu") / width ** 0.5
    b = torch.randn(dim, generator=generator, device="cpu") if bias else None
    return tuple(_finish(t, dtype, device, False) for t in (x, conv_state, weight, b))
