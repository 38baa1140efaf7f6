"""Lip sync of a rendered procedural talking head, measured from its pixels and its audio.

:func:`mouth_opening` reads how far the mouth is open in each frame from the pixels alone (no
pose, no look parameters), so it scores generated videos, whose head poses the model chose, as
well as ground-truth clips from :func:`mim.data.synthetic.make_clip`. :func:`sync_correlation`
is the Pearson correlation between that opening and the audio's loudness per video frame; against
:func:`shuffled_audio` (the same audio, chunks permuted) it gives the "no sync" control.
"""
import numpy as np
import torch

__all__ = [
    "audio_envelope_per_frame",
    "mouth_opening",
    "pearson",
    "shuffled_audio",
    "sync_correlation",
]

# Colours the renderer (mim.data.synthetic._render) paints: the mouth interior is this constant,
# and the lips are the skin colour times LIPS_TO_SKIN (plus a little per-face jitter).
MOUTH_INTERIOR = np.array([0.2, 0.04, 0.05], np.float32)
LIPS_TO_SKIN = np.array([0.85, 0.55, 0.55], np.float32)

# Frame coordinates span [-1, 1] (x right, y down). The head centre stays within (±0.16, -0.08
# ± 0.12) and the face's half axes are at least 0.34 x 0.39, so the face covers most of
# FACE_BOX in every frame (eyes, glasses, nose and, at extreme poses, hair or an ear the rest).
FACE_BOX = ((-0.18, 0.18), (-0.12, 0.12))
SKIN_MAX_ANGLE = 0.05          # radians between a pixel's RGB direction and the skin's
SKIN_BRIGHTNESS = (0.6, 1.3)   # a pixel's brightness relative to the skin's (face shading is 0.8-1)
SKIN_VOTERS = 1500             # pixels of FACE_BOX that vote (subsampled evenly)
WIDEST_ROW_FRACTION = 0.97     # rows this close to the widest face row make up the face's centre
CENTRAL_COLUMNS = 0.1          # half-width of the face's central columns, in face widths
BEARD_DEPTH = 0.35             # central skin ending closer than this below the centre: a beard
BEARD_EDGE = 0.1               # rows this far above the beard's central edge may cross its edge
LIPS_LINE_TOLERANCE = 0.05     # RGB distance from the lips-to-mouth colour segment
MIN_MOUTH_FRACTION = 0.3       # mouth fraction of a pixel that marks it as inside the mouth
NOISE_WIDENING = 3.0           # colour tolerances widen by this many pixel-noise sigmas

MIN_SIZE = 32                  # smallest frame side with a mouth of more than a pixel or two

SHUFFLE_CHUNK_S = 0.5


def _frames_array(frames):
    """(T, H, W, 3) float32 numpy copy of (T, 3, H, W) frames in [0, 1]."""
    if isinstance(frames, torch.Tensor):
        if not frames.is_floating_point():
            raise ValueError(f"frames must be floating point in [0, 1], got dtype {frames.dtype}")
        frames = frames.detach().to("cpu", torch.float32).numpy()
    elif isinstance(frames, np.ndarray):
        if not np.issubdtype(frames.dtype, np.floating):
            raise ValueError(f"frames must be floating point in [0, 1], got dtype {frames.dtype}")
    else:
        raise TypeError(f"frames must be a torch.Tensor or numpy array, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1 or min(frames.shape[2:]) < MIN_SIZE:
        raise ValueError(f"frames must have shape (T, 3, H, W) with T >= 1 and H, W >= {MIN_SIZE}, "
                         f"got {tuple(frames.shape)}")
    if not np.all(np.isfinite(frames)):
        raise ValueError("frames must be finite")
    return np.ascontiguousarray(frames.transpose(0, 2, 3, 1), dtype=np.float32)


def _box_mask(height, width, box):
    """(H, W) bool: pixels whose centres lie in box ((x0, x1), (y0, y1)), frame coordinates."""
    (x0, x1), (y0, y1) = box
    ys = (np.arange(height) + 0.5) * (2.0 / height) - 1.0
    xs = (np.arange(width) + 0.5) * (2.0 / width) - 1.0
    return ((ys > y0) & (ys < y1))[:, None] & ((xs > x0) & (xs < x1))[None, :]


def _pixel_noise(pixels):
    """Standard deviation of the pixel noise of (T, H, W, 3) frames, from the median absolute
    second difference along rows (which is 0 on the renderer's flat colours and linear
    gradients, and sqrt(6) sigma / 1.4826 on Gaussian noise)."""
    second = pixels[:, :, :-2] - 2.0 * pixels[:, :, 1:-1] + pixels[:, :, 2:]
    return float(np.median(np.abs(second))) * 1.4826 / np.sqrt(6.0)


def _skin_colour(first_frame, noise):
    """The face's skin colour: the most common RGB direction of FACE_BOX in ``first_frame``
    (H, W, 3), at the median brightness of the pixels that share it.

    Each pixel votes for every pixel within SKIN_MAX_ANGLE (plus the angle ``noise`` spans at
    the box's median brightness) of its own direction; the winner's neighbours are the skin.
    Shading multiplies the skin by 0.8-1, which keeps its direction.
    """
    box = _box_mask(*first_frame.shape[:2], FACE_BOX)
    pixels = first_frame[box]
    pixels = pixels[:: max(1, len(pixels) // SKIN_VOTERS)]
    norms = np.linalg.norm(pixels, axis=1)
    pixels, norms = pixels[norms > 0], norms[norms > 0]
    if len(pixels) == 0:
        raise ValueError("frames[0] is black in the centre of the frame, where the face must be")
    directions = pixels / norms[:, None]
    max_angle = SKIN_MAX_ANGLE + noise / float(np.median(norms))
    alike = directions @ directions.T > np.cos(max_angle)
    members = alike[np.argmax(alike.sum(1))]
    direction = directions[members].mean(0)
    return direction / np.linalg.norm(direction) * np.median(norms[members])


def _connected(mask, seeds):
    """The pixels of ``mask`` (T, H, W) 4-connected to ``seeds`` (broadcastable to it).

    Alternates sweeps along rows and columns: a run of consecutive mask pixels is reached
    whole as soon as one of its pixels is, so a face takes a handful of sweeps, not one per pixel.
    """
    reached = mask & seeds
    count = -1
    while count != int(reached.sum()):
        count = int(reached.sum())
        for axis in (2, 1):
            lines = np.moveaxis(mask, axis, -1)
            padded = np.zeros(lines.shape[:-1] + (lines.shape[-1] + 1,), bool)
            padded[..., 1:] = lines
            run_id = np.cumsum(padded[..., 1:] & ~padded[..., :-1]).reshape(lines.shape)
            run_reached = np.zeros(int(run_id.max()) + 1, bool)
            run_reached[run_id[np.moveaxis(reached, axis, -1)]] = True
            reached = np.moveaxis(lines & run_reached[run_id], -1, axis)
    return reached


def _grow(mask):
    """``mask`` (T, H, W) and its 4-neighbours."""
    grown = mask.copy()
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    grown[:, :, 1:] |= mask[:, :, :-1]
    grown[:, :, :-1] |= mask[:, :, 1:]
    return grown


def _lower_face(face):
    """(T, H, W) bool: the part of each frame where the mouth can be, from the face's pixels.

    Rows below the face's centre, the mean of its widest rows (an ellipse is widest at its
    centre, whatever a fringe or a beard hides of its top or bottom); the eyes, brows and fringe
    lie above it. A row spans from its leftmost to its rightmost face pixel, which leaves out the
    hair and background beside the jaw, unless a beard hides the lower face: when the skin of the
    central columns ends less than BEARD_DEPTH face widths below the centre (a chin is further
    down), the rows from BEARD_EDGE face widths above that end (the beard's edge is tilted with
    the head) span the whole face's width.
    """
    _, height, width = face.shape
    has_face = face.any(2)
    left = np.argmax(face, 2)
    right = width - 1 - np.argmax(face[:, :, ::-1], 2)
    span = np.where(has_face, right - left + 1, 0)
    widest = has_face & (span >= WIDEST_ROW_FRACTION * np.maximum(span.max(1, keepdims=True), 1))
    rows = np.arange(height)
    centre = np.where(widest.any(1), (widest * rows).sum(1) / np.maximum(widest.sum(1), 1), height)

    face_columns = face.any(1)
    first = np.argmax(face_columns, 1)
    last = width - 1 - np.argmax(face_columns[:, ::-1], 1)
    face_width = last - first + 1
    columns = np.arange(width)
    central = np.abs(columns[None, :] - (first + last)[:, None] / 2) <= CENTRAL_COLUMNS * face_width[:, None]
    central_rows = (face & central[:, None, :]).any(2)
    skin_end = height - 1 - np.argmax(central_rows[:, ::-1], 1)
    bearded = skin_end - centre < BEARD_DEPTH * face_width
    whole_width_from = np.where(bearded, skin_end - BEARD_EDGE * face_width, height)

    in_row_span = (columns >= left[:, :, None]) & (columns <= right[:, :, None])
    own_span = has_face & (rows[None, :] < whole_width_from[:, None])
    in_span = np.where(own_span[:, :, None], in_row_span, face_columns[:, None, :])
    return (rows[None, :, None] > centre[:, None, None]) & in_span


def mouth_opening(frames):
    """How far the mouth is open in each frame, from the pixels alone: (T,) float64, the area of
    the mouth interior as a fraction of the frame's area (least when the mouth is shut: the dark
    line between shut lips is under a pixel high).

    ``frames``: (T, 3, H, W) float tensor or array (values in [0, 1]; H, W >= 32), frames of a
    procedural head as :func:`mim.data.synthetic.make_clip` paints it, at any pose.

    Method, built on how the renderer paints:

    1. Skin colour: the most common RGB direction in the centre of the first frame (shading
       scales the skin, which keeps its direction), at its median brightness.
    2. Face: per frame, the pixels within SKIN_MAX_ANGLE of that direction, at 0.6-1.3 times
       its brightness, 4-connected to the centre of the frame. Hair (fringe, beard, dark or
       not) is not skin; skin-coloured background is dropped unless it touches the face.
    3. Lower face: rows below the face's centre (the mean of its widest rows), each from its
       leftmost to its rightmost face pixel, so the hair and background beside the jaw are left
       out; where a beard hides the skin, the whole face's width (:func:`_lower_face`).
    4. Mouth fraction of each pixel: the renderer paints the mouth interior a fixed dark red
       over the lips, whose colour is the skin's times (0.85, 0.55, 0.55); an anti-aliased
       edge pixel is a blend of the two. A pixel within LIPS_LINE_TOLERANCE of the
       lips-to-interior colour segment, and not skin, gets its position along it (0 lips, 1
       interior); others get 0. Counting blends as fractions keeps the measure linear at low
       resolution, where a half-open mouth is a row or two of blended pixels.
    5. Mouth: pixels of fraction >= MIN_MOUTH_FRACTION in 4-connected blobs wholly inside the
       lower face (a blob reaching outside it is hair, background, an eye or the face's edge).
       The opening is the sum of fractions over those blobs and the pixels next to them.

    Colour tolerances widen by NOISE_WIDENING times the pixel noise measured in the frames
    (:func:`_pixel_noise`), so decoded or noisy frames are read too.

    Limitations: a beard or hair the colour of the mouth interior, or lips and skin too dark to
    tell from it, blur the reading; at 64 x 64 the open mouth is a few pixels and a blurred
    frame loses it.
    """
    pixels = _frames_array(frames)
    _, height, width, _ = pixels.shape
    noise = NOISE_WIDENING * _pixel_noise(pixels)
    skin = _skin_colour(pixels[0], noise)
    skin_angle = SKIN_MAX_ANGLE + noise / float(np.linalg.norm(skin))

    brightness = np.linalg.norm(pixels, axis=-1)
    along_skin = pixels @ skin / float(skin @ skin)
    cos_to_skin = along_skin * float(np.linalg.norm(skin)) / np.maximum(brightness, 1e-6)
    skin_mask = ((cos_to_skin > np.cos(skin_angle))
                 & (along_skin > SKIN_BRIGHTNESS[0]) & (along_skin < SKIN_BRIGHTNESS[1]))
    face = _connected(skin_mask, _box_mask(height, width, FACE_BOX)[None])
    lower_face = _lower_face(face)

    lips = skin * LIPS_TO_SKIN
    axis = MOUTH_INTERIOR - lips
    mouth_fraction = np.clip((pixels - lips) @ axis / float(axis @ axis), 0.0, 1.0)
    off_line = np.linalg.norm(pixels - lips - mouth_fraction[..., None] * axis, axis=-1)
    mouth_fraction[(off_line > LIPS_LINE_TOLERANCE + noise) | skin_mask] = 0.0

    inside = mouth_fraction >= MIN_MOUTH_FRACTION
    mouth = inside & ~_connected(inside, ~lower_face)
    return (mouth_fraction * _grow(mouth)).sum((1, 2), dtype=np.float64) / (height * width)


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_fps(fps):
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.number)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return float(fps)


def _audio_array(audio):
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu()
        audio = (audio.float() if audio.dtype == torch.bfloat16 else audio).numpy()
    audio = np.asarray(audio)
    if audio.ndim != 1 or audio.size == 0 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(
            f"audio must be a non-empty 1-D float array of samples, got shape {audio.shape} "
            f"and dtype {audio.dtype}")
    if not np.all(np.isfinite(audio)):
        raise ValueError("audio must be finite")
    return audio


def _frame_bounds(sample_rate, num_frames, fps):
    """Sample index where each video frame starts, and where the last one ends: (T + 1,) int64.
    Frame k spans [round(k sr / fps), round((k + 1) sr / fps))."""
    return np.round(np.arange(num_frames + 1) * (sample_rate / fps)).astype(np.int64)


def audio_envelope_per_frame(audio, sample_rate, num_frames, fps=25):
    """RMS amplitude of each video frame's span of ``audio``: (T,) float64.

    Frame k spans samples [round(k sr / fps), round((k + 1) sr / fps)). The audio must last as
    long as ``num_frames`` frames to within one frame (as a video muxed with its audio does);
    samples missing at the end count as silence and extra samples are ignored.
    """
    audio = _audio_array(audio)
    sample_rate = _check_positive_int(sample_rate, "sample_rate")
    num_frames = _check_positive_int(num_frames, "num_frames")
    fps = _check_fps(fps)
    frame_samples = sample_rate / fps
    if abs(len(audio) - num_frames * frame_samples) >= frame_samples:
        raise ValueError(
            f"audio has {len(audio)} samples ({len(audio) / frame_samples:.2f} frames at "
            f"{fps:g} fps and {sample_rate} Hz) but there are {num_frames} video frames; "
            "they must agree to within one frame")
    bounds = _frame_bounds(sample_rate, num_frames, fps)
    energy = np.zeros(max(bounds[-1], len(audio)) + 1)
    energy[1: len(audio) + 1] = np.cumsum(audio.astype(np.float64) ** 2)
    energy[len(audio) + 1:] = energy[len(audio)]
    mean_square = (energy[bounds[1:]] - energy[bounds[:-1]]) / np.maximum(np.diff(bounds), 1)
    return np.sqrt(np.maximum(mean_square, 0.0))


def pearson(a, b):
    """Pearson correlation of two (T,) series; 0.0 when either is constant (no motion or silence
    carries no evidence of sync either way)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    return float(np.clip(a @ b / np.sqrt((a @ a) * (b @ b)), -1.0, 1.0))


def sync_correlation(frames, audio, sample_rate=16000, fps=25):
    """Pearson correlation between :func:`mouth_opening` of ``frames`` and the RMS of ``audio``
    per video frame (:func:`audio_envelope_per_frame`): a float in [-1, 1].

    Near 1 when the mouth opens with the sound, near 0 for unrelated audio (see
    :func:`shuffled_audio`). A mouth that does not move, or silent audio, gives 0.0 (Pearson's
    r is undefined there). ``frames``: (T, 3, H, W) in [0, 1]; ``audio``: (S,) samples lasting T
    frames at ``fps`` to within one frame.
    """
    opening = mouth_opening(frames)
    envelope = audio_envelope_per_frame(audio, sample_rate, len(opening), fps)
    return pearson(opening, envelope)


def shuffled_audio(audio, sample_rate, fps=25, seed=0, chunk_s=SHUFFLE_CHUNK_S):
    """``audio`` cut into chunks of whole video frames (``round(chunk_s · fps)`` frames, the
    last chunk shorter) and put back in a seeded random order in which no chunk keeps its place:
    the same sounds, no longer in time with the video. (S,) numpy array of ``audio``'s dtype.

    The control for :func:`sync_correlation`: frames against their own shuffled audio should
    score near 0 (slightly below on average with few chunks, since no chunk may stay in place).
    ``seed`` is anything ``np.random.default_rng`` takes. Needs at least two chunks.
    """
    samples = _audio_array(audio)
    sample_rate = _check_positive_int(sample_rate, "sample_rate")
    fps = _check_fps(fps)
    if isinstance(chunk_s, bool) or not isinstance(chunk_s, (int, float, np.number)) or not chunk_s > 0:
        raise ValueError(f"chunk_s must be a positive number, got {chunk_s!r}")
    chunk_frames = max(1, round(chunk_s * fps))
    num_frames = int(np.ceil(len(samples) * fps / sample_rate))
    starts = _frame_bounds(sample_rate, num_frames, fps)[::chunk_frames]
    starts = starts[starts < len(samples)]
    if len(starts) < 2:
        raise ValueError(
            f"audio of {len(samples)} samples is shorter than two chunks of {chunk_frames} frames "
            f"at {fps:g} fps and {sample_rate} Hz; nothing to shuffle")
    chunks = np.split(samples, starts[1:])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(chunks))
    while np.any(order == np.arange(len(chunks))):
        order = rng.permutation(len(chunks))
    return np.concatenate([chunks[i] for i in order])
