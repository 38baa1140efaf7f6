"""mim.io: image, video and audio round trips, mode conversion, errors, atomic writes."""
import os
import stat

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from mim.io import (MediaError, atomic_output, has_audio, read_audio, read_image, read_video, write_image,
                    write_video, write_wav)


def smooth_frames(num_frames, height=64, width=64):
    """Soft moving blobs on a gradient: smooth content that H.264 keeps well."""
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    frames = []
    for t in range(num_frames):
        cx, cy = 0.3 + 0.02 * t, 0.5 + 0.1 * np.sin(t / 3)
        blob = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.03)
        frames.append(torch.stack([0.2 + 0.6 * blob, 0.3 + 0.4 * x.expand(height, width), 0.7 - 0.5 * blob]))
    return torch.stack(frames)


def listing(directory):
    return sorted(p.name for p in directory.iterdir())


def decode_audio_track(path):
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.sample_rate
        samples = sum(frame.samples for frame in container.decode(stream))
    return samples, rate


# ------------------------------------------------------------------------------ atomic_output


def test_atomic_output_writes_through_hidden_temp_with_same_suffix(tmp_path):
    destination = tmp_path / "model.ckpt"
    with atomic_output(destination) as temp:
        assert temp.parent == tmp_path
        assert temp.name.startswith(".model.ckpt.tmp-") and temp.suffix == ".ckpt"
        assert temp.exists() and not destination.exists()
        temp.write_bytes(b"new")
    assert destination.read_bytes() == b"new"
    assert listing(tmp_path) == ["model.ckpt"]


def test_atomic_output_failure_keeps_destination_and_removes_temp(tmp_path):
    destination = tmp_path / "model.ckpt"
    destination.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_output(destination) as temp:
            temp.write_bytes(b"half written")
            raise RuntimeError("disk on fire")
    assert destination.read_bytes() == b"old"
    assert listing(tmp_path) == ["model.ckpt"]


def test_atomic_output_creates_missing_directory(tmp_path):
    destination = tmp_path / "a" / "b" / "x.bin"
    with atomic_output(destination) as temp:
        temp.write_bytes(b"1")
    assert destination.read_bytes() == b"1"


# ------------------------------------------------------------------------------------- images


def test_png_round_trip_is_exact_to_8_bits(tmp_path):
    image = torch.rand(3, 37, 53)
    write_image(tmp_path / "a.png", image)
    back = read_image(tmp_path / "a.png")
    assert back.dtype == torch.float32 and back.shape == (3, 37, 53)
    assert (back - image).abs().max() <= 0.5 / 255 + 1e-6


def test_jpeg_round_trip_is_close(tmp_path):
    image = smooth_frames(1)[0]
    write_image(tmp_path / "a.jpg", image)
    assert (read_image(tmp_path / "a.jpg") - image).abs().mean() < 0.01


@pytest.mark.parametrize("size, expected", [(32, (32, 32)), ((20, 48), (20, 48))])
def test_read_image_resizes_to_int_or_pair(tmp_path, size, expected):
    image = smooth_frames(1, 40, 60)[0]
    write_image(tmp_path / "a.png", image)
    back = read_image(tmp_path / "a.png", size=size)
    assert back.shape == (3, *expected)
    assert back.min() >= 0 and back.max() <= 1
    reference = torch.nn.functional.interpolate(image[None], size=expected, mode="bilinear",
                                                antialias=True)[0]
    assert (back - reference).abs().mean() < 0.01


def test_gray_16bit_palette_and_cmyk_become_rgb(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(gray, mode="L").save(tmp_path / "l.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "i16.png")
    Image.fromarray(gray, mode="L").convert("P").save(tmp_path / "p.png")
    Image.fromarray(gray, mode="L").convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    expected = torch.from_numpy(gray / 255.0).float()
    for name, tolerance in [("l.png", 1e-6), ("i16.png", 1e-6), ("p.png", 1e-6), ("cmyk.jpg", 0.03)]:
        image = read_image(tmp_path / name)
        assert image.shape == (3, 6, 8), name
        assert (image - expected).abs().max() <= tolerance, name


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:2, :, 3] = 255  # opaque rows
    rgba[2:, :2, 3] = 0  # transparent
    rgba[2:, 2:, 3] = 102  # 40 % opaque
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]], mode="LA").save(tmp_path / "la.png")
    image = read_image(tmp_path / "rgba.png")
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(image[:, 3, 0], torch.ones(3))
    assert torch.allclose(image[:, 3, 3], torch.tensor([1.0, 0.6, 0.6]), atol=1e-6)
    gray = read_image(tmp_path / "la.png")
    assert torch.allclose(gray[:, 3, 0], torch.ones(3)) and torch.allclose(gray[:, 0, 0], torch.ones(3))


def test_palette_transparency_is_composited(tmp_path):
    palette_image = Image.new("P", (4, 4), 0)
    palette_image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette_image.paste(1, (0, 0, 2, 4))
    palette_image.info["transparency"] = 0
    palette_image.save(tmp_path / "p.png", transparency=0)
    image = read_image(tmp_path / "p.png")
    assert torch.allclose(image[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(image[:, 0, 3], torch.ones(3))


def test_read_image_errors_name_the_path(tmp_path):
    with pytest.raises(MediaError, match="missing.png: no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(MediaError, match="text.png: not an image"):
        read_image(tmp_path / "text.png")
    write_image(tmp_path / "full.png", torch.rand(3, 64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="cut.png: truncated or corrupt"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(MediaError, match="not a regular file"):
        read_image(tmp_path)


def test_write_image_rejects_bad_input_without_creating_a_file(tmp_path):
    with pytest.raises(ValueError, match=r"image must have shape \(3, H, W\)"):
        write_image(tmp_path / "a.png", torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="image contains NaN"):
        write_image(tmp_path / "a.png", torch.full((3, 8, 8), float("nan")))
    with pytest.raises(TypeError, match="image must be a floating-point tensor"):
        write_image(tmp_path / "a.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="suffix must be one of"):
        write_image(tmp_path / "a.bmp", torch.rand(3, 8, 8))
    assert listing(tmp_path) == []


def test_read_image_rejects_bad_size(tmp_path):
    write_image(tmp_path / "a.png", torch.rand(3, 8, 8))
    for size in (0, (8,), (8, -1), 2.5):
        with pytest.raises(ValueError, match="size must be"):
            read_image(tmp_path / "a.png", size=size)


# -------------------------------------------------------------------------------------- video


def test_video_round_trip_frames_fps_and_audio(tmp_path):
    frames = smooth_frames(12)
    audio = (0.3 * np.sin(2 * np.pi * 300 * np.arange(7680) / 16000)).astype(np.float32)  # 0.48 s
    write_video(tmp_path / "clip.mp4", frames, fps=25, audio=audio, sample_rate=16000)
    back, fps = read_video(tmp_path / "clip.mp4")
    assert back.shape == frames.shape and back.dtype == torch.float32
    assert fps == 25.0
    assert (back - frames).abs().mean() < 0.03
    samples, rate = decode_audio_track(tmp_path / "clip.mp4")
    assert rate == 16000
    assert 7680 <= samples <= 7680 + 1024  # AAC pads the last 1024-sample frame
    decoded = read_audio(tmp_path / "clip.mp4", 16000)[:7680]
    assert np.corrcoef(decoded[200:-200], audio[200:-200])[0, 1] > 0.99
    assert has_audio(tmp_path / "clip.mp4")


def test_video_from_an_iterable_matches_a_tensor_and_keeps_fps(tmp_path):
    frames = smooth_frames(6)
    write_video(tmp_path / "stream.mp4", (frame for frame in frames), fps=12.5)
    back, fps = read_video(tmp_path / "stream.mp4")
    assert fps == 12.5 and back.shape == frames.shape
    assert (back - frames).abs().mean() < 0.03
    assert not has_audio(tmp_path / "stream.mp4")
    with pytest.raises(MediaError, match="stream.mp4: no audio stream"):
        read_audio(tmp_path / "stream.mp4")


def test_read_video_size_and_max_frames(tmp_path):
    frames = smooth_frames(8)
    write_video(tmp_path / "clip.mp4", frames)
    back, _ = read_video(tmp_path / "clip.mp4", size=(32, 48), max_frames=3)
    assert back.shape == (3, 3, 32, 48)
    expected = torch.nn.functional.interpolate(frames[:3], size=(32, 48), mode="bilinear", antialias=True)
    assert (back - expected).abs().mean() < 0.03
    with pytest.raises(ValueError, match="max_frames must be"):
        read_video(tmp_path / "clip.mp4", max_frames=0)


@pytest.mark.parametrize("frames, message", [
    (torch.rand(4, 2, 16, 16), r"frames must have shape \(T, 3, H, W\)"),
    (torch.full((4, 3, 16, 16), float("nan")), "frames contains NaN"),
    (torch.rand(4, 3, 15, 16), "even height and width"),
    (torch.rand(0, 3, 16, 16), "frames is empty"),
    (iter([]), "frames is empty"),
    ([torch.rand(2, 16, 16)], r"frames\[0\] must have shape \(3, H, W\)"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "frames\\[0\\] must be a floating-point tensor"),
])
def test_write_video_rejects_bad_frames_before_creating_a_file(tmp_path, frames, message):
    with pytest.raises((ValueError, TypeError), match=message):
        write_video(tmp_path / "bad.mp4", frames)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"fps": 0}, "fps must be a positive number"),
    ({"crf": 60}, r"crf must be an int in \[0, 51\]"),
    ({"audio": np.zeros((2, 100), np.float32)}, r"audio must be a 1-D"),
    ({"audio": np.array([0.0, np.nan], np.float32)}, "audio contains NaN"),
    ({"audio": np.zeros(100, np.float32), "sample_rate": 0}, "sample_rate must be a positive int"),
])
def test_write_video_rejects_bad_arguments_before_creating_a_file(tmp_path, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        write_video(tmp_path / "bad.mp4", torch.rand(2, 3, 16, 16), **kwargs)
    assert listing(tmp_path) == []


def test_write_video_failing_midway_leaves_destination_untouched(tmp_path):
    destination = tmp_path / "clip.mp4"
    destination.write_bytes(b"previous video")

    def frames_then_crash():
        for index, frame in enumerate(smooth_frames(6)):
            if index == 3:
                raise RuntimeError("renderer crashed")
            yield frame

    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_video(destination, frames_then_crash(), audio=np.zeros(4000, np.float32))
    assert destination.read_bytes() == b"previous video"
    assert listing(tmp_path) == ["clip.mp4"]

    later_nan = list(smooth_frames(5))
    later_nan[3] = torch.full_like(later_nan[3], float("nan"))
    with pytest.raises(ValueError, match=r"frames\[3\] contains NaN"):
        write_video(destination, iter(later_nan))
    later_small = list(smooth_frames(5))
    later_small[2] = later_small[2][:, :32]
    with pytest.raises(ValueError, match=r"frames\[2\] is 32x64, frames\[0\] is 64x64"):
        write_video(destination, iter(later_small))
    assert destination.read_bytes() == b"previous video"
    assert listing(tmp_path) == ["clip.mp4"]


def test_read_video_errors_name_the_path(tmp_path):
    with pytest.raises(MediaError, match="none.mp4: no such file"):
        read_video(tmp_path / "none.mp4")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(MediaError, match="garbage.mp4: cannot decode video"):
        read_video(tmp_path / "garbage.mp4")
    write_video(tmp_path / "good.mp4", smooth_frames(10))
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaError, match="cut.mp4"):
        read_video(tmp_path / "cut.mp4")
    write_wav(tmp_path / "voice.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(MediaError, match="voice.wav: no video stream"):
        read_video(tmp_path / "voice.wav")


# -------------------------------------------------------------------------------------- audio


def test_wav_round_trip_pcm16_and_float(tmp_path):
    audio = np.random.default_rng(0).uniform(-0.9, 0.9, 1234).astype(np.float32)
    write_wav(tmp_path / "pcm.wav", audio, 16000)
    write_wav(tmp_path / "float.wav", audio, 16000, subtype="FLOAT")
    assert soundfile.info(str(tmp_path / "pcm.wav")).subtype == "PCM_16"
    pcm = read_audio(tmp_path / "pcm.wav", 16000)
    assert pcm.dtype == np.float32 and pcm.shape == (1234,)
    assert np.abs(pcm - audio).max() <= 1 / 32768 + 1e-7
    assert np.array_equal(read_audio(tmp_path / "float.wav", 16000), audio)


def test_write_wav_clips_pcm_and_rejects_bad_audio(tmp_path):
    write_wav(tmp_path / "loud.wav", np.array([2.0, -3.0, 0.5], np.float32), 8000)
    assert np.allclose(read_audio(tmp_path / "loud.wav", 8000), [32767 / 32768, -1.0, 0.5])
    with pytest.raises(ValueError, match="audio must be a 1-D"):
        write_wav(tmp_path / "a.wav", np.zeros((100, 2), np.float32), 16000)
    with pytest.raises(ValueError, match="audio contains NaN"):
        write_wav(tmp_path / "a.wav", np.array([np.inf], np.float32), 16000)
    with pytest.raises(TypeError, match="audio must be a float array"):
        write_wav(tmp_path / "a.wav", np.zeros(10, np.int16), 16000)
    with pytest.raises(ValueError, match="subtype must be one of"):
        write_wav(tmp_path / "a.wav", np.zeros(10, np.float32), 16000, subtype="PCM_24")
    assert listing(tmp_path) == ["loud.wav"]


def test_stereo_is_averaged_and_resampled(tmp_path):
    rate = 44100
    t = np.arange(rate) / rate  # 1 s
    left = 0.6 * np.sin(2 * np.pi * 440 * t)
    right = 0.2 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(str(tmp_path / "stereo.flac"), np.stack([left, right], axis=1), rate)
    mono = read_audio(tmp_path / "stereo.flac", 16000)
    assert mono.dtype == np.float32 and abs(len(mono) - 16000) <= 1
    expected = 0.4 * np.sin(2 * np.pi * 440 * np.arange(len(mono)) / 16000)
    assert np.abs(mono - expected)[200:-200].max() < 1e-3


def test_compressed_audio_through_pyav(tmp_path):
    rate = 22050
    tone = (0.5 * np.sin(2 * np.pi * 220 * np.arange(rate // 2) / rate)).astype(np.float32)
    with av.open(str(tmp_path / "tone.m4a"), "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    mono = read_audio(tmp_path / "tone.m4a", 16000)
    assert abs(len(mono) - 8000) <= 1024 * 16000 / rate + 1
    expected = 0.5 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)
    assert np.corrcoef(mono[500:7500], expected[500:7500])[0, 1] > 0.99


def test_zero_length_audio_is_an_empty_array(tmp_path):
    write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    audio = read_audio(tmp_path / "empty.wav", 24000)
    assert audio.dtype == np.float32 and audio.shape == (0,)


def test_read_audio_errors_name_the_path(tmp_path):
    with pytest.raises(MediaError, match="gone.wav: no such file"):
        read_audio(tmp_path / "gone.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF....junk" * 10)
    with pytest.raises(MediaError, match="junk.wav: cannot read audio"):
        read_audio(tmp_path / "junk.wav")
    (tmp_path / "junk.mp3").write_bytes(b"\x00junk" * 50)
    with pytest.raises(MediaError, match="junk.mp3"):
        read_audio(tmp_path / "junk.mp3")
    write_wav(tmp_path / "ok.wav", np.zeros(10, np.float32), 16000)
    with pytest.raises(ValueError, match="sample_rate must be a positive int"):
        read_audio(tmp_path / "ok.wav", sample_rate=16000.5)


def test_atomic_output_files_get_the_umask_mode_even_if_the_writer_recreates_them(tmp_path):
    """safetensors recreates the file it writes with mode 0o600; the result follows the umask
    like a plain open() would (0o644 under umask 022)."""
    previous = os.umask(0o022)
    try:
        target = tmp_path / "w.safetensors"
        with atomic_output(target) as temp:
            os.unlink(temp)
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
        from safetensors.torch import save_file
        with atomic_output(tmp_path / "real.safetensors") as temp:
            save_file({"x": torch.zeros(2)}, str(temp))
        assert stat.S_IMODE(os.stat(tmp_path / "real.safetensors").st_mode) == 0o644
    finally:
        os.umask(previous)
