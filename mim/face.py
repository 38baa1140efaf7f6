"""Face detection behind one small interface, offline: the default detector's model ships inside
its wheel (nothing is downloaded at run time).

- ``Face``: one detection, a box ``(x0, y0, x1, y1)`` in pixels of the image given (x1, y1
  exclusive), a score (higher is surer; each detector's own scale) and optional landmarks
  ``(K, 2)`` as (x, y).
- ``FaceDetector``: anything with ``name`` and ``detect(image) -> list[Face]``, ``image`` an
  (H, W, 3) uint8 RGB array; faces come largest first.
- ``make_detector(name, **options)`` builds a registered detector; ``register_detector(name,
  factory)`` adds another (a second detector plugs in there; ``unregister_detector`` removes it); ``available_detectors()`` lists them.
- ``"dlib-hog"`` (the default, ``DlibHogDetector``): dlib's frontal-face HOG + linear SVM from the
  ``dlib-bin`` wheel (built in, no weight file, no landmarks). docs/faces.md says why it is the
  default and what it misses (profiles beyond about 30°, faces under about 40 px at the detection
  scale).
- Tracking through a video: ``FaceTracker(detector, detect_every, smoothing, max_jump, ...)``
  takes frames one at a time and reports per frame a ``TrackStep`` (the smoothed crop square,
  or None, and why a track was cut: ``lost``, ``jump``, ``cut``); ``smooth_boxes`` smooths a
  finished sequence of squares without lag.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Protocol, Tuple

import numpy as np

DEFAULT_DETECTOR = "dlib-hog"


@dataclass(frozen=True)
class Face:
    """One detected face: its box (x0, y0, x1, y1) in pixels, its score, optional (K, 2) landmarks."""
    box: Tuple[float, float, float, float]
    score: float
    landmarks: Optional[np.ndarray] = None

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> List[Face]:
        """Faces in an (H, W, 3) uint8 RGB image, largest first."""
        ...


def check_image(image) -> np.ndarray:
    """``image`` as a C-contiguous (H, W, 3) uint8 array, or a clear error naming what is wrong."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) (RGB), got {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8 (0-255), got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def largest_first(faces: List[Face]) -> List[Face]:
    """Faces sorted by box area, largest first (ties: higher score first)."""
    return sorted(faces, key=lambda f: (-f.area, -f.score))


class DlibHogDetector:
    """dlib's frontal-face HOG detector (``dlib-bin``). Images whose longer side exceeds
    ``max_side`` are detected on a copy scaled down to it (area-averaged; boxes are scaled
    back), which bounds the time on large photos; ``upsample`` doubles the detection scale that
    many times (1 finds faces down to about 40 px at that scale); detections scoring below
    ``min_score`` are dropped (dlib's own threshold is 0; on scikit-image's astronaut photo its
    face scores 1.16 and a false detection on the flag patch 0.12)."""

    name = "dlib-hog"

    def __init__(self, upsample: int = 1, min_score: float = 0.3, max_side: int = 1024):
        if not isinstance(upsample, int) or isinstance(upsample, bool) or not 0 <= upsample <= 3:
            raise ValueError(f"upsample must be an integer from 0 to 3, got {upsample!r}")
        if not isinstance(max_side, int) or isinstance(max_side, bool) or max_side < 64:
            raise ValueError(f"max_side must be an integer of at least 64 pixels, got {max_side!r}")
        self.upsample, self.min_score, self.max_side = upsample, float(min_score), max_side
        try:
            import dlib
        except ImportError as error:  # pragma: no cover - dlib-bin is a dependency
            raise ImportError("the dlib-hog face detector needs the 'dlib-bin' package "
                              "(pip install dlib-bin)") from error
        self._detector = dlib.get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> List[Face]:
        image = check_image(image)
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            from PIL import Image
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        rects, scores, _ = self._detector.run(image, self.upsample, 0.0)
        faces = []
        for rect, score in zip(rects, scores):
            if score < self.min_score:
                continue
            # dlib's rectangles are inclusive; clip to the image, then back to the input's pixels
            x0, y0 = max(rect.left(), 0), max(rect.top(), 0)
            x1, y1 = min(rect.right() + 1, image.shape[1]), min(rect.bottom() + 1, image.shape[0])
            faces.append(Face(box=(x0 / scale, y0 / scale, x1 / scale, y1 / scale),
                              score=float(score)))
        return largest_first(faces)


_DETECTORS: Dict[str, Callable[..., FaceDetector]] = {"dlib-hog": DlibHogDetector}


def register_detector(name: str, factory: Callable[..., FaceDetector]) -> None:
    """Make ``make_detector(name, **options)`` build ``factory(**options)``; a name is taken once."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a detector name must be a non-empty string, got {name!r}")
    if name in _DETECTORS:
        raise ValueError(f"a face detector named {name!r} is already registered")
    _DETECTORS[name] = factory


def unregister_detector(name: str) -> None:
    """Remove a detector registered with ``register_detector`` (the built-in one stays)."""
    if name == DEFAULT_DETECTOR:
        raise ValueError(f"the built-in detector {name!r} cannot be removed")
    if name not in _DETECTORS:
        raise ValueError(f"no face detector named {name!r} is registered")
    del _DETECTORS[name]


def available_detectors() -> Tuple[str, ...]:
    return tuple(sorted(_DETECTORS))


def make_detector(name: str = DEFAULT_DETECTOR, **options) -> FaceDetector:
    """The registered detector ``name`` built with ``options``."""
    if name not in _DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; available: "
                         f"{', '.join(available_detectors())}")
    return _DETECTORS[name](**options)


# ---------------------------------------------------------------------------------------------
# Crop around a face and paste back. Images here are float tensors (3, H, W) in [0, 1], as
# mim.io reads them; a pixel (i, j) covers [j, j + 1) x [i, i + 1), its centre at (j + .5, i + .5).
# ---------------------------------------------------------------------------------------------

DEFAULT_CROP_SCALE = 1.7
"""Side of the square crop over the face box's longer side: the HOG box spans brows to chin,
so 1.7 takes in the hair, the ears and the neck (LivePortrait crops about 1.5-2.3x its
landmark box)."""
DEFAULT_CROP_SHIFT_UP = 0.1
"""The crop's centre sits this fraction of its side above the face box's centre (the box is
low on the head: it starts at the brows)."""
DEFAULT_FEATHER = 0.12
"""Width of the paste-back mask's ramp from 1 to 0, as a fraction of the crop's half side."""


@dataclass(frozen=True)
class CropBox:
    """A square in an image's pixel coordinates: its top-left corner and side (it may reach
    beyond the image; the pixels there repeat the image's edge)."""
    x0: float
    y0: float
    size: float


def face_crop_box(face_box: Tuple[float, float, float, float], scale: float = DEFAULT_CROP_SCALE,
                  shift_up: float = DEFAULT_CROP_SHIFT_UP) -> CropBox:
    """The square crop around a face box: side ``scale`` x the box's longer side, centred on the
    box's centre moved up by ``shift_up`` x the side."""
    x0, y0, x1, y1 = map(float, face_box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"a face box must have x1 > x0 and y1 > y0, got {face_box}")
    if not scale > 0:
        raise ValueError(f"the crop scale must be positive, got {scale}")
    side = scale * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - shift_up * side
    return CropBox(cx - side / 2, cy - side / 2, side)


def _check_frame(name: str, image):
    import torch
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise ValueError(f"{name} must be a float tensor (3, H, W), got {shape}")
    if not image.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor in [0, 1], got {image.dtype}")
    return image


def crop_square(image, box: CropBox, out_size: int):
    """The (3, out_size, out_size) crop of ``image`` (3, H, W) over ``box``, bilinear, the
    image's edge repeated where the box leaves it."""
    import torch
    import torch.nn.functional as F
    image = _check_frame("image", image)
    _, height, width = image.shape
    centres = (torch.arange(out_size, dtype=torch.float64) + 0.5) * (box.size / out_size)
    gx = 2 * (box.x0 + centres) / width - 1
    gy = 2 * (box.y0 + centres) / height - 1
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)
    out = F.grid_sample(image[None].to(torch.float32), grid[None].to(torch.float32),
                        mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].to(image.dtype)


def _ramp(distance, feather: float):
    """0 at distance 0 (the crop's edge), 1 from ``feather`` inwards, smooth in between."""
    t = (distance / feather).clamp(0, 1)
    return t * t * (3 - 2 * t)


def paste_back(original, crop, box: CropBox, feather: float = DEFAULT_FEATHER):
    """``original`` (3, H, W) with ``crop`` (3, S, S), an animated ``crop_square`` of it over
    ``box``, blended in through a mask that is 1 inside the crop and falls smoothly to 0 at its
    border over ``feather`` of its half side; pixels outside the box are the original's exactly."""
    import torch
    import torch.nn.functional as F
    original, crop = _check_frame("original", original), _check_frame("crop", crop)
    if crop.shape[1] != crop.shape[2]:
        raise ValueError(f"crop must be square, got {tuple(crop.shape)}")
    if not 0 < feather <= 1:
        raise ValueError(f"feather must be in (0, 1], got {feather}")
    _, height, width = original.shape
    # the original's pixels the box touches
    left, top = max(0, int(box.x0)), max(0, int(box.y0))
    right = min(width, int(box.x0 + box.size) + 1)
    bottom = min(height, int(box.y0 + box.size) + 1)
    out = original.clone()
    if right <= left or bottom <= top:
        return out
    xs = torch.arange(left, right, dtype=torch.float64) + 0.5
    ys = torch.arange(top, bottom, dtype=torch.float64) + 0.5
    nx = 2 * (xs - box.x0) / box.size - 1  # the crop's normalized coordinates, [-1, 1] inside it
    ny = 2 * (ys - box.y0) / box.size - 1
    grid = torch.stack(torch.broadcast_tensors(nx[None, :], ny[:, None]), dim=-1)
    pasted = F.grid_sample(crop[None].to(torch.float32), grid[None].to(torch.float32),
                           mode="bilinear", padding_mode="border", align_corners=False)[0]
    mask = (_ramp(1 - nx.abs(), feather)[None, :] * _ramp(1 - ny.abs(), feather)[:, None])
    mask = mask.to(torch.float32)[None]
    region = original[:, top:bottom, left:right].to(torch.float32)
    out[:, top:bottom, left:right] = (mask * pasted + (1 - mask) * region).to(original.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# Tracking one face through a video: detect every few frames, keep the nearest face, smooth its
# crop square over time, and say where the track must be cut.
# ---------------------------------------------------------------------------------------------

CUT_REASONS = ("lost", "jump", "cut")
"""Why a track ends: ``lost`` (no face found for ``max_missed`` detection rounds in a row),
``jump`` (the nearest face found is more than ``max_jump`` face-box sides from the track's last
one), ``cut`` (a shot change: the frame differs from the previous one by more than
``cut_threshold``, or changes size)."""


@dataclass(frozen=True)
class TrackStep:
    """What :meth:`FaceTracker.update` says about one frame.

    - ``box``: the smoothed crop square of this frame (``face_crop_box`` geometry), or None when
      no face is tracked;
    - ``face``: the detection the track holds (the latest one matched to it), or None;
    - ``detected``: a detection on this very frame confirmed the track;
    - ``cut_reason``: None, or one of :data:`CUT_REASONS` when the track that ran up to the
      previous frame ends here (``box`` is then None, or the first box of a new track);
    - ``trim``: with ``lost`` and ``jump``, how many of the ended track's last frames came after
      its last confirmed detection (the face may have left or moved in them: a consumer keeping
      the track drops them); 0 otherwise.
    """
    box: Optional[CropBox]
    face: Optional[Face] = None
    detected: bool = False
    cut_reason: Optional[str] = None
    trim: int = 0


def _centre_and_side(box: Tuple[float, float, float, float]) -> Tuple[float, float, float]:
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)


def frame_difference(previous: np.ndarray, frame: np.ndarray, max_side: int = 96) -> float:
    """Mean absolute difference of two (H, W, 3) uint8 frames in [0, 1], on grey copies
    subsampled to about ``max_side`` pixels on the longer side (cheap; blind to small motion)."""
    step = max(1, max(frame.shape[:2]) // max_side)
    a = previous[::step, ::step].astype(np.float32).mean(axis=2)
    b = frame[::step, ::step].astype(np.float32).mean(axis=2)
    return float(np.abs(a - b).mean() / 255.0)


class FaceTracker:
    """Follows one face through frames given one at a time.

    The detector runs on the first frame, then every ``detect_every`` frames after the last
    detection, and at once on a shot change. With no track, the largest face found starts one;
    with a track, the face nearest its last detection continues it, unless that face's centre
    moved more than ``max_jump`` x the last face box's longer side (a ``jump``: the track is cut
    and the largest face starts a new one). A round finding no face is a miss; ``max_missed``
    misses in a row end the track (``lost``); fewer keep the last box. Between detections the
    last detected face stays the target.

    The reported crop square (``face_crop_box(face.box, crop_scale, shift_up)``) is smoothed
    exponentially, per frame, in centre and side: ``box_t = smoothing * box_(t-1) + (1 -
    smoothing) * target`` (0 = no smoothing; a new track starts at its target). This is causal:
    a face moving at v pixels a frame is followed about ``v * (smoothing / (1 - smoothing) +
    (detect_every - 1) / 2)`` pixels behind; :func:`smooth_boxes` smooths a finished sequence
    without lag.

    A frame whose mean absolute difference from the previous one (:func:`frame_difference`)
    exceeds ``cut_threshold`` (in [0, 1]), or whose size differs, is a shot change (``cut``).
    """

    def __init__(self, detector: FaceDetector, detect_every: int = 5, smoothing: float = 0.6,
                 max_jump: float = 0.5, max_missed: int = 2, cut_threshold: float = 0.12,
                 crop_scale: float = DEFAULT_CROP_SCALE, shift_up: float = DEFAULT_CROP_SHIFT_UP):
        if not callable(getattr(detector, "detect", None)):
            raise TypeError(f"detector must have a detect(image) method, got {type(detector).__name__}")
        for name, value in (("detect_every", detect_every), ("max_missed", max_missed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
        if not max_jump > 0:
            raise ValueError(f"max_jump must be positive (a fraction of the face box), got {max_jump!r}")
        if not 0 < cut_threshold <= 1:
            raise ValueError(f"cut_threshold must be in (0, 1], got {cut_threshold!r}")
        if not crop_scale > 0:
            raise ValueError(f"crop_scale must be positive, got {crop_scale!r}")
        self.detector = detector
        self.detect_every, self.max_missed = int(detect_every), int(max_missed)
        self.smoothing, self.max_jump = float(smoothing), float(max_jump)
        self.cut_threshold = float(cut_threshold)
        self.crop_scale, self.shift_up = float(crop_scale), float(shift_up)
        self.reset()

    def reset(self) -> None:
        """Forget the track and the previous frame (the next frame is detected at once)."""
        self._previous: Optional[np.ndarray] = None
        self._face: Optional[Face] = None
        self._box: Optional[CropBox] = None
        self._since_detection = 0        # frames since the detector last ran
        self._since_confirmed = 0        # frames of the track after its last confirmed detection
        self._missed = 0

    @property
    def tracking(self) -> bool:
        """Whether a face is tracked (the last step's ``box`` is not None)."""
        return self._face is not None

    @property
    def unconfirmed(self) -> int:
        """How many of the current track's frames, up to the last one given, came after its last
        confirmed detection (0 when not tracking)."""
        return self._since_confirmed if self.tracking else 0

    def _end(self, reason: str, trim: int) -> Tuple[str, int]:
        self._face, self._box, self._missed = None, None, 0
        return reason, trim

    def _start(self, face: Face) -> None:
        self._face, self._missed, self._since_confirmed = face, 0, 0
        self._box = face_crop_box(face.box, self.crop_scale, self.shift_up)

    def update(self, frame: np.ndarray) -> TrackStep:
        """Track into the next frame, an (H, W, 3) uint8 RGB array."""
        frame = check_image(frame)
        cut_reason, trim, detected = None, 0, False
        shot_change = self._previous is not None and (
            self._previous.shape != frame.shape
            or frame_difference(self._previous, frame) > self.cut_threshold)
        if shot_change and self.tracking:
            cut_reason, trim = self._end("cut", 0)
        if self._previous is None or shot_change or self._since_detection + 1 >= self.detect_every:
            self._since_detection = 0
            faces = self.detector.detect(frame)
            if not self.tracking:
                if faces:
                    self._start(faces[0])
                    detected = True
            elif faces:
                cx, cy, side = _centre_and_side(self._face.box)
                nearest = min(faces, key=lambda f: (_centre_and_side(f.box)[0] - cx) ** 2
                              + (_centre_and_side(f.box)[1] - cy) ** 2)
                nx, ny, _ = _centre_and_side(nearest.box)
                if np.hypot(nx - cx, ny - cy) > self.max_jump * side:
                    cut_reason, trim = self._end("jump", self._since_confirmed)
                    self._start(faces[0])
                else:
                    self._face, self._missed, self._since_confirmed = nearest, 0, 0
                detected = True
            else:
                self._missed += 1
                if self._missed >= self.max_missed:
                    cut_reason, trim = self._end("lost", self._since_confirmed)
        else:
            self._since_detection += 1
        self._previous = frame
        if not self.tracking:
            return TrackStep(None, None, False, cut_reason, trim)
        if not detected:
            self._since_confirmed += 1
        target = face_crop_box(self._face.box, self.crop_scale, self.shift_up)
        self._box = _blend(self._box, target, self.smoothing)
        return TrackStep(self._box, self._face, detected, cut_reason, trim)


def _blend(current: CropBox, target: CropBox, smoothing: float) -> CropBox:
    """``smoothing * current + (1 - smoothing) * target`` in centre and side."""
    c = (current.x0 + current.size / 2, current.y0 + current.size / 2, current.size)
    t = (target.x0 + target.size / 2, target.y0 + target.size / 2, target.size)
    cx, cy, side = (smoothing * a + (1 - smoothing) * b for a, b in zip(c, t))
    return CropBox(cx - side / 2, cy - side / 2, side)


def smooth_boxes(boxes: List[CropBox], smoothing: float = 0.6) -> List[CropBox]:
    """A finished sequence of crop squares smoothed without lag: the exponential smoothing of
    :class:`FaceTracker` run forwards, then backwards over the result (centre and side)."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    if not boxes:
        return []
    forward = [boxes[0]]
    for box in boxes[1:]:
        forward.append(_blend(forward[-1], box, smoothing))
    backward = [forward[-1]]
    for box in reversed(forward[:-1]):
        backward.append(_blend(backward[-1], box, smoothing))
    return backward[::-1]
