"""Triton helpers for trilinear sampling with PyTorch's ``grid_sample`` index math.

They reproduce ATen's ``GridSampler.h`` for ``mode="bilinear"`` on 5-D inputs, one axis at a time
(x runs along W, y along H, z along D):

- ``source_index`` maps a normalized coordinate c to a source index (``grid_sampler_unnormalize``):
  ``(c + 1) / 2 · (size − 1)`` when ``ALIGN_CORNERS``, else ``((c + 1) · size − 1) / 2``; with
  ``BORDER`` padding the index is clamped to [0, size − 1] (``clip_coordinates``). It also returns
  d index / d c, which is 0 where the clamp is active: index <= 0 or index >= size − 1, the
  bounds themselves counting as outside, as ``clip_coordinates_set_grad`` does (so a point
  exactly on the border gets a zero grid gradient, like ``F.grid_sample``), and whether the index
  is a number (not NaN).
- NaN and ±inf coordinates follow ``F.grid_sample`` on CPU. ±inf is clamped to a bound with
  ``BORDER`` and lies outside the volume (contributes 0) with zeros padding. A NaN index (a NaN
  coordinate, or inf · 0 when ``ALIGN_CORNERS`` and size is 1) lies outside with zeros padding;
  with ``BORDER`` ATen's forward clamps it to size − 1 (``std::min(size − 1, std::max(NaN, 0))``)
  while its backward (``clip_coordinates_set_grad`` keeps the NaN) treats the point as outside:
  no gradient reaches the input or any of the point's three coordinates. The backward kernels
  reproduce that by zeroing the incoming gradient of a point whose index is NaN.
- ``trilinear_corners`` takes fp32 source indices x, y, z (as ``source_index`` returns them) and
  returns, for the 8 corners of the cell holding the point, the spatial offset ``z·H·W + y·W + x``
  (int64), the trilinear weight and the in-bounds mask; corners outside the volume are masked
  (``zeros`` padding: they contribute 0) and their offset is 0 so a masked pointer stays in range.
  Corners are ordered by (z, y, x) bits: c000, c001, c010, c011, c100, c101, c110, c111 where
  ``c_zyx`` has z = floor(z) + bit_z, and so on.
- ``axis_cell`` is the per-axis step behind it: floor index (int32) and fraction; backward uses
  the fractions for d weight / d index.
"""
import triton
import triton.language as tl


@triton.jit
def source_index(coord, size, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr):
    """fp32 normalized coordinates, the axis size (int) → (fp32 source index, d index / d coord,
    index is a number). With ``BORDER`` a NaN index becomes size − 1, as in ATen's forward."""
    if ALIGN_CORNERS:
        scale = (size - 1) * 0.5
        index = (coord + 1.0) * scale
    else:
        scale = size * 0.5
        index = ((coord + 1.0) * size - 1.0) * 0.5
    grad = tl.zeros_like(coord) + scale
    defined = index == index
    if BORDER:
        limit = (size - 1) * 1.0
        grad = tl.where((index <= 0.0) | (index >= limit), 0.0, grad)
        index = tl.where(defined, tl.minimum(tl.maximum(index, 0.0), limit), limit)
    return index, grad, defined


@triton.jit
def axis_cell(index, size):
    """fp32 source index → (floor as int32, fraction in [0, 1)). Indices far outside the volume
    are first clamped to [−2, size + 1], which keeps both corners outside (so the result is the
    same) and keeps the int32 conversion in range; a NaN index goes to −2 (outside, as ATen's
    ``safe_downgrade_to_int_range`` sends it to −100)."""
    index = tl.where(index == index, tl.minimum(tl.maximum(index, -2.0), size + 1.0), -2.0)
    low = tl.floor(index)
    return low.to(tl.int32), index - low


@triton.jit
def trilinear_corners(x, y, z, D, H, W):
    """fp32 source indices (any shape) and the volume size → 8 offsets (int64), 8 weights (fp32),
    8 in-bounds masks, each a tuple in corner order c000 … c111 (bits z, y, x)."""
    x0, fx = axis_cell(x, W)
    y0, fy = axis_cell(y, H)
    z0, fz = axis_cell(z, D)
    x1 = x0 + 1
    y1 = y0 + 1
    z1 = z0 + 1
    in_x0 = (x0 >= 0) & (x0 < W)
    in_x1 = (x1 >= 0) & (x1 < W)
    in_y0 = (y0 >= 0) & (y0 < H)
    in_y1 = (y1 >= 0) & (y1 < H)
    in_z0 = (z0 >= 0) & (z0 < D)
    in_z1 = (z1 >= 0) & (z1 < D)
    row_00 = (z0.to(tl.int64) * H + y0) * W
    row_01 = (z0.to(tl.int64) * H + y1) * W
    row_10 = (z1.to(tl.int64) * H + y0) * W
    row_11 = (z1.to(tl.int64) * H + y1) * W
    m000 = in_z0 & in_y0 & in_x0
    m001 = in_z0 & in_y0 & in_x1
    m010 = in_z0 & in_y1 & in_x0
    m011 = in_z0 & in_y1 & in_x1
    m100 = in_z1 & in_y0 & in_x0
    m101 = in_z1 & in_y0 & in_x1
    m110 = in_z1 & in_y1 & in_x0
    m111 = in_z1 & in_y1 & in_x1
    offsets = (tl.where(m000, row_00 + x0, 0), tl.where(m001, row_00 + x1, 0),
               tl.where(m010, row_01 + x0, 0), tl.where(m011, row_01 + x1, 0),
               tl.where(m100, row_10 + x0, 0), tl.where(m101, row_10 + x1, 0),
               tl.where(m110, row_11 + x0, 0), tl.where(m111, row_11 + x1, 0))
    gx = 1.0 - fx
    gy = 1.0 - fy
    gz = 1.0 - fz
    weights = (gz * gy * gx, gz * gy * fx, gz * fy * gx, gz * fy * fx,
               fz * gy * gx, fz * gy * fx, fz * fy * gx, fz * fy * fx)
    masks = (m000, m001, m010, m011, m100, m101, m110, m111)
    return offsets, weights, masks
