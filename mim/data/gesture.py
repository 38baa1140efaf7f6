"""Procedural co-speech gestures: a cartoon upper body whose arms move with speech, from a seed alone.

The second task of the paper (Table II: PATS, 256², 25 fps, upper bodies with hands) needs data
where the truth of the motion is known. :func:`make_gesture_clip` renders a torso, a head and two
arms (upper arm, forearm, hand) over a background, with the speech-like audio of
:func:`mim.data.synthetic.speech_like_audio`, and returns the exact 2-D keypoints that drove
the drawing. The gestures follow the audio:

- the *activity* a(t) is the per-frame speech envelope through an attack/release follower
  (rise within a frame, fall with a 0.12 s time constant), so it is 0 in long silences;
- each *beat* (a local maximum of the envelope's rise, the onset of a syllable, above 0.08)
  draws a new gesture target per arm (elbow flexion, shoulder abduction; some beats move one
  arm only) and starts a stroke, a 0.2 s raised-cosine lift of the forearm;
- each arm's angles follow sqrt(activity) × target (+ the stroke) through a first-order lag of
  40 ms, so the arms rest along the body in silence, move more the louder the speech is,
  and snap at syllable onsets;
- the head nods a little at beats and sways slowly (a few hundredths of the frame).

Hands are painted in fixed, saturated colours, image-left hand magenta, image-right hand green;
skin is the only other colour with red well above blue; shirt, sleeves, hair and background
are drawn from blue/grey hues that are told from all three by :func:`mim.gesture_metrics`'s
read-out (colour segmentation, centroids).
"""

import numpy as np
import torch

from mim.data.synthetic import ProceduralClips, envelope_per_frame, speech_like_audio

__all__ = [
    "GESTURE_KEYPOINTS",
    "HAND_COLOURS",
    "SyntheticGestures",
    "gesture_activity",
    "make_gesture_clip",
    "speech_beats",
]

# Keypoint order of ``keypoints`` (T, K, 2); "left"/"right" are image left/right (x < 0 / x > 0).
GESTURE_KEYPOINTS = ("head", "neck", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
                     "left_hand", "right_hand")
# RGB of the hands, image-left then image-right.
HAND_COLOURS = ((0.92, 0.10, 0.85), (0.10, 0.85, 0.18))

_RELEASE_S = 0.12      # activity's fall time constant (s)
_LAG_S = 0.04          # the arms' lag behind their target (s)
_STROKE_S = 0.2        # length of a stroke (s)
_BEAT_THRESHOLD = 0.08  # smallest rise of the per-frame envelope that counts as a beat


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_positive_number(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


# -------------------------------------------------------------------------------------- motion


def gesture_activity(frame_envelope, fps=25.0):
    """Activity a(t) in [0, 1] from a per-frame envelope (T,): a(t) = e(t) where the envelope
    rises above the running value, else a(t-1)·exp(-1 / (fps · 0.12 s)) (an attack/release
    follower). It is exactly 0 before the first sound and decays to ~0 within 0.5 s of silence."""
    envelope = np.asarray(frame_envelope, np.float64)
    if envelope.ndim != 1:
        raise ValueError(f"frame_envelope must be 1-D, got shape {envelope.shape}")
    fps = _check_positive_number(fps, "fps")
    decay = np.exp(-1.0 / (fps * _RELEASE_S))
    activity = np.zeros_like(envelope)
    level = 0.0
    for t, value in enumerate(envelope):
        level = max(value, level * decay)
        activity[t] = level
    return activity.astype(np.float32)


def speech_beats(frame_envelope):
    """Frames where a syllable starts: local maxima of the envelope's rise e(t) - e(t-1) that
    exceed 0.08 (the envelope is peak-normalised). Returns an int64 array of frame indices."""
    envelope = np.asarray(frame_envelope, np.float64)
    if envelope.ndim != 1:
        raise ValueError(f"frame_envelope must be 1-D, got shape {envelope.shape}")
    rise = np.diff(envelope, prepend=0.0)
    before = np.concatenate([[-np.inf], rise[:-1]])
    after = np.concatenate([rise[1:], [-np.inf]])
    return np.flatnonzero((rise > _BEAT_THRESHOLD) & (rise >= before) & (rise > after))


def _lag(signal, fps):
    """First-order lag of (T, ...) ``signal`` with time constant _LAG_S, starting at rest (0)."""
    alpha = 1.0 - np.exp(-1.0 / (fps * _LAG_S))
    out = np.empty_like(signal)
    state = np.zeros_like(signal[0])
    for t in range(len(signal)):
        state = state + alpha * (signal[t] - state)
        out[t] = state
    return out


def _arm_drive(rng, envelope, fps, style):
    """(T, 2, 2): per arm (image-left, image-right) the gesture drive (flexion, abduction) in
    [0, ~1.3]: sqrt(activity) × the latest beat's target, plus strokes, lagged."""
    num_frames = len(envelope)
    activity = gesture_activity(envelope, fps).astype(np.float64)
    beats = speech_beats(envelope)
    target = np.zeros((num_frames, 2, 2))
    stroke = np.zeros((num_frames, 2))
    current = np.zeros((2, 2))
    stroke_frames = max(2, int(round(_STROKE_S * fps)))
    bump = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(stroke_frames) / stroke_frames)
    start = 0
    for beat in list(beats) + [num_frames]:
        target[start:beat] = current
        if beat == num_frames:
            break
        moving = rng.choice(3, p=[0.5, 0.25 + style["handedness"], 0.25 - style["handedness"]])
        arms = (0, 1) if moving == 0 else ((0,) if moving == 1 else (1,))
        for arm in arms:
            current[arm] = (rng.uniform(0.45, 1.0), rng.uniform(0.0, 1.0))
            end = min(num_frames, beat + stroke_frames)
            stroke[beat:end, arm] += bump[: end - beat]
        start = beat
    lift = np.sqrt(activity)   # a quiet syllable still moves the arms visibly
    drive = lift[:, None, None] * target * style["amplitude"]
    drive[:, :, 0] += 0.3 * lift[:, None] * stroke
    return _lag(drive, fps)


# ---------------------------------------------------------------------------------- appearance


def _hsv(hue, saturation, value):
    """RGB of an HSV colour (hue in degrees)."""
    c = value * saturation
    h = (hue % 360.0) / 60.0
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return np.array(rgb) + (value - c)


def _draw_body(rng):
    """Everything about a body that does not move (frame units: the frame spans [-1, 1])."""
    scale = rng.uniform(1.05, 1.2)
    skin_light, skin_dark = np.array([0.97, 0.80, 0.68]), np.array([0.42, 0.25, 0.15])
    return {
        "scale": scale,
        "centre_x": rng.uniform(-0.06, 0.06),
        "shoulder_y": rng.uniform(-0.14, -0.06),
        "shoulder_half": scale * rng.uniform(0.30, 0.36),
        "neck": scale * rng.uniform(0.26, 0.30),        # shoulder line to head centre
        "head_rx": scale * rng.uniform(0.15, 0.18),
        "head_aspect": rng.uniform(1.15, 1.3),
        "upper_arm": scale * rng.uniform(0.36, 0.42),
        "forearm": scale * rng.uniform(0.32, 0.38),
        "limb_width": scale * rng.uniform(0.075, 0.095),
        "hand_radius": scale * rng.uniform(0.085, 0.1),
        "skin": np.clip(skin_light + rng.uniform() * (skin_dark - skin_light) + rng.normal(0, 0.02, 3), 0, 1),
        "shirt": _hsv(rng.uniform(185, 250), rng.uniform(0.1, 0.6), rng.uniform(0.25, 0.75)),
        "hair": _hsv(rng.uniform(190, 240), rng.uniform(0.0, 0.2), rng.uniform(0.05, 0.3)),
        "background_a": _hsv(rng.uniform(185, 250), rng.uniform(0.05, 0.35), rng.uniform(0.55, 0.95)),
        "background_b": _hsv(rng.uniform(185, 250), rng.uniform(0.05, 0.35), rng.uniform(0.55, 0.95)),
        "gradient_angle": rng.uniform(0, 2 * np.pi),
    }


def _draw_style(rng):
    return {"amplitude": rng.uniform(0.75, 1.05), "handedness": rng.uniform(-0.1, 0.1),
            "sway_freq": rng.uniform(0.15, 0.4), "sway_phase": rng.uniform(0, 2 * np.pi)}


def _keypoints(body, style, drive, beats_frames, times):
    """(T, 8, 2) float64 keypoints in GESTURE_KEYPOINTS order (frame coordinates)."""
    num_frames = len(times)
    sway = 0.015 * np.sin(2 * np.pi * style["sway_freq"] * times + style["sway_phase"])
    nod = np.zeros(num_frames)
    for beat in beats_frames:
        length = min(5, num_frames - beat)
        nod[beat:beat + length] += 0.02 * np.sin(np.pi * np.arange(length) / 5)
    cx = body["centre_x"]
    neck = np.stack([np.full(num_frames, cx), np.full(num_frames, body["shoulder_y"])], 1)
    head = np.stack([cx + sway, body["shoulder_y"] - body["neck"] + nod], 1)
    points = [head, neck]
    shoulders, elbows, hands = [], [], []
    for arm, side in ((0, -1.0), (1, 1.0)):
        flex, abduct = drive[:, arm, 0], drive[:, arm, 1]
        shoulder = neck + np.array([side * body["shoulder_half"], 0.0])
        # angles from +x towards +y (down) for the image-right arm, mirrored in x for the left:
        # 97° hangs the upper arm down and a little out; flexion turns the forearm in and up
        upper = np.radians(97.0 + 38.0 * abduct)
        fore = np.radians(92.0 - 135.0 * flex)
        elbow = shoulder + body["upper_arm"] * np.stack([-side * np.cos(upper), np.sin(upper)], 1)
        hand = elbow + body["forearm"] * np.stack([-side * np.cos(fore), np.sin(fore)], 1)
        shoulders.append(shoulder)
        elbows.append(elbow)
        hands.append(hand)
    return np.stack(points + shoulders + elbows + hands, 1)


# ----------------------------------------------------------------------------------- rendering


def _coverage(distance, pixel):
    """Anti-aliased coverage from a signed distance (negative inside): smoothstep over a pixel."""
    c = np.clip(0.5 - distance / pixel, 0.0, 1.0)
    return c * c * (3.0 - 2.0 * c)


def _capsule_distance(x, y, a, b, radius):
    """Signed distance of pixels (x, y) to the capsule of ``radius`` around segments a-b ((T, 2))."""
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    dx, dy = (b - a)[:, 0, None, None], (b - a)[:, 1, None, None]
    length = np.maximum(dx * dx + dy * dy, 1e-12)
    u = np.clip(((x - ax) * dx + (y - ay) * dy) / length, 0.0, 1.0)
    return np.hypot(x - ax - u * dx, y - ay - u * dy) - radius


def _paint(image, coverage, colour):
    """Composite ``colour`` (3,) over ``image`` (3, T, H, W) with (T, H, W) ``coverage``, in place."""
    for channel in range(3):
        image[channel] += (np.float32(colour[channel]) - image[channel]) * coverage


def _render(body, keypoints, size):
    """Frames (T, 3, size, size) float32 in [0, 1], painted back to front."""
    f32 = np.float32
    num_frames = len(keypoints)
    axis = ((np.arange(size) + 0.5) * (2.0 / size) - 1.0).astype(f32)
    x, y = axis[None, None, :], axis[None, :, None]
    pixel = f32(2.0 / size)
    angle = body["gradient_angle"]
    ramp = np.clip(0.5 + 0.5 * (x * np.cos(angle) + y * np.sin(angle)), 0.0, 1.0)[0]
    first = body["background_a"][:, None, None] * (1 - ramp) + body["background_b"][:, None, None] * ramp
    image = np.broadcast_to(first.astype(f32)[:, None], (3, num_frames, size, size)).copy()
    kp = keypoints.astype(f32)
    head, neck = kp[:, 0], kp[:, 1]
    half = body["shoulder_half"]

    # torso: a capsule along the shoulder line swept down past the frame's bottom
    drop = np.array([0.0, 1.6], f32)
    left_top = neck - np.array([half - 0.6 * body["limb_width"], 0.0], f32)
    right_top = neck + np.array([half - 0.6 * body["limb_width"], 0.0], f32)
    torso = np.minimum(_capsule_distance(x, y, left_top, left_top + drop, 0.09 * body["scale"]),
                       _capsule_distance(x, y, right_top, right_top + drop, 0.09 * body["scale"]))
    torso = np.minimum(torso, np.where((np.abs(x - neck[:, 0, None, None]) < half - 0.6 * body["limb_width"])
                                       & (y > neck[:, 1, None, None]), -1.0, 1.0).astype(f32))
    torso = np.minimum(torso, _capsule_distance(x, y, left_top, right_top, 0.09 * body["scale"]))
    _paint(image, _coverage(torso, pixel), body["shirt"])
    # neck (a collar in the shirt's colour, darker) and head with hair on top
    collar = _capsule_distance(x, y, neck, neck + (head - neck) * 0.45, 0.065 * body["scale"])
    _paint(image, _coverage(collar, pixel), body["shirt"] * 0.8)
    rx, ry = body["head_rx"], body["head_rx"] * body["head_aspect"]
    hx, hy = x - head[:, 0, None, None], y - head[:, 1, None, None]
    k = np.sqrt((hx / rx) ** 2 + (hy / ry) ** 2)
    head_distance = (k - 1.0) * min(rx, ry)
    hair = np.maximum((np.sqrt((hx / (1.06 * rx)) ** 2 + ((hy + 0.08 * ry) / (1.06 * ry)) ** 2) - 1.0) * rx,
                      hy + 0.55 * ry)
    _paint(image, _coverage(hair, pixel), body["hair"])
    _paint(image, _coverage(np.maximum(head_distance, -(hy + 0.5 * ry)), pixel), body["skin"])
    for side in (-1.0, 1.0):
        eye = np.hypot(hx - side * 0.4 * rx, hy + 0.05 * ry) - 0.12 * rx
        _paint(image, _coverage(eye, pixel), (0.08, 0.08, 0.1))
    # arms: upper arm, forearm (sleeves), hands on top
    sleeve = body["shirt"] * 0.85
    for arm in (0, 1):
        shoulder, elbow, hand = kp[:, 2 + arm], kp[:, 4 + arm], kp[:, 6 + arm]
        _paint(image, _coverage(_capsule_distance(x, y, shoulder, elbow, body["limb_width"]), pixel), sleeve)
        _paint(image, _coverage(_capsule_distance(x, y, elbow, hand, 0.85 * body["limb_width"]), pixel),
               sleeve * 0.92)
    for arm in (0, 1):
        hand = kp[:, 6 + arm]
        _paint(image, _coverage(_capsule_distance(x, y, hand, hand, body["hand_radius"]), pixel),
               HAND_COLOURS[arm])
    np.clip(image, 0.0, 1.0, out=image)
    return np.ascontiguousarray(image.transpose(1, 0, 2, 3))


# ------------------------------------------------------------------------------------ the clip


def make_gesture_clip(seed, num_frames=50, size=64, fps=25, sample_rate=16000):
    """Render one procedural co-speech gesture clip, fully determined by ``seed``.

    Returns a dict (the keys of :func:`mim.data.synthetic.make_clip` where they mean the same):

    - ``frames``: (T, 3, size, size) float32 tensor in [0, 1].
    - ``audio``: (S,) float32 numpy array, S = round(T / fps · sample_rate); ``sample_rate``
      (int), ``fps`` (float).
    - ``keypoints``: (T, 8, 2) float32 tensor, exact positions in frame coordinates ([-1, 1],
      x right, y down) in :data:`GESTURE_KEYPOINTS` order: head centre, neck (the middle of
      the shoulder line), shoulders, elbows, hand centres (image-left first).
    - ``envelope``: (T,) float32 tensor, the audio's per-frame envelope (peak 1).
    - ``activity``: (T,) float32 tensor, :func:`gesture_activity` of it.
    - ``beats``: (B,) int64 tensor, the frames that start a stroke (:func:`speech_beats`).

    Body, motion style, gesture draws and audio come from independent child streams of
    ``np.random.SeedSequence(seed)``, so changing ``size`` keeps the body and the motion.
    """
    num_frames = _check_positive_int(num_frames, "num_frames")
    size = _check_positive_int(size, "size")
    sample_rate = _check_positive_int(sample_rate, "sample_rate")
    fps = _check_positive_number(fps, "fps")
    body_seed, style_seed, gesture_seed, audio_seed = np.random.SeedSequence(seed).spawn(4)
    body = _draw_body(np.random.default_rng(body_seed))
    style = _draw_style(np.random.default_rng(style_seed))
    num_samples = round(num_frames / fps * sample_rate)
    audio, envelope = speech_like_audio(num_samples / sample_rate, sample_rate, seed=audio_seed)
    frame_envelope = envelope_per_frame(envelope, sample_rate, num_frames, fps)
    drive = _arm_drive(np.random.default_rng(gesture_seed), frame_envelope, fps, style)
    beats = speech_beats(frame_envelope)
    times = (np.arange(num_frames) + 0.5) / fps
    keypoints = _keypoints(body, style, drive, beats, times)
    frames = _render(body, keypoints, size)
    return {
        "frames": torch.from_numpy(frames),
        "audio": audio,
        "sample_rate": sample_rate,
        "fps": fps,
        "keypoints": torch.from_numpy(keypoints.astype(np.float32)),
        "envelope": torch.from_numpy(frame_envelope),
        "activity": torch.from_numpy(gesture_activity(frame_envelope, fps)),
        "beats": torch.from_numpy(beats.astype(np.int64)),
    }


class SyntheticGestures(ProceduralClips):
    """``num_clips`` procedural gesture clips: :class:`mim.data.synthetic.ProceduralClips` of
    :func:`make_gesture_clip` (the interface of :class:`mim.data.SyntheticTalkingHeads`: splits
    "train" and "heldout" that never share a clip seed, an LRU cache of ``cache_size`` rendered
    clips per process; items share tensors with the cache)."""

    def __init__(self, num_clips, num_frames=50, size=64, seed=0, split="train", cache_size=1024):
        super().__init__(make_gesture_clip, num_clips, num_frames, size, seed, split, cache_size)
