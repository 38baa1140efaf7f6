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


# Crop and paste-back.

import torch  # noqa: E402

from mim.face import CropBox, crop_square, face_crop_box, paste_back  # noqa: E402


def test_face_crop_box_is_a_square_around_the_face_moved_up():
    box = face_crop_box((100, 100, 200, 180), scale=1.7, shift_up=0.1)
    assert box.size == pytest.approx(170)
    assert (box.x0 + box.size / 2, box.y0 + box.size / 2) == pytest.approx((150, 140 - 17))
    with pytest.raises(ValueError, match="x1 > x0"):
        face_crop_box((10, 10, 5, 20))
    with pytest.raises(ValueError, match="scale"):
        face_crop_box((0, 0, 10, 10), scale=0)


def test_an_aligned_crop_is_the_image_region_and_outside_repeats_the_edge():
    image = torch.rand(3, 60, 80)
    # float32 sampling coordinates: a few 1e-6 of a pixel off the centres
    assert torch.allclose(crop_square(image, CropBox(10, 20, 32), 32), image[:, 20:52, 10:42],
                          atol=2e-5)
    corner = crop_square(image, CropBox(-8, -8, 16), 16)
    assert torch.allclose(corner[:, :8, :8], image[:, :1, :1].expand(3, 8, 8), atol=2e-5)
    # a crop at half resolution averages 2 x 2 pixels (bilinear at the shared corner)
    half = crop_square(image, CropBox(0, 0, 32), 16)
    assert torch.allclose(half, torch.nn.functional.avg_pool2d(image[None, :, :32, :32], 2)[0],
                          atol=2e-5)


def test_paste_back_keeps_everything_away_from_the_face_and_blends_smoothly():
    original = torch.zeros(3, 100, 120)
    box = CropBox(30.0, 20.0, 50.0)
    out = paste_back(original, torch.ones(3, 64, 64), box, feather=0.2)
    outside = torch.ones(100, 120, dtype=torch.bool)
    outside[20:70, 30:80] = False
    assert torch.equal(out[:, outside], original[:, outside])
    assert torch.allclose(out[:, 40:50, 50:60], torch.ones(3, 10, 10))  # the mask's flat centre
    row = out[0, 45, 30:56]  # from the box's left edge to its centre: rising 0 -> 1
    assert row[0] < 0.05 and torch.all(row[1:] >= row[:-1] - 1e-6) and row[-1] > 1 - 1e-6
    assert torch.equal(paste_back(original, torch.ones(3, 8, 8), CropBox(500, 500, 10)), original)


def test_paste_back_of_the_unchanged_crop_gives_the_original():
    original = torch.rand(3, 90, 70)
    box = CropBox(5.0, 12.0, 48.0)
    restored = paste_back(original, crop_square(original, box, 48), box)
    assert torch.allclose(restored, original, atol=2e-5)


def test_paste_back_of_a_box_reaching_beyond_the_image():
    original = torch.rand(3, 40, 40)
    box = CropBox(-10.0, -10.0, 30.0)
    out = paste_back(original, torch.full((3, 30, 30), 0.5), box)
    assert out.shape == original.shape
    assert torch.equal(out[:, 25:, :], original[:, 25:, :])
    assert torch.allclose(out[:, 2:8, 2:8], torch.full((3, 6, 6), 0.5))


@pytest.mark.parametrize("args,error,words", [
    ((torch.zeros(3, 10), torch.zeros(3, 4, 4)), ValueError, "original"),
    ((torch.zeros(3, 10, 10, dtype=torch.uint8), torch.zeros(3, 4, 4)), TypeError, "floating"),
    ((torch.zeros(3, 10, 10), torch.zeros(3, 4, 5)), ValueError, "square"),
    ((torch.zeros(3, 10, 10), np.zeros((3, 4, 4))), ValueError, "crop"),
])
def test_paste_back_refuses_bad_frames_by_name(args, error, words):
    with pytest.raises(error, match=words):
        paste_back(*args, CropBox(0, 0, 4))
    with pytest.raises(ValueError, match="feather"):
        paste_back(torch.zeros(3, 10, 10), torch.zeros(3, 4, 4), CropBox(0, 0, 4), feather=0)
