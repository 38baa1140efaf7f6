"""mim.video_metrics: the Fréchet distance of FID/FVD against closed forms (SciPy's sqrtm; diagonal
covariances), feature statistics, and the LSE offset search recovering known shifts of synthetic
embeddings, with syncnet_python's edge handling (zero-padded audio, pairwise_distance's eps) checked
on a hand-worked example and against a torch re-computation of its calc_pdist; bad inputs named."""

import numpy as np
import pytest
import torch
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


@pytest.mark.parametrize("edges", ["pad", "overlap"])
@pytest.mark.parametrize("shift", [-7, -1, 0, 3, 15])
def test_the_offset_search_recovers_a_known_shift(shift, edges):
    rng = np.random.default_rng(10 + shift)
    frames = 120
    audio = _embeddings(rng, frames + 40)
    # the video shows at frame t what the audio holds at t + shift
    video = audio[20 + shift:20 + shift + frames] + 0.05 * rng.standard_normal((frames, 32))
    result = sync_scores(video, audio[20:20 + frames], edges=edges)
    assert result["offset"] == shift
    means = np.asarray(result["mean_distances"])
    assert len(means) == 31 and result["lse_d"] == means.min() == means[shift + 15]
    assert result["lse_c"] == pytest.approx(np.median(means) - means.min())
    assert result["lse_c"] > 1.0
    if edges == "overlap":
        assert result["lse_d"] < 0.6
    else:   # the |shift| frames whose audio lies past the clip's end are compared with zeros
        inside = np.arange(frames) + shift
        heard = np.where(((inside >= 0) & (inside < frames))[:, None], audio[20 + shift:20 + shift + frames], 0)
        assert result["lse_d"] == pytest.approx(np.linalg.norm(video - heard + 1e-6, axis=1).mean(), rel=1e-12)
        assert result["lse_d"] < 0.6 + abs(shift) / frames * np.linalg.norm(video, axis=1).max()


def test_syncnet_edge_handling_on_a_hand_worked_example():
    video = np.array([[1.0], [2.0], [3.0]])
    audio = np.array([[1.0], [2.0], [4.0]])
    # padded audio [0, 1, 2, 4, 0]: offset -1 compares (1, 0) (2, 1) (3, 2): 1, 1, 1; offset 0:
    # 0, 0, 1; offset +1: (1, 2) (2, 4) (3, 0): 1, 2, 3; each difference + 1e-6
    eps = 1e-6
    want = [(1 + eps) * 3 / 3, (eps + eps + 1 - eps) / 3, (1 - eps + 2 - eps + 3 + eps) / 3]
    padded = sync_scores(video, audio, max_offset=1)
    assert padded["mean_distances"] == pytest.approx(want, abs=1e-12)
    assert padded["offset"] == 0
    assert padded["lse_d"] == pytest.approx(want[1], abs=1e-12)
    assert padded["lse_c"] == pytest.approx(want[0] - want[1], abs=1e-12)     # median = 1 + 1e-6
    # where both exist only: offset +1 is (1, 2) (2, 4): 1.5 instead of 2
    overlap = sync_scores(video, audio, max_offset=1, edges="overlap")
    assert overlap["mean_distances"] == pytest.approx([1.0, 1 / 3, 1.5], abs=1e-15)
    assert overlap["lse_c"] == pytest.approx(1.0 - 1 / 3, abs=1e-15)


def _calc_pdist_means(video, audio, vshift):
    """syncnet_python's calc_pdist and its mean over frames, re-done with the torch calls it uses
    (F.pad of the audio by vshift rows, pairwise_distance of each video row against a window)."""
    v, a = torch.from_numpy(video), torch.from_numpy(audio)
    padded = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
    dists = [torch.nn.functional.pairwise_distance(v[[i], :].repeat(2 * vshift + 1, 1),
                                                   padded[i:i + 2 * vshift + 1, :])
             for i in range(len(v))]
    return torch.mean(torch.stack(dists, 1), 1).numpy()


@pytest.mark.parametrize("frames", [4, 40])
def test_pad_mode_matches_syncnet_pythons_calc_pdist(frames):
    rng = np.random.default_rng(frames)
    video, audio = rng.standard_normal((frames, 24)), rng.standard_normal((frames, 24))
    means = _calc_pdist_means(video, audio, 15)
    result = sync_scores(video, audio)
    assert np.allclose(result["mean_distances"], means, rtol=1e-12, atol=1e-12)
    best = int(np.argmin(means))
    assert result["offset"] == best - 15                     # syncnet_python's "AV offset" is 15 - best
    assert result["lse_d"] == pytest.approx(means[best], rel=1e-12)
    assert result["lse_c"] == pytest.approx(float(torch.median(torch.from_numpy(means))) - means[best],
                                            rel=1e-12, abs=1e-12)


def test_unrelated_embeddings_have_low_confidence_and_bad_inputs_are_named():
    rng = np.random.default_rng(3)
    video, audio = rng.standard_normal((60, 16)), rng.standard_normal((60, 16))
    for edges in ("pad", "overlap"):
        synced = sync_scores(audio + 0.05 * rng.standard_normal((60, 16)), audio, edges=edges)
        unrelated = sync_scores(video, audio, edges=edges)
        assert synced["offset"] == 0 and unrelated["lse_c"] < 0.2 * synced["lse_c"]
    with pytest.raises(ValueError, match="of one shape"):
        sync_scores(video, audio[:50])
    with pytest.raises(ValueError, match="do not cover offsets up to ±15"):
        sync_scores(video[:15], audio[:15], edges="overlap")
    assert len(sync_scores(video[:15], audio[:15])["mean_distances"]) == 31     # padding covers them
    with pytest.raises(ValueError, match="no frames"):
        sync_scores(video[:0], audio[:0])
    with pytest.raises(ValueError, match="edges must be 'pad'"):
        sync_scores(video, audio, edges="zeros")
    with pytest.raises(ValueError, match="max_offset must be an integer >= 0"):
        sync_scores(video, audio, max_offset=-1)
    bad = audio.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        sync_scores(video, bad)
    assert sync_scores(video, audio, max_offset=0, edges="overlap")["mean_distances"] == [
        pytest.approx(float(np.linalg.norm(video - audio, axis=1).mean()))]
    assert sync_scores(video, audio, max_offset=0)["mean_distances"] == [
        pytest.approx(float(np.linalg.norm(video - audio + 1e-6, axis=1).mean()))]
