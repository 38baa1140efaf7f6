"""A folder of real talking-head clips as a dataset, decoded with :mod:`mim.io`."""
from pathlib import Path

import numpy as np
import torch

from mim.io import MediaError, has_audio, read_audio, read_image, read_video, size_hw

__all__ = ["VideoFolderDataset"]

_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
_DEFAULT_FPS = 25.0


def _frame_files(directory):
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in _FRAME_SUFFIXES)


class VideoFolderDataset(torch.utils.data.Dataset):
    """Clips found directly under ``root``, in name order. A clip is either

    - an ``*.mp4`` file: frames from its video stream, audio from its audio track, else from a
      sibling ``<stem>.wav``, else none (an empty array); or
    - a subfolder holding image frames (``*.png``, ``*.jpg``, ``*.jpeg``, in name order), at most
      one ``*.wav`` (none: empty audio), and optionally ``fps.txt`` holding the frame rate
      (default 25).

    Item ``i`` is a dict like :func:`mim.data.make_clip`'s: ``frames`` (T, 3, H, W) float32 in
    [0, 1], ``audio`` (S,) float32 mono at ``sample_rate``, ``sample_rate``, ``fps``. ``size``
    (int or (height, width), None keeps the native size) resizes every frame to exactly that
    size (antialiased bicubic, aspect not kept: clips are expected to be face crops already).
    ``num_frames`` keeps the first that many frames. Non-empty audio is cut or padded with zeros
    to the frames' span, S = round(T / fps · sample_rate), so audio and frames stay aligned.
    Clips are decoded on every access (nothing is cached).
    """

    def __init__(self, root, size=64, num_frames=None, sample_rate=16000):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MediaError(f"root {self.root}: no such directory")
        if num_frames is not None and (isinstance(num_frames, bool)
                                       or not isinstance(num_frames, (int, np.integer)) or num_frames < 1):
            raise ValueError(f"num_frames must be None or a positive int, got {num_frames!r}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
            raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
        size_hw(size)
        self.size = size
        self.num_frames = num_frames
        self.sample_rate = int(sample_rate)
        self.clips = sorted(
            p for p in self.root.iterdir()
            if (p.is_file() and p.suffix.lower() == ".mp4") or (p.is_dir() and _frame_files(p))
        )
        if not self.clips:
            raise MediaError(f"root {self.root}: no clips found; looked for *.mp4 files and subfolders "
                             f"holding {'/'.join('*' + s for s in _FRAME_SUFFIXES)} frames")

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, index):
        path = self.clips[index]
        if path.is_dir():
            frames, fps, audio = self._read_frame_folder(path)
        else:
            frames, fps = read_video(path, size=self.size, max_frames=self.num_frames)
            wav = path.with_suffix(".wav")
            if has_audio(path):
                audio = read_audio(path, self.sample_rate)
            elif wav.is_file():
                audio = read_audio(wav, self.sample_rate)
            else:
                audio = np.zeros(0, np.float32)
        if audio.size:
            span = round(len(frames) / fps * self.sample_rate)
            audio = np.pad(audio[:span], (0, max(0, span - len(audio))))
        return {"frames": frames, "audio": audio, "sample_rate": self.sample_rate, "fps": fps}

    def _read_frame_folder(self, directory):
        files = _frame_files(directory)[: self.num_frames]
        frames = [read_image(f, size=self.size) for f in files]
        sizes = sorted({tuple(f.shape[1:]) for f in frames})
        if len(sizes) > 1:
            raise MediaError(f"{directory}: frames differ in size ({sizes}); pass size= to resize them")
        fps = _DEFAULT_FPS
        fps_file = directory / "fps.txt"
        if fps_file.is_file():
            text = fps_file.read_text().strip()
            try:
                fps = float(text)
            except ValueError:
                raise MediaError(f"{fps_file}: expected a frame rate, got {text!r}") from None
            if not np.isfinite(fps) or fps <= 0:
                raise MediaError(f"{fps_file}: frame rate must be positive, got {text!r}")
        wavs = sorted(directory.glob("*.wav"))
        if len(wavs) > 1:
            raise MediaError(f"{directory}: more than one .wav ({', '.join(w.name for w in wavs)}); "
                             "expected at most one")
        audio = read_audio(wavs[0], self.sample_rate) if wavs else np.zeros(0, np.float32)
        return torch.stack(frames), fps, audio
