"""Procedural co-speech gestures (mim.data.gesture), their configs, the read-out and DIV/TGD
(mim.gesture_metrics), and a 2-step stage-1 run on them."""
import json
import os

import numpy as np
import pytest
import torch

from mim.cli import main
from mim.config import config_from_dict, config_to_dict, get_config, load_config
from mim.data import GESTURE_KEYPOINTS, SyntheticGestures, SyntheticTalkingHeads, make_gesture_clip
from mim.data.gesture import gesture_activity, speech_beats
from mim.evaluate import lipsync_clips
from mim.gesture_metrics import (diversity, gesture_metrics, read_keypoints, readout_subset,
                                 temporal_gesture_distance)
from mim.train.stage1 import build_stage1_data, train_stage1


@pytest.fixture(scope="module")
def clip():
    return make_gesture_clip(7, num_frames=100, size=64)


def test_a_seed_fixes_the_clip_and_another_seed_changes_it(clip):
    again = make_gesture_clip(7, num_frames=100, size=64)
    for key in ("frames", "keypoints", "envelope", "activity", "beats"):
        assert torch.equal(clip[key], again[key]), key
    assert np.array_equal(clip["audio"], again["audio"])
    other = make_gesture_clip(8, num_frames=100, size=64)
    assert not torch.equal(other["keypoints"], clip["keypoints"])
    assert clip["frames"].shape == (100, 3, 64, 64) and clip["frames"].dtype == torch.float32
    assert 0.0 <= float(clip["frames"].min()) and float(clip["frames"].max()) <= 1.0
    assert clip["keypoints"].shape == (100, len(GESTURE_KEYPOINTS), 2)
    assert clip["audio"].shape == (64000,) and clip["sample_rate"] == 16000 and clip["fps"] == 25.0
    # the motion does not depend on the frame size
    big = make_gesture_clip(7, num_frames=100, size=128)
    assert torch.equal(big["keypoints"], clip["keypoints"])


def test_the_read_out_finds_the_painted_keypoints(clip):
    """Hands within a pixel of the exact centres on ground-truth frames; the head's centroid a
    constant offset (hair) from the head's centre, the same in every frame."""
    found_kp, found = read_keypoints(clip["frames"])
    assert found.all()
    exact = readout_subset(clip["keypoints"].numpy())
    pixels = np.linalg.norm(found_kp - exact, axis=-1) * 32          # 64 px frame: 32 px per unit
    assert pixels[:, 1:].mean() < 0.3 and pixels[:, 1:].max() < 2.0
    offset = (found_kp - exact)[:, 0] * 32
    assert np.abs(offset.mean(0)).max() < 2.5 and offset.std(0).max() < 0.3
    # a blank frame finds nothing; a frame with a hand only fills the other parts' gaps
    frames = clip["frames"][:3].clone()
    frames[1] = 0.5
    kp, found = read_keypoints(frames)
    assert not found[1].any() and found[0].all() and np.array_equal(kp[1], kp[0])
    kp, found = read_keypoints(torch.full((2, 3, 8, 8), 0.5))
    assert not found.any() and np.isnan(kp).all()


def test_gestures_follow_the_speech(clip):
    """Arm motion rises with speech energy, and in silence the arms are at rest."""
    seeds = range(4)
    correlations = []
    for seed in seeds:
        c = make_gesture_clip(seed, num_frames=125, size=16)
        hands = c["keypoints"][:, 6:8].numpy()
        speed = np.linalg.norm(np.diff(hands, axis=0), axis=-1).sum(-1)
        activity = c["activity"].numpy()[1:]
        correlations.append(np.corrcoef(speed, activity)[0, 1])
        # rest pose: frames with no activity have the arms where they start (before any sound)
        quiet = np.flatnonzero(c["activity"].numpy() < 1e-3)
        assert len(quiet) > 0
        rest = hands[0]
        assert np.abs(hands[quiet] - rest).max() < 0.02
        # beats are syllable onsets: the envelope rises there
        envelope = c["envelope"].numpy()
        beats = c["beats"].numpy()
        assert len(beats) > 3 and (np.diff(envelope, prepend=0.0)[beats] > 0.08).all()
    assert min(correlations) > 0.2, correlations
    # silence gives exactly the rest pose (activity 0 throughout)
    assert np.array_equal(gesture_activity(np.zeros(10)), np.zeros(10, np.float32))
    assert len(speech_beats(np.zeros(10))) == 0


def test_diversity_and_tgd_on_worked_examples():
    # one keypoint moving between x = -1 and x = 1 on alternate frames: distance 1 from its mean
    # in every frame -> DIV 1; a still keypoint -> DIV 0; the clip mean is the average
    moving = np.zeros((4, 1, 2))
    moving[:, 0, 0] = [-1, 1, -1, 1]
    still = np.full((4, 1, 2), 0.3)
    assert diversity(moving) == pytest.approx(1.0)
    assert diversity(still) == 0.0
    assert diversity([moving, still]) == pytest.approx(0.5)
    # two keypoints: (0,0),(3,4) over 2 frames -> each is 2.5 from its mean; K mean of 2.5 and 0
    two = np.zeros((2, 2, 2))
    two[1, 0] = [3, 4]
    assert diversity(two) == pytest.approx(1.25)
    # TGD: velocities of moving are (2, -2, 2); of still 0 -> mean |v| = 2; of itself 0;
    # a constant offset of the sequence changes nothing
    assert temporal_gesture_distance(still, moving) == pytest.approx(2.0)
    assert temporal_gesture_distance(moving, moving) == 0.0
    assert temporal_gesture_distance(moving + 0.7, moving) == 0.0
    shifted = moving.copy()
    shifted[:, 0, 1] = [0, 0, 0, 3]       # y jumps by 3 in the last step only: |(2,3) - (2,0)| = 3
    assert temporal_gesture_distance(shifted, moving) == pytest.approx(1.0)
    assert gesture_metrics([still], [moving]) == {"div": 0.0, "tgd": pytest.approx(2.0),
                                                  "div_reference": pytest.approx(1.0)}


@pytest.mark.parametrize("call, match", [
    (lambda: diversity([np.zeros((4, 3))]), r"sequences\[0\] must be \(T, K, 2\)"),
    (lambda: diversity([]), "non-empty list"),
    (lambda: diversity(np.full((3, 1, 2), np.nan)), r"sequences\[0\] holds NaN"),
    (lambda: temporal_gesture_distance(np.zeros((1, 1, 2)), np.zeros((1, 1, 2))), "at least 2"),
    (lambda: temporal_gesture_distance(np.zeros((3, 1, 2)), np.zeros((4, 1, 2))), r"references\[0\] is"),
    (lambda: temporal_gesture_distance([np.zeros((3, 1, 2))] * 2, [np.zeros((3, 1, 2))]),
     "2 clips but references has 1"),
    (lambda: read_keypoints(np.zeros((2, 4, 8, 8))), r"frames must be \(T, 3, H, W\)"),
    (lambda: readout_subset(np.zeros((2, 3, 2))), r"keypoints must be \(T, 8, 2\)"),
    (lambda: make_gesture_clip(0, num_frames=0), "num_frames must be a positive int"),
    (lambda: make_gesture_clip(0, size=2.5), "size must be a positive int"),
    (lambda: make_gesture_clip(0, fps=0), "fps must be a positive number"),
    (lambda: SyntheticGestures(2, split="test"), "split must be one of"),
    (lambda: SyntheticGestures(2, seed=-1), "seed must be a non-negative int"),
    (lambda: SyntheticGestures(2)[2], "out of range for 2 clips"),
])
def test_bad_inputs_are_named(call, match):
    with pytest.raises((ValueError, IndexError), match=match):
        call()


def test_the_dataset_splits_and_caches():
    train, held = SyntheticGestures(3, num_frames=4, size=16), SyntheticGestures(3, num_frames=4, size=16,
                                                                                  split="heldout")
    seeds = {train.clip_seed(i) for i in range(3)} | {held.clip_seed(i) for i in range(3)}
    assert len(seeds) == 6
    first = train[1]
    assert torch.equal(first["frames"], make_gesture_clip(train.clip_seed(1), num_frames=4, size=16)["frames"])
    assert train[1]["frames"] is first["frames"]          # served from the cache


def test_the_gesture_configs(tmp_path, capsys):
    for name, size in (("gesture", 256), ("gesture-tiny", 64)):
        config = get_config(name)
        assert config.train.procedural == "gestures" and config.renderer.image_size == size
    assert get_config("tiny").train.procedural == get_config("base").train.procedural == "heads"
    assert config_to_dict(get_config("gesture"))["renderer"] == config_to_dict(get_config("base"))["renderer"]
    path = str(tmp_path / "g.yaml")
    assert main(["config", "save", "gesture-tiny", path]) == 0
    assert config_to_dict(load_config(path)) == config_to_dict(get_config("gesture-tiny"))
    # a config written before the field existed reads as heads
    old = config_to_dict(get_config("tiny"))
    del old["train"]["procedural"]
    assert config_from_dict(old).train.procedural == "heads"
    json_path = tmp_path / "old.json"
    json_path.write_text(json.dumps(old))
    assert load_config(str(json_path)).train.procedural == "heads"
    with pytest.raises(ValueError, match="train.procedural must be one of heads, gestures"):
        config_from_dict({"name": "tiny", "train": {"procedural": "hands"}})
    with pytest.raises(ValueError, match="config key train.procedural must be a string"):
        config_from_dict({"name": "tiny", "train": {"procedural": 3}})


def test_synthetic_data_follows_the_config():
    config = get_config("gesture-tiny")
    config.train.train_clips, config.train.heldout_clips = 2, 1
    train, held = build_stage1_data(config, "synthetic")
    assert isinstance(train, SyntheticGestures) and isinstance(held, SyntheticGestures)
    assert isinstance(lipsync_clips(config), SyntheticGestures)
    assert isinstance(build_stage1_data(get_config("tiny"), "synthetic")[0], SyntheticTalkingHeads)


def test_two_stage1_steps_on_gesture_clips(tmp_path):
    config = get_config("gesture-tiny")
    t = config.train
    t.train_clips, t.heldout_clips, t.frames_per_clip = 2, 1, 3
    t.batch_size, t.num_driving, t.log_every, t.checkpoint_every = 1, 1, 1, 2
    result = train_stage1(config, str(tmp_path / "run"), steps=2, progress=False, evaluate=False)
    assert np.isfinite(result["train"]["loss"])
    saved = load_config(os.path.join(tmp_path, "run", "config.yaml"))
    assert saved.train.procedural == "gestures"
