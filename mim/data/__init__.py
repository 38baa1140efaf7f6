"""Training data: procedural talking heads, folders of real clips, and stage-1 source/driving pairs."""
from mim.data.folder import VideoFolderDataset
from mim.data.pairs import SourceDrivingPairs
from mim.data.synthetic import (SyntheticTalkingHeads, envelope_per_frame, make_clip, speech_like_audio,
                                write_clip)

__all__ = [
    "SourceDrivingPairs",
    "SyntheticTalkingHeads",
    "VideoFolderDataset",
    "envelope_per_frame",
    "make_clip",
    "speech_like_audio",
    "write_clip",
]
