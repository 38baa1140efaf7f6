"""The literal math of the region-softmax warp (the LMDD-to-decoder hot path): the tests' ground truth.

With F_id the identity feature volume, ℓ the per-region logits (the attention maps), Δ the
per-region displacement in normalized (x, y, z) units, M the occlusion mask and β the articulation
intensity:

    w      = softmax_r(ℓ)                              (B, R, D, H, W)
    flow   = Σ_r w_r · Δ_r                             (B, 3, D, H, W)
    grid   = identity + flow                           (B, D, H, W, 3), flow k adds to component k
    warped = grid_sample(F_id, grid)                   trilinear, (B, C, D, H, W)
    m      = M · warped + (1 − M) · F_id
    out    = max(0, m) + β · min(0, m)      (written as m > 0 ? m : β·m)

At m = 0 the gradient taken is β (``F.leaky_relu``'s choice); the sum of the two clamps' would be
1 + β there. The point matters: with zeros padding a grid point outside the volume samples 0, and
a mask of exactly 1 then makes m exactly 0.

The identity grid is the one ``F.grid_sample`` maps back onto its input: x runs along W, y along H,
z along D, at voxel centres (2i + 1)/n − 1 (align_corners=False) or linspace(−1, 1, n) (True).
Plain PyTorch ops, so autograd gives every gradient; ``gradcheck`` in float64 proves it in the tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.grid_sample_3d.reference import grid_sample_3d_reference

SAMPLERS = ("grid_sample", "gather")


def identity_grid(D: int, H: int, W: int, align_corners: bool, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """(D, H, W, 3) grid in (x, y, z) order that ``F.grid_sample`` maps onto the input's voxels."""
    def axis(n: int) -> torch.Tensor:
        if align_corners:
            return torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device)
        return (2 * torch.arange(n, dtype=dtype, device=device) + 1) / n - 1
    z, y, x = torch.meshgrid(axis(D), axis(H), axis(W), indexing="ij")
    return torch.stack((x, y, z), dim=-1)


def region_softmax_warp_reference(feature: torch.Tensor, logits: torch.Tensor,
                                  displacement: torch.Tensor, mask: torch.Tensor, beta,
                                  padding_mode: str = "border",
                                  align_corners: bool = False,
                                  sampler: str = "grid_sample") -> torch.Tensor:
    """feature (B or 1, C, D, H, W), logits (B, R, D, H, W), displacement (B, R, 3, D, H, W),
    mask (B, 1, D, H, W), beta a float or 0-dim tensor → out (B, C, D, H, W) in feature's dtype,
    computed in at least float32.

    ``sampler`` picks how the trilinear sampling is written (the same math; rounding may differ):
    "grid_sample" (``F.grid_sample``; ONNX ``GridSample``) or "gather" (the 8 cell corners
    fetched as rows of C channels, ``grid_sample_3d_reference``; ONNX ``Gather``, for runtimes
    without 5-D ``GridSample``)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    compute = torch.promote_types(feature.dtype, torch.float32)
    feature32, logits32 = feature.to(compute), logits.to(compute)
    displacement32, mask32 = displacement.to(compute), mask.to(compute)
    B, _, D, H, W = logits.shape
    weights = torch.softmax(logits32, dim=1)
    flow = torch.einsum("brdhw,brkdhw->bkdhw", weights, displacement32)
    grid = identity_grid(D, H, W, align_corners, compute, logits.device) + flow.permute(0, 2, 3, 4, 1)
    source = feature32.expand(B, *feature32.shape[1:])
    if D * H * W == 0:  # nothing to sample (F.grid_sample refuses an empty volume)
        warped = source
    elif sampler == "gather":
        warped = grid_sample_3d_reference(source, grid, padding_mode, align_corners)
    else:
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode=padding_mode,
                               align_corners=align_corners)
    blended = mask32 * warped + (1 - mask32) * source
    out = torch.where(blended > 0, blended, beta * blended)
    return out.to(feature.dtype)
