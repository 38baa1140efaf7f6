"""One stage-1 training step at the ``base`` shape: what autograd keeps for backward, and CPU step
time, for the engine against the ``reference`` backend, side by side in one run.

    python -m bench.training_step [--config base] [--batch 2] [--repeats 2] [--out-dir bench/results]
                                  [--device cpu|cuda]

Variants (same weights, same batch):
  reference  every op on its reference path (the literal PyTorch composition), no recompute
  engine-ops the engine's ops (``backend="auto"``: torch path on CPU, triton on CUDA), no recompute
  engine     the engine's ops and ``checkpoint_activations`` (ResNet3D, LMDD and decoder recompute
             their activations in backward)

Saved bytes are counted over the generator's forward (renderer, eq. 3 losses, the discriminator's
pass over the fakes) with ``torch.autograd.graph.saved_tensors_hooks``, each storage once. A
checkpointed block keeps its inputs outside autograd's saved tensors, so the tensors handed to
``torch.utils.checkpoint`` are counted too. Parameters are reported apart (they are held anyway).
Step time is the median wall time of ``Stage1Trainer.train_step`` (generator and discriminator
updates) after one warm-up step, on this CPU. With ``--device cuda`` the step runs on the GPU
(each step timed between two ``torch.cuda.synchronize()``) and the peak of
``torch.cuda.max_memory_allocated`` over the timed steps (weights, optimizer state, activations)
is reported too; ``make gpu-check`` runs it that way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager

import torch

import mim.models.blocks as blocks
from mim.config import get_config
from mim.io import atomic_output
from mim.runinfo import run_metadata
from mim.train.stage1 import Stage1Trainer

VARIANTS = (("reference", "reference", False), ("engine-ops", None, False), ("engine", None, True))


@contextmanager
def counting_saved(storages):
    real_checkpoint = blocks.checkpoint

    def note(t):
        if isinstance(t, torch.Tensor):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    def pack(t):
        note(t)
        return t

    def counted_checkpoint(fn, *args, **kwargs):
        for a in args:
            note(a)
        return real_checkpoint(fn, *args, **kwargs)

    blocks.checkpoint = counted_checkpoint
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
    finally:
        blocks.checkpoint = real_checkpoint


def measure(config_name: str, batch: int, repeats: int, backend, recompute: bool, seed: int = 0,
            device: str = "cpu"):
    config = get_config(config_name)
    config.train.batch_size = batch
    config.train.train_clips, config.train.heldout_clips, config.train.frames_per_clip = batch, 1, 8
    config.loss.adversarial_start_step = 0
    config.renderer.checkpoint_activations = recompute
    with tempfile.TemporaryDirectory() as out:
        trainer = Stage1Trainer(config, out, backend=backend, device=device, progress=False)
        source, driving, boxes, _ = trainer.batch(0, 0)
        params = {p.untyped_storage().data_ptr() for m in (trainer.renderer, trainer.discriminator)
                  for p in m.parameters()}
        storages = {}
        with counting_saved(storages):
            loss, *_ = trainer.generator_loss(source, driving, adversarial=True, mouth_boxes=boxes)
        del loss
        saved_params = sum(n for ptr, n in storages.items() if ptr in params)
        saved_activations = sum(n for ptr, n in storages.items() if ptr not in params)
        cuda = torch.device(device).type == "cuda"
        times = []
        for i in range(repeats + 1):
            if cuda:
                torch.cuda.synchronize()
                if i == 1:  # the peak of the timed steps, after the warm-up
                    torch.cuda.reset_peak_memory_stats()
            began = time.perf_counter()
            trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - began)
        peak = torch.cuda.max_memory_allocated() if cuda else None
        del trainer
    if cuda:
        torch.cuda.empty_cache()
    frames = batch * config.train.num_driving
    row = {"saved_activations_bytes": saved_activations, "saved_parameter_bytes": saved_params,
           "step_seconds_median": statistics.median(times), "step_seconds": times,
           "frames_per_step": frames}
    if cuda:
        row["peak_memory_bytes"] = peak
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="base")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device (torch.cuda.is_available() is False)")
    rows = {}
    for name, backend, recompute in VARIANTS:
        rows[name] = measure(args.config, args.batch, args.repeats, backend, recompute,
                             device=args.device)
        print(f"  measured {name}: {rows[name]['saved_activations_bytes'] / 1e6:.1f} MB saved, "
              f"{rows[name]['step_seconds_median']:.2f} s/step", flush=True)
    ref = rows["reference"]
    metadata = run_metadata()
    cuda = args.device == "cuda"
    where = (f"{metadata['machine']['gpu']} (CUDA {torch.version.cuda})" if cuda
             else f"{metadata['machine']['processor']}, {torch.get_num_threads()} threads")
    clock = "GPU wall time (synchronized)" if cuda else "CPU wall time"
    lines = [f"# Stage-1 training step, `{args.config}` shape, batch {args.batch} clips "
             f"({ref['frames_per_step']} rendered frames)", "",
             f"Measured {metadata['date']} on {where}, "
             f"torch {metadata['versions']['torch']}. Saved = bytes autograd keeps "
             f"for backward during the generator's forward (each storage once; checkpointed blocks' "
             f"inputs included), parameters apart. Step time = {clock} of one generator + "
             f"discriminator update (median of {args.repeats})."
             + (" Peak = torch.cuda.max_memory_allocated over the timed steps." if cuda else ""), "",
             f"| variant | saved activations (MB) | vs reference | saved parameters (MB) | "
             f"{'GPU' if cuda else 'CPU'} step (s) | vs reference |" + (" peak (MiB) |" if cuda else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if cuda else "")]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['saved_activations_bytes'] / 1e6:.1f} | "
                     f"{row['saved_activations_bytes'] / ref['saved_activations_bytes']:.3f} | "
                     f"{row['saved_parameter_bytes'] / 1e6:.1f} | {row['step_seconds_median']:.2f} | "
                     f"{row['step_seconds_median'] / ref['step_seconds_median']:.2f}x |"
                     + (f" {row['peak_memory_bytes'] / 2**20:.0f} |" if cuda else ""))
    table = "\n".join(lines) + "\n"
    report = {"metadata": metadata, "config": args.config, "batch": args.batch,
              "device": args.device, "threads": torch.get_num_threads(), "variants": rows}
    for name, text in (("training_step.md", table), ("training_step.json", json.dumps(report, indent=2))):
        with atomic_output(os.path.join(args.out_dir, name)) as temp:
            temp.write_text(text, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
