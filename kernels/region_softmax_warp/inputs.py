"""``make_inputs``: the one builder of region_softmax_warp's inputs, for the tests, the bench/
microbenchmarks and the traffic cases (``cost.traffic_cases``)."""
from __future__ import annotations

from typing import Optional, Union

import torch


def make_inputs(B: int = 2, C: int = 5, R: int = 4, D: int = 3, H: int = 9, W: int = 10,
                feature_batch: int = 1, *, dtype: torch.dtype = torch.float32,
                device: Union[str, torch.device, None] = None, requires_grad: bool = False,
                seed: Optional[int] = None, beta: Optional[float] = 0.25, logit_scale: float = 1.0,
                displacement_scale: float = 0.1) -> tuple[torch.Tensor, ...]:
    """(feature F_id (feature_batch, C, D, H, W), logits ℓ (B, R, D, H, W), displacement Δ
    (B, R, 3, D, H, W), mask M (B, 1, D, H, W), β), in the op's argument order.

    ℓ is normal with standard deviation ``logit_scale``, Δ normal with ``displacement_scale`` (in
    normalized units: 0.1 moves a point by about a twentieth of the volume), F_id standard normal,
    M uniform in [0, 1]; drawn in float32 on the CPU (from torch's global generator, or a fresh
    one seeded with ``seed``), then cast to ``dtype`` and moved to ``device`` (None: torch's
    default device). β is a 0-dim tensor holding ``beta`` in fp32 (fp64 for fp64); with
    ``beta=None`` the tuple stops at the mask (the caller passes β, e.g. as a float). Each tensor
    is a leaf with ``requires_grad`` as asked."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    device = torch.get_default_device() if device is None else device
    feature = torch.randn(feature_batch, C, D, H, W, generator=generator, device="cpu")
    logits = torch.randn(B, R, D, H, W, generator=generator, device="cpu") * logit_scale
    displacement = torch.randn(B, R, 3, D, H, W, generator=generator, device="cpu") * displacement_scale
    mask = torch.rand(B, 1, D, H, W, generator=generator, device="cpu")
    tensors = tuple(t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
                    for t in (feature, logits, displacement, mask))
    if beta is None:
        return tensors
    beta_dtype = torch.promote_types(dtype, torch.float32)
    return tensors + (torch.tensor(float(beta), dtype=beta_dtype, device=device)
                      .requires_grad_(requires_grad),)
