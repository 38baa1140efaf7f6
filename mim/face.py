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
