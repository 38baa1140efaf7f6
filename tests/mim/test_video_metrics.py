"""mim.video_metrics: the Fréchet distance of FID/FVD against closed forms (SciPy's sqrtm; diagonal
covariances), feature statistics, and the LSE offset search recovering known shifts of synthetic
embeddings; bad inputs named."""

import numpy as np
import pytest
from scipy import linalg

from mim.video_metrics import feature_statistics, frechet_distance, sync_scores


def _random_covariance(rng, dim, rank=None):
    factor = rng.standard_normal((dim, rank or dim))
    return factor @ factor.T / dim


@pytest.mark.parametrize("dim", [1, 3, 16])
def test_frechet_distance_matches_the_closed_form_with_scipys_sqrtm(dim):
    rng = np.random.default_rng(dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
    cross = linalg.sqrtm(s1 @ s2)
    want = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, rel=1e-9, abs=1e-9)   # symmetric


def test_frechet_distance_of_diagonal_gaussians_and_of_equal_ones():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    want = 1.0 + 0.0 + 4.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    rng = np.random.default_rng(0)
    low_rank = _random_covariance(rng, 12, rank=3)          # singular, as with few samples
    # its 9 zero eigenvalues come out as ±1e-17 rounding, whose square roots (3e-9 each) are
    # what is left of an exact 0: a bound of 1e-6 against a trace of 0.4
    assert abs(frechet_distance(np.zeros(12), low_rank, np.zeros(12), low_rank)) < 1e-6
    assert frechet_distance(np.zeros(12), low_rank, np.zeros(12), low_rank + np.eye(12)) > 1.0


def test_feature_statistics_fit_the_gaussian_and_name_bad_features():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((50, 4)) * [1, 2, 3, 4] + [0, 1, 2, 3]
    mu, sigma = feature_statistics(features)
    assert np.allclose(mu, features.mean(axis=0))
    assert np.allclose(sigma, np.cov(features, rowvar=False))
    assert feature_statistics(features[:, :1])[1].shape == (1, 1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_statistics(features[:1])
    with pytest.raises(ValueError, match=r"must be \(n, d\)"):
        feature_statistics(features[0])
    bad = features.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        feature_statistics(bad)
    with pytest.raises(ValueError, match="vectors of one length"):
        frechet_distance(mu, sigma, mu[:2], sigma[:2, :2])
    with pytest.raises(ValueError, match=r"sigma2 must be \(4, 4\)"):
        frechet_distance(mu, sigma, mu, sigma[:3, :3])
    with pytest.raises(ValueError, match="sigma1 must be a square matrix"):
        frechet_distance(mu, sigma[:3], mu, sigma)


def _embeddings(rng, frames, dim=32):
    """Per-frame embeddings that change smoothly from frame to frame, as a SyncNet's do."""
    steps = rng.standard_normal((frames, dim))
    return np.cumsum(steps, axis=0) / np.sqrt(np.arange(1, frames + 1))[:, None]


@pytest.mark.parametrize("shift", [-7, -1, 0, 3, 15])
def test_the_offset_search_recovers_a_known_shift(shift):
    rng = np.random.default_rng(10 + shift)
    frames = 120
    audio = _embeddings(rng, frames + 40)
    # the video shows at frame t what the audio holds at t + shift
    video = audio[20 + shift:20 + shift + frames] + 0.05 * rng.standard_normal((frames, 32))
    result = sync_scores(video, audio[20:20 + frames])
    assert result["offset"] == shift
    means = np.asarray(result["mean_distances"])
    assert len(means) == 31 and result["lse_d"] == means.min() == means[shift + 15]
    assert result["lse_c"] == pytest.approx(np.median(means) - means.min())
    assert result["lse_c"] > 1.0 and result["lse_d"] < 0.6


def test_unrelated_embeddings_have_low_confidence_and_bad_inputs_are_named():
    rng = np.random.default_rng(3)
    video, audio = rng.standard_normal((60, 16)), rng.standard_normal((60, 16))
    synced = sync_scores(audio + 0.05 * rng.standard_normal((60, 16)), audio)
    unrelated = sync_scores(video, audio)
    assert synced["offset"] == 0 and unrelated["lse_c"] < 0.2 * synced["lse_c"]
    with pytest.raises(ValueError, match="of one shape"):
        sync_scores(video, audio[:50])
    with pytest.raises(ValueError, match="do not cover offsets up to ±15"):
        sync_scores(video[:15], audio[:15])
    with pytest.raises(ValueError, match="max_offset must be an integer >= 0"):
        sync_scores(video, audio, max_offset=-1)
    bad = audio.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        sync_scores(video, bad)
    assert sync_scores(video, audio, max_offset=0)["mean_distances"] == [
        pytest.approx(float(np.linalg.norm(video - audio, axis=1).mean()))]
