"""Triton kernels of the DIT deviation map (paper eq. 2), forward and backward, and their launchers.

One program handles one row (b, i): the whole G-long deviation d = v_i − v_0 sits in registers
(BLOCK_G = next power of two ≥ G, at most ``MAX_G``), so the statistics are an exact two-pass
mean/variance with no re-read, and the R = λ region rows of scale/shift/out stream past it.

Traffic, with B·N rows, R regions, G features, s bytes per element:
- forward reads v_0 and v_i (2·G·s per row; v_0 is shared by the N rows of a batch and served from
  L2), scale and shift once (2·R·G·s), writes out once (R·G·s) and the row's mean and 1/std
  (8 bytes, fp32): the minimum is B·(N+1)·G·s + 3·B·N·R·G·s.
- backward reads grad_out and scale once (2·R·G·s), v_0 and v_i, the row's mean and 1/std; writes
  grad_scale once (R·G·s) and grad_v once. grad_shift is grad_out itself, so nothing is written
  for it. Nothing of forward is recomputed except x̂ = d·ρ (from v and the saved statistics).
- grad_v_0 = −Σ_i grad_d_i needs every row of a batch: each program counts its arrival on a
  per-batch counter (an acq_rel atomic) and the last one to arrive sums the N rows' gradients in
  frame order, so the result is deterministic and the op stays one launch (plus a B-int memset).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._registry import LaunchConfig, register_kernel
from ..tuning import dtype_label, pow2_bucket, shape_key, tuned_config

MAX_G = 8192


@triton.jit
def _adanorm_fwd_kernel(v_ptr, scale_ptr, shift_ptr, out_ptr, mean_ptr, rstd_ptr,
                        N, R, G, eps, BLOCK_G: tl.constexpr):
    """Rows (b, i) of Δ: v (B, N+1, G), scale/shift/out (B, N, R, G), mean/rstd (B, N) fp32."""
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    i = row - b * N
    offs = tl.arange(0, BLOCK_G)
    in_row = offs < G
    source = v_ptr + b * (N + 1) * G
    v0 = tl.load(source + offs, mask=in_row, other=0.0).to(tl.float32)
    vi = tl.load(source + (i + 1) * G + offs, mask=in_row, other=0.0).to(tl.float32)
    deviation = vi - v0
    mean = tl.sum(deviation, axis=0) / G
    centered = tl.where(in_row, deviation - mean, 0.0)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(centered * centered, axis=0) / G + eps)
    normalized = deviation * rstd
    region_row = row * R * G
    row_length = G.to(tl.int64)  # r · G below in int64
    for r in range(R):
        at = region_row + r * row_length + offs
        scale = tl.load(scale_ptr + at, mask=in_row, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + at, mask=in_row, other=0.0).to(tl.float32)
        tl.store(out_ptr + at, (normalized * scale + shift).to(out_ptr.dtype.element_ty), mask=in_row)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _adanorm_bwd_kernel(grad_out_ptr, v_ptr, scale_ptr, mean_ptr, rstd_ptr,
                        grad_v_ptr, grad_scale_ptr, arrivals_ptr,
                        N, R, G, BLOCK_G: tl.constexpr):
    """Rows (b, i) of the gradients; the last row of each batch to finish writes grad_v_0."""
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    i = row - b * N
    offs = tl.arange(0, BLOCK_G)
    in_row = offs < G
    source = v_ptr + b * (N + 1) * G
    v0 = tl.load(source + offs, mask=in_row, other=0.0).to(tl.float32)
    vi = tl.load(source + (i + 1) * G + offs, mask=in_row, other=0.0).to(tl.float32)
    deviation = vi - v0
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    normalized = deviation * rstd
    grad_normalized = tl.zeros([BLOCK_G], dtype=tl.float32)
    region_row = row * R * G
    row_length = G.to(tl.int64)  # r · G and (j + 1) · G below in int64
    for r in range(R):
        at = region_row + r * row_length + offs
        grad_out = tl.load(grad_out_ptr + at, mask=in_row, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + at, mask=in_row, other=0.0).to(tl.float32)
        grad_normalized += grad_out * scale
        tl.store(grad_scale_ptr + at, (grad_out * normalized).to(grad_scale_ptr.dtype.element_ty),
                 mask=in_row)
    dot = tl.sum(grad_normalized * deviation, axis=0) / G
    centered = tl.where(in_row, deviation - mean, 0.0)
    grad_deviation = rstd * grad_normalized - (rstd * rstd * rstd * dot) * centered
    grad_source = grad_v_ptr + b * (N + 1) * G
    tl.store(grad_source + (i + 1) * G + offs, grad_deviation.to(grad_v_ptr.dtype.element_ty),
             mask=in_row)
    arrived = tl.atomic_add(arrivals_ptr + b, 1, sem="acq_rel")
    if arrived == N - 1:
        total = tl.zeros([BLOCK_G], dtype=tl.float32)
        for j in range(N):
            total += tl.load(grad_source + (j + 1) * row_length + offs, mask=in_row, other=0.0,
                             cache_modifier=".cg").to(tl.float32)
        tl.store(grad_source + offs, (-total).to(grad_v_ptr.dtype.element_ty), mask=in_row)


def launch_config(G: int) -> LaunchConfig:
    """The launch configuration used for rows of G features (about 8 elements per thread)."""
    block = max(16, triton.next_power_of_2(G))
    return LaunchConfig({"BLOCK_G": block}, num_warps=min(16, max(1, block // 256)))


# The tuner's alternatives (``kernels.tuning``) at the model's G (base 768 → BLOCK_G 1024, tiny
# 192 → 256): 2 elements a thread (16 and 4 warps), for batches of few rows (one program a row).
# 4 a thread (8 and 2 warps) spilled 4 B in backward's fp32 and fp16 variants on sm_100a.
TUNING_CONFIGS = (LaunchConfig({"BLOCK_G": 1024}, num_warps=16),
                  LaunchConfig({"BLOCK_G": 256}, num_warps=4))
ALL_CONFIGS = tuple(launch_config(1 << k) for k in range(4, MAX_G.bit_length())) + TUNING_CONFIGS


def call_config(kernel, G: int, dtype: torch.dtype, rows: int, device) -> LaunchConfig:
    """The config ``kernel`` runs rows of G features with: the tuned winner of the device's
    architecture among the registered configs of launch_config(G)'s BLOCK_G (shape key: BLOCK_G,
    dtype, rows = B·N to a power of two), else launch_config(G)."""
    heuristic = launch_config(G)
    block = heuristic.constexprs["BLOCK_G"]
    candidates = [c for c in ALL_CONFIGS if c.constexprs["BLOCK_G"] == block]
    key = shape_key(BLOCK_G=block, dtype=dtype_label(dtype), rows=pow2_bucket(rows))
    return tuned_config("deviation_adanorm", kernel.__name__, key, candidates, device) or heuristic

_FWD_SIGNATURE = {
    "v_ptr": "*{dtype}:16", "scale_ptr": "*{dtype}:16", "shift_ptr": "*{dtype}:16",
    "out_ptr": "*{dtype}:16", "mean_ptr": "*fp32:16", "rstd_ptr": "*fp32:16",
    "N": "i32", "R": "i32", "G": "i32:16", "eps": "fp32", "BLOCK_G": "constexpr",
}
_BWD_SIGNATURE = {
    "grad_out_ptr": "*{dtype}:16", "v_ptr": "*{dtype}:16", "scale_ptr": "*{dtype}:16",
    "mean_ptr": "*fp32:16", "rstd_ptr": "*fp32:16", "grad_v_ptr": "*{dtype}:16",
    "grad_scale_ptr": "*{dtype}:16", "arrivals_ptr": "*i32:16",
    "N": "i32", "R": "i32", "G": "i32:16", "BLOCK_G": "constexpr",
}
_NOTES = "G compiled with the %16 specialization the model's G = 768 gets"
register_kernel("deviation_adanorm", _adanorm_fwd_kernel, _FWD_SIGNATURE, ALL_CONFIGS,
                dtypes=("fp32", "fp16", "bf16"), notes=_NOTES)
register_kernel("deviation_adanorm", _adanorm_bwd_kernel, _BWD_SIGNATURE, ALL_CONFIGS,
                dtypes=("fp32", "fp16", "bf16"), notes=_NOTES)


def adanorm_forward_triton(v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float):
    """Contiguous v (B, T, G), scale/shift (B, T−1, R, G) → (out, mean (B, N), rstd (B, N))."""
    B, T, G = v.shape
    N, R = T - 1, scale.shape[2]
    out = torch.empty_like(scale)
    mean = torch.empty((B, N), device=v.device, dtype=torch.float32)
    rstd = torch.empty((B, N), device=v.device, dtype=torch.float32)
    cfg = call_config(_adanorm_fwd_kernel, G, v.dtype, B * N, v.device)
    _adanorm_fwd_kernel[(B * N,)](v, scale, shift, out, mean, rstd, N, R, G, eps,
                                  num_warps=cfg.num_warps, enable_fp_fusion=True, **cfg.constexprs)
    return out, mean, rstd


def adanorm_backward_triton(grad_out, v, scale, mean, rstd):
    """Contiguous inputs → (grad_v, grad_scale); grad_shift is grad_out itself."""
    B, T, G = v.shape
    N, R = T - 1, scale.shape[2]
    grad_v = torch.empty_like(v)
    grad_scale = torch.empty_like(scale)
    arrivals = torch.zeros((B,), device=v.device, dtype=torch.int32)
    cfg = call_config(_adanorm_bwd_kernel, G, v.dtype, B * N, v.device)
    _adanorm_bwd_kernel[(B * N,)](grad_out, v, scale, mean, rstd, grad_v, grad_scale, arrivals,
                                  N, R, G, num_warps=cfg.num_warps, enable_fp_fusion=True,
                                  **cfg.constexprs)
    return grad_v, grad_scale
