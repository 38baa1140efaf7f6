"""mim.data.pairs: stage-1 source/driving pairs."""
import pytest
import torch

from mim.data import SourceDrivingPairs, SyntheticTalkingHeads


def fake_clips(lengths, size=4):
    """Clips whose every pixel holds (clip index, frame index), so a frame identifies itself."""
    clips = []
    for clip, length in enumerate(lengths):
        frames = torch.arange(length, dtype=torch.float32)[:, None, None, None].expand(length, 3, size, size)
        clips.append({"frames": frames + 1000 * clip})
    return clips


def frame_ids(frames):
    return (frames[..., 0, 0, 0] % 1000).long().tolist()


def test_driving_is_a_contiguous_window_and_source_a_frame_of_the_same_clip():
    pairs = SourceDrivingPairs(fake_clips([9, 5, 12]), num_driving=3, seed=1)
    assert len(pairs) == 3
    for epoch in range(5):
        pairs.set_epoch(epoch)
        for index, length in enumerate([9, 5, 12]):
            item = pairs[index]
            assert item["clip"] == index
            assert item["source"].shape == (3, 4, 4) and item["driving"].shape == (3, 3, 4, 4)
            start = item["driving_start"]
            assert frame_ids(item["driving"]) == [start, start + 1, start + 2]
            assert 0 <= start <= length - 3
            assert frame_ids(item["source"][None]) == [item["source_frame"]]
            assert (item["source"] // 1000 == index).all() and (item["driving"] // 1000 == index).all()


def test_every_window_and_source_frame_is_drawn():
    pairs = SourceDrivingPairs(fake_clips([5]), num_driving=3)
    starts, sources = set(), set()
    for epoch in range(60):
        pairs.set_epoch(epoch)
        starts.add(pairs[0]["driving_start"])
        sources.add(pairs[0]["source_frame"])
    assert starts == {0, 1, 2} and sources == {0, 1, 2, 3, 4}


def test_draws_depend_only_on_seed_epoch_and_index():
    clips = fake_clips([30] * 8)
    a, b = SourceDrivingPairs(clips, num_driving=2, seed=3), SourceDrivingPairs(clips, num_driving=2, seed=3)
    forward = [a[i]["driving_start"] for i in range(8)]
    torch.manual_seed(123)  # the global generator plays no part
    backward = [b[i]["driving_start"] for i in reversed(range(8))][::-1]
    assert forward == backward
    a.set_epoch(1)
    epoch_one = [a[i]["driving_start"] for i in range(8)]
    assert epoch_one != forward
    a.set_epoch(0)
    assert [a[i]["driving_start"] for i in range(8)] == forward
    other_seed = SourceDrivingPairs(clips, num_driving=2, seed=4)
    assert [other_seed[i]["driving_start"] for i in range(8)] != forward


def test_same_batches_with_and_without_workers():
    pairs = SourceDrivingPairs(fake_clips([20] * 6), num_driving=2, seed=7)
    pairs.set_epoch(2)
    loaders = [torch.utils.data.DataLoader(pairs, batch_size=3, num_workers=workers) for workers in (0, 2)]
    batches = [torch.cat([batch["driving"] for batch in loader]) for loader in loaders]
    assert torch.equal(batches[0], batches[1])


def test_items_are_copies():
    clips = fake_clips([4])
    item = SourceDrivingPairs(clips, num_driving=2)[0]
    item["source"].fill_(-1)
    item["driving"].fill_(-1)
    assert clips[0]["frames"].min() == 0


def test_works_over_the_synthetic_dataset():
    clips = SyntheticTalkingHeads(2, num_frames=6, size=16)
    item = SourceDrivingPairs(clips, num_driving=4, seed=0)[1]
    start = item["driving_start"]
    assert torch.equal(item["driving"], clips[1]["frames"][start: start + 4])
    assert torch.equal(item["source"], clips[1]["frames"][item["source_frame"]])


def test_errors_are_clear():
    pairs = SourceDrivingPairs(fake_clips([4, 2]), num_driving=3)
    with pytest.raises(ValueError, match="clip 1 has 2 frames, fewer than num_driving=3"):
        pairs[1]
    with pytest.raises(IndexError, match="index 2 out of range for 2 clips"):
        pairs[2]
    with pytest.raises(ValueError, match="num_driving must be an int >= 1"):
        SourceDrivingPairs(fake_clips([4]), num_driving=0)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        SourceDrivingPairs(fake_clips([4]), seed=-2)
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        pairs.set_epoch(1.5)
