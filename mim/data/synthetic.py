"""Procedural talking heads: a cartoon portrait that moves, blinks and speaks, from a seed alone.

Nothing is downloaded. :func:`make_clip` renders a clip with numpy: frames with anti-aliased
edges, speech-like audio, and the ground truth that drove the rendering (mouth opening, head pose,
blinks), so a model's motion features can be checked against known causes. The mouth follows the
audio's loudness, which is what an audio-to-motion model has to learn.
"""
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from mim.io import write_video, write_wav

__all__ = [
    "SyntheticTalkingHeads",
    "envelope_per_frame",
    "make_clip",
    "speech_like_audio",
    "write_clip",
]

_SPLITS = ("train", "heldout")

# Head motion limits: yaw, pitch, roll (radians), tx, ty (fraction of the frame), log scale.
_POSE_LIMITS = np.array([np.radians(20.0), np.radians(12.0), np.radians(12.0), 0.08, 0.06, 0.06])
_HEAD_CENTRE_Y = -0.08  # head centre in body coordinates (the frame spans [-1, 1])


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_positive_number(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


# --------------------------------------------------------------------------------------- audio


def _formant_kernel(rng, sample_rate):
    """Impulse response of a glottal pulse through three parallel formant resonators.

    Each resonator is a two-pole filter, h(n) = exp(-π B n / sr) sin(2π F n / sr); formant
    frequencies F1-F3 and bandwidths B are drawn per syllable (vowel-like ranges). The glottal
    pulse is the derivative of a 3 ms raised-cosine flow pulse, which gives the falling spectral
    tilt of voiced speech.
    """
    n = np.arange(int(0.025 * sample_rate), dtype=np.float64)
    formants = (rng.uniform(300, 850), rng.uniform(850, 2300), rng.uniform(2300, 3200))
    bandwidths = (rng.uniform(60, 120), rng.uniform(80, 160), rng.uniform(120, 220))
    gains = (1.0, 0.6, 0.3)
    tract = sum(
        g * np.exp(-np.pi * b * n / sample_rate)
        * np.sin(2 * np.pi * min(f, 0.45 * sample_rate) * n / sample_rate)
        for f, b, g in zip(formants, bandwidths, gains)
    )
    pulse_len = max(3, int(0.003 * sample_rate))
    glottal = np.diff(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(pulse_len + 1) / pulse_len))
    return np.convolve(glottal, tract)


def speech_like_audio(duration_s, sample_rate=16000, seed=0):
    """Speech-like audio: (audio, envelope), both float32 of ``round(duration_s * sample_rate)``.

    Phrases of 2-6 voiced syllables (120-300 ms each, 10-50 ms apart) alternate with 250-600 ms
    pauses of exact silence, after 50-300 ms of leading silence. A syllable is a glottal pulse
    train at a gliding F0 (the speaker's base, 110-200 Hz, varied per syllable, kept in 90-250
    Hz) filtered by three formant resonances drawn per syllable (:func:`_formant_kernel`), plus a
    little breath noise, shaped by an amplitude envelope sin(πu)^0.7 scaled by a per-syllable
    loudness in [0.45, 1]. ``envelope`` is that per-sample amplitude envelope (0 in pauses).
    Random draws are made in time order, so a longer duration extends the same audio. ``seed`` is
    anything ``np.random.default_rng`` takes (an int, a ``SeedSequence``).
    """
    _check_positive_number(duration_s, "duration_s")
    sample_rate = _check_positive_int(sample_rate, "sample_rate")
    num_samples = round(duration_s * sample_rate)
    rng = np.random.default_rng(seed)
    audio = np.zeros(num_samples, np.float32)
    envelope = np.zeros(num_samples, np.float32)
    speaker_f0 = rng.uniform(110, 200)
    t = int(rng.uniform(0.05, 0.3) * sample_rate)
    while t < num_samples:
        for _ in range(rng.integers(2, 7)):
            length = int(rng.uniform(0.12, 0.30) * sample_rate)
            f0_start = np.clip(speaker_f0 * 2 ** rng.normal(0, 0.15), 90, 250)
            f0_end = np.clip(f0_start * 2 ** rng.uniform(-0.3, 0.2), 90, 250)
            loudness = rng.uniform(0.45, 1.0)
            kernel = _formant_kernel(rng, sample_rate)
            breath = rng.normal(0, 0.05, length)
            gap = int(rng.uniform(0.01, 0.05) * sample_rate)

            f0 = f0_start * (f0_end / f0_start) ** np.linspace(0, 1, length)
            cycles = np.cumsum(f0 / sample_rate)
            pulses = np.diff(np.floor(cycles), prepend=0.0)
            voiced = np.convolve(pulses, kernel)[:length]
            voiced /= np.sqrt(np.mean(voiced ** 2)) + 1e-12
            shape = loudness * np.sin(np.pi * np.linspace(0, 1, length)) ** 0.7
            end = min(t + length, num_samples)
            audio[t:end] = (0.25 * shape * (voiced + breath))[: end - t]
            envelope[t:end] = shape[: end - t]
            t += length + gap
            if t >= num_samples:
                break
        t += int(rng.uniform(0.25, 0.6) * sample_rate)
    np.clip(audio, -1.0, 1.0, out=audio)
    return audio, envelope


def envelope_per_frame(envelope, sample_rate, num_frames, fps=25):
    """Mean of a per-sample envelope over each video frame's span, scaled to peak 1: (T,) float32.

    Frame k spans samples [round(k sr / fps), round((k+1) sr / fps)); samples past the end of
    ``envelope`` count as 0. An all-zero envelope gives all zeros.
    """
    envelope = np.asarray(envelope, dtype=np.float64)
    if envelope.ndim != 1:
        raise ValueError(f"envelope must be 1-D, got shape {envelope.shape}")
    sample_rate = _check_positive_int(sample_rate, "sample_rate")
    num_frames = _check_positive_int(num_frames, "num_frames")
    _check_positive_number(fps, "fps")
    bounds = np.round(np.arange(num_frames + 1) * sample_rate / fps).astype(np.int64)
    padded = np.zeros(max(bounds[-1], len(envelope)) + 1)
    padded[1: len(envelope) + 1] = np.cumsum(envelope)
    padded[len(envelope) + 1:] = padded[len(envelope)]
    per_frame = (padded[bounds[1:]] - padded[bounds[:-1]]) / np.maximum(np.diff(bounds), 1)
    peak = per_frame.max()
    return (per_frame / peak if peak > 0 else per_frame).astype(np.float32)


def _mouth_from_envelope(frame_envelope):
    """Mouth opening: the per-frame envelope through a centred [1/4, 1/2, 1/4] filter, peak 1."""
    padded = np.pad(frame_envelope, 1, mode="edge")
    smoothed = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    peak = smoothed.max()
    return (smoothed / peak if peak > 0 else smoothed).astype(np.float32)


# -------------------------------------------------------------------------------------- motion


def _head_pose(rng, times):
    """(T, 6) yaw, pitch, roll, tx, ty, scale: each a weighted sum of three 0.2-0.7 Hz sinusoids.

    Weights sum to 1, so |component| <= its amplitude (50-100 % of ``_POSE_LIMITS``); scale is
    exp of its component.
    """
    amplitudes = _POSE_LIMITS * rng.uniform(0.5, 1.0, 6)
    freqs = rng.uniform(0.2, 0.7, (6, 3))
    phases = rng.uniform(0, 2 * np.pi, (6, 3))
    weights = rng.dirichlet(np.ones(3), 6)
    waves = np.sin(2 * np.pi * freqs[None] * times[:, None, None] + phases[None])  # (T, 6, 3)
    pose = amplitudes * (waves * weights[None]).sum(-1)
    pose[:, 5] = np.exp(pose[:, 5])
    return pose.astype(np.float32)


def _blinks(rng, times):
    """(T,) eyelid closure: blinks every 2-5 s (first after 0.2-2.5 s), 120-180 ms long.

    A blink closes in its first 40 % (half-cosine ramp to 1) and opens in the rest.
    """
    closure = np.zeros(len(times))
    end = times[-1] + 1.0
    start = rng.uniform(0.2, 2.5)
    while start < end:
        duration = rng.uniform(0.12, 0.18)
        u = (times - start) / duration
        closing = (u >= 0) & (u < 0.4)
        opening = (u >= 0.4) & (u < 1.0)
        closure[closing] = np.maximum(closure[closing], 0.5 - 0.5 * np.cos(np.pi * u[closing] / 0.4))
        closure[opening] = np.maximum(closure[opening], 0.5 + 0.5 * np.cos(np.pi * (u[opening] - 0.4) / 0.6))
        start += rng.uniform(2.0, 5.0)
    return closure.astype(np.float32)


# ---------------------------------------------------------------------------------- appearance


_SKIN_LIGHT = np.array([0.97, 0.82, 0.71])
_SKIN_DARK = np.array([0.33, 0.20, 0.13])
_HAIR = np.array([[0.06, 0.05, 0.05], [0.30, 0.18, 0.09], [0.85, 0.68, 0.38],
                  [0.62, 0.25, 0.10], [0.70, 0.70, 0.70], [0.45, 0.30, 0.20]])
_EYES = np.array([[0.30, 0.18, 0.08], [0.20, 0.40, 0.70], [0.30, 0.50, 0.30], [0.45, 0.35, 0.20]])


@dataclass(frozen=True)
class _Look:
    """Everything about a face that does not move."""
    background_a: np.ndarray
    background_b: np.ndarray
    gradient_angle: float
    skin: np.ndarray
    hair: np.ndarray
    hair_style: str  # "short", "long" or "bald"
    fringe_depth: float
    fringe_wave: float
    fringe_freq: float
    fringe_phase: float
    face_rx: float
    face_ry: float
    eye_color: np.ndarray
    eye_spacing: float
    eye_size: float
    lips: np.ndarray
    shirt: np.ndarray
    glasses: bool
    frame_color: np.ndarray
    beard: bool


def _jitter(rng, color, amount):
    return np.clip(color + rng.normal(0, amount, 3), 0.0, 1.0)


_BACKGROUND_SKIN_ANGLE = 0.15  # radians: no colour of the background gradient is closer to the skin's


def _background_unlike_skin(colours, skin):
    """The two background colours, their channels turned (R, G, B -> B, R, G) until every blend of
    them is at least _BACKGROUND_SKIN_ANGLE from the skin's RGB direction, so a face is told from
    the background behind it by colour (turning keeps the draws, hence the rest of the look).
    A skin-like colour (R > G > B) turns into a bluish one; after two turns the colours are kept."""
    blends = np.linspace(0.0, 1.0, 21)[:, None]
    unit_skin = skin / np.linalg.norm(skin)
    for _ in range(2):
        mixed = (1.0 - blends) * colours[0] + blends * colours[1]
        cosines = mixed @ unit_skin / np.linalg.norm(mixed, axis=1)
        if np.arccos(np.clip(cosines, -1.0, 1.0)).min() >= _BACKGROUND_SKIN_ANGLE:
            break
        colours = colours[:, [2, 0, 1]]
    return colours


def _draw_look(rng):
    skin = _jitter(rng, _SKIN_LIGHT + rng.uniform() * (_SKIN_DARK - _SKIN_LIGHT), 0.03)
    face_rx = float(rng.uniform(_FACE_RX[0], _FACE_RX[1]))
    background = _background_unlike_skin(rng.uniform(0.1, 0.95, (2, 3)), skin)
    return _Look(
        background_a=background[0],
        background_b=background[1],
        gradient_angle=float(rng.uniform(0, 2 * np.pi)),
        skin=skin,
        hair=_jitter(rng, _HAIR[rng.integers(len(_HAIR))], 0.04),
        hair_style=("short", "long", "bald")[rng.choice(3, p=[0.5, 0.4, 0.1])],
        fringe_depth=float(rng.uniform(0.15, 0.32)),
        fringe_wave=float(rng.uniform(0.0, 0.06)),
        fringe_freq=float(rng.uniform(6.0, 16.0)),
        fringe_phase=float(rng.uniform(0, 2 * np.pi)),
        face_rx=face_rx,
        face_ry=face_rx * float(rng.uniform(1.15, 1.4)),
        eye_color=_jitter(rng, _EYES[rng.integers(len(_EYES))], 0.04),
        eye_spacing=float(rng.uniform(0.34, 0.42)),
        eye_size=float(rng.uniform(0.85, 1.15)),
        lips=_jitter(rng, skin * np.array([0.85, 0.55, 0.55]), 0.03),
        shirt=rng.uniform(0.05, 0.95, 3),
        glasses=bool(rng.uniform() < 0.25),
        frame_color=rng.uniform(0.0, 0.4, 3),
        beard=bool(rng.uniform() < 0.15),
    )


# ----------------------------------------------------------------------------------- rendering


def _coverage(distance, pixel):
    """Anti-aliased coverage of a shape from its signed distance (negative inside), in pixels:
    smoothstep of a one-pixel ramp centred on the edge."""
    c = np.clip(0.5 - distance / pixel, 0.0, 1.0)
    return c * c * (3.0 - 2.0 * c)


def _ellipse(x, y, cx, cy, rx, ry, pixel):
    """Coverage of an axis-aligned ellipse, and its normalised radius k (1 on the edge).

    Signed distance: the larger of the first-order estimate (k - 1) / |∇k|, exact near the edge,
    and the distance to the bounding box, a lower bound that keeps the estimate right far along
    the long axis of a thin ellipse (where the first-order one collapses to the distance to the
    axis line). An ellipse thinner than a pixel fades with its thickness instead of drawing a
    one-pixel line, so a closing eyelid or mouth vanishes smoothly.
    """
    rx = np.maximum(rx, np.float32(1e-4))
    ry = np.maximum(ry, np.float32(1e-4))
    dx, dy = x - cx, y - cy
    u, v = dx / rx, dy / ry
    k = np.sqrt(u * u + v * v)
    gradient = np.sqrt((u / rx) ** 2 + (v / ry) ** 2) / np.maximum(k, 1e-6)
    gradient = np.maximum(gradient, 1.0 / np.maximum(rx, ry))
    distance = np.maximum((k - 1.0) / gradient, np.maximum(np.abs(dx) - rx, np.abs(dy) - ry))
    thickness = np.clip(2.0 * np.minimum(rx, ry) / pixel, 0.0, 1.0)
    return _coverage(distance, pixel) * thickness, k


def _box(x, y, cx, cy, half_w, half_h, pixel):
    return _coverage(np.maximum(np.abs(x - cx) - half_w, np.abs(y - cy) - half_h), pixel)


def _paint(image, coverage, color):
    """Composite ``color`` ((3,) or (3, T, H, W)) over ``image`` (3, T, H, W) in place."""
    color = np.asarray(color, np.float32)
    blend = np.empty_like(image[0])
    for channel in range(3):
        np.subtract(color[channel], image[channel], out=blend)
        blend *= coverage
        image[channel] += blend


class _Canvas:
    """The frames being painted, the head coordinates of every pixel, and windows onto both.

    Coordinates: the frame spans [-1, 1] (x right, y down). Body coordinates undo translation
    (tx, ty are fractions of the frame, so 2·tx in these units) and scale; head coordinates also
    undo roll about the head centre. A small feature is painted through :meth:`window`, the
    pixels its head-space disc can reach in any frame, so its cost follows its size.
    """

    def __init__(self, pose, size, background):
        f32 = np.float32
        axis = (np.arange(size, dtype=f32) + 0.5) * (2.0 / size) - 1.0
        gx, gy = axis[None, None, :], axis[None, :, None]
        self.size = size
        self.roll, self.tx, self.ty, self.scale = (pose[:, i].astype(f32)[:, None, None] for i in range(2, 6))
        self.pixel = (2.0 / size) / self.scale
        self.bx = (gx - 2.0 * self.tx) / self.scale
        self.by = (gy - 2.0 * self.ty) / self.scale
        cos_r, sin_r = np.cos(self.roll), np.sin(self.roll)
        rel_y = self.by - _HEAD_CENTRE_Y
        self.hx = cos_r * self.bx + sin_r * rel_y
        self.hy = -sin_r * self.bx + cos_r * rel_y
        ramp = np.clip(0.5 + 0.5 * (gx * np.cos(background[2]) + gy * np.sin(background[2])), 0.0, 1.0)
        first = background[0][:, None, None, None] * (1.0 - ramp) + background[1][:, None, None, None] * ramp
        self.image = np.broadcast_to(first.astype(f32), (3, len(pose), size, size)).copy()

    def window(self, cx, cy, radius):
        """(hx, hy, pixel, image) restricted to the pixels within ``radius`` of head point (cx, cy)."""
        cos_r, sin_r = np.cos(self.roll), np.sin(self.roll)
        centre_x = self.scale * (cos_r * cx - sin_r * cy) + 2.0 * self.tx
        centre_y = self.scale * (sin_r * cx + cos_r * cy + _HEAD_CENTRE_Y) + 2.0 * self.ty
        reach = self.scale * float(np.max(radius)) + 2.0 * (2.0 / self.size)
        half = self.size / 2.0

        def span(centre):
            first = int(np.floor((float(np.min(centre - reach)) + 1.0) * half - 0.5))
            last = int(np.ceil((float(np.max(centre + reach)) + 1.0) * half - 0.5)) + 1
            return slice(min(max(first, 0), self.size), min(max(last, 0), self.size))

        rows, cols = span(centre_y), span(centre_x)
        return self.hx[:, rows, cols], self.hy[:, rows, cols], self.pixel, self.image[:, :, rows, cols]


def _project(x0, y0, yaw, pitch, look, protrusion=1.0):
    """Where a face feature at (x0, y0) (frontal, head units) appears at the given yaw/pitch.

    The face is treated as an ellipsoid of depth ``face_rx``: the feature sits at depth
    z0 = protrusion · face_rx · sqrt(1 - (x0/rx)² - (y0/ry)²) and projects to
    (x0 cos yaw + z0 sin yaw, y0 cos pitch + z0 sin pitch). Returns that centre and the
    foreshortening of the feature's width and height, cos(yaw + atan2(x0, z0)) and
    cos(pitch + atan2(y0, z0)), clipped to [0.15, 1].
    """
    inside = max(0.0, 1.0 - (x0 / look.face_rx) ** 2 - (y0 / look.face_ry) ** 2)
    z0 = protrusion * look.face_rx * inside ** 0.5
    cx = x0 * np.cos(yaw) + z0 * np.sin(yaw)
    cy = y0 * np.cos(pitch) + z0 * np.sin(pitch)
    fx = np.clip(np.cos(yaw + float(np.arctan2(x0, z0))), 0.15, 1.0)
    fy = np.clip(np.cos(pitch + float(np.arctan2(y0, z0))), 0.15, 1.0)
    return cx, cy, fx, fy


def _render(look, pose, mouth_open, blink, size):
    """Frames (T, 3, size, size) float32 in [0, 1]; layers are painted back to front."""
    f32 = np.float32
    canvas = _Canvas(pose, size, (look.background_a, look.background_b, look.gradient_angle))
    image, bx, by, hx, hy, pixel = canvas.image, canvas.bx, canvas.by, canvas.hx, canvas.hy, canvas.pixel
    yaw, pitch = (pose[:, i].astype(f32)[:, None, None] for i in range(2))
    open_ = mouth_open.astype(f32)[:, None, None]
    shut = blink.astype(f32)[:, None, None]
    rx, ry = look.face_rx, look.face_ry

    _paint(image, _box(bx, by, 0.0, 0.6, 0.45 * rx, 0.35, pixel), look.skin * 0.8)
    _paint(image, _ellipse(bx, by, 0.0, 1.08, 0.85, 0.45, pixel)[0], look.shirt)
    back_shift = -0.25 * rx * np.sin(yaw)  # the back of the head moves against the face
    if look.hair_style == "long":
        _paint(image, _ellipse(hx, hy, back_shift, 0.25 * ry, 1.3 * rx, 1.3 * ry, pixel)[0], look.hair * 0.9)
    if look.hair_style != "bald":
        _paint(image, _ellipse(hx, hy, back_shift, -0.12 * ry, 1.12 * rx, 1.05 * ry, pixel)[0], look.hair)
    for side in (-1.0, 1.0):
        ear_x = side * rx * np.cos(yaw) - 0.15 * rx * np.sin(yaw)
        ex, ey, p, img = canvas.window(ear_x, 0.05 * ry, 0.24 * ry)
        _paint(img, _ellipse(ex, ey, ear_x, 0.05 * ry, 0.2 * rx, 0.24 * ry, p)[0], look.skin * 0.92)

    face, face_k = _ellipse(hx, hy, 0.0, 0.0, rx, ry, pixel)
    shading = 1.0 - 0.2 * np.minimum(face_k, 1.0) ** 2
    _paint(image, face, look.skin.astype(f32)[:, None, None, None] * shading[None])

    if look.hair_style != "bald":
        wave = np.sin(look.fringe_freq * (hx - 0.5 * rx * np.sin(yaw)) + look.fringe_phase)
        fringe_y = -ry + 2 * ry * look.fringe_depth + look.fringe_wave * wave
        _paint(image, face * _coverage(hy - fringe_y, pixel), look.hair)
    if look.beard:
        _paint(image, 0.85 * face * _coverage(0.38 * ry - hy, pixel), look.hair * 0.9)

    eye_y = -0.08 * ry
    for side in (-1.0, 1.0):
        brow_x, brow_y, bfx, bfy = _project(side * look.eye_spacing * rx, eye_y - 0.2 * ry, yaw, pitch, look)
        wx, wy, p, img = canvas.window(brow_x, brow_y, 0.26 * rx)
        brow = _ellipse(wx, wy, brow_x, brow_y, 0.26 * rx * bfx, 0.045 * ry * bfy, p)[0]
        _paint(img, brow, look.hair * 0.7)
        ex, ey, fx, fy = _project(side * look.eye_spacing * rx, eye_y, yaw, pitch, look)
        eye_rx = 0.22 * rx * look.eye_size * fx
        eye_ry = 0.1 * ry * look.eye_size * fy
        wx, wy, p, img = canvas.window(ex, ey, np.maximum(np.maximum(1.7 * eye_rx, 2.2 * eye_ry), 0.035 * ry))
        sclera = _ellipse(wx, wy, ex, ey, eye_rx, eye_ry * (1.0 - shut), p)[0]
        _paint(img, sclera, (0.96, 0.95, 0.93))
        _paint(img, sclera * _ellipse(wx, wy, ex, ey, 0.5 * eye_rx, 0.85 * eye_ry, p)[0], look.eye_color)
        _paint(img, sclera * _ellipse(wx, wy, ex, ey, 0.22 * eye_rx, 0.4 * eye_ry, p)[0], (0.03, 0.03, 0.03))
        _paint(img, shut * _ellipse(wx, wy, ex, ey, eye_rx, 0.035 * ry, p)[0], look.skin * 0.45)
        if look.glasses:
            outer = _ellipse(wx, wy, ex, ey, 1.7 * eye_rx, 2.2 * eye_ry, p)[0]
            inner = _ellipse(wx, wy, ex, ey, 1.45 * eye_rx, 1.85 * eye_ry, p)[0]
            _paint(img, np.clip(outer - inner, 0.0, 1.0), look.frame_color)
    if look.glasses:
        bridge_x, bridge_y, _, _ = _project(0.0, eye_y, yaw, pitch, look)
        wx, wy, p, img = canvas.window(bridge_x, bridge_y, 0.1 * rx)
        _paint(img, _box(wx, wy, bridge_x, bridge_y, 0.1 * rx, 0.015 * ry, p), look.frame_color)

    nose_x, nose_y, nfx, nfy = _project(0.0, 0.22 * ry, yaw, pitch, look, protrusion=1.15)
    wx, wy, p, img = canvas.window(nose_x, nose_y, 0.16 * rx)
    nostrils = _ellipse(wx, wy, nose_x, nose_y, 0.16 * rx * nfx, 0.06 * ry * nfy, p)[0]
    _paint(img, 0.7 * nostrils, look.skin * 0.7)

    mouth_x, mouth_y, mfx, mfy = _project(0.0, _MOUTH_Y * ry, yaw, pitch, look)
    # The upper lip stays put and the lower one drops: the opening grows downwards from a
    # shut mouth's dark line between the lips (a stretch a warp of the shut mouth can show).
    drop = _OPENING_RY * ry * open_ * mfy
    opening_ry = _SHUT_RY * ry * mfy + drop
    centre_y = mouth_y + drop
    wx, wy, p, img = canvas.window(mouth_x, mouth_y, _mouth_reach(rx, ry))
    lips = _ellipse(wx, wy, mouth_x, centre_y, _LIPS_RX * rx * mfx, _LIPS_RY * ry * mfy + 1.1 * opening_ry, p)[0]
    _paint(img, lips, look.lips)
    opening = _ellipse(wx, wy, mouth_x, centre_y, _OPENING_RX * rx * mfx * (1.0 - 0.2 * open_), opening_ry, p)[0]
    _paint(img, opening, _MOUTH_INTERIOR)

    np.clip(image, 0.0, 1.0, out=image)
    return np.ascontiguousarray(image.transpose(1, 0, 2, 3))


# Face half-width range (frame units; the half-height is 1.15-1.4 times it).
_FACE_RX = (0.46, 0.54)
# Mouth geometry in head units, as a fraction of the face's half axes (rx, ry): centre height of
# the shut mouth, lips half-width, lips half-height (beyond the opening), the opening's
# half-width, its half-height when shut (a dark line about a pixel high at 64 x 64), and how far
# the lower lip drops at full opening (the opening's half-height grows by that much, its centre
# moves down by as much).
_MOUTH_Y, _LIPS_RX, _LIPS_RY, _OPENING_RX, _SHUT_RY, _OPENING_RY = 0.48, 0.4, 0.08, 0.3, 0.03, 0.13
_MOUTH_INTERIOR = (0.2, 0.04, 0.05)


def _mouth_extent(ry, fy):
    """Top and bottom of the lips at full opening below the shut mouth's centre (head units)."""
    top = (_LIPS_RY + 1.1 * _SHUT_RY + 0.1 * _OPENING_RY) * ry * fy
    bottom = (_LIPS_RY + 1.1 * _SHUT_RY + 2.1 * _OPENING_RY) * ry * fy
    return top, bottom


def _mouth_reach(rx, ry):
    """Radius around the shut mouth's centre that holds the lips at any opening and pose."""
    return max(_LIPS_RX * rx, _mouth_extent(ry, 1.0)[1])


def _mouth_box(look, pose):
    """(T, 4) float32: (x0, y0, x1, y1), frame coordinates, the axis-aligned box around the lips
    at full opening in each frame (the lips ellipse's box, turned by roll, scaled and moved
    like the head), so every pixel the mouth can change lies inside it."""
    yaw, pitch, roll, tx, ty, scale = (pose[:, i].astype(np.float64) for i in range(6))
    rx, ry = look.face_rx, look.face_ry
    cx, cy, fx, fy = _project(0.0, _MOUTH_Y * ry, yaw, pitch, look)
    half_w = _LIPS_RX * rx * fx
    top, bottom = _mouth_extent(ry, fy)
    cos_r, sin_r = np.cos(roll), np.sin(roll)
    xs, ys = [], []
    for sx in (-1.0, 1.0):
        for dy in (-top, bottom):
            x, y = cx + sx * half_w, cy + dy
            xs.append(scale * (cos_r * x - sin_r * y) + 2.0 * tx)
            ys.append(scale * (sin_r * x + cos_r * y + _HEAD_CENTRE_Y) + 2.0 * ty)
    xs, ys = np.stack(xs, 1), np.stack(ys, 1)
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1).astype(np.float32)


# ------------------------------------------------------------------------------------ the clip


def make_clip(seed, num_frames=50, size=64, fps=25, sample_rate=16000):
    """Render one procedural talking-head clip, fully determined by ``seed``.

    Returns a dict:

    - ``frames``: (T, 3, size, size) float32 tensor in [0, 1].
    - ``audio``: (S,) float32 numpy array, S = round(T / fps · sample_rate) (:func:`speech_like_audio`).
    - ``sample_rate`` (int), ``fps`` (float).
    - ``mouth_open``: (T,) float32 tensor in [0, 1], the audio envelope per frame
      (:func:`envelope_per_frame`) through a centred [1/4, 1/2, 1/4] filter, peak 1. No lag.
    - ``pose``: (T, 6) float32 tensor: yaw, pitch, roll in radians (positive yaw moves the
      features toward +x, image right; positive pitch toward +y, down; positive roll turns the
      head clockwise on screen), tx, ty as fractions of the frame's width and height (up to
      0.08 and 0.06), scale (exp of up to ±0.06).
    - ``blink``: (T,) float32 tensor in [0, 1], eyelid closure.
    - ``mouth_box``: (T, 4) float32 tensor, (x0, y0, x1, y1) in frame coordinates ([-1, 1], x
      right, y down): a box holding every pixel the mouth can change in that frame.

    Appearance (skin, hair colour and style, fringe, background gradient, face aspect, eye
    colour and size, glasses, beard), motion and audio come from independent child streams of
    ``np.random.SeedSequence(seed)``, so changing ``num_frames`` or ``size`` keeps the face,
    and a longer clip extends a shorter one's motion and audio. Pose and blinks are sampled at
    frame centres (k + 0.5) / fps.
    """
    num_frames = _check_positive_int(num_frames, "num_frames")
    size = _check_positive_int(size, "size")
    sample_rate = _check_positive_int(sample_rate, "sample_rate")
    _check_positive_number(fps, "fps")
    look_seed, pose_seed, blink_seed, audio_seed = np.random.SeedSequence(seed).spawn(4)
    look = _draw_look(np.random.default_rng(look_seed))
    num_samples = round(num_frames / fps * sample_rate)
    audio, envelope = speech_like_audio(num_samples / sample_rate, sample_rate, seed=audio_seed)
    mouth_open = _mouth_from_envelope(envelope_per_frame(envelope, sample_rate, num_frames, fps))
    times = (np.arange(num_frames) + 0.5) / fps
    pose = _head_pose(np.random.default_rng(pose_seed), times)
    blink = _blinks(np.random.default_rng(blink_seed), times)
    frames = _render(look, pose, mouth_open, blink, size)
    return {
        "frames": torch.from_numpy(frames),
        "audio": audio,
        "sample_rate": sample_rate,
        "fps": float(fps),
        "mouth_open": torch.from_numpy(mouth_open),
        "pose": torch.from_numpy(pose),
        "blink": torch.from_numpy(blink),
        "mouth_box": torch.from_numpy(_mouth_box(look, pose)),
    }


def write_clip(clip, mp4_path, wav_path=None):
    """Write a clip dict as an H.264 mp4 with its audio muxed in, and optionally as a wav too."""
    write_video(mp4_path, clip["frames"], fps=clip["fps"], audio=clip["audio"],
                sample_rate=clip["sample_rate"])
    if wav_path is not None:
        write_wav(wav_path, clip["audio"], clip["sample_rate"])


class ProceduralClips(torch.utils.data.Dataset):
    """``num_clips`` procedural clips; item i is ``render(clip_seed(i), num_frames=, size=)``
    (:func:`make_clip` for :class:`SyntheticTalkingHeads`, ``make_gesture_clip`` for
    ``SyntheticGestures``).

    Clip seeds come from ``np.random.SeedSequence(seed, spawn_key=(split, i))`` with the lowest
    bit replaced by the split (0 train, 1 heldout), so "train" and "heldout" never share a clip
    seed. Rendered clips are kept in an LRU cache of ``cache_size`` clips per process (each
    DataLoader worker has its own), so later epochs do not re-render. Items share their tensors
    with the cache: do not modify them in place.
    """

    def __init__(self, render, num_clips, num_frames=50, size=64, seed=0, split="train", cache_size=1024):
        self.render = render
        self.num_clips = _check_positive_int(num_clips, "num_clips")
        self.num_frames = _check_positive_int(num_frames, "num_frames")
        self.size = _check_positive_int(size, "size")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, (int, np.integer)) or cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative int, got {cache_size!r}")
        self.seed = int(seed)
        self.split = split
        self.cache_size = int(cache_size)
        self._cache = OrderedDict()

    def __len__(self):
        return self.num_clips

    def clip_seed(self, index):
        """The seed item ``index`` is rendered from."""
        index = self._check_index(index)
        split_bit = _SPLITS.index(self.split)
        sequence = np.random.SeedSequence(self.seed, spawn_key=(split_bit, index))
        state = sequence.generate_state(1, np.uint64)[0]
        return (int(state) & ~1) | split_bit

    def _check_index(self, index):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        return int(index)

    def __getitem__(self, index):
        index = self._check_index(index)
        clip = self._cache.get(index)
        if clip is None:
            clip = self.render(self.clip_seed(index), num_frames=self.num_frames, size=self.size)
            if self.cache_size:
                self._cache[index] = clip
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return dict(clip)


class SyntheticTalkingHeads(ProceduralClips):
    """Procedural talking heads: :class:`ProceduralClips` of :func:`make_clip`."""

    def __init__(self, num_clips, num_frames=50, size=64, seed=0, split="train", cache_size=1024):
        super().__init__(make_clip, num_clips, num_frames, size, seed, split, cache_size)
