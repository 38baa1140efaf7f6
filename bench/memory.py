"""Peak memory of ``mim animate`` and ``mim reenact`` against the length of their input: the
longer input should peak within 1.2× of the shorter (issue 16 §2).

    python -m bench.memory [--steps 1] [--repo .] [--out-dir bench/results] [--cases all]

Cases (each the real CLI, ``python -c "from mim.cli import main; ..."``, in its own fresh
subprocess on the CPU, all started at once):
  animate-1min / animate-10min   the demo checkpoint (examples/demo/mim_tiny.safetensors) and its
                                 portrait, with 1 and 10 minutes of
                                 :func:`mim.data.synthetic.speech_like_audio` (seed 0) as a wav;
                                 ``--steps`` DDIM steps per motion window (default 1: the motion
                                 sampler's memory does not depend on the step count, its time does)
  reenact-50 / reenact-500       the same checkpoint's renderer driven by 50 and 500 frames of a
                                 640×480 H.264 video (25 fps, a moving pattern, 20 s of speech as
                                 its audio track)

Peak RSS is the child's ``ru_maxrss`` from ``os.wait4`` (the high-water mark of its resident set,
what the kernel reports for that one process). ``--repo`` runs the children on another checkout
(e.g. a ``git worktree`` of an older commit) to measure the code before a change; the inputs are
made by this checkout's ``mim``. Wall time is printed for orientation only (this 2-core machine is
shared, and the cases run side by side: wall time is from the start of all of them). Writes
``memory.json`` and ``memory.md`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mim.io import atomic_output
from mim.runinfo import package_version, run_metadata

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT = Path("examples/demo/mim_tiny.safetensors")
PORTRAIT = Path("examples/demo/portrait.png")
PAIRS = {"animate": ("animate-1min", "animate-10min"), "reenact": ("reenact-50", "reenact-500")}
TARGET = 1.2


def make_speech(path: Path, seconds: float) -> None:
    from mim.data.synthetic import speech_like_audio
    from mim.io import write_wav

    audio, _ = speech_like_audio(seconds, seed=0)
    write_wav(path, audio, 16000)


def make_driving(path: Path, frames: int, height: int = 480, width: int = 640) -> None:
    """A 640×480 25 fps H.264 clip of ``frames`` frames: a colour gradient whose bright disc moves."""
    from mim.data.synthetic import speech_like_audio
    from mim.io import write_video

    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]

    def stream():
        for index in range(frames):
            phase = 2 * np.pi * index / 50
            cy, cx = 0.5 + 0.2 * np.sin(phase), 0.5 + 0.2 * np.cos(phase)
            disc = ((ys - cy) ** 2 + (xs - cx) ** 2 < 0.02).float()
            yield torch.stack([xs.expand(height, width), ys.expand(height, width),
                               0.3 + 0.7 * disc]).clamp(0, 1)

    audio, _ = speech_like_audio(20.0, seed=1)
    write_video(path, stream(), fps=25, audio=audio, sample_rate=16000)


def measure(cases: list, repo: Path, tmp: Path) -> dict:
    """Run each case's ``mim <argv>`` in a fresh child, all at once (each child's peak RSS is its
    own, whatever runs beside it): {name: peak RSS (MiB, from wait4) and wall time}."""
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="2")
    code = "import sys; from mim.cli import main; sys.exit(main(sys.argv[1:]))"
    running, figures = {}, {}
    start = time.perf_counter()
    for name, _, argv in cases:
        log = open(tmp / f"{name}.log", "wb")
        child = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=repo, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
        running[child.pid] = (name, argv, log)
    while running:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        name, argv, log = running.pop(pid)
        log.close()
        if os.waitstatus_to_exitcode(status) != 0:
            text = (tmp / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mim {' '.join(argv)} failed (exit {os.waitstatus_to_exitcode(status)}):\n{text}")
        figures[name] = {"peak_rss_mib": usage.ru_maxrss / 1024, "seconds": time.perf_counter() - start}
        print(f"{name}: {figures[name]['peak_rss_mib']:.0f} MiB peak RSS, "
              f"{figures[name]['seconds']:.0f} s", flush=True)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1, help="DDIM steps per motion window (animate)")
    parser.add_argument("--repo", default=str(REPO), help="checkout whose mim the children run")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    parser.add_argument("--label", default="", help="a name for this run in the table (e.g. 'before')")
    parser.add_argument("--cases", choices=("all", "animate", "reenact"), default="all")
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    checkpoint, portrait = repo / CHECKPOINT, repo / PORTRAIT
    kinds = ["animate", "reenact"] if args.cases == "all" else [args.cases]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = []
        if "animate" in kinds:
            for name, seconds in zip(PAIRS["animate"], (60.0, 600.0)):
                wav = tmp / f"{name}.wav"
                make_speech(wav, seconds)
                cases.append((name, f"{seconds / 60:.0f} min of audio, {args.steps} DDIM step(s)",
                              ["animate", "--image", str(portrait), "--crop", "center", "--audio", str(wav),
                               "--checkpoint", str(checkpoint), "--out", str(tmp / f"{name}.mp4"),
                               "--steps", str(args.steps), "--device", "cpu", "--no-progress"]))
        if "reenact" in kinds:
            for name, frames in zip(PAIRS["reenact"], (50, 500)):
                driving = tmp / f"{name}-driving.mp4"
                make_driving(driving, frames)
                cases.append((name, f"{frames} driving frames of 640x480",
                              ["reenact", "--crop", "center", "--driving-crop", "center", "--image", str(portrait), "--driving", str(driving),
                               "--checkpoint", str(checkpoint), "--out", str(tmp / f"{name}.mp4"),
                               "--device", "cpu", "--no-progress"]))
        figures = measure(cases, repo, tmp)
        results = [{"case": name, "input": what, **figures[name]} for name, what, _ in cases]
    ratios = {}
    for kind, (short, long) in PAIRS.items():
        found = {r["case"]: r["peak_rss_mib"] for r in results}
        if short in found and long in found:
            ratios[kind] = found[long] / found[short]
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    metadata = run_metadata()
    metadata["versions"]["av"] = package_version("av")
    report = {
        "label": args.label,
        "metadata": metadata,
        "code": f"{commit}{' + uncommitted changes' if dirty else ''}",
        "ddim_steps": args.steps,
        "target_ratio": TARGET,
        "cases": results,
        "ratios": ratios,
    }
    machine, versions = metadata["machine"], metadata["versions"]
    lines = [f"# Peak RSS against input length{f' ({args.label})' if args.label else ''}", "",
             f"Measured {metadata['date']} on {machine['processor']} ({machine['cpu_count']} CPUs, "
             f"{machine['platform']}), Python {versions['python']}, torch {versions['torch']}, "
             f"PyAV {versions['av']}, code {report['code']}. Each case is "
             f"the `mim` CLI in its own fresh process on the CPU, all cases started together (peak "
             f"RSS = the child's ru_maxrss; wall time is not a speed figure); "
             f"animate with {args.steps} DDIM step(s) per window. Target: the longer input within "
             f"{TARGET}x of the shorter.", "",
             "| case | input | peak RSS (MiB) | wall (s) |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['case']} | {r['input']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.0f} |"
              for r in results]
    lines += [""] + [f"- {kind}: longer / shorter = {ratio:.3f}x "
                     f"({'within' if ratio <= TARGET else 'above'} the {TARGET}x target)"
                     for kind, ratio in ratios.items()]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "memory" if not args.label else f"memory_{args.label}"
    for path, text in ((out_dir / f"{stem}.json", json.dumps(report, indent=2) + "\n"),
                       (out_dir / f"{stem}.md", "\n".join(lines) + "\n")):
        with atomic_output(path) as tmp:
            Path(tmp).write_text(text)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
