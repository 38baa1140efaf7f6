"""mim.audio: mel filterbank, log-mel framing, file loading, and alignment to 25 fps video frames."""
import math

import av
import numpy as np
import pytest
import soundfile
import torch

from mim.audio import (FEATURE_FLOOR, HOP_LENGTH, LOG_FLOOR, MEL_BINS, N_FFT, SAMPLE_RATE, audio_features,
                       hz_to_mel, load_audio, log_mel, mel_filterbank, mel_to_hz, normalize_log_mel,
                       num_video_frames)
from mim.data.synthetic import speech_like_audio
from mim.io import MediaError, write_wav

BIN_HZ = SAMPLE_RATE / N_FFT  # 31.25 Hz between FFT bins


def filter_centres(n_mels=MEL_BINS, fmin=0.0, fmax=8000.0):
    """Centre frequencies (Hz) of the filters, from the documented construction."""
    points = torch.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2, dtype=torch.float64)
    return mel_to_hz(points)[1:-1]


def sine(freq, seconds=0.5, rate=SAMPLE_RATE, amplitude=0.5):
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(audio, rate=SAMPLE_RATE):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * rate / len(audio)


def encode_with_pyav(path, codec, channels, rate):
    """Encode (channels, samples) float audio into ``path`` with one PyAV encoder."""
    layout = {1: "mono", 2: "stereo"}[channels.shape[0]]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(channels, dtype=np.float32),
                                           format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# ------------------------------------------------------------------------------ mel scale, filters


def test_htk_mel_scale_matches_hand_computed_values():
    # 2595 log10(1 + f / 700): f = 700 gives 2595 log10(2); f = 1000 gives 2595 log10(17 / 7).
    assert hz_to_mel(0.0) == 0.0
    assert hz_to_mel(700.0) == pytest.approx(781.1726, abs=1e-3)
    assert hz_to_mel(1000.0) == pytest.approx(999.9855, abs=1e-3)
    assert hz_to_mel(8000.0) == pytest.approx(2840.0230, abs=1e-3)
    freqs = torch.tensor([0.0, 123.0, 1000.0, 7999.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(freqs)), freqs)
    assert mel_to_hz(hz_to_mel(440.0)) == pytest.approx(440.0)


def test_filterbank_shape_dtype_and_non_negative():
    weights = mel_filterbank()
    assert weights.shape == (80, N_FFT // 2 + 1) and weights.dtype == torch.float32
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    assert (weights.sum(dim=1) > 0).all()


def test_each_filter_is_a_triangle_peaking_at_its_centre():
    weights = mel_filterbank().double()
    centres = filter_centres()
    freqs = torch.arange(weights.shape[1], dtype=torch.float64) * BIN_HZ
    for i in range(MEL_BINS):
        peak = int(weights[i].argmax())
        assert abs(freqs[peak] - centres[i]) <= BIN_HZ, f"filter {i}"
        support = weights[i].nonzero().flatten()
        rising, falling = weights[i, support[0]:peak + 1], weights[i, peak:support[-1] + 1]
        assert (rising.diff() >= 0).all() and (falling.diff() <= 0).all(), f"filter {i}"


def test_filters_have_unit_area_in_hz():
    # Slaney normalization: weight 2 / (upper - lower) at the apex, so the area is 1 Hz^-1 * Hz.
    # Sampling a triangle on the FFT grid approximates its area well once it spans many bins.
    weights = mel_filterbank().double()
    widths_in_bins = (weights > 0).sum(dim=1)
    wide = widths_in_bins >= 6
    assert wide.sum() >= 30
    areas = weights.sum(dim=1) * BIN_HZ
    torch.testing.assert_close(areas[wide], torch.ones_like(areas[wide]), atol=0.02, rtol=0)


def test_filters_cover_the_band_between_first_and_last_centre_and_nothing_outside():
    weights = mel_filterbank(n_fft=512, n_mels=40, sample_rate=16000, fmin=300.0, fmax=4000.0)
    centres = filter_centres(40, 300.0, 4000.0)
    freqs = torch.arange(weights.shape[1], dtype=torch.float64) * BIN_HZ
    coverage = weights.sum(dim=0)
    inside = (freqs >= centres[0]) & (freqs <= centres[-1])
    outside = (freqs <= 300.0) | (freqs >= 4000.0)
    assert (coverage[inside] > 0).all()
    assert (coverage[outside] == 0).all()
    full = mel_filterbank().sum(dim=0)
    full_inside = (freqs >= filter_centres()[0]) & (freqs <= filter_centres()[-1])
    assert (full[full_inside] > 0).all()


@pytest.mark.parametrize("kwargs, name", [
    ({"n_fft": 1}, "n_fft"),
    ({"n_fft": 512.0}, "n_fft"),
    ({"n_mels": 0}, "n_mels"),
    ({"sample_rate": -1}, "sample_rate"),
    ({"fmin": -10.0}, "fmin"),
    ({"fmax": 9000.0}, "fmax"),
    ({"fmin": 4000.0, "fmax": 3000.0}, "fmax"),
    ({"n_mels": 200}, "n_mels=200 is too many"),
])
def test_filterbank_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mel_filterbank(**kwargs)


# ----------------------------------------------------------------------------------------- log-mel


@pytest.mark.parametrize("index", [3, 17, 28, 45, 63, 79])
def test_tone_at_a_filter_centre_peaks_in_that_filter(index):
    frames = log_mel(sine(float(filter_centres()[index])))
    assert int(frames.mean(dim=0).argmax()) == index


def test_1khz_tone_peaks_in_a_filter_whose_centre_is_nearest_1khz():
    # 1 kHz lies between centres 972.7 Hz and 1025.6 Hz, almost midway (27.3 Hz vs 25.6 Hz
    # away); the Hann main lobe spreads the tone over both, so either may win by a hair.
    centres = filter_centres()
    distance = (centres - 1000.0).abs()
    nearest_two = set(distance.argsort()[:2].tolist())
    assert nearest_two == {27, 28}
    spectrum = log_mel(sine(1000.0)).mean(dim=0)
    assert int(spectrum.argmax()) in nearest_two
    assert set(spectrum.argsort()[-2:].tolist()) == nearest_two


@pytest.mark.parametrize("num_samples", [257, 400, 1599, 1600, 1759, 16000, 16001])
def test_frame_count_is_floor_of_length_over_hop_plus_one(num_samples):
    audio = np.random.default_rng(num_samples).uniform(-0.5, 0.5, num_samples).astype(np.float32)
    frames = log_mel(audio)
    assert frames.shape == (num_samples // 160 + 1, MEL_BINS) and frames.dtype == torch.float32
    assert torch.isfinite(frames).all()


def test_silence_is_the_floor_everywhere():
    frames = log_mel(np.zeros(8000, np.float32))
    assert frames.shape == (51, 80)
    assert torch.isfinite(frames).all()
    torch.testing.assert_close(frames, torch.full_like(frames, LOG_FLOOR))
    assert LOG_FLOOR == pytest.approx(math.log(1e-6))


@pytest.mark.parametrize("position", [4000, 8080, 8159, 12345])
def test_impulse_lands_in_the_frame_centred_on_it(position):
    audio = np.zeros(16000, np.float32)
    audio[position] = 1.0
    frames = log_mel(audio)
    loudest = int(frames.sum(dim=1).argmax())
    assert abs(loudest - position // HOP_LENGTH) <= 1
    # Frame m sees samples within the 400-sample window centred on 160 m; elsewhere: exact silence.
    centres = torch.arange(frames.shape[0]) * HOP_LENGTH
    far = (centres - position).abs() > 200
    torch.testing.assert_close(frames[far], torch.full_like(frames[far], LOG_FLOOR))
    assert (frames[~far] > LOG_FLOOR + 0.1).any(dim=1).all()


def test_numpy_and_torch_inputs_agree():
    audio, _ = speech_like_audio(0.5, seed=3)
    torch.testing.assert_close(log_mel(audio), log_mel(torch.from_numpy(audio)), rtol=0, atol=0)
    torch.testing.assert_close(log_mel(audio.astype(np.float64)), log_mel(audio))


@pytest.mark.parametrize("audio, error, pattern", [
    (np.zeros((2, 4000), np.float32), ValueError, "1-D"),
    (np.zeros(4000, np.int16), TypeError, "float"),
    (torch.zeros(4000, dtype=torch.int32), TypeError, "float"),
    ([0.0] * 4000, TypeError, "numpy array or torch.Tensor"),
    (np.zeros(256, np.float32), ValueError, "at least 257 samples"),
    (np.full(4000, np.nan, np.float32), ValueError, "NaN"),
])
def test_log_mel_rejects_bad_audio(audio, error, pattern):
    with pytest.raises(error, match=pattern):
        log_mel(audio)


def test_log_mel_refuses_other_sample_rates():
    with pytest.raises(ValueError, match="sample_rate must be 16000.*44100"):
        log_mel(np.zeros(4000, np.float32), sample_rate=44100)


def test_normalized_speech_features_are_order_one():
    audio, _ = speech_like_audio(6.0, seed=11)
    features = normalize_log_mel(log_mel(audio))
    assert abs(features.mean().item()) < 0.5
    assert 0.6 < features.std().item() < 1.5
    assert features.min().item() == pytest.approx(FEATURE_FLOOR) and features.max().item() < 4
    assert FEATURE_FLOOR == pytest.approx((math.log(1e-6) + 9.0) / 4.0)


# ------------------------------------------------------------------------------------ load_audio


def test_wav_round_trip_within_16_bit_quantization(tmp_path):
    audio, _ = speech_like_audio(1.3, seed=5)
    write_wav(tmp_path / "speech.wav", audio, SAMPLE_RATE)
    loaded = load_audio(tmp_path / "speech.wav")
    assert loaded.dtype == np.float32 and loaded.shape == audio.shape
    assert np.abs(loaded - audio).max() <= 1 / 32767


@pytest.mark.parametrize("codec, suffix, rate, frame_size", [
    ("aac", ".m4a", 48000, 1024),
    ("libmp3lame", ".mp3", 44100, 1152),
])
def test_compressed_file_decodes_to_16khz_mono_of_its_duration(tmp_path, codec, suffix, rate, frame_size):
    # the PyAV wheels setup.py installs ship both encoders: a missing one is a failure
    assert codec in av.codecs_available, f"PyAV has no {codec} encoder to write the test file"
    path = tmp_path / f"tone{suffix}"
    encode_with_pyav(path, codec, sine(1000.0, seconds=1.0, rate=rate)[None], rate)
    loaded = load_audio(path)
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    assert abs(len(loaded) - SAMPLE_RATE) <= frame_size * SAMPLE_RATE / rate
    assert dominant_frequency(loaded[2000:14000]) == pytest.approx(1000.0, abs=5)


def test_stereo_wav_is_averaged_to_mono(tmp_path):
    left, right = sine(440.0, 0.5, amplitude=0.6), sine(440.0, 0.5, amplitude=0.2)
    stereo = np.stack([left, right], axis=1)
    soundfile.write(str(tmp_path / "stereo.wav"), stereo, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav"), (left + right) / 2, atol=1e-6)


def test_stereo_mp3_is_averaged_to_mono(tmp_path):
    assert "libmp3lame" in av.codecs_available, "PyAV has no libmp3lame encoder to write the test file"
    # Left at 0.6, right at 0.2: the average has amplitude 0.4 (left alone 0.6, the sum 0.8).
    left, right = sine(440.0, 0.5, amplitude=0.6), sine(440.0, 0.5, amplitude=0.2)
    encode_with_pyav(tmp_path / "stereo.mp3", "libmp3lame", np.stack([left, right]), SAMPLE_RATE)
    middle = load_audio(tmp_path / "stereo.mp3")[2000:6000]
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.4 / math.sqrt(2), rel=0.1)


def test_44khz_wav_is_resampled_keeping_duration_and_pitch(tmp_path):
    tone = sine(1000.0, seconds=1.0, rate=44100)
    soundfile.write(str(tmp_path / "cd.wav"), tone, 44100, subtype="FLOAT")
    loaded = load_audio(tmp_path / "cd.wav")
    assert abs(len(loaded) - SAMPLE_RATE) <= 2
    assert dominant_frequency(loaded) == pytest.approx(1000.0, abs=2)
    assert np.abs(loaded[1000:15000]).max() == pytest.approx(0.5, abs=0.02)


def test_silent_file_is_valid_audio(tmp_path):
    write_wav(tmp_path / "quiet.wav", np.zeros(4000, np.float32), SAMPLE_RATE)
    loaded = load_audio(tmp_path / "quiet.wav")
    assert loaded.shape == (4000,) and (loaded == 0).all()
    frames = log_mel(loaded)
    torch.testing.assert_close(frames, torch.full_like(frames, LOG_FLOOR))


def test_empty_file_raises_media_error_saying_no_samples(tmp_path):
    path = tmp_path / "empty.wav"
    write_wav(path, np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(MediaError, match="empty.wav.*no audio samples"):
        load_audio(path)


@pytest.mark.parametrize("name", ["noise.wav", "noise.m4a", "noise.mp3"])
def test_corrupt_file_raises_media_error_naming_the_path(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"RIFF" + np.random.default_rng(1).bytes(3000))
    with pytest.raises(MediaError, match=name):
        load_audio(path)


def test_missing_file_raises_media_error_naming_the_path(tmp_path):
    with pytest.raises(MediaError, match="absent.wav: no such file"):
        load_audio(tmp_path / "absent.wav")


# ------------------------------------------------------------------------------ num_video_frames


@pytest.mark.parametrize("num_samples, frames", [
    (16000, 25), (16016, 26), (640, 1), (641, 2), (639, 1), (1, 1), (0, 0), (36800, 58),
])
def test_num_video_frames_rounds_the_duration_up(num_samples, frames):
    assert num_video_frames(num_samples) == frames


def test_num_video_frames_other_rates():
    assert num_video_frames(44100, sample_rate=44100, fps=30) == 30
    assert num_video_frames(48000, sample_rate=48000, fps=29.97) == 30
    assert num_video_frames(48048, sample_rate=48000, fps=30000 / 1001) == 30


@pytest.mark.parametrize("kwargs, name", [
    ({"num_samples": -1}, "num_samples"),
    ({"num_samples": 10.0}, "num_samples"),
    ({"num_samples": 10, "sample_rate": 0}, "sample_rate"),
    ({"num_samples": 10, "fps": 0}, "fps"),
])
def test_num_video_frames_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        num_video_frames(**kwargs)


# -------------------------------------------------------------------------------- audio_features


@pytest.fixture(scope="module")
def speech_features():
    audio, _ = speech_like_audio(2.3, seed=7)
    return audio, audio_features(audio)


def test_features_split_mel_frames_four_per_video_frame(speech_features):
    audio, features = speech_features
    mel = features.mel
    assert len(audio) == 36800 and mel.shape == (231, 80)
    torch.testing.assert_close(mel, normalize_log_mel(log_mel(audio)), rtol=0, atol=0)
    assert features.num_frames == 58 and features.mel_per_frame.shape == (58, 4, 80)
    for t in range(57):
        torch.testing.assert_close(features.mel_per_frame[t], mel[4 * t:4 * t + 4], rtol=0, atol=0)
    # The last video frame owns mel frames 228..231; the clip ends at frame 230.
    torch.testing.assert_close(features.mel_per_frame[57, :3], mel[228:231], rtol=0, atol=0)
    assert (features.mel_per_frame[57, 3] == FEATURE_FLOOR).all()


def test_explicit_num_frames_truncates_or_pads_with_silence(speech_features):
    audio, features = speech_features
    short = audio_features(audio, num_frames=10)
    assert short.mel_per_frame.shape == (10, 4, 80)
    torch.testing.assert_close(short.mel_per_frame, features.mel_per_frame[:10], rtol=0, atol=0)
    torch.testing.assert_close(short.mel, features.mel, rtol=0, atol=0)
    long = audio_features(audio, num_frames=70)
    torch.testing.assert_close(long.mel_per_frame[:57], features.mel_per_frame[:57], rtol=0, atol=0)
    assert (long.mel_per_frame[58:] == FEATURE_FLOOR).all()


@pytest.mark.parametrize("num_frames", [0, -3, 2.5, True])
def test_audio_features_rejects_bad_num_frames(num_frames):
    with pytest.raises(ValueError, match="num_frames"):
        audio_features(np.zeros(4000, np.float32), num_frames=num_frames)


def test_sound_inside_a_video_frame_lands_in_its_mel_frames():
    # A click in the middle of video frame 7 (sample 640 * 7 + 320) reaches mel frames 29..31.
    audio = np.zeros(16000, np.float32)
    audio[640 * 7 + 320] = 1.0
    per_frame = audio_features(audio).mel_per_frame
    loud = (per_frame > FEATURE_FLOOR + 0.01).any(dim=(1, 2))
    assert loud.nonzero().flatten().tolist() == [7]


def test_local_windows_gather_neighbouring_video_frames(speech_features):
    _, features = speech_features
    mel, windows = features.mel, features.local_windows(context=2)
    assert windows.shape == (58, 20, 80)
    for t in (2, 10, 30, 54):
        torch.testing.assert_close(windows[t], mel[4 * (t - 2):4 * (t + 3)], rtol=0, atol=0)
    # First frame: two silent video frames, then frames 0..2.
    assert (windows[0, :8] == FEATURE_FLOOR).all()
    torch.testing.assert_close(windows[0, 8:], mel[:12], rtol=0, atol=0)
    torch.testing.assert_close(windows[1, 4:], mel[:16], rtol=0, atol=0)
    assert (windows[1, :4] == FEATURE_FLOOR).all()
    # Last frame (57): frames 55, 56, 57 (its last mel frame past the clip), then two silent ones.
    torch.testing.assert_close(windows[57, :11], mel[220:231], rtol=0, atol=0)
    assert (windows[57, 11:] == FEATURE_FLOOR).all()


def test_local_windows_context_zero_and_bad_context(speech_features):
    _, features = speech_features
    torch.testing.assert_close(features.local_windows(context=0), features.mel_per_frame, rtol=0, atol=0)
    assert features.local_windows(context=5).shape == (58, 44, 80)
    for context in (-1, 1.5):
        with pytest.raises(ValueError, match="context"):
            features.local_windows(context=context)
