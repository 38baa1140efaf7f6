"""The region-softmax warp's fast path (backend "fast"): PyTorch ops, with a backward that
recomputes instead of saving.

Forward is softmax, one einsum, ``F.grid_sample`` and the blend in at least fp32. Backward gets
only the inputs: it recomputes w, flow, grid and warped, then applies the closed-form gradient

    g_m      = g · (1 if m > 0 else β),        ∂L/∂β = Σ g · min(0, m)
    ∂L/∂M    = Σ_c g_m · (warped − F_id),      ∂L/∂F_id = g_m · (1 − M) + grid_sample^T(g_m · M)
    ∂L/∂flow = ∂L/∂grid (ATen's grid_sampler_3d_backward gives it with the F_id scatter)
    ∂L/∂Δ_r  = w_r · ∂L/∂flow,                 ∂L/∂ℓ_r = w_r · (∂L/∂flow · Δ_r − ∂L/∂flow · flow)

(the last because Σ_r w_r Δ_r = flow). A feature of batch 1 is shared by the B frames as an
expanded view (no copy is kept or saved); its gradient is summed over the frames in backward,
from a transient (B, C, D, H, W) buffer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import identity_grid

FAST_PATH = "torch"

PADDING_MODES = {"zeros": 0, "border": 1}  # ATen's GridSamplerPadding codes
_BILINEAR = 0


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _weights_and_grid(logits, displacement, align_corners):
    """w (B, R, D, H, W), flow (B, 3, D, H, W) and grid (B, D, H, W, 3) in the compute dtype."""
    compute = _compute_dtype(logits)
    _, _, D, H, W = logits.shape
    weights = torch.softmax(logits.to(compute), dim=1)
    flow = torch.einsum("brdhw,brkdhw->bkdhw", weights, displacement.to(compute))
    grid = identity_grid(D, H, W, align_corners, compute, logits.device) + flow.permute(0, 2, 3, 4, 1)
    return weights, flow, grid


def _sample(feature, grid, padding_mode, align_corners):
    """grid_sample of feature (B or 1, C, D, H, W) at grid (B, D, H, W, 3) → (B, C, D, H, W); a
    feature of batch 1 is expanded (a view, no copy): aten's CPU sampler parallelizes over the
    batch, so folding the frames into one batch-1 call ran on one thread (2x slower here)."""
    B = grid.shape[0]
    return F.grid_sample(feature.expand(B, *feature.shape[1:]), grid, mode="bilinear",
                         padding_mode=padding_mode, align_corners=align_corners)


def warp_forward_fast(feature, logits, displacement, mask, beta, padding_mode, align_corners):
    """out (B, C, D, H, W) in feature's dtype."""
    compute = _compute_dtype(feature)
    _, _, grid = _weights_and_grid(logits, displacement, align_corners)
    source = feature.to(compute)
    warped = _sample(source, grid, padding_mode, align_corners)
    blended = torch.lerp(source, warped, mask.to(compute))
    out = torch.where(blended > 0, blended, beta.to(compute) * blended)
    return out.to(feature.dtype)


def warp_backward_fast(grad_out, feature, logits, displacement, mask, beta, padding_mode,
                        align_corners, feature_grad=True):
    """(grad_feature, grad_logits, grad_displacement, grad_mask, grad_beta), each in its input's
    dtype (grad_feature with 0 elements when feature_grad is False); the inputs are all forward
    saved."""
    compute = _compute_dtype(feature)
    weights, flow, grid = _weights_and_grid(logits, displacement, align_corners)
    source = feature.to(compute)
    warped = _sample(source, grid, padding_mode, align_corners)
    mask32 = mask.to(compute)
    blended = torch.lerp(source, warped, mask32)
    grad = grad_out.to(compute)
    negative = blended <= 0
    grad_beta = (grad * blended).masked_fill_(~negative, 0).sum()
    grad_blended = torch.where(negative, beta.to(compute) * grad, grad)
    grad_mask = (grad_blended * (warped - source)).sum(dim=1, keepdim=True)
    grad_warped = grad_blended * mask32
    B, _, D, H, W = grad_out.shape
    padding = PADDING_MODES[padding_mode]
    grad_sampled, grad_grid = torch.ops.aten.grid_sampler_3d_backward(
        grad_warped, source.expand(B, *source.shape[1:]), grid, _BILINEAR, padding, align_corners,
        [feature_grad, True])
    if feature_grad:
        grad_feature = grad_sampled + (grad_blended - grad_warped)
        if feature.shape[0] != B:  # the shared feature's gradient sums over the frames
            grad_feature = grad_feature.sum(dim=0, keepdim=True)
    else:
        grad_feature = feature.new_empty((0,))
    grad_flow = grad_grid.view(B, D, H, W, 3).permute(0, 4, 1, 2, 3)
    grad_displacement = weights.unsqueeze(2) * grad_flow.unsqueeze(1)
    along_flow = (grad_flow * flow).sum(dim=1, keepdim=True)
    along_region = torch.einsum("bkdhw,brkdhw->brdhw", grad_flow, displacement.to(compute))
    grad_logits = weights * (along_region - along_flow)
    return (grad_feature.to(feature.dtype), grad_logits.to(logits.dtype),
            grad_displacement.to(displacement.dtype), grad_mask.to(mask.dtype),
            grad_beta.to(beta.dtype))
