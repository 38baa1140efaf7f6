"""Stage-2 training: the motion generator (Mamba-g, Mamba-l, the denoiser ε_θ) on motion features
that a trained stage-1 renderer's motion encoder extracts from the clips (paper §III-B).

Every clip is encoded once at start-up: its motion features M (T, D) and F_A (of its first
frame, the source) with the frozen renderer, its log-mel and per-frame audio slices. A batch is a
set of windows of ``motion.window`` frames; window starts, like stage 1's batches, are a pure
function of (seed, step), and the diffusion draws (timestep, noise, condition dropout) come from
a generator seeded by (seed, step, micro-batch, rank): a checkpoint resumes exactly.

From shards (``data`` naming shard tars) nothing is encoded up front: each rank streams windows
of frames with their audio (:class:`mim.data.Stage2Stream`) and each batch's frames go through
the frozen renderer's motion encoder (no_grad) as the batch is used; F_A comes from the
segment's first frame, as encode_clips takes it from the clip's. The motion statistics come
from the first ``STATS_SEGMENTS`` usable segments of the shard list (their first window).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mim.audio import audio_features
from mim.checkpoint import check_same_renderer, checkpoint_config, renderer_from_checkpoint
from mim.config import Config
from mim.data import ShardSet, Stage2Stream, usable_workers
from mim.data.stream import read_shard
from mim.data.shards import sample_metadata
from mim.models import Renderer
from mim.models.motion import MotionGenerator
from mim.train.distributed import DistributedContext, shutdown_distributed
from mim.train.loop import TrainerBase
from mim.train.stage1 import build_stage1_data

__all__ = ["Stage2Trainer", "encode_clips", "stream_motion_statistics", "train_stage2", "KIND"]

log = logging.getLogger("mim.train")
KIND = "stage2"
STATS_SEGMENTS = 16


@torch.no_grad()
def encode_clips(renderer: Renderer, clips, config: Config, device, progress: bool = False) -> List[Dict]:
    """Per clip: ``motion`` (T, D) from the renderer's motion encoder, ``appearance`` (A,) = F_A
    of frame 0, ``mel`` (L, 80) and ``local`` (T, W, 80) audio features. Clips without audio are
    skipped with a warning; none left is an error."""
    from tqdm import tqdm

    renderer.eval()
    encoded = []
    for index in tqdm(range(len(clips)), desc="encode clips", unit="clip", disable=not progress):
        clip = clips[index]
        if len(clip["audio"]) == 0:
            log.warning("clip %d has no audio: skipped for stage 2", index)
            continue
        frames = clip["frames"].to(device)
        motion = torch.cat([renderer.encode_motion(frames[s:s + 64]) for s in range(0, len(frames), 64)])
        features = audio_features(clip["audio"], num_frames=frames.shape[0])
        encoded.append({"motion": motion.float().cpu(),
                        "appearance": renderer.appearance_extractor(frames[:1])[0].float().cpu(),
                        "mel": features.mel,
                        "local": features.local_windows(config.motion.local_context)})
    if not encoded:
        raise ValueError("no clip with audio to train stage 2 on")
    return encoded


@torch.no_grad()
def stream_motion_statistics(renderer: Renderer, stream: Stage2Stream, device,
                             segments: int = STATS_SEGMENTS):
    """(mean, std) per motion feature over the first window of the first ``segments`` segments
    of ``stream``'s shards (in list order, so every rank gets the same) that stage 2 can use."""
    renderer.eval()
    motion = []
    for url in stream.urls:
        for sample in read_shard(url):
            if stream.usable(sample, sample_metadata(sample)):
                frames = stream.frames(sample, range(stream.window)).to(device).float().div_(255.0)
                motion.append(renderer.encode_motion(frames).float().cpu())
                if len(motion) == segments:
                    break
        if len(motion) == segments:
            break
    if not motion:
        raise ValueError(f"no segment with audio and at least motion.window = {stream.window} frames "
                         f"in {len(stream.urls)} shard(s) to train stage 2 on")
    every = torch.cat(motion)
    return every.mean(0), every.std(0).clamp_min(1e-4)


class _Objective(nn.Module):
    """The generator's training loss as a module forward, so DDP can wrap it."""

    def __init__(self, generator: MotionGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, mel, mel_lengths, local, motion, prev_motion, appearance, weights, draws):
        f_ag, f_al = self.generator.encode_audio(mel, local, mel_lengths)
        return self.generator.training_loss(motion, f_ag, f_al, prev_motion, appearance, weights,
                                            generator=draws)


class Stage2Trainer(TrainerBase):
    KIND = KIND
    LOG_FIELDS = ("step", "total", "simple", "mse", "velocity", "acceleration", "lr", "seconds")
    POSTFIX = ("total", "simple")

    def __init__(self, config: Config, renderer: Renderer, out_dir: str, data: str = "synthetic",
                 device: str = "auto", resume: bool = False, progress: bool = True,
                 keep_checkpoints: int = 3, context: Optional[DistributedContext] = None,
                 workers: int = 2, heldout: Optional[str] = None, stream_options: Optional[Dict] = None,
                 precision: Optional[str] = None):
        self.setup_run(config, out_dir, device, progress, keep_checkpoints, context, precision)
        t = self.config.stage2
        dev = self.ctx.device
        self.renderer = renderer.to(dev).eval().requires_grad_(False)
        data_config = copy.deepcopy(config)   # stage 2's clips: its own count, length and seed
        for key in ("train_clips", "heldout_clips", "frames_per_clip", "seed"):
            setattr(data_config.train, key, getattr(t, key))
        train_clips, self.heldout_clips = build_stage1_data(data_config, data, heldout)
        self.generator = MotionGenerator(config.motion, config.renderer.motion_dim,
                                         config.renderer.appearance_dim).to(dev, self.dtype)
        if isinstance(train_clips, ShardSet):
            self.clips = None
            self.open_stream(train_clips, workers, stream_options or {})
            mean, std = stream_motion_statistics(self.renderer, self.stream, dev)
        else:
            self.clips = encode_clips(self.renderer, train_clips, config, dev, progress and self.ctx.is_main)
            too_short = [i for i, c in enumerate(self.clips) if c["motion"].shape[0] < config.motion.window]
            if too_short:
                raise ValueError(f"{len(too_short)} clip(s) are shorter than motion.window = "
                                 f"{config.motion.window} frames (first: clip {too_short[0]})")
            every = torch.cat([c["motion"] for c in self.clips])
            mean, std = every.mean(0), every.std(0).clamp_min(1e-4)
        self.generator.motion_mean.copy_(mean)
        self.generator.motion_std.copy_(std)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=t.lr, betas=t.betas)
        objective = _Objective(self.generator)
        self.objective = (DistributedDataParallel(objective, device_ids=self.device_ids())
                          if self.ctx.enabled else objective)
        self.finish_setup(resume)

    def train_section(self):
        return self.config.stage2

    def checkpoint_modules(self):
        return {"renderer": self.renderer, "motion": self.generator}

    def checkpoint_optimizers(self):
        return {"opt": self.optimizer}

    def check_resumable(self, saved_config, path):
        check_same_renderer(saved_config, self.config, path)

    def open_stream(self, shards: ShardSet, workers: int, options: Dict) -> None:
        """Stream stage-2 windows from ``shards``: this rank's slice, ``workers`` DataLoader
        processes (fewer when there are too few shards per rank), ``options`` for
        :class:`mim.data.Stage2Stream` (``windows_per_segment``, ``shuffle_buffer``)."""
        m = self.config.motion
        self.stream_workers = usable_workers(len(shards.urls), self.ctx.world_size, workers)
        if self.stream_workers < workers and self.ctx.is_main:
            log.info("%d shard(s) for %d rank(s): %d loader worker(s) per rank instead of %d",
                     len(shards.urls), self.ctx.world_size, self.stream_workers, workers)
        self.stream = Stage2Stream(shards.urls, self.local_batch, self.config.renderer.image_size,
                                   window=m.window, prev_frames=m.prev_frames, local_context=m.local_context,
                                   seed=self.config.stage2.seed, rank=self.ctx.rank,
                                   world_size=self.ctx.world_size, **options)

    @torch.no_grad()
    def encode_stream_batch(self, batch: Dict) -> Dict:
        """A streamed batch as _Objective's inputs: the frames' motion features M from the frozen
        renderer, F_A of each segment's first frame, the previous frames' normalized M (zeros
        where the window starts before frame prev_frames), the audio features as streamed."""
        dev, dtype, prev = self.ctx.device, self.dtype, self.config.motion.prev_frames
        frames, first = (batch[k].to(dev, non_blocking=True).float().div_(255.0) for k in ("frames", "first_frame"))
        motion = self.renderer.encode_motion(frames).float()
        appearance = self.renderer.appearance_extractor(first).float()
        real = torch.arange(prev, device=dev)[None] >= prev - batch["context"].to(dev)[:, None]
        previous = self.generator.normalize(motion[:, :prev].to(dtype))
        previous = torch.where(real[..., None], previous, torch.zeros_like(previous))
        return {"mel": batch["mel"].to(dev, dtype), "mel_lengths": batch["mel_lengths"].to(dev),
                "local": batch["local"].to(dev, dtype), "motion": motion[:, prev:].to(dtype),
                "prev_motion": previous, "appearance": appearance.to(dtype)}

    def batch(self, step: int, micro: int):
        """This rank's windows of micro-batch ``micro`` of step ``step`` (inputs of _Objective)."""
        if self.stream is not None:
            return self.encode_stream_batch(self.stream_batch(step, micro))
        t, window = self.config.stage2, self.config.motion.window
        prev = self.config.motion.prev_frames
        start = (step * t.grad_accumulation + micro) * t.batch_size + self.ctx.rank * self.local_batch
        items = []
        for position in range(start, start + self.local_batch):
            epoch, offset = divmod(position, len(self.clips))
            order = torch.randperm(len(self.clips), generator=torch.Generator().manual_seed(
                t.seed * 1_000_003 + epoch))
            clip = self.clips[int(order[offset])]
            draw = torch.Generator().manual_seed(t.seed * 1_000_003 + 7919 * position + 1)
            first = int(torch.randint(clip["motion"].shape[0] - window + 1, (1,), generator=draw))
            items.append((clip, first))
        dev, dtype = self.ctx.device, self.dtype
        lengths = torch.tensor([c["mel"].shape[0] for c, _ in items])
        mel = torch.zeros(len(items), int(lengths.max()), items[0][0]["mel"].shape[1])
        for i, (clip, _) in enumerate(items):
            mel[i, :clip["mel"].shape[0]] = clip["mel"]
        motion = torch.stack([c["motion"][s:s + window] for c, s in items])
        normalized_prev = []
        for clip, s in items:
            frames = self.generator.normalize(clip["motion"][max(0, s - prev):s].to(dev, dtype))
            pad = torch.zeros(prev - frames.shape[0], frames.shape[1], device=dev, dtype=dtype)
            normalized_prev.append(torch.cat([pad, frames]))
        return {"mel": mel.to(dev, dtype), "mel_lengths": lengths.to(dev),
                "local": torch.stack([c["local"][s:s + window] for c, s in items]).to(dev, dtype),
                "motion": motion.to(dev, dtype), "prev_motion": torch.stack(normalized_prev),
                "appearance": torch.stack([c["appearance"] for c, _ in items]).to(dev, dtype)}

    def train_step(self, total_steps: int) -> Dict[str, float]:
        t = self.config.stage2
        factor = self.lr_factor(self.step, total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = t.lr * factor
        self.optimizer.zero_grad(set_to_none=True)
        sums: Dict[str, float] = {}
        for micro in range(t.grad_accumulation):
            inputs = self.batch(self.step, micro)
            draws = torch.Generator(device=self.ctx.device).manual_seed(
                hash((t.seed, self.step, micro, self.ctx.rank)) % (2 ** 62))
            last = micro == t.grad_accumulation - 1
            sync = (contextlib.nullcontext() if (last or not self.ctx.enabled)
                    else self.objective.no_sync())
            with sync:
                with self.autocast():
                    terms = self.objective(**inputs, weights=t.loss_weights, draws=draws)
                (terms["total"] / t.grad_accumulation).backward()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / t.grad_accumulation
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), t.grad_clip)
        self.optimizer.step()
        self.step += 1
        values = self.mean_over_ranks(sums)
        values["lr"] = t.lr * factor
        return values


def load_stage1_renderer(path: str, config: Optional[Config] = None):
    """(renderer, config) from a checkpoint holding a renderer; ``config``, when given, must have
    the same renderer section, and is returned; else the checkpoint's own config is."""
    renderer = renderer_from_checkpoint(path, config=config)
    return renderer, (config or checkpoint_config(path))


def train_stage2(stage1: str, out_dir: str, steps: int, config: Optional[Config] = None,
                 data: str = "synthetic", device: str = "auto", resume: bool = False,
                 progress: bool = True, workers: int = 2,
                 heldout: Optional[str] = None,
                 precision: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Run stage-2 training (``mim train stage2``) on top of a stage-1 checkpoint. ``workers``,
    ``heldout``: DataLoader workers per rank and held-out shards when ``data`` names shards.
    ``precision``: "bf16" (autocast, fp32 master weights), "fp32", or None for the config's
    ``stage2.amp`` (bf16 on CUDA only)."""
    os.makedirs(out_dir, exist_ok=True)
    renderer, config = load_stage1_renderer(stage1, config)
    trainer = Stage2Trainer(config, renderer, out_dir, data=data, device=device, resume=resume,
                            progress=progress, workers=workers, heldout=heldout, precision=precision)
    try:
        return {"train": trainer.run(steps)}
    finally:
        trainer.close_stream()
        shutdown_distributed(trainer.ctx)
