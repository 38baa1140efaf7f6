"""``make_inputs``: the one builder of grid_sample_3d's inputs, for the tests, the bench/
microbenchmarks and the traffic cases (``cost.traffic_cases``)."""
from __future__ import annotations

from typing import Optional, Union

import torch


def make_inputs(N: int = 2, C: int = 5, D: int = 3, H: int = 9, W: int = 10,
                Do: Optional[int] = None, Ho: Optional[int] = None, Wo: Optional[int] = None, *,
                dtype: torch.dtype = torch.float32, device: Union[str, torch.device, None] = None,
                requires_grad: bool = False, seed: Optional[int] = None,
                reach: float = 1.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(input (N, C, D, H, W), grid (N, Do, Ho, Wo, 3)); the output size defaults to the input's
    (one point per voxel). input is standard normal, grid uniform in [−reach, reach] (reach > 1
    puts points outside the volume, where the padding mode matters). Drawn in float32 on the CPU
    (from torch's global generator, or a fresh one seeded with ``seed``), then cast to ``dtype``
    and moved to ``device`` (None: torch's default device); each a leaf with ``requires_grad``
    as asked."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    device = torch.get_default_device() if device is None else device
    Do, Ho, Wo = (D if Do is None else Do), (H if Ho is None else Ho), (W if Wo is None else Wo)
    volume = torch.randn(N, C, D, H, W, generator=generator, device="cpu")
    grid = torch.rand(N, Do, Ho, Wo, 3, generator=generator, device="cpu") * (2 * reach) - reach
    return tuple(t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
                 for t in (volume, grid))
