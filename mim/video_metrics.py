"""The arithmetic of the paper's distribution and sync metrics, apart from their networks.

- :func:`frechet_distance` — FID and FVD are the Fréchet distance between two Gaussians fitted to
  a network's features of real and generated samples (Inception-v3 pool features for FID, I3D
  logits for FVD; Heusel et al. 2017, Unterthiner et al. 2018):
  ``|μ₁ − μ₂|² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁ Σ₂)^½)``. :func:`feature_statistics` fits (μ, Σ).
- :func:`sync_scores` — LSE-D and LSE-C from per-frame video and audio embeddings (a SyncNet's;
  Chung & Zisserman 2016, as Prajwal et al. 2020 report them), computed as ``syncnet_python``'s
  ``calc_pdist`` and ``evaluate`` do: for every offset in ``[-max_offset, max_offset]`` the mean,
  over all T video frames, of the distance between each video embedding and the audio embedding
  shifted by that offset, where the audio is zero-padded by ``max_offset`` embeddings at both
  ends (so near the ends a video embedding is compared with a zero vector) and each distance is
  ``torch.nn.functional.pairwise_distance``'s ``‖v − a + 1e−6‖``; LSE-D is the smallest mean
  distance, LSE-C the median of the means minus that smallest one, and the offset is where the
  smallest lies. ``edges="overlap"`` instead averages over the frames where both embeddings
  exist, with the plain Euclidean distance (not comparable with published values).

The networks and their weights (given by path, never downloaded) are in :mod:`mim.metric_nets`
(layer 2), whose feature functions give these functions their inputs.
"""
from __future__ import annotations

import numpy as np

__all__ = ["feature_statistics", "frechet_distance", "sync_scores"]


def _matrix(value, name: str, dim=None) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"{name} must be a square matrix (d, d), got shape {array.shape}")
    if dim is not None and array.shape[0] != dim:
        raise ValueError(f"{name} must be ({dim}, {dim}) to match the mean, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def feature_statistics(features) -> tuple:
    """(μ (d,), Σ (d, d)) of ``features`` (n, d), n ≥ 2: the mean and the unbiased covariance,
    float64, as FID's reference code fits them."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {array.shape}")
    if array.shape[0] < 2:
        raise ValueError(f"features need at least 2 samples for a covariance, got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise ValueError("features hold NaN or infinite values")
    return array.mean(axis=0), np.cov(array, rowvar=False).reshape(array.shape[1], array.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix (its negative rounding-error
    eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (module docstring). Σ must be
    symmetric positive semi-definite (covariances are). tr((Σ₁ Σ₂)^½) is computed as
    tr((Σ₁^½ Σ₂ Σ₁^½)^½), the same eigenvalues through symmetric matrices only, so no complex
    rounding residue arises where Σ₁ Σ₂ is ill-conditioned."""
    mu1 = np.asarray(mu1, dtype=np.float64)
    mu2 = np.asarray(mu2, dtype=np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must be vectors of one length, got {mu1.shape} and {mu2.shape}")
    if not (np.isfinite(mu1).all() and np.isfinite(mu2).all()):
        raise ValueError("mu1 or mu2 holds NaN or infinite values")
    dim = mu1.shape[0]
    sigma1, sigma2 = _matrix(sigma1, "sigma1", dim), _matrix(sigma2, "sigma2", dim)
    root = _psd_sqrt(sigma1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma2 @ root), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * cross)


SYNCNET_EPS = 1e-6   # torch.nn.functional.pairwise_distance's eps, added to every difference


def sync_scores(video, audio, max_offset: int = 15, edges: str = "pad") -> dict:
    """LSE-D, LSE-C and the offset (module docstring) of per-frame embeddings ``video`` and
    ``audio`` (T, d). At offset k frame t of the video is compared with frame t + k of the audio.

    ``edges="pad"`` (syncnet_python's, the default): audio frames outside 0..T-1 are zero
    vectors, every mean is over all T frames and each distance is ``‖v − a + 1e−6‖``; any
    T >= 1 works. ``edges="overlap"``: each mean is over the frames where both exist (T >
    max_offset needed), plain Euclidean distances.

    Returns ``{"lse_d", "lse_c", "offset", "mean_distances"}`` (means for k = −max_offset ..
    max_offset); a positive offset means the audio runs ahead (the video shows at t what is heard
    at t + offset). syncnet_python prints −offset as its "AV offset"."""
    video = np.asarray(video, dtype=np.float64)
    audio = np.asarray(audio, dtype=np.float64)
    if video.ndim != 2 or video.shape != audio.shape:
        raise ValueError(f"video and audio embeddings must be (T, d) of one shape, got "
                         f"{video.shape} and {audio.shape}")
    if isinstance(max_offset, bool) or not isinstance(max_offset, (int, np.integer)) or max_offset < 0:
        raise ValueError(f"max_offset must be an integer >= 0, got {max_offset!r}")
    if edges not in ("pad", "overlap"):
        raise ValueError(f"edges must be 'pad' (syncnet_python's) or 'overlap', got {edges!r}")
    frames = video.shape[0]
    if frames == 0:
        raise ValueError("the embeddings hold no frames")
    if edges == "overlap" and frames <= max_offset:
        raise ValueError(f"{frames} frames do not cover offsets up to ±{max_offset}: need more than "
                         f"{max_offset} (or edges='pad')")
    if not (np.isfinite(video).all() and np.isfinite(audio).all()):
        raise ValueError("the embeddings hold NaN or infinite values")
    offsets = np.arange(-max_offset, max_offset + 1)
    means = []
    if edges == "pad":
        padded = np.concatenate([np.zeros((max_offset, video.shape[1])), audio,
                                 np.zeros((max_offset, video.shape[1]))])
        for k in offsets:
            heard = padded[max_offset + k:max_offset + k + frames]
            means.append(float(np.linalg.norm(video - heard + SYNCNET_EPS, axis=1).mean()))
    else:
        for k in offsets:
            shown = video[max(0, -k):frames - max(0, k)]
            heard = audio[max(0, k):frames - max(0, -k)]
            means.append(float(np.linalg.norm(shown - heard, axis=1).mean()))
    means = np.asarray(means)
    best = int(np.argmin(means))
    return {"lse_d": float(means[best]), "lse_c": float(np.median(means) - means[best]),
            "offset": int(offsets[best]), "mean_distances": means.tolist()}
