"""Stage-1 training: the renderer against the perceptual, adversarial and threshold-mask losses.

Single process or ``torchrun --nproc_per_node=K`` (DDP; each rank takes an equal slice of the
global batch). Batches are a pure function of (seed, step): sample position p of the run is
drawn from epoch p // len(data) of a seeded permutation, and its source/driving frames from a
generator seeded by (seed, epoch, clip). Resuming therefore needs only the checkpoint: the
parameters, both optimizers, the step and the RNG state; the resumed run is bitwise the run
that was not interrupted (tested).

From shards (``data`` naming shard tars, :mod:`mim.data.stream`) each rank streams its own
shards through a DataLoader of ``workers`` processes; a resumed stream skips the batches the
checkpoint's step consumed, so it continues with the batches of the uninterrupted run (tested).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from mim.checkpoint import (RENDERER_KINDS, CheckpointError, check_same_renderer, checkpoint_config,
                            load_checkpoint, read_metadata)
from mim.config import Config, config_to_dict
from mim.data import (ShardClips, ShardSet, SourceDrivingPairs, Stage1Stream, SyntheticGestures,
                      SyntheticTalkingHeads, VideoFolderDataset, expand_shards, heldout_split, is_shard_spec,
                      usable_workers)
from mim.evaluate import evaluate_reconstruction
from mim.losses import (MultiScalePatchDiscriminator, PerceptualLoss, crop_boxes, discriminator_loss,
                        feature_matching_loss, generator_adversarial_loss, threshold_mask_loss,
                        total_generator_loss)
from mim.models import Renderer, standardize_motion
from mim.train.distributed import DistributedContext, shutdown_distributed
from mim.train.loop import CsvLog, TrainerBase

__all__ = ["Stage1Trainer", "build_stage1_data", "train_stage1", "OPTIONAL_BRANCHES"]

log = logging.getLogger("mim.train")
KIND = "stage1"
# Renderer branches a recipe may add that start at zero (the renderer computes what it did
# without them), by recipe flag: a checkpoint trained without one initializes a renderer with it.
OPTIONAL_BRANCHES = {"decoder_motion_film": "decoder.motion_films."}


def build_stage1_data(config: Config, data: str, heldout: Optional[str] = None):
    """(training clips, held-out clips) for ``data`` = "synthetic" (procedural clips of the kind
    ``train.procedural`` names: talking heads or gesturing upper bodies), a folder of real clips, or
    shards (a folder of ``*.tar``, a glob or a brace pattern: :func:`mim.data.is_shard_spec`).

    A folder's clips are split by sorted name: the last ``train.heldout_clips`` (at most half)
    are held out. Shards give a :class:`mim.data.ShardSet` to stream from and, held out, the
    shards ``heldout`` names, else the last shard of the list (none when
    ``train.heldout_clips`` is 0); evaluation reads the first ``train.heldout_clips`` segments of
    those, up to ``train.frames_per_clip`` frames each (:class:`mim.data.ShardClips`)."""
    size, train = config.renderer.image_size, config.train
    shards = data != "synthetic" and is_shard_spec(data)
    if heldout is not None and not shards:
        raise ValueError("heldout names held-out shards; it applies only when data names shards")
    if data == "synthetic":
        clips = SyntheticGestures if train.procedural == "gestures" else SyntheticTalkingHeads
        return (clips(train.train_clips, num_frames=train.frames_per_clip, size=size,
                      seed=train.seed, split="train"),
                clips(train.heldout_clips, num_frames=train.frames_per_clip,
                      size=size, seed=train.seed, split="heldout"))
    if shards:
        urls = expand_shards(data)
        if heldout is None:
            urls, held = heldout_split(urls, train.heldout_clips)
        else:
            held = expand_shards(heldout)
            overlap = sorted(set(map(os.path.abspath, urls)) & set(map(os.path.abspath, held)))
            if overlap:
                raise ValueError(f"held-out shards are also training shards: {', '.join(overlap)}")
        return (ShardSet(urls), ShardClips(held, size, max_clips=train.heldout_clips,
                                           max_frames=train.frames_per_clip))
    clips = VideoFolderDataset(data, size=size)
    heldout = min(train.heldout_clips, len(clips) // 2)
    indices = list(range(len(clips)))
    return (torch.utils.data.Subset(clips, indices[:len(clips) - heldout]),
            torch.utils.data.Subset(clips, indices[len(clips) - heldout:]))


class Stage1Trainer(TrainerBase):
    """Owns the renderer, the discriminator, their optimizers, the data and the logs of a run
    in ``out_dir`` (``config.yaml``, ``log.csv``, ``eval.csv``, ``tensorboard/``, ``checkpoints/``)."""

    KIND = KIND
    LOG_FIELDS = ("step", "loss", "l1", "perceptual", "mouth", "mouth_open", "mask", "adversarial",
                  "feature_matching", "discriminator", "lr", "seconds")
    POSTFIX = ("loss", "l1")

    def __init__(self, config: Config, out_dir: str, data: str = "synthetic",
                 backend: Optional[str] = None, device: str = "auto", resume: bool = False,
                 progress: bool = True, keep_checkpoints: int = 3,
                 context: Optional[DistributedContext] = None, workers: int = 2,
                 heldout: Optional[str] = None, stream_options: Optional[Dict] = None,
                 precision: Optional[str] = None):
        self.setup_run(config, out_dir, device, progress, keep_checkpoints, context, precision)
        t = self.config.train
        dev = self.ctx.device
        self.renderer = Renderer.from_config(config, backend=backend).to(dev, self.dtype)
        self.discriminator = MultiScalePatchDiscriminator(
            scales=config.loss.discriminator_scales,
            base_channels=config.loss.discriminator_channels).to(dev, self.dtype)
        self.perceptual = PerceptualLoss(config.loss.vgg19_weights, config.loss.perceptual_scales,
                                         config.loss.perceptual_layer_weight).to(dev, self.dtype)
        # the read-out of the mouth opening from M (recipe.alpha_mouth_open): trained with the
        # renderer, saved in checkpoints, not part of the renderer (inference never uses it)
        for part in config.recipe.freeze:
            getattr(self.renderer, part).requires_grad_(False)
        self.mouth_head = None
        if config.recipe.alpha_mouth_open > 0:
            self.mouth_head = torch.nn.Linear(config.renderer.motion_dim, 1).to(dev, self.dtype)
        self.opt_g = torch.optim.Adam(self.generator_parameters(), lr=t.lr, betas=t.betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=t.discriminator_lr,
                                      betas=t.betas)
        self.train_clips, self.heldout_clips = build_stage1_data(config, data, heldout)
        if isinstance(self.train_clips, ShardSet):
            self.pairs = None
            self.open_stream(self.train_clips, workers, stream_options or {})
        else:
            self.pairs = SourceDrivingPairs(self.train_clips, num_driving=t.num_driving, seed=t.seed)
        if self.ctx.enabled:
            self.g = DistributedDataParallel(self.renderer, device_ids=self.device_ids())
            self.d = DistributedDataParallel(self.discriminator, device_ids=self.device_ids())
        else:
            self.g, self.d = self.renderer, self.discriminator
        self.finish_setup(resume)
        if self.ctx.is_main:
            log.info("perceptual loss: %s", self.perceptual.mode)
            if self.stream is not None:
                if config.recipe.alpha_mouth > 0 or self.mouth_head is not None:
                    log.info("mouth loss and mouth-opening read-out off: shards hold no mouth labels")
            elif config.recipe.alpha_mouth > 0 and len(self.train_clips) and "mouth_box" not in self.train_clips[0]:
                log.info("mouth loss off: the training clips have no mouth boxes")
            if self.mouth_head is not None and len(self.train_clips) and "mouth_open" not in self.train_clips[0]:
                log.info("mouth-opening read-out off: the training clips have no mouth_open labels")

    def open_stream(self, shards: ShardSet, workers: int, options: Dict) -> None:
        """Stream stage-1 pairs from ``shards``: this rank's slice, ``workers`` DataLoader
        processes (fewer when there are too few shards per rank), ``options`` for
        :class:`mim.data.Stage1Stream` (``pairs_per_segment``, ``shuffle_buffer``)."""
        t = self.config.train
        self.stream_workers = usable_workers(len(shards.urls), self.ctx.world_size, workers)
        if self.stream_workers < workers and self.ctx.is_main:
            log.info("%d shard(s) for %d rank(s): %d loader worker(s) per rank instead of %d",
                     len(shards.urls), self.ctx.world_size, self.stream_workers, workers)
        self.stream = Stage1Stream(shards.urls, self.local_batch, self.config.renderer.image_size,
                                   num_driving=t.num_driving, seed=t.seed, rank=self.ctx.rank,
                                   world_size=self.ctx.world_size, **options)

    def generator_parameters(self):
        """The parameters opt_g trains: the renderer's (but for ``recipe.freeze``) and the mouth
        read-out's."""
        heads = [] if self.mouth_head is None else list(self.mouth_head.parameters())
        return [p for p in self.renderer.parameters() if p.requires_grad] + heads

    def train_section(self):
        return self.config.train

    def initialize_from(self, path: str) -> None:
        """Fine-tuning start: the renderer's weights from the renderer checkpoint ``path`` (the
        optimizers, the step, the schedule and the discriminator start fresh). The renderer
        configs must match, except that this one may add OPTIONAL_BRANCHES the checkpoint was
        trained without; those keep their zero start."""
        meta = read_metadata(path)
        if meta["kind"] not in RENDERER_KINDS:
            raise CheckpointError(f"checkpoint {path!r} holds a {meta['kind']!r} model, not a renderer")
        saved = checkpoint_config(path, meta).recipe
        added = [flag for flag in OPTIONAL_BRANCHES if getattr(self.config.recipe, flag) and not getattr(saved, flag)]
        compared = copy.deepcopy(self.config)
        for flag in added:
            setattr(compared.recipe, flag, False)
        check_same_renderer(meta["config"], compared, path)
        load_checkpoint(path, kind=meta["kind"], modules={"renderer": self.renderer},
                        optional=[f"renderer.{OPTIONAL_BRANCHES[flag]}" for flag in added])
        if self.ctx.is_main:
            log.info("renderer initialized from %s (step %s)%s", path, meta["step"],
                     f"; new branches at zero: {', '.join(added)}" if added else "")

    def checkpoint_modules(self):
        modules = {"renderer": self.renderer, "discriminator": self.discriminator}
        if self.mouth_head is not None:
            modules["mouth_head"] = self.mouth_head
        return modules

    def checkpoint_optimizers(self):
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def checkpoint_extra(self):
        return {"perceptual": self.perceptual.mode}

    def check_resumable(self, saved_config, path):
        check_same_renderer(saved_config, self.config, path)

    # -- data -------------------------------------------------------------------------------
    def _sample(self, position: int):
        n = len(self.pairs)
        epoch, offset = divmod(position, n)
        gen = torch.Generator().manual_seed(self.config.train.seed * 1_000_003 + epoch)
        index = int(torch.randperm(n, generator=gen)[offset])
        self.pairs.set_epoch(epoch)
        return self.pairs[index]

    def batch(self, step: int, micro: int):
        """This rank's (source, driving, mouth boxes, mouth openings) for micro-batch ``micro``
        of optimizer step ``step``; the boxes (B, N, 4) and openings (B, N) are None when the
        clips have none."""
        if self.stream is not None:
            batch = self.stream_batch(step, micro)   # uint8 frames: to [0, 1] on the device
            source, driving = (batch[k].to(self.ctx.device, non_blocking=True).to(self.dtype).div_(255.0)
                               for k in ("source", "driving"))
            return source, driving, None, None
        t = self.config.train
        start = (step * t.grad_accumulation + micro) * t.batch_size + self.ctx.rank * self.local_batch
        items = [self._sample(p) for p in range(start, start + self.local_batch)]
        source = torch.stack([it["source"] for it in items]).to(self.ctx.device, self.dtype)
        driving = torch.stack([it["driving"] for it in items]).to(self.ctx.device, self.dtype)
        boxes = None
        if all("driving_mouth_box" in it for it in items):
            boxes = torch.stack([it["driving_mouth_box"] for it in items]).to(self.ctx.device, self.dtype)
        opening = None
        if all("driving_mouth_open" in it for it in items):
            opening = torch.stack([it["driving_mouth_open"] for it in items]).to(self.ctx.device, self.dtype)
        return source, driving, boxes, opening

    # -- one step ---------------------------------------------------------------------------
    def _adversarial_on(self) -> bool:
        return self.config.loss.alpha_adversarial > 0 and self.step >= self.config.loss.adversarial_start_step

    def generator_loss(self, source: torch.Tensor, driving: torch.Tensor, adversarial: bool,
                       mouth_boxes: Optional[torch.Tensor] = None,
                       mouth_open: Optional[torch.Tensor] = None):
        """Eq. 3 (+ feature matching once the GAN is on, + the recipe's mouth-crop loss when
        ``recipe.alpha_mouth`` > 0 and ``mouth_boxes`` (B, N, 4) are given, + the mouth-opening
        read-out's squared error when ``recipe.alpha_mouth_open`` > 0 and ``mouth_open`` (B, N)
        is given) for one micro-batch: returns (loss, its terms, predicted frames, target
        frames), frames flattened to (B·N, 3, S, S)."""
        cfg, recipe = self.config.loss, self.config.recipe
        with self.autocast():
            out = self.g(source, driving)
            pred = out["frames"].flatten(0, 1)
            target = driving.flatten(0, 1)
            per = self.perceptual(pred.to(self.dtype), target)
            mouth = torch.zeros((), device=pred.device, dtype=self.dtype)
            if recipe.alpha_mouth > 0 and mouth_boxes is not None:
                boxes = mouth_boxes.flatten(0, 1)
                mouth = self.perceptual(crop_boxes(pred.to(self.dtype), boxes, recipe.mouth_crop, recipe.mouth_margin),
                                        crop_boxes(target, boxes, recipe.mouth_crop, recipe.mouth_margin))
            opening = torch.zeros((), device=pred.device, dtype=self.dtype)
            if self.mouth_head is not None and mouth_open is not None:
                read = self.mouth_head(standardize_motion(out["motion"].to(self.dtype),
                                                         self.config.renderer.eps))[..., 0]
                opening = (read - mouth_open).pow(2).mean()
            with torch.no_grad():   # L_pg's target: the driving frame's own F_id, activated like φ_r
                v_gt = F.leaky_relu(self.renderer.encode_volume(target), self.config.renderer.beta)
            mask_loss = threshold_mask_loss(v_gt.to(self.dtype), out["warped"].to(self.dtype), cfg.mask_tau)
            adv = fm = torch.zeros((), device=pred.device, dtype=self.dtype)
            if adversarial:
                self.discriminator.requires_grad_(False)
                fake_out = self.discriminator(pred)
                with torch.no_grad():
                    real_out = self.discriminator(target)
                self.discriminator.requires_grad_(True)
                adv = generator_adversarial_loss(fake_out, cfg.gan_kind)
                fm = feature_matching_loss(real_out, fake_out)
            loss = total_generator_loss(per, adv, mask_loss, (cfg.alpha_perceptual,
                                                              cfg.alpha_adversarial, cfg.alpha_mask))
            if adversarial:
                loss = loss + cfg.feature_matching * fm
            if recipe.alpha_mouth > 0:
                loss = loss + recipe.alpha_mouth * mouth
            if self.mouth_head is not None:
                loss = loss + recipe.alpha_mouth_open * opening
        terms = {"loss": loss, "l1": (pred.detach().to(self.dtype) - target).abs().mean(),
                 "perceptual": per, "mouth": mouth, "mouth_open": opening, "mask": mask_loss, "adversarial": adv,
                 "feature_matching": fm}
        return loss, terms, pred, target

    def train_step(self, total_steps: int = 0) -> Dict[str, float]:
        cfg, t = self.config.loss, self.config.train
        factor = self.lr_factor(self.step, total_steps)
        for group in self.opt_g.param_groups:
            group["lr"] = t.lr * factor
        for group in self.opt_d.param_groups:
            group["lr"] = t.discriminator_lr * factor
        adversarial = self._adversarial_on()
        sums: Dict[str, float] = {}
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        fakes, reals = [], []
        for micro in range(t.grad_accumulation):
            source, driving, boxes, opening = self.batch(self.step, micro)
            last = micro == t.grad_accumulation - 1
            sync = contextlib.nullcontext() if (last or not self.ctx.enabled) else self.g.no_sync()
            with sync:   # no_sync must cover the backward too
                loss, terms, pred, target = self.generator_loss(source, driving, adversarial, boxes, opening)
                (loss / t.grad_accumulation).backward()
            fakes.append(pred.detach())
            reals.append(target)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / t.grad_accumulation
        if self.mouth_head is not None and self.ctx.enabled:   # outside DDP: average by hand
            for parameter in self.mouth_head.parameters():
                if parameter.grad is not None:
                    torch.distributed.all_reduce(parameter.grad)
                    parameter.grad /= self.ctx.world_size
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.generator_parameters(), t.grad_clip)
        self.opt_g.step()
        sums["discriminator"] = 0.0
        if adversarial:
            for micro, (fake, real) in enumerate(zip(fakes, reals)):
                last = micro == t.grad_accumulation - 1
                sync = contextlib.nullcontext() if (last or not self.ctx.enabled) else self.d.no_sync()
                with sync:   # no_sync must cover the backward too
                    with self.autocast():
                        # one forward over real and fake: a DDP module runs one forward per backward
                        both = self.d(torch.cat([real, fake]))
                        half = real.shape[0]
                        real_out = [([f[:half] for f in feats], logits[:half]) for feats, logits in both]
                        fake_out = [([f[half:] for f in feats], logits[half:]) for feats, logits in both]
                        d_loss = discriminator_loss(real_out, fake_out, cfg.gan_kind)
                    (d_loss / t.grad_accumulation).backward()
                sums["discriminator"] += float(d_loss.detach()) / t.grad_accumulation
            self.opt_d.step()
        self.step += 1
        values = self.mean_over_ranks(sums)
        values["lr"] = t.lr * factor
        return values

    def after_step(self, writer) -> None:
        every = self.config.train.eval_every
        if every and self.step % every == 0 and self.ctx.is_main:
            self._log_eval(writer)

    def _log_eval(self, writer) -> Dict[str, float]:
        """Held-out figures at this step: TensorBoard ``eval/*`` and a row of ``eval.csv``."""
        result = evaluate_reconstruction(self.renderer, self.heldout_clips, self.ctx.device)
        for k, v in result.items():
            writer.add_scalar(f"eval/{k}", v, self.step)
        path = os.path.join(self.out_dir, "eval.csv")
        fields = ["step"] + sorted(result)
        log_file = CsvLog(path, fields, append=True)
        log_file.write({"step": self.step, **result})
        log_file.close()
        return result


def train_stage1(config: Config, out_dir: str, steps: int, data: str = "synthetic",
                 backend: Optional[str] = None, device: str = "auto", resume: bool = False,
                 progress: bool = True, evaluate: bool = True,
                 init: Optional[str] = None, workers: int = 2,
                 heldout: Optional[str] = None,
                 precision: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Run stage-1 training (the ``mim train stage1`` command); returns the last training
    values and, when ``evaluate``, the held-out metrics of the final model (rank 0).
    ``init``: a renderer checkpoint to fine-tune from (:meth:`Stage1Trainer.initialize_from`);
    used only when the run starts at step 0 (a resumed run continues its own weights).
    ``workers``, ``heldout``: DataLoader workers per rank and held-out shards when ``data``
    names shards (:func:`build_stage1_data`). ``precision``: "bf16" (autocast, fp32 master
    weights), "fp32", or None for the config's ``train.amp`` (bf16 on CUDA only)."""
    os.makedirs(out_dir, exist_ok=True)
    if resume:
        path = os.path.join(out_dir, "config.yaml")
        if os.path.exists(path):
            from mim.config import load_config
            saved = load_config(path)
            check_same_renderer(config_to_dict(saved), config, path)
    trainer = Stage1Trainer(config, out_dir, data=data, backend=backend, device=device,
                            resume=resume, progress=progress, workers=workers, heldout=heldout,
                            precision=precision)
    try:
        if init is not None and trainer.step == 0:
            trainer.initialize_from(init)
        last = trainer.run(steps)
        result = {"train": last}
        if evaluate and trainer.ctx.is_main:
            result["heldout"] = evaluate_reconstruction(trainer.renderer, trainer.heldout_clips,
                                                        trainer.ctx.device)
        return result
    finally:
        trainer.close_stream()
        shutdown_distributed(trainer.ctx)
