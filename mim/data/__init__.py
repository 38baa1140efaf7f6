"""Training data: procedural talking heads and gesturing upper bodies, folders of real clips, stage-1
source/driving pairs, and batches streamed from shard tars."""
from mim.data.folder import VideoFolderDataset
from mim.data.gesture import GESTURE_KEYPOINTS, SyntheticGestures, make_gesture_clip
from mim.data.pairs import SourceDrivingPairs
from mim.data.stream import (ShardClips, ShardSet, Stage1Stream, Stage2Stream, expand_shards, heldout_split,
                             is_shard_spec, shard_loader, split_shards, usable_workers)
from mim.data.synthetic import (SyntheticTalkingHeads, envelope_per_frame, make_clip, speech_like_audio,
                                write_clip)

__all__ = [
    "GESTURE_KEYPOINTS",
    "ShardClips",
    "ShardSet",
    "SourceDrivingPairs",
    "Stage1Stream",
    "Stage2Stream",
    "SyntheticGestures",
    "SyntheticTalkingHeads",
    "VideoFolderDataset",
    "envelope_per_frame",
    "expand_shards",
    "heldout_split",
    "is_shard_spec",
    "make_clip",
    "make_gesture_clip",
    "shard_loader",
    "speech_like_audio",
    "split_shards",
    "usable_workers",
    "write_clip",
]
