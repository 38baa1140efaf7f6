"""Face tracking (mim/face.py: FaceTracker, smooth_boxes, frame_difference) on real faces: a crop
of scikit-image's astronaut photo pasted at known, moving positions into a plain frame."""
import numpy as np
import pytest
from PIL import Image
from skimage import data

from mim.face import (CUT_REASONS, CropBox, Face, FaceTracker, TrackStep, face_crop_box,
                      frame_difference, make_detector, smooth_boxes)

FRAME_H, FRAME_W = 320, 400
BACKGROUND = (96, 110, 124)


@pytest.fixture(scope="module")
def portrait():
    """A 200 x 200 crop of the astronaut holding her face (about 90 px wide)."""
    return data.astronaut()[30:230, 120:320].copy()


@pytest.fixture(scope="module")
def detector():
    return make_detector("dlib-hog")


def _frame(portrait, x, y):
    frame = np.empty((FRAME_H, FRAME_W, 3), np.uint8)
    frame[:] = BACKGROUND
    if x is not None:
        h, w = portrait.shape[:2]
        frame[y:y + h, x:x + w] = portrait
    return frame


@pytest.fixture(scope="module")
def face_in_portrait(portrait, detector):
    """The detected face box relative to the portrait's top-left corner, measured once."""
    faces = detector.detect(_frame(portrait, 60, 40))
    assert len(faces) == 1, faces
    x0, y0, x1, y1 = faces[0].box
    return (x0 - 60, y0 - 40, x1 - 60, y1 - 40)


def _expected_box(face_in_portrait, x, y):
    x0, y0, x1, y1 = face_in_portrait
    return face_crop_box((x0 + x, y0 + y, x1 + x, y1 + y))


def _centre(box):
    return np.array([box.x0 + box.size / 2, box.y0 + box.size / 2])


def test_the_tracked_box_follows_a_moving_face(portrait, detector, face_in_portrait):
    tracker = FaceTracker(detector, detect_every=4, smoothing=0.5)
    path = [(10 + 3 * t, 20 + t) for t in range(40)]
    steps = [tracker.update(_frame(portrait, x, y)) for x, y in path]
    assert all(s.cut_reason is None and s.box is not None for s in steps)
    assert [t for t, s in enumerate(steps) if s.detected] == list(range(0, 40, 4))
    for t, (step, (x, y)) in enumerate(zip(steps, path)):
        expected = _expected_box(face_in_portrait, x, y)
        error = np.linalg.norm(_centre(step.box) - _centre(expected))
        # causal lag: about 3.2 px/frame x (0.5/0.5 + 3/2) = 8 px, plus the detector's jitter
        assert error < 0.1 * expected.size, (t, step.box, expected)
        assert abs(step.box.size / expected.size - 1) < 0.1, (t, step.box, expected)
    # with the face standing still the box converges onto the face's own crop square
    still = [tracker.update(_frame(portrait, *path[-1])) for _ in range(12)]
    expected = _expected_box(face_in_portrait, *path[-1])
    assert np.linalg.norm(_centre(still[-1].box) - _centre(expected)) < 0.04 * expected.size


def test_an_empty_stretch_ends_the_track_as_lost_and_trims_the_unconfirmed_frames(
        portrait, detector):
    # cut_threshold=1 turns shot-change detection off, so the vanishing face is a loss
    tracker = FaceTracker(detector, detect_every=3, max_missed=2, cut_threshold=1.0)
    steps = [tracker.update(_frame(portrait, 50, 40) if t < 10 else _frame(portrait, None, None))
             for t in range(22)]
    # detections at 0, 3, 6, 9 find the face; 12 misses (box kept), 15 misses again: lost
    assert all(s.box is not None and s.cut_reason is None for s in steps[:15])
    assert steps[15].cut_reason == "lost" and steps[15].box is None
    assert steps[15].trim == 5                   # frames 10-14 came after the last detection (9)
    assert all(s.box is None and s.cut_reason is None for s in steps[16:])
    assert not tracker.tracking


def test_a_sudden_jump_cuts_the_track_and_starts_one_at_the_new_place(
        portrait, detector, face_in_portrait):
    tracker = FaceTracker(detector, detect_every=4, max_jump=0.5, cut_threshold=1.0)
    steps = [tracker.update(_frame(portrait, 10, 20) if t < 8 else _frame(portrait, 190, 110))
             for t in range(10)]
    assert all(s.cut_reason is None for s in steps[:8])
    jump = steps[8]
    assert jump.cut_reason == "jump" and jump.detected and jump.trim == 3   # frames 5, 6, 7
    expected = _expected_box(face_in_portrait, 190, 110)
    assert np.linalg.norm(_centre(jump.box) - _centre(expected)) < 0.05 * expected.size
    assert steps[9].cut_reason is None and steps[9].box is not None


def test_a_shot_change_cuts_the_track_and_detects_at_once(portrait, detector):
    other = np.asarray(Image.fromarray(data.astronaut()).resize((FRAME_W, FRAME_H)))
    tracker = FaceTracker(detector, detect_every=5)
    steps = [tracker.update(_frame(portrait, 30, 30) if t < 7 else other) for t in range(9)]
    assert all(s.cut_reason is None for s in steps[:7])
    cut = steps[7]                               # off the detection schedule (0, 5, 10)
    assert cut.cut_reason == "cut" and cut.trim == 0 and cut.detected
    faces = detector.detect(other)
    assert cut.face.box == faces[0].box
    assert cut.box == face_crop_box(faces[0].box)
    assert steps[8].cut_reason is None and not steps[8].detected


class _Scripted:
    """A detector answering from a list, one answer per call."""
    name = "scripted"

    def __init__(self, answers):
        self.answers, self.calls = list(answers), 0

    def detect(self, image):
        self.calls += 1
        return self.answers.pop(0)


def test_the_track_keeps_the_nearest_face_not_the_largest():
    small = Face((100, 100, 140, 140), 1.0)
    big = Face((10, 10, 90, 90), 1.0)
    moved = Face((106, 104, 146, 144), 1.0)
    detector = _Scripted([[small], [big, moved]])
    tracker = FaceTracker(detector, detect_every=2, smoothing=0.0)
    frame = np.zeros((200, 200, 3), np.uint8)
    first, second, third = (tracker.update(frame) for _ in range(3))
    assert detector.calls == 2
    assert first.face == small and first.box == face_crop_box(small.box)
    assert second.face == small and not second.detected and second.box == first.box
    assert third.face == moved and third.detected and third.box == face_crop_box(moved.box)


def test_smoothing_is_exponential_per_frame():
    a, b = Face((0, 0, 40, 40), 1.0), Face((20, 0, 60, 40), 1.0)
    tracker = FaceTracker(_Scripted([[a], [b]]), detect_every=1, smoothing=0.75)
    frame = np.zeros((100, 100, 3), np.uint8)
    tracker.update(frame)
    step = tracker.update(frame)
    start, target = face_crop_box(a.box), face_crop_box(b.box)
    assert step.box.x0 == pytest.approx(0.75 * start.x0 + 0.25 * target.x0)
    assert step.box.size == pytest.approx(start.size)


def test_a_frame_of_another_size_is_a_shot_change():
    tracker = FaceTracker(_Scripted([[Face((10, 10, 50, 50), 1.0)]] * 2), detect_every=10)
    tracker.update(np.zeros((100, 100, 3), np.uint8))
    step = tracker.update(np.zeros((100, 120, 3), np.uint8))
    assert step.cut_reason == "cut" and step.detected


def test_smooth_boxes_has_no_lag_on_steady_motion_and_damps_jitter():
    rng = np.random.default_rng(0)
    steady = [CropBox(2.0 * t, 1.0 * t, 100.0) for t in range(60)]
    smoothed = smooth_boxes(steady, 0.6)
    for box, truth in zip(smoothed[15:45], steady[15:45]):
        assert box.x0 == pytest.approx(truth.x0, abs=0.01) and box.y0 == pytest.approx(truth.y0, abs=0.01)
    noisy = [CropBox(50 + rng.normal(0, 4), 50 + rng.normal(0, 4), 100 + rng.normal(0, 4)) for _ in range(200)]
    out = smooth_boxes(noisy, 0.6)
    assert np.std([b.x0 for b in out]) < 0.6 * np.std([b.x0 for b in noisy])
    assert smooth_boxes([], 0.5) == [] and smooth_boxes(steady[:1], 0.5) == steady[:1]


def test_frame_difference_sees_cuts_not_small_motion(portrait):
    a, b = _frame(portrait, 40, 40), _frame(portrait, 43, 41)
    other = np.asarray(Image.fromarray(data.astronaut()).resize((FRAME_W, FRAME_H)))
    assert frame_difference(a, a) == 0.0
    assert frame_difference(a, b) < 0.05
    assert frame_difference(a, other) > 0.12


@pytest.mark.parametrize("option, value, words", [
    ("detect_every", 0, "detect_every"), ("max_missed", 1.5, "max_missed"),
    ("smoothing", 1.0, "smoothing"), ("max_jump", 0, "max_jump"),
    ("cut_threshold", 0, "cut_threshold"), ("crop_scale", -1, "crop_scale")])
def test_bad_options_are_named(option, value, words):
    with pytest.raises(ValueError, match=words):
        FaceTracker(_Scripted([]), **{option: value})


def test_bad_detector_and_frames_are_named():
    with pytest.raises(TypeError, match="detector"):
        FaceTracker(object())
    tracker = FaceTracker(_Scripted([]))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        tracker.update(np.zeros((10, 10), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        tracker.update(np.zeros((10, 10, 3), np.float32))
    assert set(CUT_REASONS) == {"lost", "jump", "cut"} and TrackStep(None).trim == 0
