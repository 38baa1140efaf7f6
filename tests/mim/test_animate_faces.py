"""mim animate on real photos (issue 19): the face is found in a photo of any size, a square
around it is animated, and each frame is pasted back, so the video has the photo's size and the
photo's own pixels away from the face. The face is scikit-image's astronaut (NASA, public
domain), composed off-centre into a 900x600 picture."""
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from mim.animate import Animator
from mim.cli import main
from mim.data import speech_like_audio
from mim.io import read_image, read_video, write_video, write_wav
from mim.portrait import NoFaceError, frame_portrait, square_resize

RATE = 16000


def _compose(width, height, placements):
    """A gradient canvas with the astronaut photo resized to each (x, y, side) in ``placements``."""
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = np.linspace(30, 200, width)[None, :, None].astype(np.uint8)
    astronaut = Image.fromarray(data.astronaut())
    for x, y, side in placements:
        picture = np.asarray(astronaut.resize((side, side), Image.Resampling.BICUBIC))
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + side, width), min(y + side, height)
        canvas[y0:y1, x0:x1] = picture[y0 - y:y1 - y, x0 - x:x1 - x]
    return canvas


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_stage2):
    root = tmp_path_factory.mktemp("faces")
    stage2 = str(root / "stage2.safetensors")
    tiny_stage2(stage2, wake_zero_heads=True)
    Image.fromarray(_compose(900, 600, [(350, 40, 512)])).save(root / "portrait900.png")
    # two faces: the full photo (face about 90 px) and a half-size copy (about 45 px)
    Image.fromarray(_compose(900, 560, [(0, 20, 512), (600, 150, 256)])).save(root / "two.png")
    # a face at the top-left corner: the crop square leaves the picture
    Image.fromarray(_compose(401, 301, [(-170, -60, 512)])).save(root / "corner.png")
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(root / "blank.png")
    speech, _ = speech_like_audio(0.4, seed=3)
    write_wav(str(root / "speech.wav"), speech, RATE)
    return {"root": root, "stage2": stage2, "speech": speech}


@pytest.fixture(scope="module")
def animator(media):
    return Animator.from_pretrained(media["stage2"], device="cpu", backend="torch")


def _outside(box, height, width, margin):
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((xs < box.x0 - margin) | (xs >= box.x0 + box.size + margin)
            | (ys < box.y0 - margin) | (ys >= box.y0 + box.size + margin))


def test_frames_have_the_photo_size_and_its_pixels_away_from_the_face(media, animator):
    image = read_image(media["root"] / "portrait900.png")
    framing = animator.frame(image)
    box = framing.box
    face_x0, face_y0, face_x1, face_y1 = framing.faces[0].box
    assert 350 + 512 * 0.25 < (face_x0 + face_x1) / 2 < 350 + 512 * 0.5     # the astronaut's face
    frames = animator.animate(image, media["speech"], seed=0)
    assert frames.shape == (10, 3, 600, 900)
    outside = _outside(box, 600, 900, margin=1)
    assert outside.float().mean() > 0.9
    assert torch.equal(frames[:, :, outside], image[None][:, :, outside].expand(10, -1, -1))
    inside = ~_outside(box, 600, 900, margin=-0.2 * box.size)   # the square's core: the model's
    assert (frames[:, :, inside] - image[None][:, :, inside]).abs().mean() > 0.02


def test_cli_writes_a_900x600_video_equal_to_the_photo_away_from_the_face(media, tmp_path):
    out = tmp_path / "talking.mp4"
    assert main(["animate", "--image", str(media["root"] / "portrait900.png"), "--audio",
                 str(media["root"] / "speech.wav"), "--checkpoint", media["stage2"], "--out", str(out),
                 "--device", "cpu", "--backend", "torch", "--no-progress"]) == 0
    video, fps = read_video(out)
    image = read_image(media["root"] / "portrait900.png")
    assert video.shape == (10, 3, 600, 900) and fps == 25.0
    # codec noise: the photo itself, encoded as a still video by the same writer
    still = tmp_path / "still.mp4"
    write_video(still, [image] * 10, fps=25)
    noise = (read_video(still)[0] - image).abs()
    box = frame_portrait(image, 64).box
    outside = _outside(box, 600, 900, margin=16)       # a macroblock clear of the square
    error = (video - image).abs()[:, :, outside]
    reference = noise[:, :, outside]
    assert error.mean() < 1.5 * reference.mean() + 1e-3, (error.mean(), reference.mean())
    assert torch.quantile(error.flatten()[::7], 0.999) < torch.quantile(reference.flatten()[::7], 0.999) + 0.03


def test_list_faces_and_face_choice(media, animator, capsys, tmp_path):
    two = media["root"] / "two.png"
    assert main(["animate", "--image", str(two), "--list-faces"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"{two}: 900x560" and len(lines) == 3
    assert lines[1].startswith("face 0: box x ") and lines[2].startswith("face 1: box x ")
    image = read_image(two)
    large, small = animator.frame(image, face=0), animator.frame(image, face=1)
    assert large.box.size > 1.6 * small.box.size
    assert large.box.x0 + large.box.size < 600 < small.box.x0          # left photo, then right one
    out = tmp_path / "second.mp4"
    assert main(["animate", "--image", str(two), "--face", "1", "--audio", str(media["root"] / "speech.wav"),
                 "--checkpoint", media["stage2"], "--out", str(out), "--device", "cpu",
                 "--backend", "torch", "--no-progress"]) == 0
    video, _ = read_video(out)
    assert video.shape[-2:] == (560, 900)
    # the left face was not animated: its square is the photo's (within codec noise)
    left = ~_outside(large.box, 560, 900, margin=-8)
    assert (video[:, :, left] - image[:, left]).abs().mean() < 0.02
    assert main(["animate", "--image", str(two), "--face", "2", "--audio", str(media["root"] / "speech.wav"),
                 "--checkpoint", media["stage2"], "--out", str(tmp_path / "none.mp4"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "face 2 was asked for" in err and "2 face(s)" in err
    assert not (tmp_path / "none.mp4").exists()


def test_no_face_is_an_error_suggesting_center_crop(media, capsys, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous")
    code = main(["animate", "--image", str(media["root"] / "blank.png"), "--audio",
                 str(media["root"] / "speech.wav"), "--checkpoint", media["stage2"], "--out", str(out),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "no face found" in err and "--crop center" in err and "blank.png" in err
    assert out.read_bytes() == b"previous"
    with pytest.raises(NoFaceError, match="no face found"):
        frame_portrait(read_image(media["root"] / "blank.png"), 64)


def test_center_crop_is_the_centre_square_at_the_model_size(media, animator):
    image = read_image(media["root"] / "portrait900.png")
    framing = animator.frame(image, crop="center")
    assert framing.box is None and framing.output_size == (64, 64)
    assert torch.equal(framing.source, square_resize(image, 64))
    frames = animator.animate(image, media["speech"], seed=0, crop="center")
    # the same video as animating the centre square itself (what animate did before faces)
    assert torch.equal(frames, animator.animate(square_resize(image, 64), media["speech"], seed=0,
                                                crop="center"))
    assert frames.shape == (10, 3, 64, 64)


def test_a_face_at_the_border_is_padded(media, animator):
    image = read_image(media["root"] / "corner.png")
    framing = animator.frame(image)
    assert framing.box.x0 < 0 or framing.box.y0 < 0                   # the square leaves the picture
    frames = animator.animate(image, media["speech"], seed=0)
    assert frames.shape == (10, 3, 300, 400)                          # 401x301 rounded down to even
    assert torch.isfinite(frames).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"crop": "middle"}, "crop must be one of face, center"),
    ({"face": -1}, "face must be an int >= 0"),
])
def test_bad_framing_options_are_named(media, animator, kwargs, message):
    with pytest.raises(ValueError, match=message):
        animator.frame(read_image(media["root"] / "portrait900.png"), **kwargs)


def test_missing_audio_or_out_without_list_faces_is_named(media, capsys):
    assert main(["animate", "--image", str(media["root"] / "portrait900.png")]) == 2
    assert "--audio is required (unless --list-faces)" in capsys.readouterr().err


# -- mim reenact: the same framing for the portrait, the driving face tracked ---------------------

def _driving_frames(count, step=6):
    """The astronaut at 256 px moving right by ``step`` px a frame inside a 480x320 frame."""
    return [torch.from_numpy(_compose(480, 320, [(40 + step * i, 20, 256)])).permute(2, 0, 1).float() / 255
            for i in range(count)]


def test_reenact_pastes_back_and_tracks_the_driving_face(media, tmp_path):
    from mim.portrait import DrivingFraming
    from mim.reenact import reenact

    driving = tmp_path / "driving.mp4"
    write_video(driving, _driving_frames(8), fps=25)
    out = tmp_path / "reenacted.mp4"
    assert reenact(str(media["root"] / "portrait900.png"), str(driving), media["stage2"], str(out),
                   progress=False, detect_every=2, smoothing=0.0) == 8
    video, _ = read_video(out)
    image = read_image(media["root"] / "portrait900.png")
    assert video.shape == (8, 3, 600, 900)
    outside = _outside(frame_portrait(image, 64).box, 600, 900, margin=16)
    assert (video - image).abs()[:, :, outside].mean() < 0.01
    # the tracker's squares follow the face: 6 px a frame to the right (HOG's boxes jitter by a
    # few px from frame to frame), about the same size, the face in each crop
    framing = DrivingFraming(64, detect_every=1, smoothing=0.0)
    crops = [framing(frame) for frame in _driving_frames(5)]
    assert all(c.shape == (3, 64, 64) for c in crops)
    xs = np.array([box.x0 for box in framing.boxes])
    assert abs((xs[-1] - xs[0]) - 24) < 6 and (np.diff(xs) > 0).all(), xs
    assert np.ptp([box.size for box in framing.boxes]) < 0.1 * framing.boxes[0].size


def test_reenact_without_a_driving_face_names_the_flag(media, tmp_path, capsys):
    driving = tmp_path / "plain.mp4"
    write_video(driving, [torch.full((3, 240, 320), 0.5)] * 3, fps=25)
    code = main(["reenact", "--image", str(media["root"] / "portrait900.png"), "--driving", str(driving),
                 "--checkpoint", media["stage2"], "--out", str(tmp_path / "o.mp4"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "no face found in the first frame" in err and "--driving-crop center" in err
    assert not (tmp_path / "o.mp4").exists()
    # with the driving video's centre square it runs, pasted back into the full portrait
    assert main(["reenact", "--image", str(media["root"] / "portrait900.png"), "--driving", str(driving),
                 "--driving-crop", "center", "--checkpoint", media["stage2"], "--out", str(tmp_path / "o.mp4"),
                 "--no-progress"]) == 0
    assert read_video(tmp_path / "o.mp4")[0].shape == (3, 3, 600, 900)
