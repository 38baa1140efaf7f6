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

__all__ = ["evaluate_lipsync", "evaluate_reconstruction", "lipsync_clips", "plot_lipsync"]


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


def lipsync_clips(config):
    """The procedural clips :func:`evaluate_lipsync` scores a model of ``config`` on: stage 2's
    held-out split (``config.stage2``: count, frames, seed) at the renderer's image size, of the
    kind ``config.train.procedural`` names (talking heads, or gesturing upper bodies)."""
    from mim.data import SyntheticGestures, SyntheticTalkingHeads

    s2 = config.stage2
    clips = SyntheticGestures if config.train.procedural == "gestures" else SyntheticTalkingHeads
    return clips(s2.heldout_clips, num_frames=s2.frames_per_clip,
                 size=config.renderer.image_size, seed=s2.seed, split="heldout")


# the score of each video evaluate_lipsync measures the mouth of
_SYNC_SCORES = (("sync", "animated"), ("sync_shuffled", "shuffled"), ("sync_truth", "truth"),
                ("sync_reconstruction", "reconstruction"))


@torch.no_grad()
def evaluate_lipsync(animator, clips, steps: Optional[int] = None, seed: int = 0,
                     progress: bool = False, traces: bool = False) -> Dict[str, object]:
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

    ``steps`` and ``seed`` go to :meth:`Animator.animate`. With ``traces``, each clip's entry
    also holds ``traces``: the per-frame audio envelope and the measured mouth opening of the
    animated, shuffled-audio, ground-truth and reconstructed videos (lists of floats, what
    :func:`plot_lipsync` draws).
    """
    from tqdm import tqdm

    from mim.sync import audio_envelope_per_frame, mouth_opening, pearson, shuffled_audio

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
        animated = animator.animate(source, audio, steps=steps, seed=seed, crop="center")
        if animated.shape[0] != frames.shape[0]:
            raise ValueError(f"clip {index}: {frames.shape[0]} frames but its audio lasts "
                             f"{animated.shape[0]} video frames")
        control = animator.animate(source, shuffled_audio(audio, rate, seed=seed), steps=steps, seed=seed,
                                   crop="center")
        state = renderer.encode_source(source.to(device))
        motion = renderer.encode_motion(frames[None].to(device))
        window = renderer.config.render_window
        recon = torch.cat([renderer.render(state, motion[:, s:s + window], window=window)[0]
                           for s in range(0, motion.shape[1], window)]).clamp(0, 1).cpu()
        # sync_correlation of each video, with the envelope computed once
        envelope = audio_envelope_per_frame(audio, rate, frames.shape[0])
        openings = {name: mouth_opening(video) for name, video in
                    (("animated", animated), ("shuffled", control), ("truth", frames),
                     ("reconstruction", recon))}
        entry = {key: pearson(openings[name], envelope) for key, name in _SYNC_SCORES}
        entry["psnr"] = float(psnr(animated, frames).mean())
        entry["ssim"] = float(ssim(animated, frames).mean())
        if traces:
            entry["traces"] = {"envelope": envelope.tolist(),
                               **{name: o.tolist() for name, o in openings.items()}}
        per_clip.append(entry)
    result: Dict[str, object] = {key: _mean([c[key] for c in per_clip])
                                 for key in per_clip[0] if key != "traces"}
    result["num_clips"] = len(per_clip)
    result["frames"] = int(sum(clips[i]["frames"].shape[0] for i in range(len(clips))))
    result["clips"] = per_clip
    return result


def _standardized(values):
    values = np.asarray(values, dtype=np.float64)
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else values - values.mean()


def plot_lipsync(result: Dict[str, object], path: str, fps: float = 25.0) -> None:
    """Draw each clip's audio envelope and measured mouth openings (animated from the audio,
    from shuffled audio, and the ground truth), each standardized, over time: one panel per
    clip titled with its r values. ``result`` is :func:`evaluate_lipsync`'s with ``traces``.
    Written as PNG through a temporary file (matplotlib's Agg backend, no display needed)."""
    from mim.io import atomic_output

    clips = result.get("clips") or []
    if not clips or any("traces" not in clip for clip in clips):
        raise ValueError("plot_lipsync needs evaluate_lipsync(..., traces=True)'s result")
    try:
        import matplotlib
    except ImportError as error:
        raise RuntimeError("plotting needs matplotlib: pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(2, len(clips))
    rows = -(-len(clips) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(7 * columns, 2.2 * rows), squeeze=False,
                                sharex=True)
    lines = (("envelope", "audio envelope", "black", 1.6), ("animated", "animated", "tab:blue", 1.2),
             ("shuffled", "shuffled audio", "tab:gray", 1.0), ("truth", "ground truth", "tab:green", 1.0))
    for index, clip in enumerate(clips):
        axis = axes[index // columns][index % columns]
        trace = clip["traces"]
        time = np.arange(len(trace["envelope"])) / fps
        for key, label, colour, width in lines:
            axis.plot(time, _standardized(trace[key]), label=label, color=colour, linewidth=width,
                      alpha=0.6 if key in ("shuffled", "truth") else 1.0)
        axis.set_title(f"clip {index}: r animated {clip['sync']:.2f}, shuffled "
                       f"{clip['sync_shuffled']:.2f}, truth {clip['sync_truth']:.2f}", fontsize=9)
        axis.set_yticks([])
    for index in range(len(clips), rows * columns):
        axes[index // columns][index % columns].axis("off")
    for axis in axes[-1]:
        axis.set_xlabel("seconds")
    axes[0][0].legend(loc="upper right", fontsize=7, ncol=4)
    figure.suptitle(f"Lip sync: mouth opening measured in the frames vs the audio envelope "
                    f"(standardized); mean r {result['sync']:.3f}, shuffled "
                    f"{result['sync_shuffled']:.3f}", fontsize=10)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
