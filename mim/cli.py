"""The ``mim`` command (also ``python -m mim``).

    mim train stage1 --config tiny --data synthetic --steps 500 --out runs/x [--resume]
    mim train stage2 --stage1 runs/x/checkpoints/step_0000500.safetensors --steps 500 --out runs/y
    mim evaluate --checkpoint runs/x/checkpoints/step_0000500.safetensors [--data synthetic]
    mim reenact --image src.png --driving drive.mp4 --checkpoint ckpt --out out.mp4
    mim animate --image portrait.png --audio speech.wav --out talking.mp4 [--checkpoint ckpt]
    mim app [--checkpoint ckpt] [--host 127.0.0.1] [--port 7860] (the web page: docs/app.md)
    mim config show tiny | mim config save tiny my.yaml
    mim prepare videos/ --out shards/ --config base [--workers 4] [--shard-size 256]
    mim export-onnx --config tiny --out renderer.onnx [--checkpoint ckpt] [--grid-sample gather]
    mim profile [--config tiny|base] [--seconds 1] [--repeats 3] [--trace t.json] [--json p.json]
                [--precision bf16] [--cuda-graphs]

Errors a user can cause (a missing or corrupt file, a checkpoint from another config, a bad
config value, an output that cannot be written: a directory, a read-only or full disk, an input
given again as the output; training that diverges) print one line ``mim: error: ...`` naming the
file or the config key and exit with status 2; nothing is left half-written, and an existing
output is left as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import List, Optional

import torch

__all__ = ["main", "build_parser"]

BACKENDS = ("auto", "reference", "fast", "torch", "triton")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="kernel path for the engine's ops (default: $MIM_KERNEL_BACKEND, else auto)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_precision(parser: argparse.ArgumentParser, default: Optional[str], what: str) -> None:
    from mim.precision import PRECISIONS

    shown = default or "the config's amp: bf16 on CUDA, fp32 on the CPU"
    parser.add_argument("--precision", choices=PRECISIONS, default=default,
                        help=f"bf16: {what} under bf16 autocast, the weights kept in fp32 "
                             f"(mim.precision says what stays fp32); default: {shown}")


def _add_framing(parser: argparse.ArgumentParser, what: str) -> None:
    from mim.face import DEFAULT_CROP_SCALE
    from mim.portrait import CROP_MODES

    parser.add_argument("--crop", choices=CROP_MODES, default="face",
                        help=f"face (default): detect the face in {what}, animate a square around it "
                             f"and paste each frame back into the full image; center: the centre "
                             f"square resized to the model's size, output at that size")
    parser.add_argument("--face", type=int, default=0,
                        help="which face to animate when there are several (0 = the largest; "
                             "--list-faces shows them)")
    parser.add_argument("--crop-scale", type=float, default=DEFAULT_CROP_SCALE,
                        help=f"side of the square around the face, in face-box sides "
                             f"(default {DEFAULT_CROP_SCALE})")


def _add_graphs(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--cuda-graphs", action="store_true",
                       help=f"capture {what} once per window shape as CUDA graphs and replay them "
                            f"(CUDA only; mim.graphs)")
    group.add_argument("--compile", action="store_true",
                       help=f"run {what} under torch.compile(mode='reduce-overhead') instead "
                            f"(CUDA or CPU; the first windows pay the compile)")


def _graph_mode(args) -> str:
    return "cuda-graphs" if args.cuda_graphs else "compile" if args.compile else "eager"


def _add_stream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2,
                        help="with shards: DataLoader workers per rank (default 2; 0 reads in the "
                             "training process)")
    parser.add_argument("--heldout", help="with shards: held-out shards (a folder, glob or brace pattern) "
                        "for evaluation; default: the last --data shard (none when heldout_clips is 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mim", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a stage")
    stages = train.add_subparsers(dest="stage", required=True)
    s1 = stages.add_parser("stage1", help="train the renderer")
    s1.add_argument("--config", default="tiny", help="tiny, base, or a YAML/JSON config file")
    s1.add_argument("--data", default="synthetic", help="'synthetic', a folder of clips, or shards to stream "
                    "(a folder of *.tar, a glob, or shard-{000000..000009}.tar; the last is held out; "
                    "docs/streaming.md)")
    s1.add_argument("--steps", type=int, required=True, help="total optimizer steps of the run")
    s1.add_argument("--out", required=True, help="run directory (config, logs, checkpoints)")
    s1.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    s1.add_argument("--init", help="fine-tune: start the renderer from this stage-1/stage-2 checkpoint "
                                   "(fresh optimizer and schedule; ignored when --resume finds a checkpoint)")
    s1.add_argument("--batch-size", type=int, help="override train.batch_size (global)")
    s1.add_argument("--grad-accumulation", type=int, help="override train.grad_accumulation")
    s1.add_argument("--checkpoint-every", type=int, help="override train.checkpoint_every")
    s1.add_argument("--seed", type=int, help="override train.seed")
    s1.add_argument("--freeze", help="override recipe.freeze: comma-separated renderer parts kept fixed "
                                     "(image_encoder, appearance_extractor, motion_encoder, dit, lmdd, decoder)")
    s1.add_argument("--vgg19-weights", help="safetensors VGG-19 weights for the perceptual loss")
    s1.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    _add_precision(s1, None, "the training forward")
    _add_stream_options(s1)
    _add_common(s1)
    s2 = stages.add_parser("stage2", help="train the motion generator on a trained renderer")
    s2.add_argument("--stage1", required=True, help="stage-1 checkpoint (its renderer is frozen)")
    s2.add_argument("--config", help="tiny, base or a file for the motion/stage2 sections "
                                     "(default: the stage-1 checkpoint's config)")
    s2.add_argument("--data", default="synthetic", help="'synthetic', a folder of clips with audio, or "
                    "shards to stream (a folder of *.tar, a glob, or a {a..b} pattern; docs/streaming.md)")
    s2.add_argument("--steps", type=int, required=True)
    s2.add_argument("--out", required=True)
    s2.add_argument("--resume", action="store_true")
    s2.add_argument("--batch-size", type=int, help="override stage2.batch_size (global)")
    s2.add_argument("--seed", type=int, help="override stage2.seed")
    _add_precision(s2, None, "the training forward")
    _add_stream_options(s2)
    s2.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    s2.add_argument("--no-progress", action="store_true")
    me = stages.add_parser("motion-encoder", help="not in the paper: teach a renderer checkpoint's motion "
                                                  "encoder to read the procedural clips' mouth opening and pose")
    me.add_argument("--init", required=True, help="stage-1/stage-2 checkpoint whose renderer is used")
    me.add_argument("--out", required=True, help="stage-1 checkpoint to write (the renderer, new encoder)")
    me.add_argument("--steps", type=int, default=2000)
    me.add_argument("--clips", type=int, default=96, help="procedural training clips (50 frames each)")
    me.add_argument("--seed", type=int, default=0)
    me.add_argument("--no-progress", action="store_true")

    ev = sub.add_parser("evaluate", help="PSNR/SSIM (LPIPS with weights) of a renderer on held-out clips; "
                                         "with --metrics, the paper's table (FID, FVD, LSE, Headpose, ...)")
    ev.add_argument("--checkpoint", help="the checkpoint to score (not needed with --generated/--truth)")
    ev.add_argument("--metrics", help="the paper's table: 'all' or a comma list of "
                                      "headpose,psnr,ssim,lpips,fid,fvd,div,tgd,lse, on generated vs ground-"
                                      "truth videos: a stage-2 --checkpoint animating the held-out procedural "
                                      "clips from their audio, or --generated/--truth folders")
    ev.add_argument("--weights-dir", help="with --metrics: the folder holding the metric networks' weight "
                                          "files (docs/metrics.md names each and where it comes from)")
    ev.add_argument("--frames", type=int, help="with --metrics and --checkpoint: frames per held-out clip "
                                               "(default: the config's stage2.frames_per_clip)")
    ev.add_argument("--generated", help="with --metrics: a folder of generated videos (.mp4 ...)")
    ev.add_argument("--truth", help="with --metrics: a folder of ground-truth videos with their audio, "
                                    "matched to --generated by file name")
    ev.add_argument("--data", default="synthetic")
    ev.add_argument("--clips", type=int, help="held-out clips to score (default: the config's)")
    ev.add_argument("--lpips-weights", help="safetensors LPIPS weights (else $MIM_LPIPS_WEIGHTS; else no LPIPS)")
    ev.add_argument("--json", help="also write the figures to this JSON file")
    ev.add_argument("--lipsync", action="store_true",
                    help="a stage-2 checkpoint: animate held-out procedural clips from their audio and "
                         "score lip sync (vs shuffled audio) and PSNR/SSIM against the ground truth")
    ev.add_argument("--sample-steps", type=int, help="DDIM steps for --lipsync (default: the config's)")
    ev.add_argument("--seed", type=int, default=0, help="noise seed for --lipsync")
    ev.add_argument("--plot", help="with --lipsync: also draw each clip's mouth opening against the "
                                   "audio envelope into this PNG")
    _add_precision(ev, "fp32", "--lipsync's animation")
    _add_common(ev)

    re_ = sub.add_parser("reenact", help="animate a portrait with the motion of a driving video")
    re_.add_argument("--image", required=True)
    re_.add_argument("--driving", required=True)
    re_.add_argument("--checkpoint", required=True)
    re_.add_argument("--out", required=True, help="output .mp4")
    re_.add_argument("--fps", type=float, help="output frame rate (default: the driving video's)")
    re_.add_argument("--max-frames", type=int)
    re_.add_argument("--absolute", action="store_true",
                     help="use the driving frames' motion as is, not relative to its first frame")
    re_.add_argument("--no-audio", action="store_true", help="do not copy the driving video's audio")
    _add_graphs(re_, "the render window")
    _add_framing(re_, "--image")
    re_.add_argument("--driving-crop", choices=("face", "center"), default="face",
                     help="face (default): track the face through the driving video and crop around "
                          "it (detected every --detect-every frames, the square smoothed over time); "
                          "center: the centre square of every driving frame")
    re_.add_argument("--detect-every", type=int, default=5, help="driving frames between face detections")
    re_.add_argument("--smoothing", type=float, default=0.6,
                     help="exponential smoothing of the driving crop square, in [0, 1) (0 = none)")
    _add_precision(re_, "fp32", "the renderer")
    _add_common(re_)

    an = sub.add_parser("animate", help="animate a portrait from speech audio (a stage-2 checkpoint)")
    an.add_argument("--image", required=True, help="the portrait: a photo of any size with a face in it")
    an.add_argument("--audio", help="speech: any audio file, or a video's audio track")
    an.add_argument("--out", help="output .mp4 (25 fps, the audio muxed in; the portrait's size "
                    "rounded down to even, or S x S with --crop center)")
    an.add_argument("--checkpoint",
                    help="stage-2 checkpoint (default: the demo model examples/demo/mim_tiny.safetensors)")
    an.add_argument("--steps", type=int, help="DDIM steps per motion window (default: the config's)")
    an.add_argument("--seed", type=int, default=0, help="seed of the motion sampler's noise")
    an.add_argument("--guidance", type=float,
                    help="classifier-free guidance scale on the audio (default: the config's; 1 = off)")
    _add_graphs(an, "the DDIM loop of a motion window (every step, guidance included) and the render window")
    _add_framing(an, "the portrait")
    an.add_argument("--list-faces", action="store_true",
                    help="print the faces found in --image (index, box, score) and exit")
    an.add_argument("--stream", action="store_true",
                    help="feed the audio in chunks as if it arrived live and write each frame as soon as its "
                         "motion window's audio is in, printing frames/s, latency and the real-time factor "
                         "to stderr; --out appears only complete (a stopped run leaves none)")
    an.add_argument("--chunk-ms", type=float, default=200.0,
                    help="with --stream: the audio chunks' length in milliseconds (default 200)")
    _add_precision(an, "fp32", "the motion generator and the renderer")
    _add_common(an)

    from mim.app import DEFAULT_HOST, DEFAULT_MAX_SECONDS, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT

    ap = sub.add_parser("app", help="the web page: animate a portrait from speech in a browser "
                                    "(needs the app extra: pip install mim-engine[app]; docs/app.md)")
    ap.add_argument("--checkpoint",
                    help="stage-2 checkpoint (default: the demo model examples/demo/mim_tiny.safetensors)")
    ap.add_argument("--host", default=DEFAULT_HOST,
                    help=f"address to listen on (default {DEFAULT_HOST}: this machine only; "
                         f"0.0.0.0 serves every network the machine is on)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 = a free port")
    ap.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                    help=f"largest upload accepted, per file (default {DEFAULT_MAX_UPLOAD_MB:g} MB)")
    ap.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                    help=f"longest speech accepted (default {DEFAULT_MAX_SECONDS:g} s)")
    ap.add_argument("--backend", choices=BACKENDS, default=None,
                    help="kernel path for the engine's ops (default: $MIM_KERNEL_BACKEND, else auto)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    pr = sub.add_parser("profile", help="per-stage latency of img2img and audio2video: wall time "
                                        "measured here, FLOPs and bytes counted, H100 time modeled")
    pr.add_argument("--config", help="tiny (default), base, or a YAML/JSON config file (random weights)")
    pr.add_argument("--checkpoint", help="a stage-2 (or stage-1) checkpoint instead of random weights; "
                                         "its config is used")
    pr.add_argument("--scenario", choices=("img2img", "audio2video", "both"), default="both")
    pr.add_argument("--seconds", type=float, default=1.0,
                    help="seconds of 25 fps video to produce (default 1, as the paper's Table III)")
    pr.add_argument("--repeats", type=int, default=3, help="timed runs per stage; the median is shown")
    pr.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    pr.add_argument("--sample-steps", type=int, help="DDIM steps of the motion sampler (default: the config's)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--trace", help="also write a torch.profiler Chrome trace (one more run) to this file")
    pr.add_argument("--json", help="also write the table to this JSON file")
    pr.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="the engine column's precision: bf16 runs it under bf16 autocast and "
                         "models its FLOPs at the bf16 peak (the reference stays fp32; default fp32)")
    pr.add_argument("--cuda-graphs", action="store_true",
                    help="model the engine with CUDA graphs: one launch per DDIM window and per "
                         "render window replayed instead of one per kernel (modeled, not captured)")
    _add_common(pr)

    sub.add_parser("export-onnx", add_help=False,
                   help="export the renderer to ONNX (`python -m mim.export`; see `mim export-onnx --help`)")

    prep = sub.add_parser("prepare", help="turn raw talking-head videos into training shards "
                                          "(docs/datasets.md)")
    prep.add_argument("videos", help="a folder (searched recursively: *.mp4 *.mov *.mkv *.avi *.webm, "
                                     "folders of frames + one wav + optional fps.txt) or one video")
    prep.add_argument("--out", required=True, help="folder for shard-NNNNNN.tar, manifest.json, report.json")
    prep.add_argument("--config", default="base", help="tiny, base or a config file: crops are its "
                                                       "renderer.image_size (default base)")
    prep.add_argument("--detector", default="dlib-hog", help="face detector (default dlib-hog)")
    prep.add_argument("--detect-every", type=int, default=5, help="run the detector every N frames (default 5)")
    prep.add_argument("--detect-side", type=int, default=640,
                      help="detect on frames scaled down to this longer side (default 640)")
    prep.add_argument("--crop-scale", type=float, default=1.7,
                      help="side of the crop square in face-box sides (default 1.7)")
    prep.add_argument("--shard-size", type=float, default=256.0, help="bound on each shard, MB (default 256)")
    prep.add_argument("--workers", type=int, default=1, help="processes decoding and tracking videos (default 1)")
    prep.add_argument("--min-frames", type=int, default=25,
                      help="drop segments shorter than this many 25 fps frames (default 25)")
    prep.add_argument("--max-frames-per-segment", type=int, default=250,
                      help="split longer segments into samples of this many frames (default 250)")
    prep.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    wt = sub.add_parser("weights", help="convert a metric network's pickled PyTorch weights to safetensors "
                                        "(read with torch.load(weights_only=True): no code is unpickled)")
    wt.add_argument("action", choices=("convert",))
    wt.add_argument("metric", choices=("fid", "fvd", "lse"), help="which network the file holds")
    wt.add_argument("source", help="the downloaded weight file (.pth/.pt/.model or .safetensors)")
    wt.add_argument("dest", help="the .safetensors file to write (atomically)")

    cfg = sub.add_parser("config", help="print or save a config")
    cfg.add_argument("action", choices=("show", "save"))
    cfg.add_argument("name")
    cfg.add_argument("path", nargs="?")
    return parser


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _check_output(flag: str, path: Optional[str], args, inputs=()) -> None:
    """Refuse, before any work, an output file that is a directory or is one of the inputs."""
    if not path:
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; give the path of a file to write")
    for name in inputs:
        given = getattr(args, name.lstrip("-").replace("-", "_"), None)
        if given and _same_file(path, given):
            raise ValueError(f"{flag} {path!r} is the same file as {name}: it would overwrite the input; "
                             f"choose another output")


def _check_run_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path!r} is an existing file; give a run directory")


def _train(args) -> int:
    if args.stage == "motion-encoder":
        _check_output("--out", args.out, args)
        from mim.train.motion_pretrain import pretrain_motion_encoder

        history = pretrain_motion_encoder(args.init, args.out, args.steps, clips=args.clips, seed=args.seed,
                                          progress=not args.no_progress)
        print(json.dumps({"out": args.out, "history": history}, indent=2))
        return 0
    return _train_stage1(args) if args.stage == "stage1" else _train_stage2(args)


def _train_stage2(args) -> int:
    from mim.config import load_config
    from mim.train.stage2 import train_stage2

    config = load_config(args.config) if args.config else None
    if config is not None:
        if args.batch_size is not None:
            config.stage2.batch_size = args.batch_size
        if args.seed is not None:
            config.stage2.seed = args.seed
    elif args.batch_size is not None or args.seed is not None:
        raise ValueError("--batch-size and --seed need --config (otherwise the stage-1 "
                         "checkpoint's config is used as is)")
    _check_run_dir(args.out)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    result = train_stage2(args.stage1, args.out, args.steps, config=config, data=args.data,
                          device=args.device, resume=args.resume, progress=not args.no_progress,
                          workers=args.workers, heldout=args.heldout, precision=args.precision)
    print(json.dumps({"step": args.steps, "train": result["train"]}, indent=2))
    return 0


def _train_stage1(args) -> int:
    from mim.config import load_config
    from mim.train.stage1 import train_stage1

    config = load_config(args.config)
    for flag, key in (("batch_size", "batch_size"), ("grad_accumulation", "grad_accumulation"),
                      ("checkpoint_every", "checkpoint_every"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            setattr(config.train, key, getattr(args, flag))
    if args.freeze is not None:
        config.recipe.freeze = tuple(part.strip() for part in args.freeze.split(",") if part.strip())
        if config.recipe.freeze and config.recipe.name == "paper":
            config.recipe.name = "custom"
    if args.vgg19_weights:
        config.loss.vgg19_weights = args.vgg19_weights
    _check_run_dir(args.out)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    result = train_stage1(config.validate(), args.out, args.steps, data=args.data, backend=args.backend,
                          device=args.device, resume=args.resume, progress=not args.no_progress,
                          evaluate=not args.no_eval, init=args.init, workers=args.workers,
                          heldout=args.heldout, precision=args.precision)
    if "heldout" in result:
        print(json.dumps({"step": args.steps, "heldout": result["heldout"]}, indent=2))
    return 0


def _evaluate(args) -> int:
    from mim.evaluate import evaluate_reconstruction
    from mim.metrics import LPIPS
    from mim.checkpoint import checkpoint_config, renderer_from_checkpoint
    from mim.train.stage1 import build_stage1_data

    for flag in ("--json", "--plot"):
        _check_output(flag, getattr(args, flag[2:]), args, ("--checkpoint",))
    if args.metrics is not None:
        return _evaluate_metrics(args)
    for flag in ("--weights-dir", "--generated", "--truth", "--frames"):
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            raise ValueError(f"{flag} goes with --metrics")
    if args.checkpoint is None:
        raise ValueError("mim evaluate needs --checkpoint (or --metrics with --generated and --truth)")
    config = checkpoint_config(args.checkpoint)
    if args.clips is not None:
        config.train.heldout_clips = config.stage2.heldout_clips = args.clips
    device = _device(args.device)
    if args.plot and not args.lipsync:
        raise ValueError("--plot draws the lip-sync traces: it needs --lipsync")
    if args.lipsync:
        result = _evaluate_lipsync(args, config, device)
        if args.plot:
            from mim.evaluate import plot_lipsync

            plot_lipsync(result, args.plot)
            for clip in result["clips"]:
                del clip["traces"]
        _print_result(result, args.json)
        return 0
    renderer = renderer_from_checkpoint(args.checkpoint, backend=args.backend).to(device)
    lpips = None
    if args.lpips_weights or os.environ.get("MIM_LPIPS_WEIGHTS"):
        lpips = LPIPS(args.lpips_weights).to(device)
    _, heldout = build_stage1_data(config, args.data)
    result = evaluate_reconstruction(renderer, heldout, device, lpips=lpips)
    _print_result(result, args.json)
    return 0


def _weights(args) -> int:
    from mim.metric_nets import convert_weights

    _check_output("dest", args.dest, args, ("source",))
    convert_weights(args.metric, args.source, args.dest)
    print(f"wrote {args.dest} ({args.metric} network, safetensors)")
    return 0


def _evaluate_metrics(args) -> int:
    from mim.video_eval import evaluate_videos, format_table, parse_metrics

    metrics = parse_metrics(args.metrics)
    if args.plot or args.lipsync:
        raise ValueError("--metrics scores videos against their ground truth; --lipsync and --plot are "
                         "the procedural mouth-sync evaluation: run them separately")
    if args.weights_dir is not None and not os.path.isdir(args.weights_dir):
        raise ValueError(f"--weights-dir {args.weights_dir!r} is not a folder")
    device = _device(args.device)
    notes = []
    if (args.generated is None) != (args.truth is None):
        raise ValueError("--generated and --truth go together (folders of videos matched by name)")
    if args.generated is not None:
        if args.checkpoint is not None:
            raise ValueError("give either --checkpoint (it generates the videos) or --generated/--truth")
        from mim.video_eval import folder_pairs

        names, pairs = folder_pairs(args.generated, args.truth)
        gestures = False
    else:
        if args.checkpoint is None:
            raise ValueError("--metrics needs a stage-2 --checkpoint or --generated/--truth folders")
        if args.data != "synthetic":
            raise ValueError("--metrics with --checkpoint animates the held-out procedural clips (--data "
                             "synthetic); score your own videos with --generated/--truth")
        from mim.evaluate import lipsync_clips
        from mim.video_eval import animated_pairs

        animator = _stage2_animator(args, device)
        config = animator.config
        if args.clips is not None:
            config.stage2.heldout_clips = args.clips
        if args.frames is not None:
            if args.frames < 2:
                raise ValueError(f"--frames must be >= 2, got {args.frames}")
            config.stage2.frames_per_clip = args.frames
        clips = lipsync_clips(config)
        names = [f"heldout_{i}" for i in range(len(clips))]
        pairs = animated_pairs(animator, clips, steps=args.sample_steps, seed=args.seed)
        gestures = getattr(config.train, "procedural", "heads") == "gestures"
    if args.metrics.strip().lower() == "all" and not gestures:
        metrics = [m for m in metrics if m not in ("div", "tgd")]
        notes.append("div, tgd: left out of 'all': they read the body keypoints of procedural gesture "
                     "clips (a gesture config), and these videos are not such clips")
    result = evaluate_videos(pairs, metrics, weights_dir=args.weights_dir, device=device,
                             lpips_weights=args.lpips_weights, progress=not args.no_progress,
                             total=len(names))
    result["notes"] = notes
    print(format_table(result, metrics))
    for note in notes:
        print("note: " + note)
    if args.json:
        _write_json(result, args.json)
    if result["errors"]:
        print(f"error: {len(result['errors'])} metric(s) not computed: {', '.join(result['errors'])} "
              f"(each reason is under the table)", file=sys.stderr)
        return 1
    return 0


def _write_json(result, json_path) -> None:
    from mim.io import atomic_output

    with atomic_output(json_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(result, indent=2) + "\n")


def _print_result(result, json_path) -> None:
    print(json.dumps(result, indent=2))
    if json_path:
        _write_json(result, json_path)


def _stage2_animator(args, device):
    """The Animator of ``--checkpoint`` for evaluate's animated clips (``--sample-steps`` checked)."""
    from mim.animate import Animator

    if args.sample_steps is not None and args.sample_steps < 1:
        raise ValueError(f"--sample-steps must be >= 1, got {args.sample_steps}")
    return Animator.from_pretrained(args.checkpoint, device=device, backend=args.backend,
                                    precision=args.precision)


def _evaluate_lipsync(args, config, device):
    from mim.evaluate import evaluate_lipsync, lipsync_clips

    if args.data != "synthetic":
        raise ValueError("--lipsync scores procedural clips only (--data synthetic): its mouth reading "
                         "relies on how they are painted")
    animator = _stage2_animator(args, device)
    return evaluate_lipsync(animator, lipsync_clips(config), steps=args.sample_steps, seed=args.seed,
                            progress=not getattr(args, "no_progress", False), traces=bool(args.plot))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def _reenact(args) -> int:
    from mim.reenact import reenact

    _check_output("--out", args.out, args, ("--image", "--driving", "--checkpoint"))
    reenact(args.image, args.driving, args.checkpoint, args.out, backend=args.backend,
            device=_device(args.device), fps=args.fps, max_frames=args.max_frames,
            relative=not args.absolute, copy_audio=not args.no_audio, progress=not args.no_progress,
            crop=args.crop, face=args.face, crop_scale=args.crop_scale, driving_crop=args.driving_crop,
            detect_every=args.detect_every, smoothing=args.smoothing, precision=args.precision,
            graphs=_graph_mode(args))
    print(args.out)
    return 0


def _list_faces(image: str) -> int:
    from mim.io import read_image
    from mim.portrait import describe_faces, detect_faces

    picture = read_image(image)
    print(f"{image}: {picture.shape[2]}x{picture.shape[1]}")
    print(describe_faces(detect_faces(picture)))
    return 0


def _animate(args) -> int:
    from mim.animate import Animator

    if args.list_faces:
        return _list_faces(args.image)
    for flag in ("--audio", "--out"):
        if getattr(args, flag[2:]) is None:
            raise ValueError(f"mim animate: {flag} is required (unless --list-faces)")
    _check_output("--out", args.out, args, ("--image", "--audio", "--checkpoint"))
    animator = Animator.from_pretrained(args.checkpoint, device=args.device, backend=args.backend,
                                        precision=args.precision)
    animator.use_graphs(_graph_mode(args))
    if args.stream:
        from mim.stream import StreamInterrupted, stream_file

        try:
            stream_file(animator, args.image, args.audio, args.out, chunk_ms=args.chunk_ms, steps=args.steps,
                        seed=args.seed, guidance_scale=args.guidance, crop=args.crop, face=args.face,
                        crop_scale=args.crop_scale, progress=not args.no_progress)
        except StreamInterrupted as stopped:
            print(f"mim: {stopped}", file=sys.stderr)
            return 130
        print(args.out)
        return 0
    animator.animate_to_file(args.image, args.audio, args.out, steps=args.steps, seed=args.seed,
                             guidance_scale=args.guidance, progress=not args.no_progress,
                             crop=args.crop, face=args.face, crop_scale=args.crop_scale)
    print(args.out)
    return 0


def _app(args) -> int:
    from mim.app import Limits, serve

    return serve(args.checkpoint, host=args.host, port=args.port, device=args.device,
                 limits=Limits(args.max_upload_mb, args.max_seconds), backend=args.backend)


def _profile(args) -> int:
    from mim.profile import SCENARIOS, format_report, profile, report_json

    for flag in ("--json", "--trace"):
        _check_output(flag, getattr(args, flag[2:]), args, ("--checkpoint", "--config"))
    scenarios = SCENARIOS if args.scenario == "both" else (args.scenario,)
    run = profile(args.config, checkpoint=args.checkpoint, seconds=args.seconds, scenarios=scenarios,
                  repeats=args.repeats, warmup=args.warmup, backend=args.backend, device=args.device,
                  sample_steps=args.sample_steps, seed=args.seed, trace=args.trace,
                  progress=not args.no_progress, precision=args.precision,
                  cuda_graphs=args.cuda_graphs)
    print(format_report(run))
    if args.json:
        from mim.io import atomic_output

        with atomic_output(args.json) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(report_json([run]), indent=2) + "\n")
    if args.trace:
        print(f"trace: {args.trace}")
    return 0


def _prepare(args) -> int:
    from mim.config import load_config
    from mim.prepare import PrepareOptions, prepare, summarize

    options = PrepareOptions(size=load_config(args.config).renderer.image_size, detector=args.detector,
                             detect_every=args.detect_every, detect_side=args.detect_side,
                             crop_scale=args.crop_scale,
                             min_frames=args.min_frames, max_frames_per_segment=args.max_frames_per_segment,
                             shard_size=args.shard_size)
    report = prepare(args.videos, args.out, options, workers=args.workers, progress=not args.no_progress)
    print(summarize(report))
    return 0


def _config(args) -> int:
    from mim.config import config_to_dict, load_config, save_config

    config = load_config(args.name)
    if args.action == "show":
        print(json.dumps(config_to_dict(config), indent=2))
    else:
        if not args.path:
            raise ValueError("mim config save NAME PATH: PATH is missing")
        _check_output("PATH", args.path, args)
        save_config(config, args.path)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export-onnx"]:   # its own parser (python -m mim.export), options passed whole
        from mim.export import main as export_main

        return export_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handlers = {"train": _train, "evaluate": _evaluate, "reenact": _reenact, "animate": _animate,
                "config": _config, "weights": _weights, "profile": _profile, "prepare": _prepare, "app": _app}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        kept = "finished shards are kept; rerun to resume" if args.command == "prepare" else \
            "completed checkpoints are kept"
        print(f"mim: interrupted; {kept}", file=sys.stderr)
        return 130
    except Exception as error:
        if args.verbose or not isinstance(error, _user_errors()):
            raise
        print(f"mim: error: {_one_line(error)}", file=sys.stderr)
        return 2


def _user_errors() -> tuple:
    """What a bad file, config or argument raises. The commands turn what they can into
    ValueError/OSError naming the file or key; the third-party types (a library's errors that
    escaped that) are the last line of defence, and their messages are shown as they are."""
    known = [ValueError, TypeError, RuntimeError, OSError, ArithmeticError, MemoryError]
    for module, name in (("safetensors", "SafetensorError"), ("PIL.Image", "DecompressionBombError"),
                         ("av", "FFmpegError")):
        if module in sys.modules:   # an error of a library that was never imported cannot occur
            known.append(getattr(sys.modules[module], name))
    return tuple(known)


def _one_line(error: BaseException) -> str:
    text = re.sub(r"\s*\n\s*", " ", str(error)).strip()
    if text and (isinstance(error, (ValueError, OSError)) or type(error).__module__.startswith("mim.")):
        return text
    return f"{type(error).__name__}: {text}" if text else f"{type(error).__name__} (run with -v for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
