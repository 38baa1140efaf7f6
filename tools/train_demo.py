"""Train the demo pipeline on a CPU: the ``tiny`` stage 1 and stage 2 on procedural data, then
write ``examples/demo/``: the stage-2 checkpoint (renderer + motion generator), its config, the
training logs, an example portrait and an example speech-like wav (both made by the project's
own generator).

    python -m tools.train_demo [--stage1-steps 3000] [--stage2-steps 2000] [--work runs/demo]
                               [--stage1 CKPT]   # start from a trained tiny stage-1 checkpoint

Stage 1 is the paper's (``--stage1-steps``), followed by the ``mouth`` recipe (:data:`MOUTH_RECIPE`,
the config's ``recipe`` section; not in the paper, docs/architecture.md says why): a motion
encoder taught to read the procedural mouth opening and pose (``mim train motion-encoder``)
replaces the renderer's; the renderer is fine-tuned to it with the source encoders fixed
(``recipe.freeze``, the mouth-crop loss ``recipe.alpha_mouth``, the mouth read-out
``recipe.alpha_mouth_open``); then only the decoder trains, with the motion FiLM
(``recipe.decoder_motion_film``) switched on, in two phases of rising mouth-crop weight. Each phase resumes from its own run directory under
``--work``, so an interrupted demo training continues where it stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil

from mim.checkpoint import latest_checkpoint
from mim.config import config_from_dict, get_config
from mim.data.synthetic import make_clip, speech_like_audio
from mim.io import atomic_output, write_image, write_wav

DEMO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "demo")
PORTRAIT_SEED = 20261203     # a clip seed outside every training split
SPEECH_SEED = 7
SPEECH_SECONDS = 4.0
MAX_CHECKPOINT_BYTES = 30 * 1024 * 1024
MOTION_ENCODER_STEPS = 2000
MOTION_ENCODER_CLIPS = 96
FROZEN_SOURCE = ("image_encoder", "appearance_extractor")
ALL_BUT_DECODER = ("image_encoder", "appearance_extractor", "motion_encoder", "dit", "lmdd")
# (run name, steps, changes to the tiny config) of each stage-1 fine-tuning phase, in order;
# every phase names its recipe ``mouth`` (recipe.name)
MOUTH_RECIPE = (
    ("readout", 800, {"recipe.alpha_mouth": 1.0, "recipe.alpha_mouth_open": 10.0, "train.lr": 5e-4,
                      "recipe.freeze": FROZEN_SOURCE}),
    ("film", 800, {"recipe.decoder_motion_film": True, "recipe.alpha_mouth": 1.0,
                   "recipe.freeze": ALL_BUT_DECODER}),
    ("film2", 1600, {"recipe.decoder_motion_film": True, "recipe.alpha_mouth": 3.0,
                     "recipe.freeze": ALL_BUT_DECODER}),
)


def write_examples(out_dir: str) -> None:
    """The example portrait (frame 0 of a procedural clip) and speech-like audio."""
    portrait = make_clip(PORTRAIT_SEED, num_frames=1, size=256)["frames"][0]
    write_image(os.path.join(out_dir, "portrait.png"), portrait)
    audio, _ = speech_like_audio(SPEECH_SECONDS, sample_rate=16000, seed=SPEECH_SEED)
    write_wav(os.path.join(out_dir, "speech.wav"), audio, 16000)


def export_pipeline(source: str, destination: str) -> None:
    """The stage-2 checkpoint's renderer and motion generator only (no optimizer or RNG state:
    what ``mim animate`` loads), written atomically."""
    from mim.checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from mim.models import Renderer
    from mim.models.motion import MotionGenerator

    meta = read_metadata(source)
    config = config_from_dict(meta["config"])
    modules = {"renderer": Renderer.from_config(config),
               "motion": MotionGenerator(config.motion, config.renderer.motion_dim,
                                         config.renderer.appearance_dim)}
    load_checkpoint(source, kind="stage2", modules=modules)
    save_checkpoint(destination, kind="stage2", step=meta["step"], config=meta["config"],
                    modules=modules, with_rng=False)


def copy_atomic(source: str, destination: str) -> None:
    with atomic_output(destination) as tmp:
        shutil.copyfile(source, tmp)


def phase_config(changes, clips=None):
    """The tiny config with a phase's ``changes`` ({"section.key": value}) applied, its recipe
    named ``mouth``."""
    config = get_config("tiny")
    config.recipe.name = "mouth"
    config.train.checkpoint_every = 200
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        setattr(getattr(config, section), key, value)
    if clips is not None:
        config.train.train_clips = config.stage2.train_clips = clips
    return config.validate()


def run_mouth_recipe(stage1: str, work: str, clips=None, steps_scale: float = 1.0,
                     progress: bool = True):
    """The phases after the paper's stage 1 (see the module's docstring); returns the last
    phase's final checkpoint and the run directories of the phases, in order."""
    from mim.train.motion_pretrain import pretrain_motion_encoder
    from mim.train.stage1 import train_stage1

    motion = os.path.join(work, "motion_encoder.safetensors")
    if not os.path.exists(motion):
        pretrain_motion_encoder(stage1, motion, max(1, round(MOTION_ENCODER_STEPS * steps_scale)),
                                clips=clips or MOTION_ENCODER_CLIPS, progress=progress)
    previous, runs = motion, []
    for name, steps, changes in MOUTH_RECIPE:
        run = os.path.join(work, name)
        train_stage1(phase_config(changes, clips), run, max(1, round(steps * steps_scale)), resume=True,
                     progress=progress, evaluate=False, init=previous)
        previous = latest_checkpoint(os.path.join(run, "checkpoints"))
        runs.append(run)
    return previous, runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage1-steps", type=int, default=3000)
    parser.add_argument("--stage2-steps", type=int, default=2000)
    parser.add_argument("--stage1", help="a trained tiny stage-1 checkpoint to start stage 2 from")
    parser.add_argument("--work", default="runs/demo")
    parser.add_argument("--out", default=DEMO_DIR)
    parser.add_argument("--clips", type=int, help="training clips per stage (default: the tiny config's)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--recipe-scale", type=float, default=1.0,
                        help="scale the mouth recipe's step counts (tests use a tiny fraction)")
    args = parser.parse_args(argv)
    if not args.recipe_scale > 0:
        parser.error(f"--recipe-scale must be > 0, got {args.recipe_scale}")

    from mim.checkpoint import read_metadata
    from mim.train.stage1 import train_stage1
    from mim.train.stage2 import train_stage2

    progress = not args.no_progress
    stage1_dir = os.path.join(args.work, "stage1")
    stage2_dir = os.path.join(args.work, "stage2")
    stage1 = args.stage1
    if stage1 is None:
        config = get_config("tiny")
        if args.clips is not None:
            config.train.train_clips = args.clips
        train_stage1(config, stage1_dir, args.stage1_steps, resume=True, progress=progress,
                     evaluate=False)
        stage1 = latest_checkpoint(os.path.join(stage1_dir, "checkpoints"))
    renderer, phase_runs = run_mouth_recipe(stage1, args.work, clips=args.clips,
                                            steps_scale=args.recipe_scale, progress=progress)
    config = config_from_dict(read_metadata(renderer)["config"])
    if args.clips is not None:
        config.stage2.train_clips = args.clips
    train_stage2(renderer, stage2_dir, args.stage2_steps, config=config, resume=True, progress=progress)
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
    logs = [("stage1", stage1_run)] + [(f"stage1_{os.path.basename(run)}", run) for run in phase_runs]
    for stage, directory in logs + [("stage2", stage2_dir)]:
        log = os.path.join(directory, "log.csv")
        if os.path.exists(log):
            copy_atomic(log, os.path.join(args.out, f"{stage}_log.csv"))
    write_examples(args.out)
    print(f"demo written to {args.out} ({size / 2**20:.1f} MiB checkpoint)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
