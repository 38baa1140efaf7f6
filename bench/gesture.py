"""Co-speech gestures on the procedural upper bodies: the keypoint read-out's accuracy, and DIV/TGD
of a trained gesture model against the ground truth and a no-motion baseline.

Run from the repository root (docs/gesture.md gives the training commands and the figures)::

    python -m bench.gesture readout                       # read-out vs exact keypoints, GT frames
    python -m bench.gesture evaluate --stage1-run RUN1 --stage2-run RUN2   # DIV/TGD on held-out clips
    python -m bench.gesture evaluate ... --entry NAME     # the same, kept under another key
    python -m bench.gesture plot                          # redraw results/plots/gesture.png

Each part adds its entry to ``bench/results/cpu/gesture.json`` (written atomically) with the date,
the machine and the load average at its start and end.

``evaluate`` loads the newest stage-2 checkpoint of RUN2 and scores, on stage 2's held-out clips
(:func:`mim.evaluate.lipsync_clips`: the gesture-tiny config gives 8 clips of 100 frames, 64²),
keypoint sequences of:

- ``ground_truth``: the exact keypoints the clips were drawn from;
- ``ground_truth_frames``: the read-out on the ground-truth frames (the read-out's own floor);
- ``reconstruction``: the read-out on the renderer driven by the true frames' motion (stage 1's share);
- ``generated``: the read-out on the video animated from the first frame and the clip's audio;
- ``generated_shuffled_audio``: the same from the audio cut into 0.4 s chunks put out of order
  (:func:`mim.sync.shuffled_audio`): gestures no longer in time with the reference;
- ``no_motion``: the read-out on the source frame held still for the clip's length.

For each: DIV (:func:`mim.gesture_metrics.diversity`), TGD against the exact keypoints
(:func:`mim.gesture_metrics.temporal_gesture_distance`), both on head and hands in frame units
(× 32 for pixels at 64²), the same per part (``per_part``: head, each hand, on the clips where
the read-out ever found that part), and ``speed_activity_r``: the Pearson correlation of the hands' summed
speed with the clip's speech activity (:func:`mim.data.gesture.gesture_activity`), mean over clips.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mim.io import atomic_output
from mim.runinfo import run_metadata

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "cpu" / "gesture.json"
PLOT = Path(__file__).resolve().parent / "results" / "plots" / "gesture.png"
VARIANTS = ("ground_truth", "ground_truth_frames", "reconstruction", "generated", "generated_shuffled_audio",
            "no_motion")


def load_average() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def part_readout(args) -> dict:
    """Pixel error of the read-out against the exact keypoints on ground-truth frames."""
    from mim.data import SyntheticGestures
    from mim.gesture_metrics import READOUT_KEYPOINTS, read_keypoints, readout_subset

    out = {"what": "read_keypoints on ground-truth frames of held-out gesture clips vs the exact keypoints; "
                   "pixels = frame units x size / 2; 'offset' is the mean signed error (x, y), 'jitter' the "
                   "RMS of the error about each clip's mean (what DIV and TGD can see)",
           "clips": args.readout_clips, "frames": args.readout_frames, "sizes": {}}
    for size in args.readout_sizes:
        clips = SyntheticGestures(args.readout_clips, num_frames=args.readout_frames, size=size, seed=0,
                                  split="heldout", cache_size=0)
        errors, jitter, missing = [], [], 0
        for index in range(len(clips)):
            clip = clips[index]
            found, seen = read_keypoints(clip["frames"])
            delta = (found - readout_subset(clip["keypoints"].numpy())) * size / 2
            errors.append(delta)
            jitter.append(delta - delta.mean(0))
            missing += int((~seen).sum())
        errors, jitter = np.concatenate(errors), np.concatenate(jitter)
        distance = np.linalg.norm(errors, axis=-1)
        out["sizes"][str(size)] = {
            name: {"mean_px": float(distance[:, k].mean()), "max_px": float(distance[:, k].max()),
                   "offset_px": [float(v) for v in errors[:, k].mean(0)],
                   "jitter_rms_px": float(np.sqrt((jitter[:, k] ** 2).sum(-1).mean()))}
            for k, name in enumerate(READOUT_KEYPOINTS)}
        out["sizes"][str(size)]["frames_not_found"] = missing
    return out


def _newest_checkpoint(run: Path) -> Path:
    from mim.checkpoint import latest_checkpoint

    path = latest_checkpoint(str(run / "checkpoints"))
    if path is None:
        raise SystemExit(f"no checkpoint in {run / 'checkpoints'}")
    return Path(path)


def _run_summary(run: Path) -> dict:
    """Steps, the last logged losses and the training seconds of a run directory's log.csv."""
    with open(run / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    last = rows[-1]
    return {"dir": str(run), "steps": int(last["step"]),
            "last_log": {k: float(v) for k, v in last.items() if k != "step" and v not in ("", None)},
            "first_log": {k: float(v) for k, v in rows[0].items() if k != "step" and v not in ("", None)}}


@torch.no_grad()
def part_evaluate(args) -> dict:
    from mim.animate import Animator
    from mim.evaluate import lipsync_clips
    from mim.gesture_metrics import (READOUT_KEYPOINTS, diversity, read_keypoints, readout_subset,
                                     temporal_gesture_distance)
    from mim.sync import pearson, shuffled_audio

    if not args.stage2_run:
        raise SystemExit("evaluate needs --stage2-run (and --stage1-run for its summary)")
    checkpoint = _newest_checkpoint(Path(args.stage2_run))
    animator = Animator.from_pretrained(checkpoint, device="cpu")
    config = animator.config
    if config.train.procedural != "gestures":
        raise SystemExit(f"{checkpoint} was trained on train.procedural = {config.train.procedural!r}, "
                         f"not gestures")
    clips = lipsync_clips(config)
    count = min(len(clips), args.clips) if args.clips else len(clips)
    renderer, window = animator.renderer, config.renderer.render_window
    sequences = {name: [] for name in VARIANTS}
    references, correlations = [], {name: [] for name in VARIANTS}
    found_fraction = {name: [] for name in VARIANTS}
    began = time.perf_counter()
    for index in range(count):
        clip = clips[index]
        frames, audio, rate = clip["frames"], np.asarray(clip["audio"]), int(clip["sample_rate"])
        source = frames[:1]
        generated = animator.animate(source, audio, seed=args.seed, crop="center")
        shuffled = animator.animate(source, shuffled_audio(audio, rate, seed=args.seed), seed=args.seed,
                                    crop="center")
        state = renderer.encode_source(source)
        motion = renderer.encode_motion(frames[None])
        recon = torch.cat([renderer.render(state, motion[:, s:s + window], window=window)[0]
                           for s in range(0, motion.shape[1], window)]).clamp(0, 1)
        still = source.expand(frames.shape[0], -1, -1, -1)
        exact = readout_subset(clip["keypoints"].numpy())
        references.append(exact)
        videos = {"ground_truth_frames": frames, "reconstruction": recon, "generated": generated,
                  "generated_shuffled_audio": shuffled, "no_motion": still}
        for name in VARIANTS:
            if name == "ground_truth":
                keypoints, seen = exact, np.ones(exact.shape[:2], bool)
            else:
                video = videos[name]
                if video.shape[0] != frames.shape[0]:
                    raise SystemExit(f"clip {index}: {name} has {video.shape[0]} frames, the clip {frames.shape[0]}")
                keypoints, seen = read_keypoints(video)
            sequences[name].append(keypoints)
            found_fraction[name].append(float(seen.mean()))
            if np.isfinite(keypoints).all():
                speed = np.linalg.norm(np.diff(keypoints[:, 1:], axis=0), axis=-1).sum(-1)
                correlations[name].append(pearson(speed, clip["activity"].numpy()[1:]))
        print(f"clip {index + 1}/{count} done ({time.perf_counter() - began:.0f} s)", flush=True)
    table = {}
    for name in VARIANTS:
        usable = [i for i, seq in enumerate(sequences[name]) if np.isfinite(seq).all()]
        row = {"clips_scored": len(usable), "parts_found_fraction": float(np.mean(found_fraction[name]))}
        if usable:
            row["div"] = diversity([sequences[name][i] for i in usable])
            row["tgd"] = temporal_gesture_distance([sequences[name][i] for i in usable],
                                                   [references[i] for i in usable])
            row["speed_activity_r"] = float(np.mean(correlations[name]))
        row["per_part"] = {}
        for k, part in enumerate(READOUT_KEYPOINTS):   # each part on the clips where it was ever found
            kept = [i for i, seq in enumerate(sequences[name]) if np.isfinite(seq[:, k]).all()]
            if kept:
                row["per_part"][part] = {
                    "clips": len(kept), "div": diversity([sequences[name][i][:, k:k + 1] for i in kept]),
                    "tgd": temporal_gesture_distance([sequences[name][i][:, k:k + 1] for i in kept],
                                                     [references[i][:, k:k + 1] for i in kept])}
        table[name] = row
    entry = {"checkpoint": str(checkpoint), "config": config.name, "clips": count,
             "frames_per_clip": int(clips[0]["frames"].shape[0]), "image_size": config.renderer.image_size,
             "ddim_steps": config.motion.sample_steps, "seed": args.seed, "units": "frame units (x 32 = px at 64²)",
             "table": table, "evaluate_seconds": time.perf_counter() - began,
             "stage2_run": _run_summary(Path(args.stage2_run))}
    if args.stage1_run:
        entry["stage1_run"] = _run_summary(Path(args.stage1_run))
    for key, value in (("stage1_wall_s", args.stage1_wall_s), ("stage2_wall_s", args.stage2_wall_s)):
        if value:
            entry[key] = value
    return entry


def plot(report: dict, path: Path = PLOT) -> dict:
    """Bars of DIV and TGD per variant and part (head, each hand; from the evaluate entry's
    ``per_part``), a part the read-out never found marked "not found"; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = report["evaluate"]["table"]
    parts, colours = ("head", "left_hand", "right_hand"), ("#c8a27a", "#d21fc8", "#1fb02e")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, title in ((axes[0], "div", "DIV (higher: more motion)"),
                           (axes[1], "tgd", "TGD vs ground truth (lower: closer motion)")):
        for v, name in enumerate(VARIANTS):
            for k, part in enumerate(parts):
                x = v + (k - 1) * 0.27
                values = table[name]["per_part"].get(part)
                if values is None:
                    ax.text(x, 0.0, "not found", rotation=90, fontsize=6, ha="center", va="bottom")
                else:
                    ax.bar(x, 32 * values[key], width=0.25, color=colours[k], label=part if v == 0 else None)
        ax.set_xticks(range(len(VARIANTS)), [n.replace("_", "\n") for n in VARIANTS], fontsize=7)
        ax.set_ylabel("pixels at 64²")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{report['evaluate']['config']}, {report['evaluate']['clips']} held-out clips", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(str(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return {"plot": str(path.relative_to(ROOT))}


def part_plot(args) -> dict:
    return plot(json.loads(Path(args.out).read_text()))


PARTS = {"readout": part_readout, "evaluate": part_evaluate, "plot": part_plot}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="+", choices=sorted(PARTS))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--readout-clips", type=int, default=16)
    parser.add_argument("--readout-frames", type=int, default=100)
    parser.add_argument("--readout-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--stage1-run", help="the stage-1 run directory (its log is summarized)")
    parser.add_argument("--stage2-run", help="the stage-2 run directory: its newest checkpoint is scored")
    parser.add_argument("--stage1-wall-s", type=float, help="the stage-1 command's wall time, to record")
    parser.add_argument("--stage2-wall-s", type=float, help="the stage-2 command's wall time, to record")
    parser.add_argument("--clips", type=int, default=0, help="held-out clips to score (0: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--entry", help="the JSON key of an evaluate result (default: evaluate); the plot "
                                        "draws the evaluate entry")
    args = parser.parse_args(argv)
    path = Path(args.out)
    for part in args.parts:
        report = json.loads(path.read_text()) if path.exists() else {}
        began, load = time.perf_counter(), load_average()
        entry = PARTS[part](args)
        if part == "plot":
            print(json.dumps(entry, indent=2))
            continue
        entry.update({"metadata": run_metadata(), "load_average_start": load, "load_average_end": load_average(),
                      "wall_s": time.perf_counter() - began, "argv": sys.argv[1:]})
        key = args.entry if part == "evaluate" and args.entry else part
        report[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(str(path)) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
        if key == "evaluate":
            print(json.dumps(plot(report)))
        printable = entry.get("table", entry.get("sizes"))
        print(json.dumps(printable, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
