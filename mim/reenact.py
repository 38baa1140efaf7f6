"""Reenactment: a portrait animated with the motion of a driving video (``mim reenact``)."""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from mim.io import has_audio, read_audio, read_image, read_video, write_video
from mim.train.stage1 import renderer_from_checkpoint

__all__ = ["reenact", "square_resize"]


def square_resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop (..., 3, H, W) to a square, then resize to size × size (antialiased)."""
    h, w = frames.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frames = frames[..., top:top + side, left:left + side]
    if side == size:
        return frames.contiguous()
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0, 1).view(*lead, 3, size, size)


@torch.no_grad()
def reenact(image: str, driving: str, checkpoint: str, out: str, backend: Optional[str] = None,
            device: torch.device = torch.device("cpu"), fps: Optional[float] = None,
            max_frames: Optional[int] = None, relative: bool = True, copy_audio: bool = True,
            progress: bool = True) -> int:
    """Render ``image`` with the motion of every frame of ``driving`` and write ``out`` (mp4);
    returns the number of frames written.

    The source is encoded once; motion features are taken from the driving frames and, with
    ``relative`` (default), applied as M_source + (M_i − M_first driving frame), so the driving
    person's identity does not leak into the portrait. The driving video's audio is copied when it
    has an audio track. Inputs are read and checked before the output file is created; the output
    is written atomically."""
    from tqdm import tqdm

    renderer = renderer_from_checkpoint(checkpoint, backend=backend).to(device)
    size = renderer.config.image_size
    source = square_resize(read_image(image), size)[None].to(device)
    frames, video_fps = read_video(driving, max_frames=max_frames)
    frames = square_resize(frames, size)
    audio = None
    if copy_audio and has_audio(driving):
        audio = read_audio(driving, 16000)
        if max_frames is not None:
            audio = audio[:int(round(frames.shape[0] / video_fps * 16000))]
    fps = fps or video_fps
    state = renderer.encode_source(source)
    window = renderer.config.render_window
    first = renderer.encode_motion(frames[:1].to(device))

    def rendered() -> Iterator[torch.Tensor]:
        bar = tqdm(total=frames.shape[0], desc="reenact", unit="frame", disable=not progress)
        try:
            for start in range(0, frames.shape[0], window):
                motion = renderer.encode_motion(frames[start:start + window].to(device))
                if relative:
                    motion = state.motion + (motion - first)
                for frame in renderer.render(state, motion[None])[0]:
                    yield frame.clamp(0, 1).cpu()
                bar.update(motion.shape[0])
        finally:
            bar.close()

    write_video(out, rendered(), fps=fps, audio=audio, sample_rate=16000)
    return frames.shape[0]
