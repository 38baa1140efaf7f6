"""Head pose (mim/headpose.py): known rotations of the 3-D face model, seen through a perspective
camera, are recovered (to 1e-6° without noise; mean error under 0.75° and every angle within
2.5° with 0.5 px landmark noise on a face about 80 px wide); the sign convention of
mim.data.synthetic; the Headpose error of landmark sequences from known poses equals the known
mean difference; frames without a face are counted and left out; bad inputs are named; and a
dlib shape predictor trained here on scikit-image's astronaut photo (NASA, public domain) runs
the file-loading path end to end."""
import itertools

import numpy as np
import pytest
import torch

from mim.headpose import (FACE_MODEL, FACE_MODEL_INDICES, NUM_LANDMARKS, PREDICTOR_FILE,
                          DlibLandmarker, NoFaceError, euler_from_rotation, head_poses,
                          headpose_error, pose_error, project_face_model, rotation_from_euler,
                          solve_head_pose)

SIZE = (256, 256)
DISTANCE = 300.0  # mm: the model face is about 80 px wide in a 256 px frame (focal 256 px)


def test_euler_angles_round_trip_through_the_rotation():
    rng = np.random.default_rng(1)
    for yaw, pitch, roll in rng.uniform([-170, -85, -170], [170, 85, 170], (20, 3)):
        rotation = rotation_from_euler(yaw, pitch, roll)
        assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-12)
        assert np.allclose(euler_from_rotation(rotation), (yaw, pitch, roll), atol=1e-9)


@pytest.mark.parametrize("yaw,pitch,roll", [c for c in itertools.product((-40, 0, 25, 40), (-40, 0, 30), (-40, 0, 40))])
def test_known_rotations_are_recovered_without_noise(yaw, pitch, roll):
    offset = (0.1 * yaw, -0.2 * roll)  # off the optical axis too, where perspective differs most
    landmarks = project_face_model(yaw, pitch, roll, SIZE, distance=DISTANCE, offset=offset)
    assert np.allclose(solve_head_pose(landmarks, SIZE), (yaw, pitch, roll), atol=1e-6)


def test_a_given_focal_length_is_used():
    landmarks = project_face_model(20, -15, 10, (320, 240), focal=500.0, distance=450.0, offset=(30, -20))
    assert np.allclose(solve_head_pose(landmarks, (320, 240), focal=500.0), (20, -15, 10), atol=1e-6)
    # the default focal max(w, h) = 320 is another camera: the same pixels read as another pose
    assert not np.allclose(solve_head_pose(landmarks, (320, 240)), (20, -15, 10), atol=0.5)


def test_known_rotations_are_recovered_from_noisy_landmarks():
    rng = np.random.default_rng(2)
    errors = []
    for yaw, pitch, roll in rng.uniform(-40, 40, (50, 3)):
        landmarks = project_face_model(yaw, pitch, roll, SIZE, distance=DISTANCE,
                                       offset=rng.uniform(-30, 30, 2))
        noisy = landmarks + rng.normal(0.0, 0.5, landmarks.shape)
        errors.append(np.abs(np.subtract(solve_head_pose(noisy, SIZE), (yaw, pitch, roll))))
    errors = np.array(errors)
    assert errors.mean() < 0.75 and errors.max() < 2.5, (errors.mean(0), errors.max(0))


def test_sign_convention_is_mim_data_synthetics():
    """Positive yaw moves the face's front toward image right, positive pitch moves it down,
    positive roll turns the head clockwise on screen (y grows downward)."""
    front = project_face_model(0, 0, 0, SIZE, distance=DISTANCE)
    nose_tip, left_eye_out, right_eye_out = 30, 45, 36

    def nose_from_eyes(points):
        return points[nose_tip] - (points[left_eye_out] + points[right_eye_out]) / 2

    yawed = project_face_model(25, 0, 0, SIZE, distance=DISTANCE)
    assert nose_from_eyes(yawed)[0] > nose_from_eyes(front)[0] + 5
    pitched = project_face_model(0, 25, 0, SIZE, distance=DISTANCE)
    assert nose_from_eyes(pitched)[1] > nose_from_eyes(front)[1] + 5
    rolled = project_face_model(0, 0, 25, SIZE, distance=DISTANCE)
    eye_line = rolled[left_eye_out] - rolled[right_eye_out]
    assert np.degrees(np.arctan2(eye_line[1], eye_line[0])) == pytest.approx(25.0, abs=2.0)
    for pose, points in (((25, 0, 0), yawed), ((0, 25, 0), pitched), ((0, 0, 25), rolled)):
        assert np.allclose(solve_head_pose(points, SIZE), pose, atol=1e-6)


def test_landmarks_outside_the_model_are_ignored():
    landmarks = project_face_model(-30, 10, 5, SIZE, distance=DISTANCE)
    assert np.isnan(landmarks).sum() == 2 * (NUM_LANDMARKS - len(FACE_MODEL_INDICES))
    assert FACE_MODEL.shape == (len(FACE_MODEL_INDICES), 3)
    filled = np.where(np.isnan(landmarks), 1e4, landmarks)
    assert np.allclose(solve_head_pose(filled, SIZE), (-30, 10, 5), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The Headpose error
# ---------------------------------------------------------------------------------------------

class SequenceLandmarker:
    """A landmarker for tests: a frame's top-left red value is its index into ``sequence``
    (landmark arrays, or None for a frame without a face)."""

    def __init__(self, sequence):
        self.sequence = sequence

    def __call__(self, image):
        assert image.dtype == np.uint8 and image.shape == (SIZE[1], SIZE[0], 3)
        return self.sequence[int(image[0, 0, 0])]


def _frames(first, count):
    frames = np.zeros((count, SIZE[1], SIZE[0], 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(first, first + count)
    return frames


def _sequences(rng, count):
    truth = rng.uniform(-35, 35, (count, 3))
    generated = np.clip(truth + rng.uniform(-8, 8, (count, 3)), -40, 40)
    landmarks = [project_face_model(*pose, SIZE, distance=DISTANCE) for pose in [*generated, *truth]]
    return generated, truth, landmarks


def test_headpose_error_of_known_poses_is_their_mean_difference():
    generated, truth, landmarks = _sequences(np.random.default_rng(3), 6)
    result = headpose_error(_frames(0, 6), _frames(6, 6), SequenceLandmarker(landmarks))
    expected = np.abs(generated - truth).mean(0)
    assert [result[key] for key in ("yaw", "pitch", "roll")] == pytest.approx(expected, abs=1e-6)
    assert result["headpose"] == pytest.approx(expected.mean(), abs=1e-6)
    assert result["frames"] == 6 and result["no_face_generated"] == [] and result["no_face_truth"] == []
    # the same videos as (T, 3, H, W) float tensors in [0, 1], mim.io's form
    as_tensor = [torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255 for f in (_frames(0, 6), _frames(6, 6))]
    assert headpose_error(*as_tensor, SequenceLandmarker(landmarks))["headpose"] == pytest.approx(result["headpose"])


def test_frames_without_a_face_are_counted_and_left_out():
    generated, truth, landmarks = _sequences(np.random.default_rng(4), 5)
    landmarks[1] = None        # generated frame 1
    landmarks[5 + 3] = None    # ground-truth frame 3
    result = headpose_error(_frames(0, 5), _frames(5, 5), SequenceLandmarker(landmarks))
    kept = [0, 2, 4]
    expected = np.abs(generated[kept] - truth[kept]).mean(0)
    assert [result[key] for key in ("yaw", "pitch", "roll")] == pytest.approx(expected, abs=1e-6)
    assert result["frames"] == 3 and result["no_face_generated"] == [1] and result["no_face_truth"] == [3]
    with pytest.raises(NoFaceError, match="no face found in frame 1 of generated"):
        head_poses(_frames(0, 5), SequenceLandmarker(landmarks), name="generated")
    landmarks[0] = landmarks[2] = landmarks[4] = None
    with pytest.raises(NoFaceError, match=r"no frame has a face in both videos.*generated frames \[0, 1, 2, 4\]"):
        headpose_error(_frames(0, 5), _frames(5, 5), SequenceLandmarker(landmarks))


def test_angle_differences_wrap_around():
    result = pose_error([[179.0, 10.0, -170.0]], [[-179.0, 12.0, 175.0]])
    assert (result["yaw"], result["pitch"], result["roll"]) == pytest.approx((2.0, 2.0, 15.0))


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------

def test_bad_landmarks_and_cameras_are_named():
    good = project_face_model(0, 0, 0, SIZE, distance=DISTANCE)
    with pytest.raises(ValueError, match=r"landmarks must be the \(68, 2\).*\(21, 2\)"):
        solve_head_pose(good[:21], SIZE)
    broken = good.copy()
    broken[30] = np.nan
    with pytest.raises(ValueError, match=r"landmarks \[30\]"):
        solve_head_pose(broken, SIZE)
    with pytest.raises(ValueError, match="image_size must be"):
        solve_head_pose(good, 256)
    with pytest.raises(ValueError, match="image_size must be two positive"):
        solve_head_pose(good, (256, 0))
    with pytest.raises(ValueError, match="focal must be a positive"):
        solve_head_pose(good, SIZE, focal=-1.0)
    with pytest.raises(ValueError, match="degenerate"):
        solve_head_pose(np.zeros((68, 2)), SIZE)
    with pytest.raises(ValueError, match="rotation must be a finite"):
        euler_from_rotation(np.eye(2))


def test_bad_videos_and_pose_sequences_are_named():
    landmarker = SequenceLandmarker([None])
    with pytest.raises(ValueError, match="generated and truth must have as many frames, got 2 and 3"):
        headpose_error(_frames(0, 2), _frames(0, 3), landmarker)
    with pytest.raises(ValueError, match=r"generated must be a video.*\(4, 4, 3\)"):
        headpose_error(np.zeros((4, 4, 3), np.uint8), _frames(0, 1), landmarker)
    with pytest.raises(ValueError, match="truth frame 1 must be"):
        headpose_error(_frames(0, 2), [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)], landmarker)
    with pytest.raises(ValueError, match="generated has no frames"):
        headpose_error([], [], landmarker)
    with pytest.raises(ValueError, match="missing must be"):
        head_poses(_frames(0, 1), landmarker, missing="skip")
    with pytest.raises(ValueError, match=r"truth_poses must be \(T, 3\)"):
        pose_error(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="as many frames, got 2 and 3"):
        pose_error(np.zeros((2, 3)), np.zeros((3, 3)))


def test_a_missing_or_unreadable_predictor_file_is_named(tmp_path):
    missing = tmp_path / PREDICTOR_FILE
    with pytest.raises(FileNotFoundError, match=f"headpose.*{PREDICTOR_FILE}.*{missing}"):
        DlibLandmarker(missing)
    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(b"not a shape predictor")
    with pytest.raises(ValueError, match=f"headpose.*garbage.dat.*{PREDICTOR_FILE}"):
        DlibLandmarker(garbage)


# ---------------------------------------------------------------------------------------------
# End to end through a real dlib shape predictor file
# ---------------------------------------------------------------------------------------------

def test_a_shape_predictor_file_runs_end_to_end(tmp_path):
    """A 68-point predictor trained here (a millisecond) on one image, the astronaut's face
    labelled with the face model posed at a known pose and placed on the face mim.face's
    detector finds; the rest of the 68 points on a fixed curve in the box. Saved, loaded by
    path, run on the photo: it gives back the labelled landmarks to within dlib's integer
    pixels, hence the pose within 2°; a plain frame has no face and is counted; a 5-point
    predictor is refused by name."""
    import dlib
    from skimage import data

    from mim.face import make_detector

    image = data.astronaut()
    height, width = image.shape[:2]
    detector = make_detector()
    x0, y0, x1, y1 = detector.detect(image)[0].box
    pose, distance, focal = (12.0, -6.0, 8.0), 500.0, float(max(width, height))
    # the model's origin on the ray through the box's centre, so its projection lands on the face
    offset = ((x0 + x1 - width) / 2 * distance / focal, (y0 + y1 - height) / 2 * distance / focal)
    labels = project_face_model(*pose, (width, height), distance=distance, offset=offset)
    rest = np.isnan(labels[:, 0])
    along = np.linspace(0.0, 1.0, int(rest.sum()))
    labels[rest] = np.stack([x0 + (x1 - x0) * (0.1 + 0.8 * along),
                             y0 + (y1 - y0) * (0.6 + 0.3 * np.sin(6 * along))], 1)
    box = dlib.rectangle(int(x0), int(y0), int(x1) - 1, int(y1) - 1)
    shape = dlib.full_object_detection(box, [dlib.point(int(round(x)), int(round(y))) for x, y in labels])
    options = dlib.shape_predictor_training_options()
    options.cascade_depth, options.tree_depth, options.num_trees_per_cascade_level = 4, 2, 4
    options.oversampling_amount, options.feature_pool_size, options.num_test_splits = 2, 50, 5
    options.num_threads, options.random_seed = 1, "0"
    path = tmp_path / PREDICTOR_FILE
    dlib.train_shape_predictor([image], [[shape]], options).save(str(path))

    landmarker = DlibLandmarker(path)  # on its own make_detector(), the default
    assert landmarker.detector.name == "dlib-hog"
    found = landmarker(image)
    assert found.shape == (68, 2)
    model = list(FACE_MODEL_INDICES)
    assert np.abs(found[model] - labels[model]).max() <= 1.5
    assert np.allclose(solve_head_pose(found, (width, height)), pose, atol=2.0)
    plain = np.full_like(image, 90)
    assert landmarker(plain) is None
    result = headpose_error(np.stack([image, plain]), np.stack([image, image]), landmarker)
    assert result["headpose"] == 0.0 and result["frames"] == 1
    assert result["no_face_generated"] == [1] and result["no_face_truth"] == []
    # a predictor of another layout (5 points) loads but is refused when it runs
    five = tmp_path / "five_points.dat"
    corners = dlib.full_object_detection(box, [dlib.point(int(round(x)), int(round(y))) for x, y in labels[[36, 39, 42, 45, 33]]])
    dlib.train_shape_predictor([image], [[corners]], options).save(str(five))
    with pytest.raises(ValueError, match="predicts 5 landmarks per face; headpose needs the 68-point"):
        DlibLandmarker(five, detector=detector)(image)
