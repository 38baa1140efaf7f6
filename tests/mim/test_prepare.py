"""mim prepare (mim/prepare.py) on generated videos with a real face: a crop of scikit-image's
astronaut photo moving inside a larger frame, plus the bad inputs of issue 19 (no face, no
audio, variable frame rate, a corrupt file, a face at the border of a folder of frames)."""
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import webdataset
from PIL import Image
from skimage import data

from mim.cli import main
from mim.data import speech_like_audio
from mim.data.shards import decode_audio, decode_frames, sample_metadata
from mim.face import CropBox, crop_square, face_crop_box, make_detector
from mim.io import read_audio, write_video, write_wav
from mim.prepare import (MANIFEST, REPORT, PrepareOptions, VideoSource, crop_frame, find_videos,
                         prepare, prepare_video, resample_times, summarize)

SIZE = 64
BACKGROUND = (96, 110, 124)
OPTIONS = dict(size=SIZE, detect_every=5, min_frames=10, max_frames_per_segment=25, shard_size=0.25)


@pytest.fixture(scope="module")
def portrait():
    """200 x 200 pixels of the astronaut photo around her face (about 90 px wide)."""
    return data.astronaut()[30:230, 120:320].copy()


def _moving_xy(index):
    """Where the portrait's top-left corner sits in source frame ``index`` (30 fps)."""
    return 20 + 2 * index, 40 + index


def _compose(portrait, width, height, x, y):
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = BACKGROUND
    h, w = portrait.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    frame[y0:y1, x0:x1] = portrait[y0 - y:y1 - y, x0 - x:x1 - x]
    return frame


def _tensor(frame):
    return torch.from_numpy(frame).permute(2, 0, 1).float() / 255


def _write_vfr(path, portrait):
    """An mp4 without audio whose frames are 20 ms and 60 ms apart in turn."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        time = 0
        for index in range(40):
            frame = av.VideoFrame.from_ndarray(_compose(portrait, 320, 240, 60, 20), format="rgb24")
            frame.pts, frame.time_base = time, Fraction(1, 1000)
            time += 20 if index % 2 == 0 else 60
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.fixture(scope="module")
def videos(tmp_path_factory, portrait):
    root = tmp_path_factory.mktemp("videos")
    (root / "talk").mkdir()
    audio, _ = speech_like_audio(2.0, 16000, seed=3)
    write_video(root / "talk" / "moving.mp4",
                (_tensor(_compose(portrait, 480, 360, *_moving_xy(i))) for i in range(60)),
                fps=30, audio=audio)
    rng = np.random.default_rng(0)
    write_video(root / "noface.mp4", torch.from_numpy(rng.random((20, 3, 120, 160), np.float32)),
                fps=30, audio=audio[:10000])
    (root / "corrupt.mp4").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    _write_vfr(root / "vfr.mp4", portrait)
    # a folder of frames at 20 fps with a wav, the face touching the top-left corner
    border = root / "border"
    border.mkdir()
    for index in range(24):
        Image.fromarray(_compose(portrait, 240, 200, -50, -40)).save(border / f"{index:03d}.png")
    write_wav(border / "speech.wav", audio[:round(24 / 20 * 16000)], 16000)
    (border / "fps.txt").write_text("20\n")
    (root / ".hidden.mp4").write_bytes(b"not looked at")
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, videos):
    out = tmp_path_factory.mktemp("shards")
    report = prepare(videos, out, PrepareOptions(**OPTIONS), progress=False)
    return out, report


def _samples(out):
    urls = [str(p) for p in sorted(Path(out).glob("shard-*.tar"))]
    return list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False))


def _entry(report, source):
    return next(e for e in report["videos"] if e["source"] == source)


def test_find_videos_walks_the_folder_in_path_order(videos, tmp_path):
    sources = find_videos(videos)
    assert [(s.relative, s.kind) for s in sources] == [
        ("border", "frames"), ("corrupt.mp4", "file"), ("noface.mp4", "file"),
        ("talk/moving.mp4", "file"), ("vfr.mp4", "file")]
    assert find_videos(videos / "vfr.mp4") == [VideoSource(videos / "vfr.mp4", "vfr.mp4", "file")]
    assert [s.relative for s in find_videos(videos, exclude=videos / "talk")] == [
        "border", "corrupt.mp4", "noface.mp4", "vfr.mp4"]


def test_the_report_lists_every_video_with_its_outcome(run):
    out, report = run
    assert json.loads((out / REPORT).read_text()) == report
    assert [e["source"] for e in report["videos"]] == [
        "border", "corrupt.mp4", "noface.mp4", "talk/moving.mp4", "vfr.mp4"]
    assert _entry(report, "noface.mp4")["status"] == "skipped"
    assert _entry(report, "noface.mp4")["reason"] == "no face"
    corrupt = _entry(report, "corrupt.mp4")
    assert corrupt["reason"] == "unreadable" and "corrupt.mp4" in corrupt["detail"]
    vfr = _entry(report, "vfr.mp4")
    assert vfr["status"] == "prepared" and not vfr["audio"]
    assert any("no audio" in note for note in vfr["notes"])
    assert any("variable frame rate" in note for note in vfr["notes"])
    assert _entry(report, "talk/moving.mp4")["audio"] and _entry(report, "border")["audio"]
    assert report["totals"]["prepared"] == 3 and report["totals"]["skipped"] == 2
    text = summarize(report)
    assert "skipped noface.mp4: no face" in text and "skipped corrupt.mp4: unreadable" in text


def test_shards_are_bounded_complete_and_listed(run):
    out, report = run
    shards = sorted(out.glob("shard-*.tar"))
    assert len(shards) >= 4
    assert all(p.stat().st_size <= 0.25e6 for p in shards)
    assert not list(out.glob(".*"))                 # no temporary file left
    manifest = json.loads((out / MANIFEST).read_text())
    assert [s["name"] for s in manifest["shards"]] == [p.name for p in shards]
    assert [s["bytes"] for s in manifest["shards"]] == [p.stat().st_size for p in shards]
    samples = _samples(out)
    keys = [s["__key__"] for s in samples]
    assert keys == [k for s in manifest["shards"] for k in s["samples"]] and len(set(keys)) == len(keys)
    assert sum(e["segments"] for e in report["videos"]) == len(samples)


def test_moving_face_samples_follow_the_face_with_aligned_audio(run, videos, portrait):
    out, report = run
    samples = [s for s in _samples(out) if s["__key__"].startswith("talk_moving_mp4-")]
    metas = [sample_metadata(s) for s in samples]
    assert [m["segment"] for m in metas] == list(range(len(samples))) and len(samples) == 2
    assert [m["num_frames"] for m in metas][0] == 25
    total = sum(m["num_frames"] for m in metas)
    assert 50 - 5 <= total <= 50                      # 2 s at 25 fps, less the unconfirmed tail
    assert total == _entry(report, "talk/moving.mp4")["frames"]
    detector = make_detector()
    x0, y0, x1, y1 = detector.detect(_compose(portrait, 480, 360, 0, 0))[0].box
    source_audio = read_audio(videos / "talk" / "moving.mp4", 16000)
    for sample, meta in zip(samples, metas):
        frames = decode_frames(sample, range(meta["num_frames"]))
        assert frames.shape == (meta["num_frames"], 3, SIZE, SIZE)
        assert meta["fps"] == 25.0 and meta["source"] == "talk/moving.mp4"
        assert meta["end"] - meta["start"] == pytest.approx(meta["num_frames"] / 25)
        for k, box in enumerate(meta["boxes"]):
            source_index = int((meta["start"] + k / 25) * 30 + 1e-9)
            x, y = _moving_xy(source_index)
            expected = face_crop_box((x0 + x, y0 + y, x1 + x, y1 + y))
            centre = np.array([box[0] + box[2] / 2, box[1] + box[2] / 2])
            want = np.array([expected.x0 + expected.size / 2, expected.y0 + expected.size / 2])
            assert np.linalg.norm(centre - want) < 0.1 * expected.size, (meta["start"], k, box)
        audio = decode_audio(sample)
        assert len(audio) == round(meta["num_frames"] / 25 * 16000) == meta["audio_samples"]
        start = round(meta["start"] * 16000)
        reference = source_audio[start:start + len(audio)]
        assert np.corrcoef(audio, reference)[0, 1] > 0.9


def test_vfr_and_frame_folder_are_resampled_by_time(run):
    out, report = run
    by_source = {}
    for sample in _samples(out):
        meta = sample_metadata(sample)
        by_source.setdefault(meta["source"], []).append((sample, meta))
    # vfr.mp4: 40 frames over 1.6 s (gaps 20/60 ms; the last lasts 1/average rate) -> about 40 at 25 fps
    vfr_frames = sum(m["num_frames"] for _, m in by_source["vfr.mp4"])
    assert 40 - 5 <= vfr_frames <= 41
    assert all(not s.get("wav") and m["audio_samples"] == 0 for s, m in by_source["vfr.mp4"])
    # border: 24 frames at 20 fps = 1.2 s -> 30 frames at 25 fps; the crop leaves the image (padded)
    (sample, meta), = by_source["border"]
    assert 30 - 5 <= meta["num_frames"] <= 30
    assert all(box[0] < 0 and box[1] < 0 for box in meta["boxes"])
    frames = decode_frames(sample, [0])
    assert frames.shape == (1, 3, SIZE, SIZE) and torch.isfinite(frames).all()
    assert len(decode_audio(sample)) == round(meta["num_frames"] / 25 * 16000)


def test_an_interrupted_run_resumes_to_the_same_bytes(run, videos, tmp_path):
    reference, _ = run
    out = tmp_path / "shards"
    options = PrepareOptions(**OPTIONS)

    class Stop(Exception):
        pass

    def stop_after_moving(entry):
        if entry["source"] == "talk/moving.mp4":
            raise Stop

    with pytest.raises(Stop):
        prepare(videos, out, options, progress=False, on_video=stop_after_moving)
    manifest = json.loads((out / MANIFEST).read_text())
    # moving.mp4's first sample is in a finished shard, its second was in the aborted one
    assert any("talk_moving_mp4-0000" in s["samples"] for s in manifest["shards"])
    assert not any("talk_moving_mp4-0001" in s["samples"] for s in manifest["shards"])
    assert "talk/moving.mp4" not in manifest["videos"] and "border" in manifest["videos"]
    assert not list(out.glob(".*")) and not (out / REPORT).exists()
    # what a killed run leaves (the exception above cleaned up after itself)
    (out / ".shard-000002.tar.partial").write_bytes(b"half a tar")
    (out / ".spool").mkdir()
    (out / ".spool" / "talk_moving_mp4-0001.pkl").write_bytes(b"stale")
    seen = []
    prepare(videos, out, options, progress=False, on_video=lambda e: seen.append(e["source"]))
    assert seen == ["talk/moving.mp4", "vfr.mp4"]   # finished videos are not redone
    names = sorted(p.name for p in reference.glob("shard-*.tar"))
    assert sorted(p.name for p in out.glob("shard-*.tar")) == names
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert json.loads((out / REPORT).read_text()) == json.loads((reference / REPORT).read_text())
    assert not list(out.glob(".*"))
    seen.clear()                                      # a finished run has nothing left to do
    prepare(videos, out, options, progress=False, on_video=lambda e: seen.append(e["source"]))
    assert seen == []


def test_a_rerun_with_other_options_is_refused(run, videos):
    out, _ = run
    with pytest.raises(ValueError, match="detect_every: 5 there, 3 now"):
        prepare(videos, out, PrepareOptions(**{**OPTIONS, "detect_every": 3}), progress=False)


def test_cli_with_two_workers_writes_the_same_shards(run, videos, tmp_path, capsys):
    reference, _ = run
    out = tmp_path / "cli"
    code = main(["prepare", str(videos), "--out", str(out), "--config", "tiny", "--workers", "2",
                 "--detect-every", "5", "--min-frames", "10", "--max-frames-per-segment", "25",
                 "--shard-size", "0.25", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "prepared 3 of 5 videos" in printed and "skipped corrupt.mp4: unreadable" in printed
    names = sorted(p.name for p in reference.glob("shard-*.tar"))
    assert sorted(p.name for p in out.glob("shard-*.tar")) == names
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_cli_errors_are_one_line(videos, tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["prepare", str(videos / "vfr.mp4"), "--out", str(tmp_path / "o"),
                 "--shard-size", "0.01", "--config", "tiny", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "more than --shard-size" in err and "vfr_mp4-0000" in err


def test_resample_times_takes_the_latest_frame_at_or_before_each_instant():
    thirty = [(Fraction(i, 30), i) for i in range(30)]
    out = list(resample_times(iter(thirty), Fraction(1, 30)))
    assert [k for k, _ in out] == list(range(25))
    assert [i for _, i in out] == [6 * k // 5 for k in range(25)]
    # irregular times, a repeated timestamp (the later frame wins) and a backwards one (dropped)
    times = [(Fraction(0), "a"), (Fraction(1, 10), "b"), (Fraction(1, 10), "c"),
             (Fraction(1, 20), "x"), (Fraction(3, 25), "d")]
    out = list(resample_times(iter(times), Fraction(1, 10)))
    # instants 0, .04, .08 -> a; .12 -> d (exactly at it); .16, .20 within d's 0.1 s
    assert [f for _, f in out] == ["a", "a", "a", "d", "d", "d"]
    assert list(resample_times(iter([]), Fraction(1, 25))) == []


def test_crop_frame_matches_crop_square_and_pads_outside(portrait):
    frame = _compose(portrait, 240, 200, 10, 0)
    full = _tensor(frame)
    for box in (CropBox(30.3, 20.7, 64), CropBox(-20.5, -30.0, 64), CropBox(200.0, 150.0, 64)):
        mine = torch.from_numpy(crop_frame(frame, box, 64)).permute(2, 0, 1).float() / 255
        theirs = crop_square(full, box, 64)
        assert (mine - theirs).abs().max() <= 1 / 255 + 1e-6, box
    big = crop_frame(frame, CropBox(0, 0, 200), 32)          # antialiased reduction
    assert big.shape == (32, 32, 3) and big.dtype == np.uint8


def test_prepare_video_skips_a_file_without_a_video_stream(tmp_path):
    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)
    result = prepare_video(VideoSource(path, "sound.mp4", "file"), PrepareOptions(size=SIZE))
    assert result.samples == [] and result.entry["reason"] == "no video stream"


@pytest.mark.parametrize("field, value", [
    ("size", 0), ("detect_every", 0), ("min_frames", 1.5), ("max_frames_per_segment", 5),
    ("shard_size", 0), ("smoothing", 1.0), ("max_jump", -1.0), ("detector", "nope")])
def test_bad_options_are_named(field, value, tmp_path, videos):
    with pytest.raises(ValueError, match=field if field != "detector" else "unknown face detector"):
        options = PrepareOptions(**{**OPTIONS, field: value})
        prepare(videos / "vfr.mp4", tmp_path / "o", options, progress=False)


def test_bad_inputs_are_named(tmp_path, videos):
    with pytest.raises(ValueError, match="no such file or directory"):
        prepare(tmp_path / "missing", tmp_path / "o", PrepareOptions(size=SIZE))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no videos found"):
        prepare(tmp_path / "empty", tmp_path / "o", PrepareOptions(size=SIZE))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        prepare(videos, tmp_path / "file", PrepareOptions(size=SIZE))
    with pytest.raises(ValueError, match="workers"):
        prepare(videos, tmp_path / "o", PrepareOptions(size=SIZE), workers=0)


def test_scaled_detector_detects_on_a_smaller_copy_and_scales_boxes_back():
    from mim.face import Face
    from mim.prepare import ScaledDetector

    class Recorder:
        name = "recorder"
        shapes = []

        def detect(self, image):
            self.shapes.append(image.shape)
            return [Face((10.0, 20.0, 30.0, 40.0), 1.5, np.array([[15.0, 25.0]]))]

    detector = ScaledDetector(Recorder(), 320)
    faces = detector.detect(np.zeros((360, 1280, 3), np.uint8))
    assert Recorder.shapes[-1] == (90, 320, 3)
    assert faces[0].box == (40.0, 80.0, 120.0, 160.0) and faces[0].score == 1.5
    assert np.allclose(faces[0].landmarks, [[60.0, 100.0]])
    small = detector.detect(np.zeros((200, 300, 3), np.uint8))      # already small: as is
    assert Recorder.shapes[-1] == (200, 300, 3) and small[0].box == (10.0, 20.0, 30.0, 40.0)
    assert detector.name == "recorder"


def test_a_face_leaving_and_coming_back_gives_two_segments(tmp_path, portrait):
    """25 fps, so output frame = source frame: the face in frames 0-29 and 45-74, none between."""
    def frame(index):
        if 30 <= index < 45:
            return _tensor(np.full((240, 320, 3), BACKGROUND, np.uint8))
        return _tensor(_compose(portrait, 320, 240, 20 if index < 30 else 100, 20))

    write_video(tmp_path / "away.mp4", (frame(i) for i in range(75)), fps=25)
    result = prepare_video(VideoSource(tmp_path / "away.mp4", "away.mp4", "file"),
                           PrepareOptions(size=SIZE, min_frames=10))
    entry = result.entry
    metas = [sample_metadata(s) for s in result.samples]
    assert entry["segments"] == 2 and [m["segment"] for m in metas] == [0, 1]
    # the face vanishing changes half the frame: a shot change at frame 30, so the first
    # segment keeps frames 0-29; the detector runs at 30 (nothing), 35, 40 and finds the face
    # again at 45; the second segment ends at the last detection, 70
    assert entry["cuts"] == {"lost": 0, "jump": 0, "cut": 1}
    assert [(m["start"], m["num_frames"]) for m in metas] == [(0.0, 30), (1.8, 26)]
    assert metas[1]["boxes"][0][0] > metas[0]["boxes"][-1][0] + 60      # it came back further right
    assert entry["frames"] == 56 and not entry["audio"]


def test_too_short_and_bad_frame_folders_are_skipped_with_reasons(tmp_path, portrait):
    write_video(tmp_path / "short.mp4", (_tensor(_compose(portrait, 320, 240, 40, 20)) for _ in range(15)),
                fps=25)
    short = prepare_video(VideoSource(tmp_path / "short.mp4", "short.mp4", "file"),
                          PrepareOptions(size=SIZE, min_frames=25, max_frames_per_segment=25))
    assert short.samples == [] and short.entry["reason"] == "too short"
    assert short.entry["dropped_short"] == 1 and short.entry["frames"] == 0
    two_wavs = tmp_path / "two_wavs"
    two_wavs.mkdir()
    Image.fromarray(_compose(portrait, 240, 200, 0, 0)).save(two_wavs / "000.png")
    for name in ("a.wav", "b.wav"):
        write_wav(two_wavs / name, np.zeros(1600, np.float32), 16000)
    bad_fps = tmp_path / "bad_fps"
    bad_fps.mkdir()
    Image.fromarray(_compose(portrait, 240, 200, 0, 0)).save(bad_fps / "000.png")
    (bad_fps / "fps.txt").write_text("fast")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "000.png").write_bytes(b"not a png")
    for folder, words in ((two_wavs, "more than one .wav"), (bad_fps, "expected a frame rate"),
                          (broken, "not a readable image")):
        result = prepare_video(VideoSource(folder, folder.name, "frames"), PrepareOptions(size=SIZE))
        assert result.entry["reason"] == "unreadable" and words in result.entry["detail"], result.entry


def test_a_name_whose_keys_clash_with_another_is_skipped(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a b.mp4").write_bytes(b"not a video")
    (videos / "a_b.mp4").write_bytes(b"not a video either")
    report = prepare(videos, tmp_path / "out", PrepareOptions(size=SIZE), progress=False)
    first, second = report["videos"]
    assert first["source"] == "a b.mp4" and first["reason"] == "unreadable"
    assert second["source"] == "a_b.mp4" and second["reason"] == "name clash"
    assert "a b.mp4" in second["detail"]
