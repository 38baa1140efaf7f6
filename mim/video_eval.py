"""The paper's table of video metrics (Tables I and II) for generated videos against the ground
truth: Headpose, PSNR, SSIM, LPIPS, FID, FVD, DIV, TGD, LSE-D and LSE-C.

The videos come as :class:`VideoPair` s, one at a time, so a long evaluation never holds more
than one video in memory: each metric is an accumulator (``update`` per pair, ``compute`` at the
end). Metrics defined by a network take its weights from ``weights_dir`` (never downloaded:
``docs/metrics.md`` says where each file comes from). A metric that cannot run — its weight
file is missing, or it does not apply to these videos — is reported under ``errors`` with the
reason, and the others still run.

Rows of the result: ``generated`` scores the generated videos (against the truth where the
metric compares); ``truth`` holds what a metric also says about the ground truth alone (LSE of
the real video with its own audio, DIV of the real gestures): the ceiling to read the generated
row against.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["COLUMNS", "METRICS", "VIDEO_SUFFIXES", "VideoPair", "animated_pairs", "evaluate_videos",
           "folder_pairs", "format_table", "parse_metrics"]

# in the order of the paper's Table II; "lse" gives two columns
METRICS = ("headpose", "psnr", "ssim", "lpips", "fid", "fvd", "div", "tgd", "lse")
# (column, metric, key in the metric's result, lower is better)
COLUMNS = (("Headpose", "headpose", "headpose", True), ("PSNR", "psnr", "psnr", False),
           ("SSIM", "ssim", "ssim", False), ("LPIPS", "lpips", "lpips", True),
           ("FID", "fid", "fid", True), ("FVD", "fvd", "fvd", True), ("DIV", "div", "div", False),
           ("TGD", "tgd", "tgd", True), ("LSE-D", "lse", "lse_d", True), ("LSE-C", "lse", "lse_c", False))
LPIPS_FILES = ("lpips_vgg.safetensors",)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


@dataclass
class VideoPair:
    """One generated video and its ground truth. ``generated`` and ``truth``: (T, 3, H, W) float
    in [0, 1] (the generated one is resized to the truth's size if it differs; the longer one is
    cut to the shorter's length, counted under ``trimmed_frames``). ``audio``: the truth's mono
    audio at ``sample_rate`` (LSE needs it). ``keypoints``: the truth's exact per-frame body
    keypoints (T, K, 2) where known (procedural gesture clips), else None."""

    name: str
    generated: torch.Tensor
    truth: torch.Tensor
    audio: Optional[np.ndarray] = None
    sample_rate: int = 16000
    keypoints: Optional[torch.Tensor] = None


def parse_metrics(text: str) -> List[str]:
    """``"all"`` or a comma-separated list of :data:`METRICS` (``lse-c``/``lse-d`` name
    ``lse``) -> the metrics, in table order. Unknown names raise ValueError naming them."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"--metrics must be 'all' or a comma-separated list of {', '.join(METRICS)}")
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return list(METRICS)
    aliases = {"lse-c": "lse", "lse-d": "lse", "lse_c": "lse", "lse_d": "lse"}
    names = [aliases.get(name, name) for name in names]
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}: choose from all, {', '.join(METRICS)}")
    return [name for name in METRICS if name in names]


def _videos(folder, flag: str) -> Dict[str, Path]:
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{flag} {str(folder)!r} is not a folder")
    found = {p.stem: p for p in sorted(root.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()}
    if not found:
        raise ValueError(f"{flag} {str(folder)!r} holds no video ({', '.join(VIDEO_SUFFIXES)})")
    return found


def folder_pairs(generated_dir, truth_dir, sample_rate: int = 16000):
    """(names, pairs): the videos of ``generated_dir`` matched by file stem to those of
    ``truth_dir``; the audio comes from the truth's file (None where it has no audio stream).
    A name found in one folder only raises ValueError listing them. ``pairs`` decodes one pair
    at a time."""
    from mim.io import has_audio, read_audio, read_video

    generated, truth = _videos(generated_dir, "--generated"), _videos(truth_dir, "--truth")
    for here, there, flag in ((generated, truth, "--truth"), (truth, generated, "--generated")):
        alone = sorted(set(here) - set(there))
        if alone:
            raise ValueError(f"{len(alone)} video(s) have no namesake in {flag}: "
                             f"{', '.join(alone[:10])}{' ...' if len(alone) > 10 else ''}")
    names = sorted(generated)

    def pairs():
        for name in names:
            true_frames, _ = read_video(truth[name])
            fake_frames, _ = read_video(generated[name])
            audio = read_audio(truth[name], sample_rate) if has_audio(truth[name]) else None
            yield VideoPair(name, fake_frames, true_frames, audio, sample_rate)

    return names, pairs()


def animated_pairs(animator, clips, steps: Optional[int] = None, seed: int = 0):
    """Pairs of procedural ``clips`` (dicts with ``frames``, ``audio``, ``sample_rate`` and, for
    gesture clips, ``keypoints``) and ``animator`` 's video of each clip's first frame driven by
    its audio (an :class:`mim.animate.Animator`; ``steps``, ``seed`` go to its ``animate``)."""
    for index in range(len(clips)):
        clip = clips[index]
        frames, audio = clip["frames"], np.asarray(clip["audio"], dtype=np.float32)
        video = animator.animate(frames[:1], audio, steps=steps, seed=seed, crop="center")
        yield VideoPair(f"heldout_{index}", video, frames, audio, int(clip["sample_rate"]),
                        clip.get("keypoints"))


def _aligned(pair: VideoPair):
    for key in ("generated", "truth"):
        video = getattr(pair, key)
        if not torch.is_tensor(video) or video.ndim != 4 or video.shape[1] != 3 or video.shape[0] < 1:
            raise ValueError(f"{pair.name}: {key} must be a (T, 3, H, W) tensor with T >= 1, got "
                             f"{tuple(video.shape) if torch.is_tensor(video) else type(video).__name__}")
    generated, truth = pair.generated.float(), pair.truth.float()
    frames = min(generated.shape[0], truth.shape[0])
    trimmed = generated.shape[0] + truth.shape[0] - 2 * frames
    generated, truth = generated[:frames], truth[:frames]
    if generated.shape[-2:] != truth.shape[-2:]:
        generated = torch.nn.functional.interpolate(generated, size=truth.shape[-2:], mode="bilinear",
                                                    align_corners=False, antialias=True)
    return generated.clamp(0, 1), truth.clamp(0, 1), frames, trimmed


class _Metric(ABC):
    """An accumulator: ``update(generated, truth, pair)`` per video, ``compute()`` ->
    {"generated": {...}, "truth": {...}} (either may be empty)."""

    @abstractmethod
    def update(self, generated, truth, pair):
        """Take one aligned video pair."""

    @abstractmethod
    def compute(self):
        """The rows of the table this metric fills."""


class _FrameMeans(_Metric):
    """A mean over every frame of every video of a per-frame score ``fn(generated, truth)``."""

    def __init__(self, key: str, fn: Callable, device):
        self.key, self.fn, self.device = key, fn, device
        self.total, self.count = 0.0, 0

    def update(self, generated, truth, pair):
        for start in range(0, generated.shape[0], 32):
            g = generated[start:start + 32].to(self.device)
            t = truth[start:start + 32].to(self.device)
            self.total += float(self.fn(g, t).double().sum())
            self.count += g.shape[0]

    def compute(self):
        return {"generated": {self.key: self.total / self.count}, "truth": {}}


def _weights(metric: str, weights_dir) -> Path:
    from mim.metric_nets import find_metric_weights

    if weights_dir is None:
        from mim.metric_nets import MissingMetricWeights

        raise MissingMetricWeights(f"{metric}: needs network weights and no --weights-dir was given")
    return find_metric_weights(metric, weights_dir)


class _Frechet(_Metric):
    """FID / FVD: features of every generated and every true sample, then the Fréchet distance
    of the two Gaussians fitted to them."""

    def __init__(self, key: str, features: Callable, minimum: int):
        self.key, self.features, self.minimum = key, features, minimum
        self.generated: List[np.ndarray] = []
        self.truth: List[np.ndarray] = []

    def update(self, generated, truth, pair):
        g, t = self.features(generated), self.features(truth)
        if g is not None:
            self.generated.append(g)
            self.truth.append(t)

    def compute(self):
        from mim.video_metrics import feature_statistics, frechet_distance

        if not self.generated:
            raise ValueError(f"{self.key}: no video is long enough to give one sample")
        g, t = np.concatenate(self.generated), np.concatenate(self.truth)
        if len(g) < self.minimum:
            raise ValueError(f"{self.key}: {len(g)} samples; the Fréchet distance needs at least "
                             f"{self.minimum} per side")
        return {"generated": {self.key: frechet_distance(*feature_statistics(g), *feature_statistics(t)),
                              self.key + "_samples": float(len(g))}, "truth": {}}


def _fid(weights_dir, device) -> _Metric:
    from mim.metric_nets import inception_features, load_metric_network

    net = load_metric_network("fid", _weights("fid", weights_dir)).to(device).eval()
    return _Frechet("fid", lambda frames: inception_features(net, frames), 2)


def _fvd(weights_dir, device) -> _Metric:
    from mim.metric_nets import I3D_CLIP_FRAMES, i3d_features, load_metric_network

    net = load_metric_network("fvd", _weights("fvd", weights_dir)).to(device).eval()

    def clips(video):
        # non-overlapping windows of the I3D's clip length; a shorter tail is not scored
        count = video.shape[0] // I3D_CLIP_FRAMES
        if count == 0:
            return None
        windows = video[:count * I3D_CLIP_FRAMES].reshape(count, I3D_CLIP_FRAMES, *video.shape[1:])
        return i3d_features(net, windows.permute(0, 2, 1, 3, 4))

    return _Frechet("fvd", clips, 2)


class _Lse(_Metric):
    """LSE-D / LSE-C of each video with the truth's audio, averaged over videos; the truth row
    scores the real video with its own audio."""

    def __init__(self, weights_dir, device):
        from mim.metric_nets import load_metric_network

        self.net = load_metric_network("lse", _weights("lse", weights_dir)).to(device).eval()
        self.rows: Dict[str, List[dict]] = {"generated": [], "truth": []}

    def update(self, generated, truth, pair):
        from mim.metric_nets import syncnet_embeddings
        from mim.video_metrics import sync_scores

        if pair.audio is None:
            raise ValueError(f"lse: {pair.name} has no audio")
        for row, video in (("generated", generated), ("truth", truth)):
            video_emb, audio_emb = syncnet_embeddings(self.net, video, pair.audio, pair.sample_rate)
            self.rows[row].append(sync_scores(video_emb, audio_emb))

    def compute(self):
        return {row: {key: float(np.mean([s[key] for s in scores])) for key in ("lse_d", "lse_c")}
                for row, scores in self.rows.items()}


class _Headpose(_Metric):
    """Mean absolute yaw/pitch/roll error (mim.headpose) over every frame where both videos show
    a face; frames and whole videos without one are counted, not scored."""

    def __init__(self, weights_dir, device):
        from mim.headpose import DlibLandmarker

        self.landmarker = DlibLandmarker(_weights("headpose", weights_dir))
        self.sums = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0}
        self.frames = self.no_face = self.faceless_videos = 0

    def update(self, generated, truth, pair):
        from mim.headpose import NoFaceError, headpose_error

        try:
            error = headpose_error(generated, truth, self.landmarker)
        except NoFaceError:
            self.faceless_videos += 1
            return
        for key in self.sums:
            self.sums[key] += error[key] * error["frames"]
        self.frames += error["frames"]
        self.no_face += generated.shape[0] - error["frames"]

    def compute(self):
        if self.frames == 0:
            raise ValueError(f"headpose: no frame of any of the {self.faceless_videos} videos shows a face in "
                             f"both the generated and the true video")
        angles = {f"headpose_{key}": value / self.frames for key, value in self.sums.items()}
        return {"generated": {"headpose": float(np.mean(list(angles.values()))), **angles,
                              "headpose_frames": float(self.frames),
                              "headpose_frames_without_face": float(self.no_face),
                              "headpose_videos_without_face": float(self.faceless_videos)},
                "truth": {}}


class _Gestures(_Metric):
    """DIV and TGD (mim.gesture_metrics) of the head and hands read off the generated frames
    (``read_keypoints``), against the same parts of the truth's exact keypoints."""

    def __init__(self, wanted: Sequence[str]):
        self.wanted = tuple(wanted)
        self.generated: List[np.ndarray] = []
        self.truth: List[np.ndarray] = []

    def update(self, generated, truth, pair):
        from mim.gesture_metrics import read_keypoints, readout_subset

        if pair.keypoints is None:
            raise ValueError("div/tgd need the true clip's known body keypoints (the procedural "
                             "gesture clips carry them); for real videos a pose estimator would be "
                             "needed, and the engine ships none")
        self.generated.append(read_keypoints(generated)[0])
        self.truth.append(readout_subset(pair.keypoints[:generated.shape[0]]))

    def compute(self):
        from mim.gesture_metrics import diversity, temporal_gesture_distance

        out = {"generated": {}, "truth": {}}
        if "div" in self.wanted:
            out["generated"]["div"] = float(diversity(self.generated))
            out["truth"]["div"] = float(diversity(self.truth))
        if "tgd" in self.wanted:
            out["generated"]["tgd"] = float(temporal_gesture_distance(self.generated, self.truth))
        return out


def _build(metrics: Sequence[str], weights_dir, device, lpips_weights) -> tuple:
    """{metric: accumulator} for what can run, and {metric: reason} for what cannot."""
    from mim.metrics import LPIPS, psnr, ssim

    built: Dict[str, _Metric] = {}
    errors: Dict[str, str] = {}
    makers = {
        "psnr": lambda: _FrameMeans("psnr", psnr, device),
        "ssim": lambda: _FrameMeans("ssim", ssim, device),
        "lpips": lambda: _FrameMeans("lpips", LPIPS(_lpips_file(weights_dir, lpips_weights)).to(device).eval(),
                                     device),
        "fid": lambda: _fid(weights_dir, device),
        "fvd": lambda: _fvd(weights_dir, device),
        "lse": lambda: _Lse(weights_dir, device),
        "headpose": lambda: _Headpose(weights_dir, device),
    }
    gestures = [m for m in metrics if m in ("div", "tgd")]
    for metric in metrics:
        if metric in ("div", "tgd"):
            continue
        try:
            built[metric] = makers[metric]()
        except (FileNotFoundError, ValueError, ImportError) as error:
            errors[metric] = str(error)
    if gestures:
        built["+".join(gestures)] = _Gestures(gestures)
    return built, errors


def _lpips_file(weights_dir, lpips_weights) -> str:
    if lpips_weights:
        return str(lpips_weights)
    if weights_dir is not None:
        for name in LPIPS_FILES:
            if (Path(weights_dir) / name).is_file():
                return str(Path(weights_dir) / name)
    where = f"in {weights_dir}" if weights_dir is not None else "(no --weights-dir given)"
    raise FileNotFoundError(f"lpips: weight file {' or '.join(LPIPS_FILES)} not found {where}; it holds "
                            f"the VGG-16 trunk and LPIPS heads (docs/metrics.md)")


def evaluate_videos(pairs: Iterable[VideoPair], metrics: Sequence[str], weights_dir=None,
                    device="cpu", lpips_weights=None, progress: bool = False,
                    total: Optional[int] = None) -> Dict[str, object]:
    """Score ``pairs`` (an iterable of :class:`VideoPair`, consumed once) on ``metrics``
    (names of :data:`METRICS`). Returns ``{"generated": {...}, "truth": {...}, "errors":
    {metric: reason}, "videos", "frames", "trimmed_frames"}``. A metric whose network weights
    are missing from ``weights_dir``, or that does not apply to these videos (DIV/TGD read
    keypoints off the procedural gesture bodies only), is named in ``errors`` and skipped; the
    rest still run. Bad videos (wrong shape) raise ValueError naming the video."""
    from tqdm import tqdm

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}: choose from {', '.join(METRICS)}")
    built, errors = _build(list(metrics), weights_dir, device, lpips_weights)
    videos = frames = trimmed = 0
    for pair in tqdm(pairs, desc="evaluate", unit="video", total=total, disable=not progress):
        generated, truth, count, cut = _aligned(pair)
        with torch.no_grad():
            for name in list(built):
                try:
                    built[name].update(generated, truth, pair)
                except ValueError as error:
                    # a metric that does not apply to this video (too short, no audio, no face,
                    # not a gesture body): reported, the others go on
                    errors[name] = f"{pair.name}: {error}" if pair.name not in str(error) else str(error)
                    del built[name]
        videos, frames, trimmed = videos + 1, frames + count, trimmed + cut
    if videos == 0:
        raise ValueError("evaluate_videos was given no videos")
    result: Dict[str, object] = {"generated": {}, "truth": {}}
    for name, metric in built.items():
        try:
            rows = metric.compute()
        except ValueError as error:
            errors[name] = str(error)
            continue
        for row in ("generated", "truth"):
            result[row].update(rows.get(row, {}))
    result["errors"] = errors
    result.update(videos=videos, frames=frames, trimmed_frames=trimmed)
    return result


def format_table(result: Dict[str, object], metrics: Optional[Sequence[str]] = None) -> str:
    """The result as a Markdown table like the paper's: a column per metric (arrow: better),
    rows ``generated`` and ``ground truth``; a metric not computed shows ``n/a``, one without a
    value for that row ``-``. The errors follow the table, one line each."""
    wanted = set(metrics if metrics is not None else METRICS)
    columns = [c for c in COLUMNS if c[1] in wanted]
    head = "| | " + " | ".join(f"{name} {'↓' if lower else '↑'}" for name, _, _, lower in columns) + " |"
    lines = [head, "|" + " --- |" * (len(columns) + 1)]
    errors = result.get("errors", {})
    failed = {m for key in errors for m in key.split("+")}
    for row, label in (("generated", "generated"), ("truth", "ground truth")):
        cells = []
        for _, metric, key, _ in columns:
            value = result[row].get(key)
            cells.append("n/a" if metric in failed else "-" if value is None else f"{value:.4g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{result.get('videos', 0)} videos, {result.get('frames', 0)} frames")
    for metric, reason in errors.items():
        lines.append(f"not computed: {reason if reason.startswith(metric + ':') else metric + ': ' + reason}")
    return "\n".join(lines)
