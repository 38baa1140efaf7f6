"""Streaming animation (``Animator.stream``, ``mim animate --stream``) on this CPU, and modeled at base.

Run from the repository root, one part at a time (each adds its entry to the JSON, with the date,
the machine and the load average at its start and end)::

    python -m bench.stream latency    # tiny demo model: chunk arrival -> frames, real-time factor
    python -m bench.stream equality   # causal stream vs animate frames (PSNR, max abs): demo + micro
    python -m bench.stream memory     # peak RSS of a 1-minute and a 10-minute stream (micro model)
    python -m bench.stream modeled    # base on an H100, from the profile's modeled stage costs

Results go to ``bench/results/cpu/stream.json``, an entry per part (``<part>-<n>-threads`` with
``--threads n`` other than 1). Memory is the process's peak resident set size
(``ru_maxrss``: Python, numpy and torch's CPU allocations, and the libraries), each duration in a
fresh process; RSS is also sampled after every motion window.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.precision import frame_psnrs, load_average, wake_zero_parameters
from mim.io import atomic_output
from mim.runinfo import run_metadata

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "cpu" / "stream.json"
DEMO = ROOT / "examples" / "demo"
PROFILE = Path(__file__).resolve().parent / "results" / "cpu" / "profile_plan_base.json"
RATE = 16000
# The micro model of the memory runs: tiny, smaller (32² frames, narrow layers, 2 DDIM steps).
MICRO = {"renderer": {"image_size": 32, "volume_size": 16, "feature_channels": 4, "depth_layers": 2,
                      "encoder_channels": 8, "motion_channels": 8, "appearance_dim": 16, "dit_channels": 16,
                      "lmdd_channels": 8, "decoder_channels": 16, "resnet3d_blocks": 1, "render_window": 4},
         "motion": {"width": 32, "layers": 1, "heads": 2, "window": 8, "audio_dim": 16, "sample_steps": 2}}


def micro_animator():
    from mim.animate import Animator
    from mim.config import get_config
    from mim.models import Renderer
    from mim.models.motion import MotionGenerator

    config = get_config("tiny")
    for section, values in MICRO.items():
        for name, value in values.items():
            setattr(getattr(config, section), name, value)
    config.validate()
    torch.manual_seed(0)
    renderer = Renderer(config.renderer)
    motion = MotionGenerator(config.motion, config.renderer.motion_dim, config.renderer.appearance_dim)
    wake_zero_parameters(renderer, motion, std=0.05)
    return Animator(renderer, motion, config, "cpu")


def demo_speech(repeats: int) -> np.ndarray:
    from mim.audio import load_audio

    return np.tile(load_audio(DEMO / "speech.wav"), repeats)


def part_latency(args) -> dict:
    """The CLI's path (``stream_file``: paced chunks, frames encoded to an mp4 as they come) on the
    demo model: live (chunks handed over at their real time) and as fast as it goes."""
    from mim.animate import Animator
    from mim.io import write_wav
    from mim.stream import stream_file

    animator = Animator.from_pretrained(DEMO / "mim_tiny.safetensors", device="cpu")
    speech = demo_speech(args.repeats)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        audio = Path(folder) / "speech.wav"
        write_wav(str(audio), speech, RATE, subtype="FLOAT")
        for steps in args.steps:
            for pace in (True, False):
                summary = stream_file(animator, DEMO / "portrait.png", audio, Path(folder) / "out.mp4",
                                      chunk_ms=args.chunk_ms, steps=steps, crop="center", progress=False,
                                      pace=pace)
                runs.append({"steps": steps or animator.config.motion.sample_steps, "paced": pace, **summary})
                print(json.dumps(runs[-1]), flush=True)
    return {"model": "examples/demo/mim_tiny.safetensors (tiny)", "portrait": "examples/demo/portrait.png",
            "crop": "center", "audio": f"examples/demo/speech.wav x {args.repeats}", "chunk_ms": args.chunk_ms,
            "motion_window_frames": animator.config.motion.window,
            "render_window_frames": animator.config.renderer.render_window,
            "guidance_scale": animator.config.motion.guidance_scale,
            "latency_note": "chunk latency: from a chunk's arrival (its last sample's time when paced, "
                            "the moment the stream takes it when not) to the last frame it releases; "
                            "frame latency: each frame from the arrival of the last chunk in before it. "
                            "Frames include H.264 encoding (stream_file, the --stream path)",
            "runs": runs}


def part_equality(args) -> dict:
    """Causal stream (F_ag: the running mean) against animate (F_ag: the clip's mean), same seed."""
    from mim.animate import Animator

    entries = []
    for name, animator, image, speech in [
            ("demo tiny", Animator.from_pretrained(DEMO / "mim_tiny.safetensors", device="cpu"),
             DEMO / "portrait.png", demo_speech(1)),
            ("micro random", micro_animator(), DEMO / "portrait.png", demo_speech(1))]:
        reference = animator.animate(image, speech, crop="center")
        chunks = [speech[start:start + 3200] for start in range(0, len(speech), 3200)]
        streamed = torch.stack(list(animator.stream(image, chunks, crop="center")))
        window = animator.config.motion.window
        last = slice((reference.shape[0] - 1) // window * window, None)
        entries.append({"model": name, "audio_s": len(speech) / RATE, "motion_window_frames": window,
                        **frame_psnrs(streamed, reference),
                        "first_window": frame_psnrs(streamed[:window], reference[:window]),
                        "last_window": frame_psnrs(streamed[last], reference[last])})
        print(json.dumps(entries[-1]), flush=True)
    return {"runs": entries}


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def part_memory_child(args) -> dict:
    """One stream of ``args.seconds`` of speech (a 10 s clip repeated, made chunk by chunk, so
    the source holds no more than the clip) through the micro model, as fast as it goes."""
    from mim.data import speech_like_audio

    animator = micro_animator()
    clip = speech_like_audio(10.0, seed=2)[0]
    total, chunk = round(args.seconds * RATE), 3200

    def chunks():
        for start in range(0, total, chunk):
            index = np.arange(start, min(start + chunk, total)) % clip.size
            yield clip[index]

    samples, frames, began = [], 0, time.perf_counter()
    for _ in animator.stream(DEMO / "portrait.png", chunks(), crop="center"):
        frames += 1
        if frames % animator.config.motion.window == 0:
            samples.append((frames, _rss_kb()))
    wall = time.perf_counter() - began
    at_minute = [rss for count, rss in samples if count <= 60 * 25]
    return {"seconds": args.seconds, "frames": frames, "wall_s": wall, "real_time_factor": wall / args.seconds,
            "torch_threads_end": torch.get_num_threads(),
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "rss_kb_first_window": samples[0][1], "rss_kb_at_1_min": at_minute[-1] if at_minute else None,
            "rss_kb_end": samples[-1][1], "rss_kb_max_sampled": max(rss for _, rss in samples)}


def part_memory(args) -> dict:
    runs = []
    for seconds in args.memory_seconds:
        done = subprocess.run([sys.executable, "-m", "bench.stream", "memory-child", "--seconds", str(seconds),
                               "--threads", str(args.threads), "--print-only"], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    short, long = runs[0], runs[-1]
    return {"model": "micro (tiny config made smaller: 32² frames, motion window 8, render window 4, "
                     "2 DDIM steps, guidance 2), random weights", "chunk_samples": 3200,
            "measure": "peak RSS (ru_maxrss) of a fresh process per duration: Python, numpy, torch CPU "
                       "allocations and libraries",
            "runs": runs, "peak_rss_ratio_long_over_short": long["peak_rss_kb"] / short["peak_rss_kb"]}


def part_modeled(args) -> dict:
    """A motion window at base on an H100, from the base profile's modeled per-stage costs of one
    second of audio (25 frames, one motion window, a partial one: base's window is 80 frames),
    scaled by frames; the source encoding is once per stream. Modeled, not measured."""
    from mim.audio import HOP_LENGTH, N_FFT
    from mim.config import get_config

    run = json.loads(PROFILE.read_text())["runs"][0]
    stages = run["scenarios"]["audio2video"]["stages"]
    per_second = {stage["stage"]: stage["engine"]["modeled_h100_s"] for stage in stages
                  if not stage["host"] and stage["stage"] != "source encoding"}
    config = get_config("base")
    window, context, render_window = config.motion.window, config.motion.local_context, config.renderer.render_window
    seconds_per_window = window / 25
    window_s = sum(per_second.values()) * seconds_per_window
    sampling = (per_second["audio features"] + per_second["Mamba-g/l"] + per_second["diffusion sampling"]) \
        * seconds_per_window
    render_per_frame = (per_second["DIT"] + per_second["LMDD"] + per_second["warp"] + per_second["decoder"]) / 25
    wait_s = (window + context) / 25 + (N_FFT // 2 - HOP_LENGTH) / RATE
    return {"source": str(PROFILE.relative_to(ROOT)), "profile_note": run["model"]["note"],
            "plan_note": run["plan_note"], "config": "base", "sample_steps": run["sample_steps"],
            "guidance_scale": run["guidance_scale"], "motion_window_frames": window,
            "render_window_frames": render_window,
            "modeled_h100_per_audio_second_s": dict(per_second, total=sum(per_second.values())),
            "modeled_h100_window_s": window_s,
            "modeled_h100_chunk_to_first_frame_s": sampling + render_per_frame * render_window,
            "modeled_h100_chunk_to_last_frame_s": window_s,
            "modeled_h100_real_time_factor": sum(per_second.values()),
            "audio_wait_s": wait_s,
            "note": "modeled, not measured: the stages' modeled H100 times per second of audio (fp32, CUDA "
                    "graphs) times a window's seconds; a window's cost is taken as proportional to its "
                    "frames (the profile samples one 25-frame window). audio_wait_s is the stream's "
                    "algorithmic wait: a window's first frame needs the audio to the window's end plus "
                    "local_context frames and the STFT's 6 ms (96 samples)"}


PARTS = {"latency": part_latency, "equality": part_equality, "memory": part_memory,
         "memory-child": part_memory_child, "modeled": part_modeled}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="+", choices=sorted(PARTS))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--repeats", type=int, default=3, help="latency: the demo speech (4 s) this many times")
    parser.add_argument("--chunk-ms", type=float, default=200.0)
    parser.add_argument("--steps", type=int, nargs="+", default=[0], help="latency: DDIM steps (0: the config's)")
    parser.add_argument("--memory-seconds", type=float, nargs=2, default=[60.0, 600.0])
    parser.add_argument("--seconds", type=float, default=60.0, help="memory-child: the stream's length")
    parser.add_argument("--print-only", action="store_true", help="print the entry, write no JSON")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared, loaded machine two threads' OpenMP "
                             "barriers stall on every small op)")
    args = parser.parse_args(argv)
    args.steps = [steps or None for steps in args.steps]
    # numba's OpenMP layer sets the process's OpenMP threads to its own count at its first parallel
    # launch (the Mamba scan's fast path), which torch then uses: give both the same count.
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = Path(args.out)
    report = json.loads(path.read_text()) if path.exists() and not args.print_only else {}
    for part in args.parts:
        began, load = time.perf_counter(), load_average()
        entry = PARTS[part](args)
        if args.print_only:
            print(json.dumps(entry), flush=True)
            continue
        entry.update({"metadata": run_metadata(), "load_average_start": load, "load_average_end": load_average(),
                      "torch_threads_end": torch.get_num_threads(), "wall_s": time.perf_counter() - began,
                      "argv": sys.argv[1:]})
        report[part if args.threads == 1 else f"{part}-{args.threads}-threads"] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(str(path)) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: v for k, v in entry.items() if k not in ("runs", "metadata")}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
