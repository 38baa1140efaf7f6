"""One stage-1 training step at the ``base`` shape: what autograd keeps for backward, and CPU step
time, for the engine against the ``reference`` backend, side by side in one run.

    python -m bench.training_step [--config base] [--batch 2] [--repeats 2] [--out-dir bench/results]

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
updates) after one warm-up step, on this CPU.
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


def measure(config_name: str, batch: int, repeats: int, backend, recompute: bool, seed: int = 0):
    config = get_config(config_name)
    config.train.batch_size = batch
    config.train.train_clips, config.train.heldout_clips, config.train.frames_per_clip = batch, 1, 8
    config.loss.adversarial_start_step = 0
    config.renderer.checkpoint_activations = recompute
    with tempfile.TemporaryDirectory() as out:
        trainer = Stage1Trainer(config, out, backend=backend, device="cpu", progress=False)
        source, driving, boxes, _ = trainer.batch(0, 0)
        params = {p.untyped_storage().data_ptr() for m in (trainer.renderer, trainer.discriminator)
                  for p in m.parameters()}
        storages = {}
        with counting_saved(storages):
            loss, *_ = trainer.generator_loss(source, driving, adversarial=True, mouth_boxes=boxes)
        del loss
        saved_params = sum(n for ptr, n in storages.items() if ptr in params)
        saved_activations = sum(n for ptr, n in storages.items() if ptr not in params)
        times = []
        for i in range(repeats + 1):
            began = time.perf_counter()
            trainer.train_step()
            if i:
                times.append(time.perf_counter() - began)
    frames = batch * config.train.num_driving
    return {"saved_activations_bytes": saved_activations, "saved_parameter_bytes": saved_params,
            "step_seconds_median": statistics.median(times), "step_seconds": times,
            "frames_per_step": frames}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="base")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    rows = {}
    for name, backend, recompute in VARIANTS:
        rows[name] = measure(args.config, args.batch, args.repeats, backend, recompute)
        print(f"  measured {name}: {rows[name]['saved_activations_bytes'] / 1e6:.1f} MB saved, "
              f"{rows[name]['step_seconds_median']:.2f} s/step", flush=True)
    ref = rows["reference"]
    metadata = run_metadata()
    lines = [f"# Stage-1 training step, `{args.config}` shape, batch {args.batch} clips "
             f"({ref['frames_per_step']} rendered frames)", "",
             f"Measured {metadata['date']} on {metadata['machine']['processor']}, "
             f"{torch.get_num_threads()} threads, torch {metadata['versions']['torch']}. Saved = bytes autograd keeps "
             f"for backward during the generator's forward (each storage once; checkpointed blocks' "
             f"inputs included), parameters apart. Step time = CPU wall time of one generator + "
             f"discriminator update (median of {args.repeats}).", "",
             "| variant | saved activations (MB) | vs reference | saved parameters (MB) | CPU step (s) | vs reference |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['saved_activations_bytes'] / 1e6:.1f} | "
                     f"{row['saved_activations_bytes'] / ref['saved_activations_bytes']:.3f} | "
                     f"{row['saved_parameter_bytes'] / 1e6:.1f} | {row['step_seconds_median']:.2f} | "
                     f"{row['step_seconds_median'] / ref['step_seconds_median']:.2f}x |")
    table = "\n".join(lines) + "\n"
    report = {"metadata": metadata, "config": args.config, "batch": args.batch,
              "threads": torch.get_num_threads(), "variants": rows}
    for name, text in (("training_step.md", table), ("training_step.json", json.dumps(report, indent=2))):
        with atomic_output(os.path.join(args.out_dir, name)) as temp:
            temp.write_text(text, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
