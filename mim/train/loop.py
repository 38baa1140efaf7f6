"""What every stage's trainer shares: the run directory, checkpoints and exact resume, the
learning-rate schedule, logs (CSV, TensorBoard), the progress bar and the step loop."""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from typing import Dict, Mapping, Optional, Sequence

import torch

from mim.checkpoint import (checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint,
                            prune_checkpoints, read_metadata, save_checkpoint)
from mim.config import Config, config_to_dict, save_config
from mim.data import shard_loader
from mim.precision import bf16_compute, training_autocast_enabled
from mim.train.distributed import DistributedContext, init_distributed

__all__ = ["CsvLog", "TrainerBase", "TrainingDiverged"]

log = logging.getLogger("mim.train")


class TrainingDiverged(FloatingPointError):
    """The loss of a training step is NaN or infinite; the message names the step and the last
    good checkpoint. The run stops; the checkpoints written so far are kept."""


class CsvLog:
    """Rows appended to a CSV file, flushed after each; the header is written once."""

    def __init__(self, path: str, fields: Sequence[str], append: bool):
        exists = append and os.path.exists(path)
        self.handle = open(path, "a" if exists else "w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=list(fields), extrasaction="ignore")
        if not exists:
            self.writer.writeheader()

    def write(self, row: Dict) -> None:
        self.writer.writerow(row)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class TrainerBase(ABC):
    """A run in ``out_dir`` (``config.yaml``, ``log.csv``, ``tensorboard/``, ``checkpoints/``).

    Subclasses set ``KIND`` (the checkpoint kind), ``LOG_FIELDS``, build their modules and
    optimizers, then call ``finish_setup``; they implement ``train_step(total_steps)`` (one
    optimizer step, returning floats to log), ``checkpoint_modules``, ``checkpoint_optimizers``
    and ``train_section`` (the config section with batch, lr schedule and logging cadence)."""

    KIND = ""
    LOG_FIELDS: Sequence[str] = ()
    POSTFIX: Sequence[str] = ("loss",)
    # a run that reads shards sets ``stream`` (a mim.data Stage1Stream / Stage2Stream for this
    # rank) and ``stream_workers``; ``stream_batch`` then serves its batches in order
    stream = None
    stream_workers = 0
    _batches = None
    stream_batches = 0

    def setup_run(self, config: Config, out_dir: str, device: str, progress: bool,
                  keep_checkpoints: int, context: Optional[DistributedContext],
                  precision: Optional[str] = None) -> None:
        """``precision``: None keeps the config's ``amp`` (bf16 autocast on CUDA only), "bf16"
        autocasts on any device, "fp32" never; the parameters, gradients and optimizer state
        stay in the config's ``dtype`` (fp32 master weights) either way."""
        self.config = config.validate()
        self.out_dir = out_dir
        self.ckpt_dir = os.path.join(out_dir, "checkpoints")
        self.ctx = context or init_distributed(device)
        self.progress = progress
        self.keep = keep_checkpoints
        self.step = 0
        t = self.train_section()
        if t.batch_size % self.ctx.world_size:
            raise ValueError(f"batch_size ({t.batch_size}) must be divisible by the number of "
                             f"processes ({self.ctx.world_size})")
        self.local_batch = t.batch_size // self.ctx.world_size
        self.dtype = getattr(torch, t.dtype)
        self.amp = training_autocast_enabled(precision, t.amp, self.ctx.device)
        torch.manual_seed(t.seed)

    def finish_setup(self, resume: bool) -> None:
        if resume:
            self.resume()
        if self.ctx.is_main:
            os.makedirs(self.ckpt_dir, exist_ok=True)
            save_config(self.config, os.path.join(self.out_dir, "config.yaml"))
        self.ctx.barrier()

    def autocast(self):
        """The forward's bf16 autocast region when ``amp`` is on, else nothing."""
        if self.amp:
            return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def bf16_compute(self):
        """Around a whole step (forward and backward) when ``amp`` is on:
        ``mim.precision.bf16_compute`` (a CPU without bf16 instructions computes the bf16
        convolutions and matmuls in fp32 and rounds them to bf16), else nothing."""
        return bf16_compute("bf16" if self.amp else "fp32", self.ctx.device)

    def device_ids(self):
        return [self.ctx.device.index] if self.ctx.device.type == "cuda" else None

    @abstractmethod
    def train_section(self):
        """The config section with batch size, learning-rate schedule, dtype and logging cadence."""

    @abstractmethod
    def checkpoint_modules(self) -> Mapping[str, torch.nn.Module]:
        """The modules a checkpoint holds, by name (their state_dict keys get the name as prefix)."""

    @abstractmethod
    def checkpoint_optimizers(self) -> Mapping[str, torch.optim.Optimizer]:
        """The optimizers a checkpoint holds, by name."""

    def checkpoint_extra(self) -> Dict:
        return {}

    def check_resumable(self, saved_config: Dict, path: str) -> None:
        """Raise if the checkpoint at ``path`` cannot continue this run's config."""

    @abstractmethod
    def train_step(self, total_steps: int) -> Dict[str, float]:
        """One optimizer step (all micro-batches); returns the floats to log."""

    def after_step(self, writer) -> None:
        """Called on every rank after each step (evaluation hooks)."""

    def mean_over_ranks(self, values: Dict[str, float]) -> Dict[str, float]:
        """Average logged floats over the DDP ranks (identity in one process)."""
        if not self.ctx.enabled:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        packed = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(packed)
        return {k: float(v) / self.ctx.world_size for k, v in zip(keys, packed)}

    # -- learning rate ------------------------------------------------------------------------
    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of the learning rates at ``step`` of a ``total``-step run."""
        t = self.train_section()
        if t.lr_schedule == "constant" or total <= 1:
            return 1.0
        progress = min(step / (total - 1), 1.0)
        return t.lr_min_factor + (1 - t.lr_min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self) -> Optional[str]:
        """Rank 0 writes ``checkpoints/step_<step>.safetensors`` atomically; keeps the newest few."""
        path = None
        if self.ctx.is_main:
            path = checkpoint_path(self.ckpt_dir, self.step)
            extra = self.checkpoint_extra()
            if self.stream is not None:
                extra["stream"] = self.stream_state()
            save_checkpoint(path, kind=self.KIND, step=self.step, config=config_to_dict(self.config),
                            modules=self.checkpoint_modules(), optimizers=self.checkpoint_optimizers(),
                            extra=extra)
            prune_checkpoints(self.ckpt_dir, self.keep)
        self.ctx.barrier()
        return path

    def resume(self) -> None:
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            log.info("no checkpoint in %s: starting at step 0", self.ckpt_dir)
            return
        self.check_resumable(read_metadata(path)["config"], path)
        meta = load_checkpoint(path, kind=self.KIND, modules=self.checkpoint_modules(),
                               optimizers=self.checkpoint_optimizers(), restore_rng=True)
        self.step = meta["step"]
        log.info("resumed from %s at step %d", path, self.step)
        saved = meta["extra"].get("stream")
        if self.stream is not None and saved is not None and saved != self.stream_state():
            log.warning("resuming a shard stream read with %s, now %s: the batches after step %d are "
                        "not those of the interrupted run (exact only with the same shards, seed, ranks, "
                        "workers and batch)", saved, self.stream_state(), self.step)

    # -- a stream of shards -------------------------------------------------------------------------
    def stream_state(self) -> Dict:
        """What the stream's batches depend on, and how many this rank has consumed (saved in
        checkpoints as ``extra["stream"]``)."""
        s = self.stream
        return {"batches": self.step * self.train_section().grad_accumulation, "shards": len(s.urls),
                "seed": s.seed, "world_size": s.world_size, "workers": self.stream_workers,
                "batch_size": s.batch_size}

    def stream_batch(self, step: int, micro: int) -> Dict:
        """Batch ``step · grad_accumulation + micro`` of this rank's stream: the next one. On the
        first call the loader opens with the stream skipping the batches consumed before (a
        resumed run starts at its step)."""
        position = step * self.train_section().grad_accumulation + micro
        if self._batches is None:
            self.stream.start_batch = self.stream_batches = position
            loader = shard_loader(self.stream, self.stream_workers,
                                  pin_memory=self.ctx.device.type == "cuda")
            self._batches = iter(loader)
        if position != self.stream_batches:
            raise RuntimeError(f"stream batches are read in order: batch {position} asked for, "
                               f"{self.stream_batches} is next")
        batch = next(self._batches)
        self.stream_batches += 1
        return batch

    def close_stream(self) -> None:
        """Stop the stream's worker processes (a later ``stream_batch`` reopens it)."""
        self._batches = None

    def divergence_message(self, values: Dict[str, float]) -> str:
        """One line: the step whose loss is not finite, and the last good checkpoint, the newest
        one older than the weights that gave that loss (or that none was written)."""
        bad = ", ".join(f"{k} = {v}" for k, v in values.items() if not math.isfinite(v))
        good = [(step, path) for step, path in list_checkpoints(self.ckpt_dir) if step < self.step - 1]
        section = "train" if self.train_section() is self.config.train else "stage2"
        kept = (f"the last good checkpoint is {max(good)[1]}" if good else
                f"no checkpoint was written before it (none in {self.ckpt_dir} older than step {self.step - 1})")
        return (f"training diverged: step {self.step} gave a non-finite loss ({bad}); {kept}; "
                f"try a lower {section}.lr (now {self.train_section().lr:g})")

    # -- the loop -------------------------------------------------------------------------------
    def run(self, steps: int) -> Dict[str, float]:
        """Train until ``steps`` optimizer steps in total; checkpoint every ``checkpoint_every``
        steps and at the end. Returns the last logged values."""
        from tqdm import tqdm

        t = self.train_section()
        main = self.ctx.is_main
        csv_log = CsvLog(os.path.join(self.out_dir, "log.csv"), self.LOG_FIELDS,
                         append=self.step > 0) if main else None
        writer = None
        if main:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.path.join(self.out_dir, "tensorboard"), purge_step=self.step)
        bar = tqdm(total=steps, initial=self.step, desc=self.KIND, unit="step",
                   disable=not (main and self.progress), dynamic_ncols=True)
        last: Dict[str, float] = {}
        try:
            for module in self.checkpoint_modules().values():
                module.train()
            while self.step < steps:
                began = time.perf_counter()
                with self.bf16_compute():
                    values = self.train_step(steps)
                if not all(math.isfinite(v) for v in values.values()):
                    raise TrainingDiverged(self.divergence_message(values))
                values["seconds"] = time.perf_counter() - began
                last = values
                bar.update(1)
                bar.set_postfix({k: f"{values[k]:.4f}" for k in self.POSTFIX})
                if main and (self.step % t.log_every == 0 or self.step == steps):
                    csv_log.write({"step": self.step, **values})
                    for k, v in values.items():
                        writer.add_scalar(f"train/{k}", v, self.step)
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < steps:
                    self.save()
                self.after_step(writer)
            self.save()
        finally:
            bar.close()
            if csv_log:
                csv_log.close()
            if writer:
                writer.close()
        return last
