"""Stage-1 training pairs: a source frame and a window of driving frames from the same clip."""
import numpy as np
import torch

__all__ = ["SourceDrivingPairs"]


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class SourceDrivingPairs(torch.utils.data.Dataset):
    """Item ``i`` of ``clips`` (any dataset of dicts with ``frames`` (T, 3, H, W)) as a pair.

    Returns ``{"source": (3, H, W), "driving": (num_driving, 3, H, W), "clip": i,
    "source_frame": s, "driving_start": d}`` (and ``"driving_mouth_box"``, (num_driving, 4),
    and ``"driving_mouth_open"``, (num_driving,), when the clip has a ``mouth_box`` and a
    ``mouth_open``): ``driving`` is frames d .. d + num_driving - 1,
    with d uniform over the valid starts, and ``source`` is frame s, uniform over the whole clip
    (it may fall inside the driving window). The draw uses a ``torch.Generator`` seeded from
    ``np.random.SeedSequence((seed, epoch, i))``, so it depends only on (seed, epoch, i): not on
    worker count, order of access or the global RNG. :meth:`set_epoch` picks a new draw. The
    returned tensors are copies, safe to modify.
    """

    def __init__(self, clips, num_driving=1, seed=0):
        self.clips = clips
        self.num_driving = _check_int(num_driving, "num_driving", 1)
        self.seed = _check_int(seed, "seed", 0)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Use the draw of ``epoch`` (an int >= 0) from now on."""
        self.epoch = _check_int(epoch, "epoch", 0)

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, index):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        index = int(index)
        frames = self.clips[index]["frames"]
        num_frames = frames.shape[0]
        if num_frames < self.num_driving:
            raise ValueError(
                f"clip {index} has {num_frames} frames, fewer than num_driving={self.num_driving}")
        state = np.random.SeedSequence((self.seed, self.epoch, index)).generate_state(2, np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        start = int(torch.randint(num_frames - self.num_driving + 1, (), generator=generator))
        source = int(torch.randint(num_frames, (), generator=generator))
        item = {
            "source": frames[source].clone(),
            "driving": frames[start: start + self.num_driving].clone(),
            "clip": index,
            "source_frame": source,
            "driving_start": start,
        }
        for key in ("mouth_box", "mouth_open"):
            value = self.clips[index].get(key)
            if value is not None:
                item[f"driving_{key}"] = value[start: start + self.num_driving].clone()
        return item
