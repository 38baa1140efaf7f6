"""Face detection (mim/face.py) on a real photo: scikit-image's astronaut (NASA, public domain),
512 x 512, one face whose eyes, nose and mouth lie in x 180-260, y 80-165."""
import numpy as np
import pytest
from PIL import Image
from skimage import data

from mim.face import (DEFAULT_DETECTOR, DlibHogDetector, Face, available_detectors, check_image,
                      largest_first, make_detector, register_detector,
                      unregister_detector)


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()


@pytest.fixture(scope="module")
def detector():
    return make_detector()


def _centre(face):
    x0, y0, x1, y1 = face.box
    return (x0 + x1) / 2, (y0 + y1) / 2


def test_finds_the_one_face_of_a_real_photo(astronaut, detector):
    faces = detector.detect(astronaut)
    assert len(faces) == 1, faces
    cx, cy = _centre(faces[0])
    assert 180 <= cx <= 260 and 80 <= cy <= 165, faces[0].box
    x0, y0, x1, y1 = faces[0].box
    assert 50 <= x1 - x0 <= 140 and 50 <= y1 - y0 <= 140
    assert faces[0].score > 0.3 and faces[0].landmarks is None


def test_large_photos_are_detected_scaled_down_and_boxes_come_back_in_their_pixels(astronaut):
    big = np.asarray(Image.fromarray(astronaut).resize((1536, 1536), Image.Resampling.BICUBIC))
    small_faces = DlibHogDetector(max_side=512).detect(astronaut)
    big_faces = DlibHogDetector(max_side=512).detect(big)
    assert len(big_faces) == len(small_faces) == 1
    np.testing.assert_allclose(np.array(big_faces[0].box), 3 * np.array(small_faces[0].box),
                               atol=3 * 4)


def test_several_faces_come_largest_first(astronaut, detector):
    half = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.Resampling.BOX))
    canvas = np.full((512, 768, 3), 128, np.uint8)
    canvas[:, :512] = astronaut
    canvas[128:384, 512:] = half
    faces = detector.detect(canvas)
    assert len(faces) == 2, faces
    assert faces[0].area > faces[1].area
    assert _centre(faces[0])[0] < 512 < _centre(faces[1])[0]


def test_no_face_in_a_plain_or_noisy_image(detector):
    assert detector.detect(np.full((200, 300, 3), 90, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detector.detect(noise) == []


@pytest.mark.parametrize("bad,error,words", [
    ([[1, 2, 3]], TypeError, "numpy array"),
    (np.zeros((10, 10), np.uint8), ValueError, "(H, W, 3)"),
    (np.zeros((10, 10, 4), np.uint8), ValueError, "(H, W, 3)"),
    (np.zeros((10, 10, 3), np.float32), TypeError, "uint8"),
    (np.zeros((0, 10, 3), np.uint8), ValueError, "empty"),
])
def test_bad_images_are_refused_by_name(bad, error, words, detector):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        detector.detect(bad)
    with pytest.raises(error):
        check_image(bad)


def test_options_are_checked():
    with pytest.raises(ValueError, match="upsample"):
        DlibHogDetector(upsample=5)
    with pytest.raises(ValueError, match="max_side"):
        DlibHogDetector(max_side=10)


def test_a_second_detector_plugs_in_by_name():
    class Fixed:
        name = "fixed-for-test"

        def __init__(self, box=(1.0, 2.0, 3.0, 4.0)):
            self.box = box

        def detect(self, image):
            check_image(image)
            return largest_first([Face(box=self.box, score=1.0),
                                  Face(box=(0.0, 0.0, 10.0, 10.0), score=0.5)])

    assert DEFAULT_DETECTOR == "dlib-hog" and "dlib-hog" in available_detectors()
    with pytest.raises(ValueError, match="unknown face detector 'fixed-for-test'.*dlib-hog"):
        make_detector("fixed-for-test")
    register_detector("fixed-for-test", Fixed)
    try:
        found = make_detector("fixed-for-test", box=(5.0, 5.0, 6.0, 6.0)).detect(
            np.zeros((8, 8, 3), np.uint8))
        assert [f.box for f in found] == [(0.0, 0.0, 10.0, 10.0), (5.0, 5.0, 6.0, 6.0)]
        with pytest.raises(ValueError, match="already registered"):
            register_detector("fixed-for-test", Fixed)
    finally:
        unregister_detector("fixed-for-test")
    assert "fixed-for-test" not in available_detectors()
    with pytest.raises(ValueError, match="cannot be removed"):
        unregister_detector("dlib-hog")
