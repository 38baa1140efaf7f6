"""Gesture metrics on keypoint sequences (DIV, TGD), and the keypoint read-out of procedural bodies.

The paper reports DIV and TGD on co-speech gesture video (Table II, PATS) next to FVD and LPIPS.
The gesture-video papers it compares with (ANGIE, Liu et al., NeurIPS 2022; S2G-MDDiffusion, He
et al., CVPR 2024; DiffTED, Hogue et al., CVPRW 2024; TANGO) compute their motion metrics on 2-D
keypoints detected in the frames. The formulas of DIV and TGD could not be found in the
reference texts searchable from this project (the papers' abstracts are; their metric sections
are not), so the two below are this module's definitions, stated exactly, to be checked against
the papers before comparing numbers with them:

- **DIV** (diversity of motion within a clip): for keypoints p_k(t), t = 1..T, k = 1..K,
  DIV = mean_clips mean_k sqrt( (1/T) Σ_t ‖p_k(t) − p̄_k‖² ), p̄_k = (1/T) Σ_t p_k(t): the RMS
  distance of each keypoint from its mean position (the temporal standard deviation of its
  position, summed over x and y). A still video has DIV = 0; larger is more motion.
- **TGD** (temporal gesture distance to a reference): with velocities v_k(t) = p_k(t) − p_k(t−1),
  TGD = mean_clips (1 / ((T−1) K)) Σ_{t≥2} Σ_k ‖v_k(t) − v^ref_k(t)‖: how far the frame-to-frame
  motion is from the reference's (the ground truth's). Invariant to a constant offset of a
  keypoint (a read-out's bias, a model's placement of the body); 0 for the reference itself;
  a still video scores the mean speed of the reference.

Both are in frame units (the frame spans [-1, 1]: one unit is half the frame's width; multiply
by size / 2 for pixels).

:func:`read_keypoints` is the read-out this project uses on generated frames of the procedural
bodies of :mod:`mim.data.gesture`, and only there: colour segmentation of the three parts whose
colours no other part has (the head's skin, the magenta image-left hand, the green image-right
hand) and the weighted centroid of each. It is not a pose detector and does nothing sensible on
real video. On ground-truth frames its hands land within a fraction of a pixel of the exact
centres; the head's centroid sits a little below the head's centre (hair covers the top of the
head), a constant offset that DIV and TGD do not see (docs/gesture.md gives the measured errors).
"""
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from mim.data.gesture import GESTURE_KEYPOINTS

__all__ = ["READOUT_KEYPOINTS", "diversity", "gesture_metrics", "read_keypoints", "readout_subset",
           "temporal_gesture_distance"]

# What read_keypoints finds, in order, and where each is in GESTURE_KEYPOINTS.
READOUT_KEYPOINTS = ("head", "left_hand", "right_hand")
_READOUT_INDEX = tuple(GESTURE_KEYPOINTS.index(name) for name in READOUT_KEYPOINTS)
# Below this total weight (in pixels) a part counts as not found in a frame.
_MIN_WEIGHT = 0.5


def _frames_array(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().to("cpu", torch.float32).numpy()
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (T, 3, H, W) with T >= 1, got shape {frames.shape}")
    if not np.isfinite(frames).all():
        raise ValueError("frames hold NaN or Inf")
    return frames


def _part_weights(frames: np.ndarray) -> np.ndarray:
    """(T, 3, H, W) soft membership of each pixel in head skin, left hand, right hand."""
    r, g, b = frames[:, 0], frames[:, 1], frames[:, 2]
    magenta = np.clip((np.minimum(r, b) - g - 0.3) / 0.25, 0.0, 1.0)
    green = np.clip((g - np.maximum(r, b) - 0.35) / 0.2, 0.0, 1.0)
    skin = np.clip((r - b - 0.12) / 0.08, 0.0, 1.0) * np.clip((g - b + 0.02) / 0.05, 0.0, 1.0)
    return np.stack([skin, magenta, green], 1)


def read_keypoints(frames) -> Tuple[np.ndarray, np.ndarray]:
    """Read the head and the two hands off frames of :mod:`mim.data.gesture` bodies.

    ``frames``: (T, 3, H, W) in [0, 1] (tensor or array). Each pixel gets a soft membership of
    each part from its colour: skin (red above blue by > 0.12, green not below blue), magenta
    (min(R, B) − G > 0.3) and green (G − max(R, B) > 0.35), each ramped over a short band; a
    part's keypoint is the membership-weighted centroid of the pixel centres, in frame
    coordinates ([-1, 1], x right, y down). Returns (keypoints (T, 3, 2) float64 in
    :data:`READOUT_KEYPOINTS` order, found (T, 3) bool). A part with less than half a pixel of
    membership in a frame is not found there: it keeps the position of the nearest earlier
    frame where it was found (the first found one for leading frames); a part found in no frame
    is NaN throughout.
    """
    frames = _frames_array(frames)
    _, _, height, width = frames.shape
    weights = _part_weights(frames).astype(np.float64)
    xs = (np.arange(width) + 0.5) * (2.0 / width) - 1.0
    ys = (np.arange(height) + 0.5) * (2.0 / height) - 1.0
    total = weights.sum((2, 3))
    found = total >= _MIN_WEIGHT
    safe = np.where(found, total, 1.0)
    cx = (weights.sum(2) * xs).sum(2) / safe
    cy = (weights.sum(3) * ys).sum(2) / safe
    keypoints = np.stack([cx, cy], -1)
    for part in range(keypoints.shape[1]):
        seen = np.flatnonzero(found[:, part])
        if len(seen) == 0:
            keypoints[:, part] = np.nan
            continue
        last = np.maximum.accumulate(np.where(found[:, part], np.arange(len(found)), -1))
        keypoints[:, part] = keypoints[np.where(last >= 0, last, seen[0]), part]
    return keypoints, found


def readout_subset(keypoints) -> np.ndarray:
    """The :data:`READOUT_KEYPOINTS` of exact keypoints (T, 8, 2) in GESTURE_KEYPOINTS order."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (len(GESTURE_KEYPOINTS), 2):
        raise ValueError(f"keypoints must be (T, {len(GESTURE_KEYPOINTS)}, 2), got shape {keypoints.shape}")
    return keypoints[:, list(_READOUT_INDEX)]


def _sequences(sequences, name: str, min_frames: int) -> list:
    """A list of (T, K, 2) float64 arrays (one array (T, K, 2) counts as one clip)."""
    if isinstance(sequences, (np.ndarray, torch.Tensor)) and np.ndim(sequences) == 3:
        sequences = [sequences]
    if not isinstance(sequences, (list, tuple)) or len(sequences) == 0:
        raise ValueError(f"{name} must be a non-empty list of (T, K, 2) keypoint arrays")
    out = []
    for index, seq in enumerate(sequences):
        if isinstance(seq, torch.Tensor):
            seq = seq.detach().cpu().numpy()
        seq = np.asarray(seq, dtype=np.float64)
        if seq.ndim != 3 or seq.shape[2] != 2 or seq.shape[1] < 1:
            raise ValueError(f"{name}[{index}] must be (T, K, 2) keypoints, got shape {seq.shape}")
        if seq.shape[0] < min_frames:
            raise ValueError(f"{name}[{index}] has {seq.shape[0]} frames; at least {min_frames} needed")
        if not np.isfinite(seq).all():
            raise ValueError(f"{name}[{index}] holds NaN or Inf (a part the read-out never found?)")
        out.append(seq)
    return out


def diversity(sequences) -> float:
    """DIV: mean over clips and keypoints of the RMS distance of a keypoint from its mean
    position over the clip (module docstring). ``sequences``: a (T, K, 2) array or a list."""
    clips = _sequences(sequences, "sequences", 1)
    per_clip = [np.sqrt(((seq - seq.mean(0)) ** 2).sum(-1).mean(0)).mean() for seq in clips]
    return float(np.mean(per_clip))


def temporal_gesture_distance(sequences, references) -> float:
    """TGD: mean over clips of the mean over frames t >= 2 and keypoints of the distance between
    the frame-to-frame displacements of ``sequences`` and of ``references`` (module docstring).
    Each clip and its reference must have the same (T, K)."""
    clips = _sequences(sequences, "sequences", 2)
    refs = _sequences(references, "references", 2)
    if len(clips) != len(refs):
        raise ValueError(f"sequences has {len(clips)} clips but references has {len(refs)}")
    per_clip = []
    for index, (seq, ref) in enumerate(zip(clips, refs)):
        if seq.shape != ref.shape:
            raise ValueError(f"sequences[{index}] is {seq.shape} but references[{index}] is {ref.shape}")
        per_clip.append(np.linalg.norm(np.diff(seq, axis=0) - np.diff(ref, axis=0), axis=-1).mean())
    return float(np.mean(per_clip))


def gesture_metrics(sequences: Sequence, references: Sequence) -> Dict[str, float]:
    """``{"div": DIV of sequences, "tgd": TGD of sequences against references,
    "div_reference": DIV of references}``."""
    return {"div": diversity(sequences), "tgd": temporal_gesture_distance(sequences, references),
            "div_reference": diversity(references)}
