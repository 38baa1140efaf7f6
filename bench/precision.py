"""bf16 against fp32 on this CPU: fidelity of the outputs and the speed of bf16 and inductor.

Run from the repository root, one part at a time (each adds its entry to the JSON, with the date,
the machine and the load average at its start and end)::

    python -m bench.precision demo        # mim animate on the demo checkpoint: PSNR bf16 vs fp32
    python -m bench.precision base        # base config, random weights, short audio, few steps
    python -m bench.precision lipsync     # the lip-sync evaluation of the demo checkpoint in bf16
    python -m bench.precision train       # tiny stage-1: fp32, bf16, fp32 with another seed
    python -m bench.precision speed       # render window / denoiser step: eager/inductor x fp32/bf16
    python -m bench.precision layout      # the LMDD's 3-D convs: contiguous vs channels_last_3d
    python -m bench.precision plot        # redraw results/plots/precision_train.png from the JSON

Results go to ``bench/results/cpu/precision.json``. Each entry records ``bf16_cpu_route``: on a CPU
without bf16 instructions "fp32" (``mim.precision.bf16_compute``, the default: convolutions and
matmuls computed in fp32 from bf16 operands, rounded once) or "native" (``MIM_BF16_CPU=native``:
PyTorch's own bf16 CPU kernels). Speed figures are ratios of medians measured
in the same process (absolute CPU times on a shared 2-core machine are noisy).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mim.io import atomic_output
from mim.runinfo import run_metadata

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "cpu" / "precision.json"
DEMO = ROOT / "examples" / "demo"


def load_average() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def frame_psnrs(a: torch.Tensor, b: torch.Tensor) -> dict:
    per = [psnr(x, y) for x, y in zip(a, b)]
    return {"psnr_db": psnr(a, b), "min_frame_psnr_db": min(per), "frames": len(per),
            "max_abs_diff": float((a - b).abs().max())}


def part_demo(args) -> dict:
    from mim.animate import Animator

    animator = Animator.from_pretrained(DEMO / "mim_tiny.safetensors", device="cpu")
    out = {}
    for precision in ("fp32", "bf16"):
        began = time.perf_counter()
        out[precision] = animator.animate(DEMO / "portrait.png", DEMO / "speech.wav", seed=0, crop="center",
                                          precision=precision)
        out[precision + "_seconds"] = time.perf_counter() - began
    return {"what": "mim animate, demo checkpoint, examples/demo portrait + speech, --crop center, seed 0, "
                    "the config's DDIM steps", "steps": animator.config.motion.sample_steps,
            **frame_psnrs(out["bf16"], out["fp32"]),
            "seconds": {"fp32": out["fp32_seconds"], "bf16": out["bf16_seconds"]}}


def wake_zero_parameters(*modules, std=0.02, seed=0):
    """Random weights leave the zero-initialized heads at zero (the frames would not depend on the
    motion); fill those with small noise so every path of the network carries signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for parameter in module.parameters():
                if not parameter.any():
                    parameter.copy_(torch.randn(parameter.shape, generator=gen) * std)


def part_base(args) -> dict:
    from mim.data import speech_like_audio
    from mim.profile import build_animator

    animator, _ = build_animator("base", device="cpu", seed=0)
    wake_zero_parameters(animator.renderer, animator.motion)
    size = animator.config.renderer.image_size
    gen = torch.Generator().manual_seed(0)
    portrait = torch.rand(3, size, size, generator=gen)
    speech, _ = speech_like_audio(1.0, seed=1)
    speech = speech[:round(args.base_seconds * 16000)]
    out, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        began = time.perf_counter()
        out[precision] = animator.animate(portrait, speech, steps=args.base_steps, seed=0, crop="center",
                                          precision=precision)
        seconds[precision] = time.perf_counter() - began
    return {"what": f"base config, random weights (seed 0; zero-initialized heads filled with N(0, 0.02²)), "
                    f"random {size}x{size} portrait, {args.base_seconds} s of speech-like audio, "
                    f"{args.base_steps} DDIM steps, seed 0",
            **frame_psnrs(out["bf16"], out["fp32"]), "seconds": seconds}


def part_lipsync(args) -> dict:
    from mim.animate import Animator
    from mim.checkpoint import checkpoint_config
    from mim.evaluate import evaluate_lipsync, lipsync_clips

    path = DEMO / "mim_tiny.safetensors"
    config = checkpoint_config(str(path))
    if args.lipsync_clips:
        config.train.heldout_clips = config.stage2.heldout_clips = args.lipsync_clips
    result = {}
    for precision in args.lipsync_precisions:
        animator = Animator.from_pretrained(path, device="cpu", precision=precision)
        began = time.perf_counter()
        figures = evaluate_lipsync(animator, lipsync_clips(config), seed=0, progress=False)
        result[precision] = {k: v for k, v in figures.items() if not isinstance(v, list)}
        result[precision]["seconds"] = time.perf_counter() - began
    return {"what": f"mim evaluate --lipsync on the demo checkpoint (seed 0, the config's steps), "
                    f"{config.stage2.heldout_clips} held-out clip(s)", **result}


def _read_log(path) -> list:
    with open(path, newline="", encoding="utf-8") as handle:
        return [{"step": int(row["step"]), "loss": float(row["loss"]), "l1": float(row["l1"])}
                for row in csv.DictReader(handle)]


def part_train(args) -> dict:
    from mim.config import get_config
    from mim.train.stage1 import train_stage1

    runs = {}
    for name, precision, seed in (("fp32_seed0", "fp32", 0), ("bf16_seed0", "bf16", 0),
                                  ("fp32_seed1", "fp32", 1)):
        config = get_config("tiny")
        config.train.seed = seed
        config.train.log_every = 1
        config.train.checkpoint_every = 0
        if args.train_batch:
            config.train.batch_size = args.train_batch
        with tempfile.TemporaryDirectory() as out:
            began = time.perf_counter()
            result = train_stage1(config, out, args.train_steps, device="cpu", progress=False,
                                  precision=precision)
            seconds = time.perf_counter() - began
            log = _read_log(os.path.join(out, "log.csv"))
        runs[name] = {"precision": precision, "seed": seed, "seconds": seconds,
                      "heldout": result["heldout"], "log": log,
                      "loss_last_quarter_mean": statistics.fmean(r["loss"] for r in log[-max(1, len(log) // 4):]),
                      "l1_last_quarter_mean": statistics.fmean(r["l1"] for r in log[-max(1, len(log) // 4):])}
        print(name, runs[name]["heldout"], f"{seconds:.0f} s", flush=True)
    entry = {"what": f"tiny stage-1 from scratch on synthetic data, {args.train_steps} steps, batch "
                    f"{args.train_batch or 'of the config'}, CPU; bf16 = autocast with fp32 master weights; "
                    f"held-out figures from evaluate_reconstruction in fp32 at the end",
             "steps": args.train_steps, "runs": runs}
    entry["curve_gap_from_fp32_seed0"] = plot_train(entry)
    return entry


PLOT = Path(__file__).resolve().parent / "results" / "plots" / "precision_train.png"


def _running_mean(values: list, window: int = 25) -> list:
    return [statistics.fmean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def plot_train(entry: dict, path: Path = PLOT) -> dict:
    """The train part's loss curves (a running mean of 25 steps) in one PNG, written atomically;
    returns the mean absolute gap of each run's curve from fp32 seed 0's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: _running_mean([row["loss"] for row in run["log"]])
              for name, run in entry["runs"].items()}
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name.replace("_", ", "))
    date = entry.get("metadata", {}).get("date", "")[:10]
    ax.set(xlabel="step", ylabel="training loss (mean of the last 25 steps)",
           title=f"tiny stage-1, {entry['steps']} steps, CPU {date} (bench/precision.py train)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(str(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    ref = curves.get("fp32_seed0")
    return {name: statistics.fmean(abs(a - b) for a, b in zip(curve, ref))
            for name, curve in curves.items() if ref is not None and name != "fp32_seed0"}


def part_plot(args) -> dict:
    """Redraw the train part's plot from the JSON (no training)."""
    gaps = plot_train(json.loads(Path(args.out).read_text())["train"])
    return {"what": f"plot of the train part's loss curves: {PLOT.relative_to(ROOT)}", "gaps": gaps}


def _median_time(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


@contextlib.contextmanager
def _bf16_route(route: str):
    """MIM_BF16_CPU set to ``route`` for the block (mim.precision.bf16_compute reads it)."""
    before = os.environ.get("MIM_BF16_CPU")
    os.environ["MIM_BF16_CPU"] = route
    try:
        yield
    finally:
        if before is None:
            del os.environ["MIM_BF16_CPU"]
        else:
            os.environ["MIM_BF16_CPU"] = before


def part_speed(args) -> dict:
    from mim.precision import autocast, native_bf16_cpu
    from mim.profile import build_animator, set_backend

    results = {}
    for config_name in args.speed_configs:
        animator, _ = build_animator(config_name, device="cpu", seed=0)
        renderer, motion = animator.renderer, animator.motion
        cfg = animator.config
        size = cfg.renderer.image_size
        frames = args.window if args.window else cfg.renderer.render_window
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            state = renderer.encode_source(torch.rand(1, 3, size, size, generator=gen))
        driving = torch.randn(1, frames, cfg.renderer.motion_dim, generator=gen)
        window = cfg.motion.window
        x_t = torch.randn(1, window, cfg.renderer.motion_dim, generator=gen)
        t = torch.full((1,), cfg.motion.diffusion_steps - 1, dtype=torch.long)
        cond = {"audio_global": torch.randn(1, cfg.motion.audio_dim, generator=gen),
                "audio_local": torch.randn(1, window, cfg.motion.audio_dim, generator=gen),
                "prev_motion": torch.randn(1, cfg.motion.prev_frames, cfg.renderer.motion_dim, generator=gen),
                "appearance": state.appearance}

        def render(module):
            return lambda: module.render_window(state, driving)["frames"]

        def denoise(module):
            return lambda: module(x_t, t, **cond)

        entry = {}
        for column, backend in (("engine", None), ("reference", "reference")):
            set_backend(animator, backend)
            for task, build, module in (("render_window", render, renderer), ("denoiser_step", denoise, motion)):
                if task == "render_window" and config_name not in args.render_configs:
                    continue
                for mode in ("eager", "inductor"):
                    if mode == "inductor" and (task not in args.compile_tasks
                                               or config_name not in args.compile_configs):
                        continue
                    for variant in args.speed_precisions:
                        if variant == "bf16-native" and (mode == "inductor" or native_bf16_cpu()):
                            continue   # compiled code never takes the fp32 route: its bf16 row is native
                        precision = variant.split("-")[0]
                        torch._dynamo.reset()
                        call = build(module)   # the call itself is compiled (render_window is not forward)
                        if mode == "inductor":
                            call = torch.compile(call, backend="inductor")

                        def run():
                            with torch.no_grad(), autocast(precision, "cpu"):
                                return call()

                        with _bf16_route("native" if variant == "bf16-native" else "fp32"):
                            compile_began = time.perf_counter()
                            run()   # the compile for inductor; a warm-up for eager
                            first = time.perf_counter() - compile_began
                            seconds = _median_time(run, args.repeats, 1)
                        key = f"{task}/{column}/{mode}/{variant}"
                        entry[key] = {"median_s": seconds, "first_call_s": first, "load": load_average()}
                        print(config_name, key, f"{seconds * 1e3:.1f} ms (first call {first:.1f} s)",
                              flush=True)
        set_backend(animator, None)
        ratios = {}
        for task in ("render_window", "denoiser_step"):
            if f"{task}/reference/eager/fp32" not in entry:
                continue
            base = entry[f"{task}/reference/eager/fp32"]["median_s"]
            ratios[task] = {k.split("/", 1)[1]: base / v["median_s"] for k, v in entry.items() if k.startswith(task)}
        results[config_name] = {"render_window_frames": frames, "denoiser_window": window,
                                "times": entry, "speedup_vs_reference_eager_fp32": ratios}
    return {"what": "one render window (render_window of the given frames from a fixed source state) and one "
                    "denoiser call (ε_θ at t = T-1, one motion window, conditional branch only), random "
                    "weights; median of repeats after a warm-up (inductor: after its compile); speedups are "
                    "reference-eager-fp32 time / this time, from the same process; bf16 = autocast with "
                    "the CPU's fp32 route for convolutions and matmuls where it has no bf16 instructions "
                    "(eager only: compiled code is not routed), bf16-native = PyTorch's own bf16 kernels",
            "repeats": args.repeats, "configs": results}


def part_layout(args) -> dict:
    """The LMDD (the 3-D convolutions: hourglass and heads) on K frames, contiguous (NCDHW) against
    channels_last_3d (NDHWC: weights and input converted), fp32 and bf16 autocast."""
    from mim.config import get_config
    from mim.models.lmdd import LatentMotionDeviationDecoder
    from mim.precision import autocast, conv3d_memory_format

    results = {}
    for config_name in args.speed_configs:
        cfg = get_config(config_name).renderer
        torch.manual_seed(0)
        lmdd = LatentMotionDeviationDecoder(cfg).eval()
        k = args.window or cfg.render_window
        deviation = torch.randn(k, cfg.regions, cfg.motion_dim)
        feature = torch.randn(k, cfg.feature_channels, cfg.depth_layers, cfg.volume_size, cfg.volume_size)
        entry = {}
        for layout in ("contiguous", "channels_last_3d"):
            fmt = torch.contiguous_format if layout == "contiguous" else torch.channels_last_3d
            lmdd = conv3d_memory_format(lmdd, fmt)
            x = feature.contiguous(memory_format=fmt)
            for precision in ("fp32", "bf16") if config_name in args.render_configs else ("fp32",):
                def run():
                    with torch.no_grad(), autocast(precision, "cpu"):
                        return lmdd(deviation, x)
                entry[f"{layout}/{precision}"] = _median_time(run, args.repeats, 1)
                print(config_name, layout, precision, f"{entry[f'{layout}/{precision}'] * 1e3:.1f} ms", flush=True)
        results[config_name] = {"frames": k, "median_s": entry,
                                "channels_last_3d_speedup": {p: entry[f"contiguous/{p}"] / entry[f"channels_last_3d/{p}"]
                                                             for p in ("fp32", "bf16") if f"contiguous/{p}" in entry}}
    return {"what": "LatentMotionDeviationDecoder forward (random weights) on K frames, median of repeats; "
                    "speedup = contiguous time / channels_last_3d time, same process", "configs": results}


def part_weights(args) -> dict:
    """bf16 as autocast over fp32 weights against a bf16 copy of the weights (no autocast): one
    tiny render window, its time and its frames' PSNR against fp32."""
    import copy

    from mim.precision import autocast
    from mim.profile import build_animator

    animator, _ = build_animator("tiny", device="cpu", seed=0)
    wake_zero_parameters(animator.renderer)
    renderer = animator.renderer
    cfg = animator.config.renderer
    frames = args.window or cfg.render_window
    gen = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, cfg.image_size, cfg.image_size, generator=gen)
    motion = torch.randn(1, frames, cfg.motion_dim, generator=gen)
    with torch.no_grad():
        state = renderer.encode_source(source)
        reference = renderer.render_window(state, motion)["frames"]
        cast = copy.deepcopy(renderer).to(torch.bfloat16)
        state16 = type(state)(state.feature.bfloat16(), state.appearance.bfloat16(), state.motion.bfloat16())
    runs = {"autocast_fp32_weights": lambda: renderer.render_window(state, motion)["frames"],
            "bf16_weights": lambda: cast.render_window(state16, motion.bfloat16())["frames"]}
    out = {}
    for name, fn in runs.items():
        def run():
            with torch.no_grad(), autocast("bf16" if name.startswith("autocast") else "fp32", "cpu"):
                return fn()
        result = run().float()
        out[name] = {"median_s": _median_time(run, args.repeats, 0), "psnr_vs_fp32_db": psnr(result, reference)}
        print(name, out[name], flush=True)
    return {"what": f"tiny random renderer (zero heads filled), one render window of {frames} frames from an "
                    f"fp32-encoded source, median of {args.repeats}", "runs": out}


PARTS = {"plot": part_plot, "weights": part_weights, "layout": part_layout, "demo": part_demo, "base": part_base, "lipsync": part_lipsync, "train": part_train,
         "speed": part_speed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="+", choices=sorted(PARTS))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--base-seconds", type=float, default=0.4)
    parser.add_argument("--base-steps", type=int, default=4)
    parser.add_argument("--lipsync-precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--lipsync-clips", type=int, default=0, help="held-out clips (0: the config's)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--train-batch", type=int, default=0, help="stage-1 batch size (0: the config's)")
    parser.add_argument("--render-configs", nargs="*", default=["tiny", "base"],
                        help="configs whose render window (speed) and bf16 LMDD (layout) are timed")
    parser.add_argument("--speed-configs", nargs="+", default=["tiny", "base"])
    parser.add_argument("--speed-precisions", nargs="+", default=["fp32", "bf16", "bf16-native"],
                        choices=["fp32", "bf16", "bf16-native"])
    parser.add_argument("--compile-tasks", nargs="*", default=["render_window", "denoiser_step"])
    parser.add_argument("--compile-configs", nargs="*", default=["tiny", "base"])
    parser.add_argument("--window", type=int, default=0, help="render window frames (0: the config's)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    path = Path(args.out)
    report = json.loads(path.read_text()) if path.exists() else {}
    from mim.precision import native_bf16_cpu

    for part in args.parts:
        began, load = time.perf_counter(), load_average()
        entry = PARTS[part](args)
        entry.update({"metadata": run_metadata(), "native_bf16_cpu": native_bf16_cpu(),
                      "bf16_cpu_route": ("native" if native_bf16_cpu()
                                         else os.environ.get("MIM_BF16_CPU", "fp32")),
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "load_average_start": load, "load_average_end": load_average(),
                      "wall_s": time.perf_counter() - began, "argv": sys.argv[1:]})
        report[part] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(str(path)) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: v for k, v in entry.items() if k not in ("runs", "configs", "metadata")},
                         indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
