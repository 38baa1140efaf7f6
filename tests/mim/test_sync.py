"""Lip-sync metric: the pixel measurement of the mouth recovers the renderer's ground truth across
looks (dark hair, beards, bald heads, dark skin) and resolutions, synced audio scores high and
shuffled audio near zero, and bad inputs raise errors that name the argument."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mim.data.synthetic import _draw_look, make_clip
from mim.sync import audio_envelope_per_frame, mouth_opening, shuffled_audio, sync_correlation

SAMPLE_RATE = 16000
FPS = 25
# Looks at 64 x 64 (100 frames): dark hair (0, 1, 12, 13, 23, 38; 17 is dark red, close to the
# mouth interior), a bald head with a dark beard (22), a white beard on dark skin (16), dark skin
# (0), glasses (38), light hair (3).
SEEDS_64 = (0, 1, 3, 12, 13, 16, 17, 22, 23, 38)
# At 256 x 256 (50 frames): dark hair on dark skin (0), dark red hair on dark skin (10), a beard
# on dark skin (14).
SEEDS_256 = (0, 10, 14)


def _look(seed):
    """The look make_clip draws for ``seed`` (its first child stream)."""
    return _draw_look(np.random.default_rng(np.random.SeedSequence(seed).spawn(4)[0]))


def _pearson(a, b):
    return float(np.corrcoef(np.asarray(a, np.float64), np.asarray(b, np.float64))[0, 1])


@pytest.fixture(scope="module")
def clips_64():
    return {seed: make_clip(seed, num_frames=100, size=64) for seed in SEEDS_64}


def test_chosen_seeds_cover_the_hard_looks():
    looks = [_look(seed) for seed in SEEDS_64]
    assert sum(look.hair_style != "bald" and look.hair.max() < 0.2 for look in looks) >= 5
    assert sum(look.beard for look in looks) >= 2
    assert any(look.hair_style == "bald" for look in looks)
    assert any(look.skin.mean() < 0.3 for look in looks)
    assert any(look.glasses for look in looks)
    assert _look(SEEDS_256[1]).hair.max() < 0.2 and _look(SEEDS_256[2]).beard


def test_mouth_opening_recovers_the_rendered_opening_64(clips_64):
    correlations = {seed: _pearson(mouth_opening(clip["frames"]), clip["mouth_open"])
                    for seed, clip in clips_64.items()}
    low = {seed: round(r, 3) for seed, r in correlations.items() if not r >= 0.9}
    assert not low, f"Pearson(measured, true) below 0.9: {low}; all: {correlations}"


@pytest.mark.parametrize("seed", SEEDS_256)
def test_mouth_opening_recovers_the_rendered_opening_256(seed):
    clip = make_clip(seed, num_frames=50, size=256)
    r = _pearson(mouth_opening(clip["frames"]), clip["mouth_open"])
    assert r >= 0.9, f"seed {seed}: Pearson(measured, true) = {r:.3f}"


def test_mouth_opening_survives_noise_and_blur_at_128():
    """Generated frames are not pixel-exact: Gaussian noise (sigma 0.02) on a 3 x 3 binomial blur."""
    generator = torch.Generator().manual_seed(0)
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]) / 16
    correlations = {}
    for seed in (0, 1, 3):
        clip = make_clip(seed, num_frames=60, size=128)
        blurred = F.conv2d(F.pad(clip["frames"], (1, 1, 1, 1), mode="replicate"),
                           kernel.expand(3, 1, 3, 3), groups=3)
        noisy = (blurred + 0.02 * torch.randn(blurred.shape, generator=generator)).clamp(0, 1)
        correlations[seed] = _pearson(mouth_opening(noisy), clip["mouth_open"])
    assert min(correlations.values()) >= 0.8, correlations


def test_mouth_opening_is_least_when_shut_and_grows_with_the_opening(clips_64):
    clip = clips_64[3]
    opening = mouth_opening(clip["frames"])
    truth = clip["mouth_open"].numpy()
    assert opening.shape == (100,) and opening.dtype == np.float64
    assert np.all(opening >= 0)
    shut = opening[truth == 0]
    assert shut.size > 5
    # a shut mouth still shows the dark line between the lips, under a pixel high
    assert shut.max() < 64 * 1.0 / 64 ** 2
    assert shut.max() < opening[truth > 0.5].min()
    assert opening[truth > 0.8].min() > opening[(truth > 0) & (truth < 0.3)].max()


def test_mouth_opening_takes_tensors_and_arrays_alike(clips_64):
    frames = clips_64[0]["frames"][:10]
    np.testing.assert_array_equal(mouth_opening(frames), mouth_opening(frames.numpy()))
    np.testing.assert_array_equal(mouth_opening(frames[:1]), mouth_opening(frames)[:1])


def test_synced_audio_scores_high_and_shuffled_audio_near_zero(clips_64):
    synced, shuffled = {}, {}
    for seed, clip in clips_64.items():
        synced[seed] = sync_correlation(clip["frames"], clip["audio"], SAMPLE_RATE, FPS)
        control = shuffled_audio(clip["audio"], SAMPLE_RATE, FPS, seed=seed)
        shuffled[seed] = sync_correlation(clip["frames"], control, SAMPLE_RATE, FPS)
    low = {seed: round(r, 3) for seed, r in synced.items() if not r >= 0.7}
    assert not low, f"synced audio below 0.7: {low}; all: {synced}"
    mean_abs = float(np.mean(np.abs(list(shuffled.values()))))
    assert mean_abs < 0.3, f"mean |r| against shuffled audio {mean_abs:.3f}: {shuffled}"
    assert min(synced.values()) > max(shuffled.values()), (synced, shuffled)


def test_a_still_mouth_or_silence_scores_zero(clips_64):
    clip = clips_64[1]
    still = clip["frames"][40:41].expand(100, -1, -1, -1)
    assert sync_correlation(still, clip["audio"], SAMPLE_RATE, FPS) == 0.0
    silence = np.zeros_like(clip["audio"])
    assert sync_correlation(clip["frames"], silence, SAMPLE_RATE, FPS) == 0.0


def test_audio_envelope_is_the_rms_of_each_frame_span():
    rng = np.random.default_rng(1)
    sample_rate, fps, num_frames = 16000, 30, 7  # 533.3 samples a frame: uneven spans
    audio = rng.normal(size=round(num_frames * sample_rate / fps)).astype(np.float32)
    envelope = audio_envelope_per_frame(audio, sample_rate, num_frames, fps)
    bounds = [round(k * sample_rate / fps) for k in range(num_frames + 1)]
    expected = [np.sqrt(np.mean(audio[a:b].astype(np.float64) ** 2)) for a, b in zip(bounds, bounds[1:])]
    assert envelope.shape == (num_frames,)
    np.testing.assert_allclose(envelope, expected, rtol=1e-9)


def test_audio_envelope_pads_a_short_last_frame_with_silence():
    sample_rate, fps = 1000, 10  # 100 samples a frame
    audio = np.ones(250)
    envelope = audio_envelope_per_frame(audio, sample_rate, 3, fps)
    np.testing.assert_allclose(envelope, [1.0, 1.0, np.sqrt(0.5)])
    np.testing.assert_allclose(audio_envelope_per_frame(np.ones(380), sample_rate, 3, fps), 1.0)


@pytest.mark.parametrize("num_samples", [200, 400])
def test_audio_and_frames_that_disagree_by_a_frame_raise(num_samples):
    with pytest.raises(ValueError, match="audio has .* samples .* 3 video frames"):
        audio_envelope_per_frame(np.ones(num_samples), 1000, 3, 10)


def test_shuffled_audio_permutes_whole_frame_chunks():
    sample_rate, fps = 1000, 10  # 100 samples a frame; chunks of 5 frames = 500 samples
    audio = np.arange(2300, dtype=np.float32)
    shuffled = shuffled_audio(audio, sample_rate, fps, seed=3)
    assert shuffled.dtype == audio.dtype and shuffled.shape == audio.shape
    np.testing.assert_array_equal(np.sort(shuffled), audio)
    chunks = [audio[i:i + 500] for i in range(0, 2300, 500)]
    pieces, position = [], 0
    while position < len(shuffled):
        start = int(shuffled[position])
        assert start % 500 == 0, "chunks start on whole frames of the chunk grid"
        piece = chunks[start // 500]
        np.testing.assert_array_equal(shuffled[position:position + len(piece)], piece)
        pieces.append(start // 500)
        position += len(piece)
    assert sorted(pieces) == list(range(5))
    assert all(piece != place for place, piece in enumerate(pieces)), "no chunk keeps its place"
    np.testing.assert_array_equal(shuffled, shuffled_audio(audio, sample_rate, fps, seed=3))
    assert not np.array_equal(shuffled, shuffled_audio(audio, sample_rate, fps, seed=4))


def test_bad_frames_raise():
    good = torch.rand(4, 3, 32, 32)
    with pytest.raises(ValueError, match=r"frames must have shape \(T, 3, H, W\)"):
        mouth_opening(good[0])
    with pytest.raises(ValueError, match=r"frames must have shape \(T, 3, H, W\)"):
        mouth_opening(good[:, :1])
    with pytest.raises(ValueError, match="H, W >= 32"):
        mouth_opening(torch.rand(4, 3, 16, 16))
    with pytest.raises(ValueError, match="frames must be floating point"):
        mouth_opening((good * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="frames must be finite"):
        mouth_opening(good.clone().index_fill_(0, torch.tensor([2]), float("nan")))
    with pytest.raises(TypeError, match="frames must be a torch.Tensor or numpy array"):
        mouth_opening(good.tolist())
    with pytest.raises(ValueError, match=r"frames\[0\] is black in the centre"):
        mouth_opening(torch.zeros(4, 3, 32, 32))


def test_bad_audio_and_rates_raise(clips_64):
    frames = clips_64[0]["frames"]
    audio = clips_64[0]["audio"]
    with pytest.raises(ValueError, match="audio must be a non-empty 1-D float array"):
        sync_correlation(frames, np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="audio must be a non-empty 1-D float array"):
        sync_correlation(frames, audio[None])
    with pytest.raises(ValueError, match="audio must be a non-empty 1-D float array"):
        audio_envelope_per_frame((audio * 1000).astype(np.int16), SAMPLE_RATE, 100)
    with pytest.raises(ValueError, match="audio has .* but there are 50 video frames"):
        sync_correlation(frames[:50], audio)
    with pytest.raises(ValueError, match="sample_rate must be a positive int"):
        audio_envelope_per_frame(audio, 16000.0, 100)
    with pytest.raises(ValueError, match="num_frames must be a positive int"):
        audio_envelope_per_frame(audio, SAMPLE_RATE, 0)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        sync_correlation(frames, audio, fps=0)
    with pytest.raises(ValueError, match="chunk_s must be a positive number"):
        shuffled_audio(audio, SAMPLE_RATE, FPS, chunk_s=-1)
    with pytest.raises(ValueError, match="shorter than two chunks"):
        shuffled_audio(audio[:4000], SAMPLE_RATE, FPS)
