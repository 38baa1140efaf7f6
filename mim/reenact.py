"""Reenactment: a portrait animated with the motion of a driving video (``mim reenact``)."""

from __future__ import annotations

import itertools
from typing import Iterator, Optional

import torch

from mim.checkpoint import renderer_from_checkpoint
from mim.face import DEFAULT_CROP_SCALE
from mim.io import has_audio, iter_video, read_audio, read_image, write_video
from mim.portrait import DrivingFraming, frame_portrait, square_resize
from mim.precision import autocast, check_precision, render_state
from mim.graphs import window_wrapper

__all__ = ["reenact", "square_resize"]   # square_resize: mim.portrait's, kept importable here


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
            progress: bool = True, crop: str = "face", face: int = 0,
            crop_scale: float = DEFAULT_CROP_SCALE, driving_crop: str = "face",
            detect_every: int = 5, smoothing: float = 0.6, precision: str = "fp32",
            graphs: str = "eager") -> int:
    """Render ``image`` with the motion of every frame of ``driving`` and write ``out`` (mp4);
    returns the number of frames written.

    The source is encoded once; motion features are taken from the driving frames and, with
    ``relative`` (default), applied as M_source + (M_i − M_first driving frame), so the driving
    person's identity does not leak into the portrait.

    Framing (:mod:`mim.portrait`): ``crop="face"`` detects face ``face`` of the portrait (0 = the
    largest), animates a square of ``crop_scale`` face widths around it and pastes every frame
    back, so the video has the portrait's size (rounded down to even); ``crop="center"`` uses
    and outputs the centre square at the model's size. ``driving_crop="face"`` tracks the
    driving face (detection every ``detect_every`` frames, the square smoothed over time by
    ``smoothing``) and crops each driving frame around it; ``"center"`` takes the centre square.
    The driving video is decoded, cropped and
    rendered frame by frame, one render window (``render_window`` frames) at a time, and streamed
    to the encoder, so memory does not grow with its length. ``max_frames`` stops after that many
    driving frames and cuts the copied audio at max_frames / fps. The driving video's audio is
    copied when it has an audio track. The inputs and the first driving frame are read and checked
    before the output file is created; the output is written atomically (a driving frame that
    fails to decode later leaves no output). ``precision`` "bf16" runs the renderer under bf16
    autocast with its fp32 weights (:mod:`mim.precision`); frames come out fp32. ``graphs``
    "cuda-graphs" (CUDA only) captures the render window once per window shape and replays it,
    "compile" runs it under ``torch.compile`` (:mod:`mim.graphs`); "eager" (default) neither."""
    from tqdm import tqdm

    check_precision(precision)
    wrap = window_wrapper(graphs, device)   # --cuda-graphs without CUDA fails here, before any work

    renderer = renderer_from_checkpoint(checkpoint, backend=backend).to(device)
    size = renderer.config.image_size
    framing = frame_portrait(read_image(image), size, crop=crop, face=face, scale=crop_scale,
                             name=str(image))
    source = framing.source[None].to(device)
    decoded, video_fps = iter_video(driving, max_frames=max_frames)
    crop_driving = DrivingFraming(size, crop=driving_crop, detect_every=detect_every, smoothing=smoothing,
                                  crop_scale=crop_scale, name=str(driving))
    frames = (crop_driving(frame) for frame in decoded)
    first = next(frames)
    audio = None
    if copy_audio and has_audio(driving):
        audio = read_audio(driving, 16000)
        if max_frames is not None:
            audio = audio[:int(round(max_frames / video_fps * 16000))]
    fps = fps or video_fps
    state = render_state(renderer.encode_source(source), precision)   # once, in fp32
    with autocast(precision, device):
        first_motion = renderer.encode_motion(first[None].to(device))
    window = renderer.config.render_window
    render_window = None if wrap is None else wrap(renderer.window_frames)
    written = 0

    def rendered() -> Iterator[torch.Tensor]:
        nonlocal written
        bar = tqdm(total=max_frames, desc="reenact", unit="frame", disable=not progress)
        try:
            for batch in _batches(itertools.chain([first], frames), window):
                with autocast(precision, device):   # closed before each yield
                    motion = renderer.encode_motion(batch.to(device)).float()   # M arithmetic in fp32
                    if relative:
                        motion = state.motion.float() + (motion - first_motion.float())
                    rendered_frames = (renderer.render(state, motion[None]) if render_window is None else
                                       render_window(state.feature, state.appearance, state.motion, motion[None]))[0]
                for frame in rendered_frames.float():
                    yield framing.compose(frame.clamp(0, 1).cpu())
                written += batch.shape[0]
                bar.update(batch.shape[0])
        finally:
            bar.close()

    write_video(out, rendered(), fps=fps, audio=audio, sample_rate=16000)
    return written
