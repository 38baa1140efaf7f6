"""mim.data.folder: a folder of mp4 clips and frame folders as a dataset."""
import numpy as np
import pytest
import torch

from mim.data import VideoFolderDataset, make_clip, write_clip
from mim.io import MediaError, write_image, write_video, write_wav


@pytest.fixture(scope="module")
def clips():
    return [make_clip(seed, num_frames=10, size=64) for seed in range(4)]


@pytest.fixture(scope="module")
def root(tmp_path_factory, clips):
    """a.mp4 (audio track), b.mp4 + b.wav, c.mp4 (no audio), d/ (png + wav + fps.txt), e/ (jpg)."""
    root = tmp_path_factory.mktemp("clips")
    write_clip(clips[0], root / "a.mp4")
    write_video(root / "b.mp4", clips[1]["frames"])
    write_wav(root / "b.wav", clips[1]["audio"], 16000)
    write_video(root / "c.mp4", clips[2]["frames"])
    (root / "d").mkdir()
    for index, frame in enumerate(clips[3]["frames"][:6]):
        write_image(root / "d" / f"{index:04d}.png", frame)
    write_wav(root / "d" / "voice.wav", clips[3]["audio"], 16000)
    (root / "d" / "fps.txt").write_text("12.5\n")
    (root / "e").mkdir()
    for index, frame in enumerate(clips[0]["frames"][:3]):
        write_image(root / "e" / f"{index}.jpg", frame)
    (root / "notes.txt").write_text("not a clip")
    (root / "empty").mkdir()
    return root


def test_finds_mp4s_and_frame_folders_in_name_order(root):
    data = VideoFolderDataset(root)
    assert [p.name for p in data.clips] == ["a.mp4", "b.mp4", "c.mp4", "d", "e"]
    assert len(data) == 5


def test_mp4_items_decode_frames_and_audio(root, clips):
    data = VideoFolderDataset(root, size=32)
    for index in range(3):
        item = data[index]
        assert item.keys() == {"frames", "audio", "sample_rate", "fps"}
        assert item["frames"].shape == (10, 3, 32, 32) and item["fps"] == 25.0
        pooled = torch.nn.functional.avg_pool2d(clips[index]["frames"], 2)
        assert (item["frames"] - pooled).abs().mean() < 0.03
        assert item["sample_rate"] == 16000
    for index in (0, 1):  # audio track; sibling wav
        audio = data[index]["audio"]
        assert audio.dtype == np.float32 and audio.shape == (6400,)  # exactly the frames' span
        assert np.corrcoef(audio, clips[index]["audio"])[0, 1] > 0.95
    assert data[2]["audio"].shape == (0,)


def test_frame_folder_items(root, clips):
    data = VideoFolderDataset(root, size=None, sample_rate=8000)
    with_wav, jpegs = data[3], data[4]
    assert with_wav["fps"] == 12.5
    assert torch.allclose(with_wav["frames"], clips[3]["frames"][:6], atol=0.5 / 255 + 1e-6)
    assert with_wav["audio"].shape == (round(6 / 12.5 * 8000),)  # cut to the frames' span
    assert with_wav["sample_rate"] == 8000
    assert jpegs["fps"] == 25.0 and jpegs["frames"].shape == (3, 3, 64, 64)
    assert (jpegs["frames"] - clips[0]["frames"][:3]).abs().mean() < 0.02
    assert jpegs["audio"].shape == (0,)


def test_num_frames_keeps_the_first_frames_and_pads_short_audio(tmp_path, clips):
    write_video(tmp_path / "x.mp4", clips[0]["frames"])
    write_wav(tmp_path / "x.wav", clips[0]["audio"][:1000], 16000)
    item = VideoFolderDataset(tmp_path, num_frames=4)[0]
    assert item["frames"].shape == (4, 3, 64, 64)
    assert item["audio"].shape == (2560,)
    assert np.allclose(item["audio"][:1000], clips[0]["audio"][:1000], atol=1e-4)
    assert not item["audio"][1000:].any()


def test_missing_or_empty_root_names_what_it_looked_for(tmp_path):
    with pytest.raises(MediaError, match="nowhere: no such directory"):
        VideoFolderDataset(tmp_path / "nowhere")
    (tmp_path / "readme.md").write_text("x")
    (tmp_path / "sub").mkdir()
    with pytest.raises(MediaError, match=r"no clips found; looked for \*\.mp4 files and subfolders holding "
                                         r"\*\.png/\*\.jpg/\*\.jpeg frames"):
        VideoFolderDataset(tmp_path)


def test_bad_frame_folders_raise_clear_errors(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    write_image(folder / "0.png", torch.rand(3, 16, 16))
    write_image(folder / "1.png", torch.rand(3, 16, 20))
    with pytest.raises(MediaError, match="frames differ in size"):
        VideoFolderDataset(tmp_path, size=None)[0]
    assert VideoFolderDataset(tmp_path, size=16)[0]["frames"].shape == (2, 3, 16, 16)
    (folder / "fps.txt").write_text("fast")
    with pytest.raises(MediaError, match="fps.txt: expected a frame rate, got 'fast'"):
        VideoFolderDataset(tmp_path, size=16)[0]
    (folder / "fps.txt").write_text("-5")
    with pytest.raises(MediaError, match="frame rate must be positive"):
        VideoFolderDataset(tmp_path, size=16)[0]
    (folder / "fps.txt").unlink()
    write_wav(folder / "a.wav", np.zeros(10, np.float32), 16000)
    write_wav(folder / "b.wav", np.zeros(10, np.float32), 16000)
    with pytest.raises(MediaError, match=r"more than one \.wav \(a\.wav, b\.wav\)"):
        VideoFolderDataset(tmp_path, size=16)[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 0}, "size must be positive"),
    ({"num_frames": 0}, "num_frames must be None or a positive int"),
    ({"sample_rate": 0}, "sample_rate must be a positive int"),
])
def test_bad_arguments_are_named(root, kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoFolderDataset(root, **kwargs)
