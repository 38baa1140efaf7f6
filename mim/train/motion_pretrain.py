"""Supervised warm start of the renderer's motion encoder on procedural clips (not in the paper).

The paper learns the motion features M without labels, from reconstruction alone. On the tiny
procedural heads that leaves the mouth out of M: the pose moves many pixels, the opening few, and
the renderer never learns to draw it (see docs/architecture.md, "Stage-1 training"). Procedural clips know
each frame's mouth opening and head pose, so the motion encoder can first be taught to read them:
:func:`pretrain_motion_encoder` trains a fresh motion encoder of a renderer checkpoint's shape,
with a linear head, to regress the standardized (mouth_open, yaw, pitch, roll, tx, ty, scale) of single
frames, and writes the checkpoint back with that encoder in place (everything else unchanged).
Fine-tuning then teaches the rest of the renderer the new M (``mim train stage1 --init``).
"""

from __future__ import annotations

import os
from typing import Dict, List

import numpy as np
import torch
from tqdm.auto import tqdm

from mim.checkpoint import CheckpointError, checkpoint_config, load_checkpoint, read_metadata, save_checkpoint
from mim.data import SyntheticTalkingHeads
from mim.models import Renderer
from mim.models.encoders import MotionEncoder
from mim.sync import pearson

__all__ = ["pretrain_motion_encoder", "LABELS"]

LABELS = ("mouth_open", "yaw", "pitch", "roll", "tx", "ty", "scale")
MOUTH_WEIGHT = 2.0   # the loss: mean squared error over all labels + this x the opening's


def _labels(clip) -> torch.Tensor:
    return torch.cat([clip["mouth_open"][:, None], clip["pose"]], dim=1)


@torch.no_grad()
def _heldout_mouth_r(encoder, head, clips) -> float:
    rs = []
    for index in range(len(clips)):
        clip = clips[index]
        predicted = head(encoder(clip["frames"]))[:, 0].double().numpy()
        rs.append(pearson(predicted, clip["mouth_open"].double().numpy()))
    return float(np.mean(rs))


def pretrain_motion_encoder(checkpoint: str, out: str, steps: int, clips: int = 96,
                            frames_per_clip: int = 50, batch_size: int = 16, lr: float = 3e-4,
                            seed: int = 0, eval_every: int = 250, heldout_clips: int = 4,
                            progress: bool = True) -> List[Dict[str, float]]:
    """Train a fresh motion encoder for the renderer in ``checkpoint`` on procedural labels for
    ``steps`` Adam steps (batches of ``batch_size`` frames drawn from ``clips`` training clips),
    then write ``out``: a stage-1 checkpoint (step 0) holding that renderer with the new motion
    encoder in place of its own. Returns the evaluations: every ``eval_every`` steps and at the end, the loss of the
    last batch and the held-out Pearson r of the predicted mouth opening (``heldout_clips`` clips
    of 100 frames from the held-out split). Deterministic given ``seed``."""
    for name, value in (("steps", steps), ("clips", clips), ("frames_per_clip", frames_per_clip),
                        ("batch_size", batch_size), ("eval_every", eval_every),
                        ("heldout_clips", heldout_clips)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    meta = read_metadata(checkpoint)
    if meta["kind"] not in ("stage1", "stage2"):
        raise CheckpointError(f"checkpoint {checkpoint!r} holds a {meta['kind']!r} model, not a renderer")
    config = checkpoint_config(checkpoint, meta)
    renderer = Renderer.from_config(config)
    load_checkpoint(checkpoint, kind=meta["kind"], modules={"renderer": renderer})
    size = config.renderer.image_size

    torch.manual_seed(seed)
    encoder = MotionEncoder(config.renderer)     # a fresh encoder: it replaces the checkpoint's
    head = torch.nn.Linear(config.renderer.motion_dim, len(LABELS))
    train = SyntheticTalkingHeads(clips, num_frames=frames_per_clip, size=size, seed=seed, split="train")
    heldout = SyntheticTalkingHeads(heldout_clips, num_frames=100, size=size, seed=seed, split="heldout")
    frames = torch.cat([train[i]["frames"] for i in range(clips)])
    labels = torch.cat([_labels(train[i]) for i in range(clips)])
    mean, std = labels.mean(0), labels.std(0).clamp_min(1e-6)
    targets = (labels - mean) / std
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(head.parameters()), lr=lr)
    generator = torch.Generator().manual_seed(seed + 1)
    history = []
    bar = tqdm(range(1, steps + 1), desc="motion encoder", disable=not progress)
    for step in bar:
        index = torch.randint(len(frames), (batch_size,), generator=generator)
        error = (head(encoder(frames[index])) - targets[index]) ** 2
        loss = error.mean() + MOUTH_WEIGHT * error[:, 0].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            row = {"step": step, "loss": loss.item(), "heldout_mouth_r": _heldout_mouth_r(encoder, head, heldout)}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", mouth_r=f"{row['heldout_mouth_r']:.2f}")
    renderer.motion_encoder.load_state_dict(encoder.state_dict())
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_checkpoint(out, kind="stage1", step=0, config=meta["config"], modules={"renderer": renderer},
                    extra={"motion_pretrain": {"from": os.path.basename(checkpoint), "steps": steps,
                                               "clips": clips, "history": history}},
                    with_rng=False)
    return history
