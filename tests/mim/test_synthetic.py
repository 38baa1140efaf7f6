"""mim.data.synthetic: procedural talking heads (audio, motion, rendering, dataset)."""
import numpy as np
import pytest
import torch

from mim.data import SyntheticTalkingHeads, envelope_per_frame, make_clip, speech_like_audio, write_clip
from mim.data import synthetic
from mim.io import read_audio, read_video

KEYS = {"frames", "audio", "sample_rate", "fps", "mouth_open", "pose", "blink", "mouth_box"}


def assert_clips_equal(a, b):
    assert a.keys() == b.keys() == KEYS
    for key in KEYS:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], np.ndarray):
            assert np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# -------------------------------------------------------------------------------------- clips


@pytest.mark.parametrize("num_frames, size, fps, sample_rate",
                         [(50, 64, 25, 16000), (7, 48, 30, 22050), (1, 16, 25, 16000)])
def test_clip_shapes_types_and_ranges(num_frames, size, fps, sample_rate):
    clip = make_clip(3, num_frames=num_frames, size=size, fps=fps, sample_rate=sample_rate)
    assert clip.keys() == KEYS
    frames = clip["frames"]
    assert frames.shape == (num_frames, 3, size, size) and frames.dtype == torch.float32
    assert frames.min() >= 0 and frames.max() <= 1 and frames.std() > 0.05
    assert clip["audio"].dtype == np.float32
    assert clip["audio"].shape == (round(num_frames / fps * sample_rate),)
    assert np.abs(clip["audio"]).max() <= 1
    assert clip["sample_rate"] == sample_rate and clip["fps"] == float(fps)
    for key in ("mouth_open", "blink"):
        assert clip[key].shape == (num_frames,) and clip[key].dtype == torch.float32
        assert clip[key].min() >= 0 and clip[key].max() <= 1
    assert clip["pose"].shape == (num_frames, 6) and clip["pose"].dtype == torch.float32


def test_same_seed_same_clip_different_seed_different_clip():
    assert_clips_equal(make_clip(11, num_frames=20), make_clip(11, num_frames=20))
    a, b = make_clip(11, num_frames=20), make_clip(12, num_frames=20)
    assert (a["frames"] - b["frames"]).abs().mean() > 0.05
    assert not np.array_equal(a["audio"], b["audio"])
    assert not torch.equal(a["pose"], b["pose"])


def test_longer_clip_extends_shorter_and_size_keeps_the_face():
    short, long = make_clip(4, num_frames=20), make_clip(4, num_frames=60)
    assert torch.equal(long["pose"][:20], short["pose"])
    assert torch.equal(long["blink"][:20], short["blink"])
    assert np.array_equal(long["audio"][: len(short["audio"])], short["audio"])
    big = make_clip(4, num_frames=3, size=128)["frames"]
    small = make_clip(4, num_frames=3, size=64)["frames"]
    assert (torch.nn.functional.avg_pool2d(big, 2) - small).abs().mean() < 0.01


def test_edges_are_antialiased():
    """Coverage-based edges: a 64-px render matches a 4x supersampled 256-px render pooled down."""
    for seed in range(2):
        fine = torch.nn.functional.avg_pool2d(make_clip(seed, num_frames=4, size=256)["frames"], 4)
        coarse = make_clip(seed, num_frames=4, size=64)["frames"]
        difference = (fine - coarse).abs()
        assert difference.mean() < 0.004
        assert difference.max() < 0.3  # a hard 0/1 edge is off by up to half its contrast (~0.55 here)


def test_feature_windows_hold_the_whole_feature(monkeypatch):
    """Painting small features through windows gives the same frames as painting everywhere."""
    windowed = [make_clip(seed, num_frames=30, size=48)["frames"] for seed in (4, 14, 37)]
    monkeypatch.setattr(synthetic._Canvas, "window",
                        lambda self, cx, cy, radius: (self.hx, self.hy, self.pixel, self.image))
    for seed, frames in zip((4, 14, 37), windowed):
        assert (make_clip(seed, num_frames=30, size=48)["frames"] - frames).abs().max() < 1e-5


def test_mouth_follows_audio_loudness():
    for seed in range(4):
        clip = make_clip(seed, num_frames=100)
        per_frame = clip["audio"].reshape(100, -1)
        loudness = np.sqrt((per_frame.astype(np.float64) ** 2).mean(axis=1))
        assert np.corrcoef(loudness, clip["mouth_open"].numpy())[0, 1] > 0.8
        assert clip["mouth_open"].max() == 1.0


def test_mouth_is_the_smoothed_per_frame_envelope():
    audio, envelope = speech_like_audio(2.0, seed=9)
    per_frame = envelope_per_frame(envelope, 16000, 50)
    mouth = synthetic._mouth_from_envelope(per_frame)
    assert np.corrcoef(per_frame, mouth)[0, 1] > 0.9
    assert mouth.max() == 1.0 and mouth.min() >= 0
    assert np.array_equal(mouth == 0, np.convolve(per_frame, np.ones(3), mode="same") == 0)


def test_pose_within_limits_and_moving():
    pose = make_clip(2, num_frames=250, size=16)["pose"].numpy()  # 10 s
    limits = np.array([np.radians(20), np.radians(12), np.radians(12), 0.08, 0.06])
    assert (np.abs(pose[:, :5]) <= limits + 1e-6).all()
    assert (np.abs(np.log(pose[:, 5])) <= 0.06 + 1e-6).all()
    assert (np.ptp(pose[:, :5], axis=0) > 0.3 * limits).all()
    assert np.abs(np.diff(pose, axis=0)).max() < 0.05  # smooth: a few % of the range per frame


def test_blinks_every_few_seconds_lasting_about_150_ms():
    blink = make_clip(5, num_frames=500, size=16)["blink"].numpy()  # 20 s
    closed = blink > 0.5
    onsets = np.flatnonzero(closed[1:] & ~closed[:-1]) + 1
    assert 3 <= len(onsets) <= 11
    assert (np.diff(onsets) >= 50).all()  # >= 2 s apart at 25 fps
    lengths = [np.argmin(closed[start:]) for start in onsets if not closed[start:].all()]
    assert all(1 <= n <= 4 for n in lengths)
    assert (blink == 0).mean() > 0.8


# ----------------------------------------------------------------------- rendered geometry


def render(look, yaw=0.0, pitch=0.0, roll=0.0, tx=0.0, ty=0.0, scale=1.0, mouth=0.0, blink=0.0, size=128):
    pose = np.array([[yaw, pitch, roll, tx, ty, scale]], np.float32)
    frames = synthetic._render(look, pose, np.array([mouth], np.float32), np.array([blink], np.float32), size)
    return frames[0]


def centroid(weights):
    rows, cols = np.indices(weights.shape)
    return np.array([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum()


def eye_centres(look, **pose):
    """Centres of the two eyes: where closing the eyelids changes the image."""
    change = np.abs(render(look, blink=1.0, **pose) - render(look, blink=0.0, **pose)).sum(0)
    split = centroid(change)[0]
    cols = np.arange(change.shape[1])[None, :]
    return centroid(change * (cols < split)), centroid(change * (cols >= split))


@pytest.fixture
def look():
    return synthetic._draw_look(np.random.default_rng(7))


def test_pose_moves_the_features_as_documented(look):
    left, right = eye_centres(look)
    middle, spacing = (left + right) / 2, np.linalg.norm(right - left)
    assert abs(right[1] - left[1]) < 0.5  # level when frontal

    moved = np.mean(eye_centres(look, tx=0.125, ty=-0.0625), axis=0)
    assert np.allclose(moved - middle, [0.125 * 128, -0.0625 * 128], atol=0.5)

    tilted_left, tilted_right = eye_centres(look, roll=np.radians(12))
    angle = np.degrees(np.arctan2(*(tilted_right - tilted_left)[::-1]))
    assert abs(angle - 12) < 1.5  # positive roll: clockwise on screen (y down)

    zoomed_left, zoomed_right = eye_centres(look, scale=1.06)
    assert abs(np.linalg.norm(zoomed_right - zoomed_left) / spacing - 1.06) < 0.02

    assert np.mean(eye_centres(look, yaw=np.radians(20)), axis=0)[0] - middle[0] > 3
    assert np.mean(eye_centres(look, pitch=np.radians(12)), axis=0)[1] - middle[1] > 2
    turned_left, turned_right = eye_centres(look, yaw=np.radians(20))
    assert np.linalg.norm(turned_right - turned_left) < spacing  # foreshortened


def test_mouth_opening_darkens_the_lower_face(look):
    closed, opened = render(look, mouth=0.0), render(look, mouth=1.0)
    change = np.abs(opened - closed).sum(0)
    left, right = eye_centres(look)
    assert centroid(change)[1] > max(left[1], right[1]) + 15  # below the eyes
    assert abs(centroid(change)[0] - (left[0] + right[0]) / 2) < 2  # centred
    assert (change > 0.3).sum() > 30
    half = render(look, mouth=0.5)
    assert 0.2 < np.abs(half - closed).sum() / np.abs(opened - closed).sum() < 0.8


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_mouth_box_holds_every_pixel_the_mouth_changes(seed):
    rng = np.random.default_rng(seed)
    look = synthetic._draw_look(rng)
    limits = synthetic._POSE_LIMITS
    pose = np.concatenate([rng.uniform(-1, 1, (6, 5)) * limits[:5],
                           np.exp(rng.uniform(-1, 1, (6, 1)) * limits[5])], 1).astype(np.float32)
    pose[0] = [limits[0], limits[1], limits[2], limits[3], limits[4], np.exp(limits[5])]  # extremes
    size = 96
    shut = synthetic._render(look, pose, np.zeros(6, np.float32), np.zeros(6, np.float32), size)
    opened = synthetic._render(look, pose, np.ones(6, np.float32), np.zeros(6, np.float32), size)
    boxes = synthetic._mouth_box(look, pose)
    axis = (np.arange(size) + 0.5) * (2.0 / size) - 1.0
    half_pixel = 1.0 / size
    for frame in range(len(pose)):
        changed = np.abs(opened[frame] - shut[frame]).sum(0) > 1e-4
        assert changed.sum() > 10
        x0, y0, x1, y1 = boxes[frame]
        inside = (((axis >= y0 - half_pixel) & (axis <= y1 + half_pixel))[:, None]
                  & ((axis >= x0 - half_pixel) & (axis <= x1 + half_pixel))[None, :])
        assert not (changed & ~inside).any(), frame
        # and the box is tight: the shut lips fill a good part of it
        assert (x1 - x0) * (y1 - y0) < 40 * changed.sum() * (2.0 / size) ** 2


def test_clip_mouth_box_follows_the_head():
    clip = make_clip(3, num_frames=40, size=32)
    boxes = clip["mouth_box"]
    assert boxes.shape == (40, 4) and boxes.dtype == torch.float32
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    tx = clip["pose"][:, 3]
    assert np.corrcoef(centre_x, tx)[0, 1] > 0.3
    assert ((boxes[:, 1] + boxes[:, 3]) / 2 > 0).all()   # below the frame's centre line


# -------------------------------------------------------------------------------------- audio


def test_speech_has_silent_pauses_and_voiced_syllables():
    audio, envelope = speech_like_audio(6.0, seed=1)
    assert audio.shape == envelope.shape == (96000,)
    assert audio.dtype == envelope.dtype == np.float32
    assert np.array_equal(audio == 0, envelope == 0)
    silent = np.concatenate([[False], envelope == 0, [False]]).astype(np.int8)
    starts, ends = np.flatnonzero(np.diff(silent) == 1), np.flatnonzero(np.diff(silent) == -1)
    pauses = [(s, e) for s, e in zip(starts, ends) if e - s >= 0.25 * 16000 and s > 0 and e < len(audio)]
    assert len(pauses) >= 2  # at least two inner pauses of >= 250 ms in 6 s
    assert 0.3 < (envelope > 0).mean() < 0.9
    loud = np.argmax(envelope)
    segment = audio[loud - 320: loud + 320].astype(np.float64)
    segment -= segment.mean()
    correlation = np.correlate(segment, segment, "full")[len(segment) - 1:]
    correlation /= correlation[0]
    lags = np.arange(16000 // 250, 16000 // 90 + 1)
    assert correlation[lags].max() > 0.5  # periodic: a pitch between 90 and 250 Hz


def test_speech_is_deterministic_and_extends():
    a, env_a = speech_like_audio(1.5, seed=3)
    b, env_b = speech_like_audio(3.0, seed=3)
    assert np.array_equal(a, speech_like_audio(1.5, seed=3)[0])
    assert np.array_equal(a, b[: len(a)]) and np.array_equal(env_a, env_b[: len(a)])
    assert not np.array_equal(a, speech_like_audio(1.5, seed=4)[0])


def test_envelope_per_frame_averages_each_frame_span():
    envelope = np.zeros(1600, np.float32)
    envelope[640:960] = 1.0  # half of frame 1 (640 samples a frame at 16 kHz, 25 fps)
    envelope[1280:1600] = 0.5
    per_frame = envelope_per_frame(envelope, 16000, 4)
    assert per_frame.dtype == np.float32
    assert np.allclose(per_frame, [0.0, 1.0, 0.5, 0.0])  # frame 3 lies past the end: 0
    assert np.array_equal(envelope_per_frame(np.zeros(100), 16000, 3), np.zeros(3, np.float32))


@pytest.mark.parametrize("call, message", [
    (lambda: speech_like_audio(0.0), "duration_s must be a positive number"),
    (lambda: speech_like_audio(1.0, sample_rate=0), "sample_rate must be a positive int"),
    (lambda: envelope_per_frame(np.zeros((2, 2)), 16000, 3), "envelope must be 1-D"),
    (lambda: envelope_per_frame(np.zeros(4), 16000, 0), "num_frames must be a positive int"),
    (lambda: make_clip(0, num_frames=0), "num_frames must be a positive int"),
    (lambda: make_clip(0, size=2.5), "size must be a positive int"),
    (lambda: make_clip(0, fps=-1), "fps must be a positive number"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------------ dataset


def test_train_and_heldout_seeds_are_disjoint_and_reproducible():
    train = SyntheticTalkingHeads(300, seed=5, split="train")
    heldout = SyntheticTalkingHeads(300, seed=5, split="heldout")
    train_seeds = {train.clip_seed(i) for i in range(300)}
    heldout_seeds = {heldout.clip_seed(i) for i in range(300)}
    assert len(train_seeds) == len(heldout_seeds) == 300
    assert not train_seeds & heldout_seeds
    assert train.clip_seed(17) == SyntheticTalkingHeads(300, seed=5).clip_seed(17)
    assert train.clip_seed(17) != SyntheticTalkingHeads(300, seed=6).clip_seed(17)


def test_dataset_items_are_make_clip_of_the_clip_seed_and_cached():
    data = SyntheticTalkingHeads(3, num_frames=8, size=32, seed=1, split="heldout", cache_size=2)
    assert len(data) == 3
    first = data[0]
    assert_clips_equal(first, make_clip(data.clip_seed(0), num_frames=8, size=32))
    assert data[0]["frames"] is first["frames"]  # served from the cache
    data[1], data[2]  # evicts item 0 (least recently used)
    assert data[0]["frames"] is not first["frames"]
    assert torch.equal(data[0]["frames"], first["frames"])
    with pytest.raises(IndexError, match="index 3 out of range for 3 clips"):
        data[3]


@pytest.mark.parametrize("kwargs, message", [
    ({"num_clips": 0}, "num_clips must be a positive int"),
    ({"num_clips": 2, "split": "test"}, "split must be one of"),
    ({"num_clips": 2, "seed": -1}, "seed must be a non-negative int"),
    ({"num_clips": 2, "cache_size": -1}, "cache_size must be a non-negative int"),
])
def test_dataset_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticTalkingHeads(**kwargs)


def test_write_clip_writes_video_with_audio_and_wav(tmp_path):
    clip = make_clip(8, num_frames=25)
    write_clip(clip, tmp_path / "clip.mp4", tmp_path / "clip.wav")
    frames, fps = read_video(tmp_path / "clip.mp4")
    assert frames.shape == clip["frames"].shape and fps == 25.0
    assert (frames - clip["frames"]).abs().mean() < 0.03
    wav = read_audio(tmp_path / "clip.wav")
    assert np.abs(wav - clip["audio"]).max() <= 1 / 32768 + 1e-7
    track = read_audio(tmp_path / "clip.mp4")
    assert 16000 <= len(track) <= 16000 + 1024
    assert np.corrcoef(track[:16000], clip["audio"])[0, 1] > 0.95
