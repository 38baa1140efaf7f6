"""Reenactment: a portrait animated with the motion of a driving video (``mim reenact``)."""

from __future__ import annotations

import itertools
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from mim.checkpoint import renderer_from_checkpoint
from mim.io import has_audio, iter_video, read_audio, read_image, write_video

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


def _batches(frames: Iterator[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Consecutive frames (3, S, S) stacked ``size`` at a time (the last batch may be shorter)."""
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


@torch.no_grad()
def reenact(image: str, driving: str, checkpoint: str, out: str, backend: Optional[str] = None,
            device: torch.device = torch.device("cpu"), fps: Optional[float] = None,
            max_frames: Optional[int] = None, relative: bool = True, copy_audio: bool = True,
            progress: bool = True) -> int:
    """Render ``image`` with the motion of every frame of ``driving`` and write ``out`` (mp4);
    returns the number of frames written.

    The source is encoded once; motion features are taken from the driving frames and, with
    ``relative`` (default), applied as M_source + (M_i − M_first driving frame), so the driving
    person's identity does not leak into the portrait. The driving video is decoded, resized and
    rendered frame by frame, one render window (``render_window`` frames) at a time, and streamed
    to the encoder, so memory does not grow with its length. ``max_frames`` stops after that many
    driving frames and cuts the copied audio at max_frames / fps. The driving video's audio is
    copied when it has an audio track. The inputs and the first driving frame are read and checked
    before the output file is created; the output is written atomically (a driving frame that
    fails to decode later leaves no output)."""
    from tqdm import tqdm

    renderer = renderer_from_checkpoint(checkpoint, backend=backend).to(device)
    size = renderer.config.image_size
    source = square_resize(read_image(image), size)[None].to(device)
    decoded, video_fps = iter_video(driving, max_frames=max_frames)
    frames = (square_resize(frame, size) for frame in decoded)
    first = next(frames)
    audio = None
    if copy_audio and has_audio(driving):
        audio = read_audio(driving, 16000)
        if max_frames is not None:
            audio = audio[:int(round(max_frames / video_fps * 16000))]
    fps = fps or video_fps
    state = renderer.encode_source(source)
    window = renderer.config.render_window
    first_motion = renderer.encode_motion(first[None].to(device))
    written = 0

    def rendered() -> Iterator[torch.Tensor]:
        nonlocal written
        bar = tqdm(total=max_frames, desc="reenact", unit="frame", disable=not progress)
        try:
            for batch in _batches(itertools.chain([first], frames), window):
                motion = renderer.encode_motion(batch.to(device))
                if relative:
                    motion = state.motion + (motion - first_motion)
                for frame in renderer.render(state, motion[None])[0]:
                    yield frame.clamp(0, 1).cpu()
                written += batch.shape[0]
                bar.update(batch.shape[0])
        finally:
            bar.close()

    write_video(out, rendered(), fps=fps, audio=audio, sample_rate=16000)
    return written
