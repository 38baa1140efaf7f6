"""Held-out evaluation. Stage 1: reconstruct each clip from its first frame and the motion of the
others, against the "no motion" baseline (the source copied to every frame). Stage 2: animate
each clip's first frame with its own audio and score lip sync against the shuffled-audio control
and the frames against the procedural ground truth."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from mim.metrics import LPIPS, psnr, ssim
from mim.models import Renderer

__all__ = ["evaluate_lipsync", "evaluate_reconstruction"]


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


def _mean(values):
    return float(sum(values) / len(values))


@torch.no_grad()
def evaluate_lipsync(animator, clips, steps: Optional[int] = None, seed: int = 0,
                     progress: bool = False) -> Dict[str, object]:
    """Lip sync of ``animator`` (a :class:`mim.animate.Animator`) on procedural ``clips``
    (dicts of :func:`mim.data.synthetic.make_clip`, with ``frames``, ``audio`` and
    ``sample_rate``), where the truth is known.

    For each clip the first frame is the portrait and the clip's audio drives it. Scores, each a
    mean over clips (and per clip under ``clips``):

    - ``sync``: :func:`mim.sync.sync_correlation` of the animated frames with the audio;
    - ``sync_shuffled``: the same for frames animated from :func:`mim.sync.shuffled_audio` of
      the clip's audio, scored against the original audio (the "no sync" control, about 0);
    - ``sync_truth``: the ground-truth frames against their audio (the ceiling of the measure);
    - ``sync_reconstruction``: the renderer driven by the motion of the true frames (stage 1's
      share of the lip sync, no audio involved);
    - ``psnr``, ``ssim``: animated frames against the ground truth (the head pose the model
      chose differs from the clip's, so these measure appearance, not motion).

    ``steps`` and ``seed`` go to :meth:`Animator.animate`.
    """
    from tqdm import tqdm

    from mim.sync import shuffled_audio, sync_correlation

    if len(clips) == 0:
        raise ValueError("evaluate_lipsync needs at least one clip")
    renderer = animator.renderer
    device = animator.device
    per_clip = []
    for index in tqdm(range(len(clips)), desc="lip sync", unit="clip", disable=not progress):
        clip = clips[index]
        frames, audio, rate = clip["frames"], np.asarray(clip["audio"]), int(clip["sample_rate"])
        if rate != 16000:
            raise ValueError(f"clip {index} has audio at {rate} Hz; evaluate_lipsync takes 16 kHz clips")
        source = frames[:1]
        animated = animator.animate(source, audio, steps=steps, seed=seed)
        if animated.shape[0] != frames.shape[0]:
            raise ValueError(f"clip {index}: {frames.shape[0]} frames but its audio lasts "
                             f"{animated.shape[0]} video frames")
        control = animator.animate(source, shuffled_audio(audio, rate, seed=seed), steps=steps, seed=seed)
        state = renderer.encode_source(source.to(device))
        motion = renderer.encode_motion(frames[None].to(device))
        window = renderer.config.render_window
        recon = torch.cat([renderer.render(state, motion[:, s:s + window], window=window)[0]
                           for s in range(0, motion.shape[1], window)]).clamp(0, 1).cpu()
        per_clip.append({
            "sync": sync_correlation(animated, audio, rate),
            "sync_shuffled": sync_correlation(control, audio, rate),
            "sync_truth": sync_correlation(frames, audio, rate),
            "sync_reconstruction": sync_correlation(recon, audio, rate),
            "psnr": float(psnr(animated, frames).mean()),
            "ssim": float(ssim(animated, frames).mean()),
        })
    result: Dict[str, object] = {key: _mean([c[key] for c in per_clip]) for key in per_clip[0]}
    result["num_clips"] = len(per_clip)
    result["frames"] = int(sum(clips[i]["frames"].shape[0] for i in range(len(clips))))
    result["clips"] = per_clip
    return result
