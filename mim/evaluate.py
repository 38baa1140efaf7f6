"""Held-out evaluation of the renderer: reconstruct each clip from its first frame and the motion
of the others, against the "no motion" baseline (the source copied to every frame)."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from mim.metrics import LPIPS, psnr, ssim
from mim.models import Renderer

__all__ = ["evaluate_reconstruction"]


@torch.no_grad()
def evaluate_reconstruction(renderer: Renderer, clips, device="cpu", max_frames: Optional[int] = None,
                            lpips: Optional[LPIPS] = None) -> Dict[str, float]:
    """Mean L1, PSNR (dB) and SSIM over every driving frame of every clip (frame 0 is the source
    and is not scored), for the renderer and for the source-copy baseline; LPIPS too when an
    ``LPIPS`` module (which needs its weights) is given. Keys: ``l1``, ``psnr``, ``ssim``
    [``lpips``], each also as ``baseline_<key>``, and ``frames`` (how many were scored)."""
    was_training = renderer.training
    renderer.eval()
    sums: Dict[str, float] = {}
    count = 0
    for index in range(len(clips)):
        frames = clips[index]["frames"]
        if max_frames is not None:
            frames = frames[:max_frames + 1]
        if frames.shape[0] < 2:
            continue
        frames = frames.to(device)
        source, driving = frames[:1], frames[1:]
        state = renderer.encode_source(source)
        pred = renderer.render(state, renderer.encode_motion(driving[None]))[0].clamp(0, 1)
        baseline = source.expand_as(driving)
        for prefix, images in (("", pred), ("baseline_", baseline)):
            scores = {"l1": (images - driving).abs().mean(dim=(1, 2, 3)),
                      "psnr": psnr(images, driving), "ssim": ssim(images, driving)}
            if lpips is not None:
                scores["lpips"] = lpips(images, driving)
            for key, value in scores.items():
                sums[prefix + key] = sums.get(prefix + key, 0.0) + float(value.sum())
        count += driving.shape[0]
    renderer.train(was_training)
    if count == 0:
        raise ValueError("evaluation needs at least one clip with two or more frames")
    result = {key: value / count for key, value in sums.items()}
    result["frames"] = float(count)
    return result
