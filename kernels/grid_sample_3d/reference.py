"""The literal math of trilinear ``grid_sample`` on 5-D tensors: the ground truth for the tests.

Written out as a gather (not a call to ``F.grid_sample``) so the tests compare against something
independent; the same gathers are the warp reference's ``sampler="gather"``, which the ONNX export
uses where 5-D ``GridSample`` is missing. For output point p with grid (x, y, z) in normalized coordinates:

    ix = unnormalize(x, W), iy = unnormalize(y, H), iz = unnormalize(z, D)
        align_corners=True:  (c + 1) / 2 · (size − 1)
        align_corners=False: ((c + 1) · size − 1) / 2
        padding "border":    then clamped to [0, size − 1]
    fx = ix − ⌊ix⌋ (and fy, fz), axis weights (1 − fx, fx) for the corners (⌊ix⌋, ⌊ix⌋ + 1)
    out[n, c, p] = Σ over the 8 corners (k, j, i) of wz_k · wy_j · wx_i · input[n, c, k, j, i],
    a corner outside the volume contributing 0 ("zeros" padding).

Plain PyTorch ops, so autograd gives the gradients for input and grid (floor has zero gradient, so
on an integer source index the one-sided derivative ATen uses comes out; the border clamp passes
it strictly inside (0, size − 1) only, as ATen's clip_coordinates_set_grad does);
``gradcheck`` in float64 proves it in the tests.

Non-finite source indices follow F.grid_sample on CPU: ±inf is clamped with "border" and lies
outside with "zeros" (ATen's safe_downgrade_to_int_range sends it to −100, as it does a NaN).
A NaN index with "border" is where ATen disagrees with itself: its forward clamps it to size − 1
(std::min(size − 1, std::max(NaN, 0))), its backward sees the point outside, so that point's
output is sampled at size − 1 and passes no gradient to input or grid.
"""
from __future__ import annotations

import torch


def source_index(coord: torch.Tensor, size: int, align_corners: bool, border: bool) -> torch.Tensor:
    """Normalized coordinate -> source index along one axis, as F.grid_sample computes it
    ("border": clamped to [0, size - 1]) for finite coordinates; NaN stays NaN."""
    if align_corners:
        index = (coord + 1) / 2 * (size - 1)
    else:
        index = ((coord + 1) * size - 1) / 2
    if border:
        # clamp to [0, size - 1]; on the bounds too the gradient is 0, as in ATen
        index = torch.where(index <= 0, 0.0, torch.where(index >= size - 1, size - 1.0, index))
    return index


def _sampled_index(coord: torch.Tensor, size: int, align_corners: bool, border: bool):
    """``source_index`` with ATen's rules for what is not a number: a NaN index becomes size - 1
    with "border"; then ±inf and NaN become -100 (outside). Returns (index, index was NaN)."""
    index = source_index(coord, size, align_corners, border)
    undefined = index.isnan()
    if border:
        index = torch.where(undefined, size - 1.0, index)
    return torch.where(index.isfinite(), index, -100.0), undefined


def grid_sample_3d_reference(input: torch.Tensor, grid: torch.Tensor, padding_mode: str = "zeros",
                             align_corners: bool = False) -> torch.Tensor:
    """input (N, C, D, H, W), grid (N, Do, Ho, Wo, 3) in (x, y, z) → (N, C, Do, Ho, Wo).

    The volume is read as rows of C channels, (N·D·H·W, C), and each of the 8 corners fetches
    one row per point (``index_select``: one ONNX ``Gather``, which is how ``mim.export`` writes
    the warp for runtimes without 5-D ``GridSample``)."""
    compute = torch.promote_types(input.dtype, torch.float32)
    volume, points = input.to(compute), grid.to(compute)
    N, C, D, H, W = volume.shape
    out_shape = Do, Ho, Wo = grid.shape[1:4]
    border = padding_mode == "border"
    points = points.reshape(N, Do * Ho * Wo, 1, 3)             # (N, P, 1): broadcast over C
    ix, x_undefined = _sampled_index(points[..., 0], W, align_corners, border)
    iy, y_undefined = _sampled_index(points[..., 1], H, align_corners, border)
    iz, z_undefined = _sampled_index(points[..., 2], D, align_corners, border)
    x0, y0, z0 = ix.floor(), iy.floor(), iz.floor()
    rows = volume.permute(0, 2, 3, 4, 1).reshape(N * D * H * W, C)
    first_row = (torch.arange(N, device=volume.device) * (D * H * W)).reshape(N, 1, 1)
    P = points.shape[1]
    out = volume.new_zeros(N, P, C)
    fx, fy, fz = ix - x0, iy - y0, iz - z0
    for k, wz in ((z0, 1 - fz), (z0 + 1, fz)):
        for j, wy in ((y0, 1 - fy), (y0 + 1, fy)):
            for i, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                weight = wz * wy * wx
                inside = (k >= 0) & (k < D) & (j >= 0) & (j < H) & (i >= 0) & (i < W)
                index = torch.where(inside, (k * H + j) * W + i, torch.zeros_like(i)).long() + first_row
                values = rows.index_select(0, index.reshape(-1)).reshape(N, P, C)
                out = out + torch.where(inside, weight, torch.zeros_like(weight)) * values
    # ATen's backward sees a NaN point outside the volume: no gradient from it
    out = torch.where(x_undefined | y_undefined | z_undefined, out.detach(), out)
    return out.transpose(1, 2).reshape(N, C, *out_shape).to(input.dtype)
