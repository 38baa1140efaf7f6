"""Train the demo pipeline on a CPU: the ``tiny`` stage 1 and stage 2 on procedural data, then
write ``examples/demo/``: the stage-2 checkpoint (renderer + motion generator), its config, both
stages' training logs, an example portrait and an example speech-like wav (both made by the
project's own generator).

    python -m tools.train_demo [--stage1-steps 3000] [--stage2-steps 2000] [--work runs/demo]
                               [--stage1 CKPT]   # reuse a trained tiny stage-1 checkpoint

Each stage resumes from its own run directory under ``--work``, so an interrupted demo training
continues where it stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil

from mim.config import get_config
from mim.data.synthetic import make_clip, speech_like_audio
from mim.io import atomic_output, write_image, write_wav
from mim.train.checkpoint import latest_checkpoint

DEMO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "demo")
PORTRAIT_SEED = 20261203     # a clip seed outside every training split
SPEECH_SEED = 7
SPEECH_SECONDS = 4.0
MAX_CHECKPOINT_BYTES = 30 * 1024 * 1024


def write_examples(out_dir: str) -> None:
    """The example portrait (frame 0 of a procedural clip) and speech-like audio."""
    portrait = make_clip(PORTRAIT_SEED, num_frames=1, size=256)["frames"][0]
    write_image(os.path.join(out_dir, "portrait.png"), portrait)
    audio, _ = speech_like_audio(SPEECH_SECONDS, sample_rate=16000, seed=SPEECH_SEED)
    write_wav(os.path.join(out_dir, "speech.wav"), audio, 16000)


def export_pipeline(source: str, destination: str) -> None:
    """The stage-2 checkpoint's renderer and motion generator only (no optimizer or RNG state:
    what ``mim animate`` loads), written atomically."""
    from mim.config import config_from_dict
    from mim.models import Renderer
    from mim.models.motion import MotionGenerator
    from mim.train.checkpoint import load_checkpoint, read_metadata, save_checkpoint

    meta = read_metadata(source)
    config = config_from_dict(meta["config"])
    modules = {"renderer": Renderer(config.renderer),
               "motion": MotionGenerator(config.motion, config.renderer.motion_dim,
                                         config.renderer.appearance_dim)}
    load_checkpoint(source, kind="stage2", modules=modules)
    save_checkpoint(destination, kind="stage2", step=meta["step"], config=meta["config"],
                    modules=modules, with_rng=False)


def copy_atomic(source: str, destination: str) -> None:
    with atomic_output(destination) as tmp:
        shutil.copyfile(source, tmp)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage1-steps", type=int, default=3000)
    parser.add_argument("--stage2-steps", type=int, default=2000)
    parser.add_argument("--stage1", help="a trained tiny stage-1 checkpoint to start stage 2 from")
    parser.add_argument("--work", default="runs/demo")
    parser.add_argument("--out", default=DEMO_DIR)
    parser.add_argument("--clips", type=int, help="training clips per stage (default: the tiny config's)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from mim.train.stage1 import train_stage1
    from mim.train.stage2 import train_stage2

    config = get_config("tiny")
    if args.clips is not None:
        config.train.train_clips = config.stage2.train_clips = args.clips
    progress = not args.no_progress
    stage1_dir = os.path.join(args.work, "stage1")
    stage2_dir = os.path.join(args.work, "stage2")
    stage1 = args.stage1
    if stage1 is None:
        train_stage1(config, stage1_dir, args.stage1_steps, resume=True, progress=progress,
                     evaluate=False)
        stage1 = latest_checkpoint(os.path.join(stage1_dir, "checkpoints"))
    train_stage2(stage1, stage2_dir, args.stage2_steps, config=config, resume=True, progress=progress)
    final = latest_checkpoint(os.path.join(stage2_dir, "checkpoints"))
    os.makedirs(args.out, exist_ok=True)
    exported = os.path.join(args.out, "mim_tiny.safetensors")
    export_pipeline(final, exported)
    size = os.path.getsize(exported)
    if size > MAX_CHECKPOINT_BYTES:
        os.remove(exported)
        raise SystemExit(f"the demo checkpoint is {size / 2**20:.1f} MiB, over the 30 MiB limit")
    copy_atomic(os.path.join(stage2_dir, "config.yaml"), os.path.join(args.out, "config.yaml"))
    # A reused stage-1 checkpoint brings the log of its own run (RUN/checkpoints/step_N.safetensors).
    stage1_run = stage1_dir if args.stage1 is None else os.path.dirname(os.path.dirname(os.path.abspath(stage1)))
    for stage, directory in (("stage1", stage1_run), ("stage2", stage2_dir)):
        log = os.path.join(directory, "log.csv")
        if os.path.exists(log):
            copy_atomic(log, os.path.join(args.out, f"{stage}_log.csv"))
    write_examples(args.out)
    print(f"demo written to {args.out} ({size / 2**20:.1f} MiB checkpoint)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
