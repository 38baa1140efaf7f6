"""Head pose from 68 face landmarks, and the paper's "Headpose" error (issue 22).

- :data:`FACE_MODEL`: a canonical 3-D face, millimetres, for 21 points of the iBUG 300-W
  68-point layout (0-based indices: brow ends 17, 21, 22, 26; nose bridge 27-29 and tip 30; nose
  base 31, 33, 35; eye corners 36, 39, 42, 45; mouth corners 48, 54; upper and lower lip middles
  51, 57; chin 8). The numbers are our own, rounded from adult anthropometric proportions
  (inner eye corners 32 mm apart, outer 90 mm, mouth 50 mm wide, nose 34 mm wide, nasion to
  subnasale 49 mm, subnasale to chin 70 mm, nose tip 30 mm in front of the inner eye corners):
  approximate, one average face, not any person's.
- :func:`solve_head_pose` (landmarks ``(68, 2)`` pixels, ``image_size`` ``(w, h)``) -> (yaw,
  pitch, roll) in degrees: a perspective-n-point fit of :data:`FACE_MODEL` to the landmarks, a
  pinhole camera with its principal point at the image centre and ``focal`` pixels (default
  ``max(w, h)``, a 53° field of view across the longer side). It starts from the scaled
  orthographic (weak-perspective) least-squares fit and refines rotation and translation by
  Levenberg-Marquardt on the pixel reprojection error.
- :class:`DlibLandmarker`: dlib's 68-point shape predictor from a user-given
  ``shape_predictor_68_face_landmarks.dat`` run on the largest face :func:`mim.face.make_detector`
  finds; :func:`head_poses` reads a video's per-frame poses with it.
- :func:`headpose_error` (generated frames, ground-truth frames, landmarker) -> the mean absolute
  yaw, pitch and roll differences in degrees and their mean (docs/metrics.md, "Headpose").

Conventions (those of :func:`mim.data.synthetic.make_clip`'s ``pose``). Camera and model axes:
x to image right, y to image down, z away from the camera, so at zero pose the face looks down
−z at the camera. Positive yaw turns the face's front toward image right (the subject's left),
positive pitch turns it down, positive roll turns the head clockwise on screen. The rotation
taking model points to camera axes is ``R = R_roll · R_pitch · R_yaw`` (about the camera's z,
x and y axes, yaw applied first)::

    R_yaw = [[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]]
    R_pitch = [[1, 0, 0], [0, cos, -sin], [0, sin, cos]]
    R_roll = [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]

and a model point p lands at ``R p + t``, seen at pixel ``(focal x / z + w / 2, focal y / z +
h / 2)``. Pitch is taken in (−90°, 90°); yaw and roll in (−180°, 180°].
"""
from __future__ import annotations

import math
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["FACE_MODEL", "FACE_MODEL_INDICES", "NUM_LANDMARKS", "PREDICTOR_FILE", "DlibLandmarker",
           "NoFaceError", "euler_from_rotation", "head_poses", "headpose_error", "pose_error",
           "project_face_model", "rotation_from_euler", "solve_head_pose"]

NUM_LANDMARKS = 68
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"

# iBUG 68-point index -> (x, y, z) mm; "right" is the subject's right, on the image's left (x < 0).
# Origin: the middle of the inner eye corners; z grows away from the camera (into the head).
_MODEL_POINTS = {
    8: (0.0, 115.0, -6.0),      # chin (menton)
    17: (-50.0, -24.0, 14.0),   # right brow, outer end
    21: (-12.0, -22.0, -6.0),   # right brow, inner end
    22: (12.0, -22.0, -6.0),    # left brow, inner end
    26: (50.0, -24.0, 14.0),    # left brow, outer end
    27: (0.0, -4.0, -8.0),      # nose bridge top (nasion)
    28: (0.0, 8.0, -14.0),      # nose bridge
    29: (0.0, 21.0, -21.0),     # nose bridge, lower
    30: (0.0, 35.0, -30.0),     # nose tip (pronasale)
    31: (-17.0, 41.0, -10.0),   # right nose wing (alare)
    33: (0.0, 45.0, -18.0),     # nose base, middle (subnasale)
    35: (17.0, 41.0, -10.0),    # left nose wing (alare)
    36: (-45.0, 1.0, 12.0),     # right eye, outer corner
    39: (-16.0, 0.0, 0.0),      # right eye, inner corner
    42: (16.0, 0.0, 0.0),       # left eye, inner corner
    45: (45.0, 1.0, 12.0),      # left eye, outer corner
    48: (-25.0, 70.0, 2.0),     # mouth, right corner
    51: (0.0, 62.0, -16.0),     # upper lip, middle (top edge)
    54: (25.0, 70.0, 2.0),      # mouth, left corner
    57: (0.0, 80.0, -13.0),     # lower lip, middle (bottom edge)
}
FACE_MODEL_INDICES = tuple(sorted(_MODEL_POINTS))
FACE_MODEL = np.array([_MODEL_POINTS[i] for i in FACE_MODEL_INDICES], dtype=np.float64)


class NoFaceError(ValueError):
    """No face (or no landmarks) in a frame that needed one."""


# ---------------------------------------------------------------------------------------------
# Rotations
# ---------------------------------------------------------------------------------------------

def rotation_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The (3, 3) rotation ``R_roll · R_pitch · R_yaw`` of the module's convention, angles in
    degrees."""
    y, p, r = (math.radians(float(a)) for a in (yaw, pitch, roll))
    r_yaw = np.array([[math.cos(y), 0.0, -math.sin(y)], [0.0, 1.0, 0.0], [math.sin(y), 0.0, math.cos(y)]])
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(p), -math.sin(p)], [0.0, math.sin(p), math.cos(p)]])
    r_roll = np.array([[math.cos(r), -math.sin(r), 0.0], [math.sin(r), math.cos(r), 0.0], [0.0, 0.0, 1.0]])
    return r_roll @ r_pitch @ r_yaw


def euler_from_rotation(rotation) -> Tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a rotation ``R_roll · R_pitch · R_yaw``. Its last row is
    ``(cos p sin y, sin p, cos p cos y)`` and its middle column ``(-sin r cos p, cos r cos p,
    sin p)``."""
    m = np.asarray(rotation, dtype=np.float64)
    if m.shape != (3, 3) or not np.isfinite(m).all():
        raise ValueError(f"rotation must be a finite (3, 3) matrix, got shape {m.shape}")
    pitch = math.asin(max(-1.0, min(1.0, m[2, 1])))
    yaw = math.atan2(m[2, 0], m[2, 2])
    roll = math.atan2(-m[0, 1], m[1, 1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def _skew(v: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3, 3): the matrices of ``w -> v × w``."""
    zero = np.zeros_like(v[..., 0])
    return np.stack([np.stack([zero, -v[..., 2], v[..., 1]], -1),
                     np.stack([v[..., 2], zero, -v[..., 0]], -1),
                     np.stack([-v[..., 1], v[..., 0], zero], -1)], -2)


def _exp_so3(omega: np.ndarray) -> np.ndarray:
    """Rodrigues: the rotation by |ω| radians about ω."""
    angle = float(np.linalg.norm(omega))
    if angle < 1e-12:
        return np.eye(3) + _skew(omega)
    k = _skew(omega / angle)
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


# ---------------------------------------------------------------------------------------------
# Perspective-n-point
# ---------------------------------------------------------------------------------------------

def _image_size(image_size) -> Tuple[float, float]:
    try:
        width, height = (float(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (width, height) in pixels, got {image_size!r}") from None
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise ValueError(f"image_size must be two positive sizes (width, height), got {image_size!r}")
    return width, height


def _focal(focal, width: float, height: float) -> float:
    if focal is None:
        return max(width, height)
    value = float(focal)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"focal must be a positive focal length in pixels (or None), got {focal!r}")
    return value


def project_face_model(yaw: float, pitch: float, roll: float, image_size, focal=None,
                       distance: float = 600.0, offset: Tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(68, 2) pixels: :data:`FACE_MODEL` posed at (yaw, pitch, roll) degrees, its origin
    ``distance`` mm in front of the camera and ``offset`` (x, y) mm off the optical axis, seen by
    the camera of :func:`solve_head_pose`. Landmarks the model lacks are NaN."""
    width, height = _image_size(image_size)
    f = _focal(focal, width, height)
    camera = FACE_MODEL @ rotation_from_euler(yaw, pitch, roll).T + np.array([offset[0], offset[1], distance])
    if (camera[:, 2] <= 0).any():
        raise ValueError(f"the face at distance {distance} mm is not wholly in front of the camera")
    out = np.full((NUM_LANDMARKS, 2), np.nan)
    out[list(FACE_MODEL_INDICES)] = f * camera[:, :2] / camera[:, 2:] + np.array([width / 2, height / 2])
    return out


def _model_landmarks(landmarks) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must be the (68, 2) pixel (x, y) points of the iBUG 68-point "
                         f"layout, got shape {points.shape}")
    points = points[list(FACE_MODEL_INDICES)]
    if not np.isfinite(points).all():
        bad = [i for i, ok in zip(FACE_MODEL_INDICES, np.isfinite(points).all(1)) if not ok]
        raise ValueError(f"landmarks {bad} (of the face model's {len(FACE_MODEL_INDICES)}) are not finite")
    return points


def _weak_perspective_start(normalized: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Scaled orthographic fit ``normalized ≈ s (R P)_xy + c``: least-squares affine (2, 3), its
    nearest pair of orthonormal rows (SVD), the third row their cross product; then the
    translation that puts the model's centroid at the fitted depth 1 / s."""
    centre_model = FACE_MODEL.mean(0)
    centre_image = normalized.mean(0)
    affine, *_ = np.linalg.lstsq(FACE_MODEL - centre_model, normalized - centre_image, rcond=None)
    u, singular, vt = np.linalg.svd(affine.T, full_matrices=False)
    rows = u @ vt
    rotation = np.vstack([rows, np.cross(rows[0], rows[1])])
    scale = float(singular.mean())
    if not scale > 0:
        raise ValueError("the landmarks are degenerate (all at one point or on one line)")
    rotated_centre = rotation @ centre_model
    depth = 1.0 / scale
    translation = np.array([centre_image[0] * depth - rotated_centre[0],
                            centre_image[1] * depth - rotated_centre[1],
                            depth - rotated_centre[2]])
    return rotation, translation


def _residuals(rotation, translation, normalized):
    camera = FACE_MODEL @ rotation.T + translation
    return camera, (camera[:, :2] / camera[:, 2:] - normalized).ravel()


def _refine(rotation, translation, normalized, iterations=100):
    """Levenberg-Marquardt on (ω, t), ``R ← exp(ω) R``, minimizing the normalized reprojection
    error. The Jacobian of ``R p + t`` is ``(−[R p]×, I)``; of ``(x/z, y/z)``, ``[[1/z, 0, −x/z²],
    [0, 1/z, −y/z²]]``."""
    camera, residual = _residuals(rotation, translation, normalized)
    cost = float(residual @ residual)
    damping = 1e-3
    for _ in range(iterations):
        x, y, z = camera[:, 0], camera[:, 1], camera[:, 2]
        zero = np.zeros_like(z)
        d_project = np.stack([np.stack([1 / z, zero, -x / z ** 2], -1),
                              np.stack([zero, 1 / z, -y / z ** 2], -1)], -2)          # (K, 2, 3)
        d_camera = np.concatenate([-_skew(camera - translation), np.broadcast_to(np.eye(3), (len(z), 3, 3))], -1)
        jacobian = (d_project @ d_camera).reshape(-1, 6)
        normal = jacobian.T @ jacobian
        gradient = jacobian.T @ residual
        improved = False
        while damping < 1e12:
            step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -gradient)
            new_rotation = _exp_so3(step[:3]) @ rotation
            new_translation = translation + step[3:]
            new_camera, new_residual = _residuals(new_rotation, new_translation, normalized)
            new_cost = float(new_residual @ new_residual)
            if (new_camera[:, 2] > 0).all() and new_cost < cost:
                rotation, translation, camera, residual = new_rotation, new_translation, new_camera, new_residual
                improved, damping = cost - new_cost > 1e-15 * max(cost, 1e-30), max(damping / 10, 1e-9)
                cost = new_cost
                break
            damping *= 10
        if not improved:
            break
    return rotation, translation


def solve_head_pose(landmarks, image_size, focal=None) -> Tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of the head whose iBUG 68-point ``landmarks`` ((68, 2) pixel
    (x, y); only the face model's 21 are used, the others may be anything, NaN included) are seen
    in an image of ``image_size`` (width, height) by a pinhole camera of ``focal`` pixels (default
    ``max(width, height)``) centred on the image. The module docstring states the convention."""
    width, height = _image_size(image_size)
    f = _focal(focal, width, height)
    points = _model_landmarks(landmarks)
    normalized = (points - np.array([width / 2, height / 2])) / f
    rotation, translation = _weak_perspective_start(normalized)
    if translation[2] <= 0 or ((FACE_MODEL @ rotation.T + translation)[:, 2] <= 0).any():
        raise ValueError("the landmarks do not fit a face in front of the camera")
    rotation, _ = _refine(rotation, translation, normalized)
    return euler_from_rotation(rotation)


# ---------------------------------------------------------------------------------------------
# Landmarks from frames
# ---------------------------------------------------------------------------------------------

class DlibLandmarker:
    """dlib's 68-point shape predictor (``dlib.shape_predictor``, from the ``dlib-bin`` wheel) on
    the largest face ``detector`` finds (default ``mim.face.make_detector()``, dlib's HOG
    detector). ``predictor_path``: the user's ``shape_predictor_68_face_landmarks.dat`` (dlib's
    model trained on iBUG 300-W; see docs/metrics.md for where it comes from and its licence).
    Calling it on an (H, W, 3) uint8 RGB image gives the (68, 2) float64 landmarks in pixels, or
    None when no face is found."""

    def __init__(self, predictor_path, detector=None):
        path = os.fspath(predictor_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"the headpose metric needs dlib's 68-point landmark model "
                                    f"{PREDICTOR_FILE}: no file at {path!r}")
        import dlib

        try:
            self._predictor = dlib.shape_predictor(path)
        except RuntimeError as error:
            raise ValueError(f"the headpose metric could not read {path!r} as a dlib shape predictor "
                             f"({PREDICTOR_FILE}): {error}") from None
        if detector is None:
            from mim.face import make_detector
            detector = make_detector()
        self.detector = detector
        self.path = path
        self._rectangle = dlib.rectangle

    def __call__(self, image) -> Optional[np.ndarray]:
        from mim.face import check_image

        image = check_image(image)
        faces = self.detector.detect(image)
        if not faces:
            return None
        x0, y0, x1, y1 = faces[0].box
        # dlib's rectangles are inclusive of their right and bottom pixels
        box = self._rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)
        shape = self._predictor(image, box)
        if shape.num_parts != NUM_LANDMARKS:
            raise ValueError(f"{self.path} predicts {shape.num_parts} landmarks per face; headpose "
                             f"needs the 68-point layout of {PREDICTOR_FILE}")
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(NUM_LANDMARKS)], dtype=np.float64)


def _frames_uint8(frames, name: str) -> List[np.ndarray]:
    """A video as (H, W, 3) uint8 RGB frames: from a (T, 3, H, W) float tensor or array in
    [0, 1] (mim.io's videos), a (T, H, W, 3) uint8 array, or a sequence of either kind of frame."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().float().numpy()
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"{name} must be a video (T, 3, H, W) float in [0, 1] or (T, H, W, 3) "
                             f"uint8, got shape {frames.shape}")
        frames = list(frames)
    out = []
    for index, frame in enumerate(frames):
        if torch is not None and isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu().float().numpy()
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[0] == 3 and frame.dtype != np.uint8:
            if not np.isfinite(frame).all():
                raise ValueError(f"{name} frame {index} is not finite")
            frame = (np.clip(frame.transpose(1, 2, 0), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"{name} frame {index} must be (3, H, W) float in [0, 1] or (H, W, 3) "
                             f"uint8, got shape {frame.shape} {frame.dtype}")
        out.append(frame)
    if not out:
        raise ValueError(f"{name} has no frames")
    return out


def head_poses(frames, landmarker: Callable, focal=None, name: str = "video",
               missing: str = "error") -> np.ndarray:
    """(T, 3) yaw, pitch, roll in degrees of each frame of ``frames`` (see :func:`headpose_error`
    for the forms taken) from ``landmarker(image) -> (68, 2) landmarks or None``. A frame without a
    face raises :class:`NoFaceError` naming it (``missing="error"``) or gets a NaN row
    (``missing="nan"``)."""
    if missing not in ("error", "nan"):
        raise ValueError(f"missing must be 'error' or 'nan', got {missing!r}")
    images = _frames_uint8(frames, name)
    poses = np.full((len(images), 3), np.nan)
    for index, image in enumerate(images):
        landmarks = landmarker(image)
        if landmarks is None:
            if missing == "error":
                raise NoFaceError(f"headpose: no face found in frame {index} of {name}")
            continue
        poses[index] = solve_head_pose(landmarks, (image.shape[1], image.shape[0]), focal)
    return poses


def _wrapped_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a − b in degrees, wrapped to [−180, 180)."""
    return (a - b + 180.0) % 360.0 - 180.0


def _pose_array(poses, name: str) -> np.ndarray:
    array = np.asarray(poses, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{name} must be (T, 3) yaw, pitch, roll in degrees, got shape {array.shape}")
    return array


def pose_error(generated_poses, truth_poses) -> Dict[str, object]:
    """Headpose error of two (T, 3) sequences of (yaw, pitch, roll) degrees, frame by frame: the
    mean absolute difference of each angle (wrapped to ±180°) over the frames where both are
    finite, and ``headpose``, the mean of the three. NaN rows are frames without a face; they are
    counted (``no_face_generated``, ``no_face_truth``: lists of frame indices) and left out;
    ``frames`` is how many were compared. No frame with both is an error."""
    generated = _pose_array(generated_poses, "generated_poses")
    truth = _pose_array(truth_poses, "truth_poses")
    if len(generated) != len(truth):
        raise ValueError(f"generated_poses and truth_poses must have as many frames, got "
                         f"{len(generated)} and {len(truth)}")
    found_generated = np.isfinite(generated).all(1)
    found_truth = np.isfinite(truth).all(1)
    both = found_generated & found_truth
    no_face_generated = np.flatnonzero(~found_generated).tolist()
    no_face_truth = np.flatnonzero(~found_truth).tolist()
    if not both.any():
        raise NoFaceError(f"headpose: no frame has a face in both videos ({len(truth)} frames; no face "
                          f"in generated frames {no_face_generated}, in ground-truth frames {no_face_truth})")
    error = np.abs(_wrapped_difference(generated[both], truth[both])).mean(0)
    return {"yaw": float(error[0]), "pitch": float(error[1]), "roll": float(error[2]),
            "headpose": float(error.mean()), "frames": int(both.sum()),
            "no_face_generated": no_face_generated, "no_face_truth": no_face_truth}


def headpose_error(generated, truth, landmarker: Callable, focal=None) -> Dict[str, object]:
    """The Headpose metric of a generated video against its ground truth (docs/metrics.md): each
    frame's pose by :func:`solve_head_pose` on ``landmarker``'s landmarks (a
    :class:`DlibLandmarker`, or any callable ``(H, W, 3) uint8 image -> (68, 2) or None``), then
    :func:`pose_error` (keys ``yaw``, ``pitch``, ``roll``, ``headpose`` in degrees, ``frames``,
    ``no_face_generated``, ``no_face_truth``). Videos: (T, 3, H, W) float in [0, 1] (tensor or
    array), (T, H, W, 3) uint8, or a sequence of such frames; both of the same length."""
    generated_images = _frames_uint8(generated, "generated")
    truth_images = _frames_uint8(truth, "truth")
    if len(generated_images) != len(truth_images):
        raise ValueError(f"generated and truth must have as many frames, got {len(generated_images)} "
                         f"and {len(truth_images)}")
    return pose_error(head_poses(generated_images, landmarker, focal, "generated", missing="nan"),
                      head_poses(truth_images, landmarker, focal, "truth", missing="nan"))
