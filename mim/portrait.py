"""Framing a portrait for the model and the model's frames back into the portrait.

A user's portrait is a photo of any size with a face somewhere in it; the model draws S × S
frames (``renderer.image_size``) of a face filling the square. :func:`frame_portrait` decides
which square of the photo the model sees:

- ``crop="face"`` (the default): the faces are detected (:mod:`mim.face`, largest first),
  face ``face`` (0 = the largest) is chosen, and the square is :func:`mim.face.face_crop_box`
  around it (``scale`` × the face box's longer side, moved up by ``shift_up`` of its side; where
  the square leaves the photo its edge pixels are repeated, so a face at the border is padded,
  not refused). Each model frame is pasted back into the full-resolution photo through a
  feathered mask (:func:`mim.face.paste_back`), so the video has the photo's size (rounded down
  to even, as H.264's 4:2:0 needs) and every pixel away from the square is the photo's own.
  No face is a :class:`NoFaceError` that suggests ``crop="center"``.
- ``crop="center"``: the centre square, resized to S × S, and the video is those S × S frames
  (what ``mim animate`` did before faces were detected).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mim.face import (DEFAULT_CROP_SCALE, DEFAULT_CROP_SHIFT_UP, DEFAULT_FEATHER, CropBox, Face,
                      FaceDetector, FaceTracker, crop_square, face_crop_box, make_detector, paste_back)
from mim.io import MediaError

__all__ = ["CROP_MODES", "DrivingFraming", "Framing", "NoFaceError", "crop_resized", "describe_faces", "detect_faces", "frame_portrait",
           "square_resize", "to_uint8_image"]

CROP_MODES = ("face", "center")


class NoFaceError(MediaError):
    """The detector found no face (or not the one asked for) in a portrait or a driving video."""


def square_resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop (..., 3, H, W) to a square, then resize to size × size (antialiased)."""
    h, w = frames.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frames = frames[..., top:top + side, left:left + side]
    if side == size:
        return frames.contiguous()
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0, 1).view(*lead, 3, size, size)


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, the detectors' input."""
    return (image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
            .permute(1, 2, 0).contiguous().cpu().numpy())


def detect_faces(image: torch.Tensor, detector: Optional[FaceDetector] = None) -> List[Face]:
    """The faces in ``image`` (3, H, W) float in [0, 1], largest first."""
    detector = detector if detector is not None else make_detector()
    return list(detector.detect(to_uint8_image(image)))


def describe_faces(faces: Sequence[Face]) -> str:
    """One line per face, as ``mim animate --list-faces`` prints them."""
    if not faces:
        return "no face found"
    lines = []
    for index, face in enumerate(faces):
        x0, y0, x1, y1 = face.box
        lines.append(f"face {index}: box x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} "
                     f"({x1 - x0:.0f}x{y1 - y0:.0f} px), score {face.score:.2f}")
    return "\n".join(lines)


def _even(image: torch.Tensor) -> torch.Tensor:
    height, width = image.shape[-2:]
    if height < 2 or width < 2:
        raise MediaError(f"the portrait is {width}x{height} pixels; at least 2x2 are needed")
    return image[..., : height - height % 2, : width - width % 2]


def crop_resized(image: torch.Tensor, box: CropBox, size: int) -> torch.Tensor:
    """The (3, size, size) float crop of ``image`` (3, H, W), float in [0, 1] or uint8, over
    ``box`` with antialiasing:
    :func:`mim.face.crop_square` (the image's edge repeated where the box leaves it) on the
    pixels under the box only, sampled at the box's own resolution (at most 4 × size), then
    reduced with an antialiased bilinear resize. The one crop of both inference (portraits,
    driving frames) and ``mim prepare`` (training crops)."""
    height, width = image.shape[-2:]
    left = min(max(0, math.floor(box.x0) - 2), width - 1)
    top = min(max(0, math.floor(box.y0) - 2), height - 1)
    right = max(min(width, math.ceil(box.x0 + box.size) + 2), left + 1)
    bottom = max(min(height, math.ceil(box.y0 + box.size) + 2), top + 1)
    region = image[:, top:bottom, left:right].to(torch.float32)
    if image.dtype == torch.uint8:   # (a frame as decoded: only the region is converted)
        region = region.div_(255.0)
    work = min(max(size, round(box.size)), 4 * size)
    crop = crop_square(region, CropBox(box.x0 - left, box.y0 - top, box.size), work)
    if work != size:
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0]
    return crop.clamp_(0, 1)


@dataclass
class Framing:
    """Where the model's square sits in a portrait, and how its frames go back.

    ``image``: the portrait (3, H, W), cut to even H and W; ``source``: the model's input
    (3, S, S); ``box``: the square in ``image``'s pixels (None for ``crop="center"``);
    ``faces``: every face found (empty for ``"center"``), largest first; ``face``: the index
    used."""
    image: torch.Tensor
    source: torch.Tensor
    crop: str
    box: Optional[CropBox] = None
    faces: List[Face] = field(default_factory=list)
    face: Optional[int] = None
    feather: float = DEFAULT_FEATHER

    @property
    def output_size(self):
        """(height, width) of the frames :meth:`compose` returns."""
        if self.box is None:
            return tuple(self.source.shape[-2:])
        return tuple(self.image.shape[-2:])

    def compose(self, frame: torch.Tensor) -> torch.Tensor:
        """A model frame (3, S, S) as an output frame: pasted back into the portrait for
        ``"face"``, itself for ``"center"``."""
        if self.box is None:
            return frame
        return paste_back(self.image, frame.to(self.image.dtype), self.box, self.feather)


def _check_crop(crop: str) -> str:
    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
    return crop


def frame_portrait(image: torch.Tensor, size: int, crop: str = "face", face: int = 0,
                   detector: Optional[FaceDetector] = None, scale: float = DEFAULT_CROP_SCALE,
                   shift_up: float = DEFAULT_CROP_SHIFT_UP, feather: float = DEFAULT_FEATHER,
                   name: str = "the portrait") -> Framing:
    """Frame ``image`` (3, H, W) float in [0, 1] for a model of ``size`` × ``size`` frames (see
    the module's docstring). ``face`` picks the face (0 = largest); ``name`` is used in errors."""
    _check_crop(crop)
    if isinstance(face, bool) or not isinstance(face, (int, np.integer)) or face < 0:
        raise ValueError(f"face must be an int >= 0 (0 = the largest face), got {face!r}")
    if crop == "center":
        return Framing(image=image, source=square_resize(image, size), crop=crop, feather=feather)
    image = _even(image)
    faces = detect_faces(image, detector)
    if not faces:
        raise NoFaceError(f"no face found in {name} ({image.shape[2]}x{image.shape[1]}); "
                          f"use --crop center (crop='center') to animate its centre square instead")
    if face >= len(faces):
        raise NoFaceError(f"face {face} was asked for but {name} has {len(faces)} face(s) "
                          f"(0 .. {len(faces) - 1}, largest first):\n{describe_faces(faces)}")
    box = face_crop_box(faces[face].box, scale=scale, shift_up=shift_up)
    return Framing(image=image, source=crop_resized(image, box, size), crop=crop, box=box,
                   faces=faces, face=int(face), feather=feather)


class DrivingFraming:
    """Crops the frames of a driving video, given one at a time, for a model of ``size`` ×
    ``size`` frames: ``crop="face"`` follows the face with a :class:`mim.face.FaceTracker`
    (detection every ``detect_every`` frames, the crop square smoothed over time with
    ``smoothing``); where the track is lost the last square is kept, and a track that jumps or
    is cut by a shot change continues from the new face. No face in the first frame is a
    :class:`NoFaceError`. ``crop="center"``: the centre square. ``boxes`` lists the square used
    for each frame so far (None for ``"center"``)."""

    def __init__(self, size: int, crop: str = "face", detector: Optional[FaceDetector] = None,
                 detect_every: int = 5, smoothing: float = 0.6, crop_scale: float = DEFAULT_CROP_SCALE,
                 shift_up: float = DEFAULT_CROP_SHIFT_UP, name: str = "the driving video"):
        self.size, self.crop, self.name = int(size), _check_crop(crop), name
        self.tracker = None
        if crop == "face":
            self.tracker = FaceTracker(detector if detector is not None else make_detector(),
                                       detect_every=detect_every, smoothing=smoothing,
                                       crop_scale=crop_scale, shift_up=shift_up)
        self.boxes: List[Optional[CropBox]] = []

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        """The model's (3, S, S) crop of the next driving frame (3, H, W) float in [0, 1]."""
        if self.tracker is None:
            self.boxes.append(None)
            return square_resize(frame, self.size)
        box = self.tracker.update(to_uint8_image(frame)).box
        if box is None:
            if not self.boxes:
                raise NoFaceError(f"no face found in the first frame of {self.name}; use "
                                  f"--driving-crop center (driving_crop='center') to use its centre square")
            box = self.boxes[-1]
        self.boxes.append(box)
        return crop_resized(frame, box, self.size)
