"""``make_inputs``: the one builder of deviation_adanorm's inputs, for the tests, the bench/
microbenchmarks and the traffic cases (``cost.traffic_cases``)."""
from __future__ import annotations

from typing import Optional, Union

import torch


def make_inputs(B: int = 2, T: int = 3, R: int = 2, G: int = 97, *, dtype: torch.dtype = torch.float32,
                device: Union[str, torch.device, None] = None, requires_grad: bool = False,
                seed: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(v (B, T, G), scale (B, T−1, R, G), shift (B, T−1, R, G)): standard normal values, drawn in
    float32 on the CPU (from torch's global generator, or a fresh one seeded with ``seed``), then
    cast to ``dtype`` and moved to ``device`` (None: torch's default device); each a leaf with
    ``requires_grad`` as asked."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    device = torch.get_default_device() if device is None else device
    shapes = ((B, T, G), (B, T - 1, R, G), (B, T - 1, R, G))
    return tuple(torch.randn(shape, generator=generator, device="cpu").to(device=device, dtype=dtype)
                 .requires_grad_(requires_grad) for shape in shapes)
