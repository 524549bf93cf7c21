"""The log-mel spectrogram against librosa (a well-kept reference), the mel scale's definition,
and clear errors for the wrong sample rate."""

import jax
import numpy as np
import pytest

from mmjax.data.audio import SpectrogramConfig, hz_to_mel, log_mel_spectrogram, mel_filterbank, mel_to_hz

librosa = pytest.importorskip("librosa", reason="the dev extra installs librosa, the reference")

CONFIG = SpectrogramConfig(sample_rate=16_000, n_fft=400, hop_length=160, n_mels=64)
spectrogram = jax.jit(lambda x: log_mel_spectrogram(x, CONFIG))


def test_mel_scale_is_slaneys_and_invertible():
    f = np.array([0.0, 500.0, 1000.0, 2000.0, 6400.0, 8000.0])
    np.testing.assert_allclose(hz_to_mel(f), librosa.hz_to_mel(f), rtol=1e-12)
    np.testing.assert_allclose(hz_to_mel(1000.0), 15.0)  # 3 · 1000 / 200: the end of the linear part
    np.testing.assert_allclose(hz_to_mel(6400.0) - hz_to_mel(1000.0), 27.0)  # 27 mels per factor 6.4
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, atol=1e-9)


def test_filterbank_equals_librosas():
    for sr, n_fft, n_mels, fmin, fmax in [(16_000, 400, 64, 0.0, None), (22_050, 512, 40, 50.0, 8000.0)]:
        np.testing.assert_allclose(mel_filterbank(sr, n_fft, n_mels, fmin, fmax),
                                   librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax),
                                   rtol=1e-6, atol=1e-10)


def test_log_mel_spectrogram_equals_librosa_within_1e_4_db():
    """Tones, a chirp and noise: what the sounds world is made of."""
    rng = np.random.default_rng(0)
    t = np.arange(16_000) / 16_000
    clips = np.stack([
        np.sin(2 * np.pi * 440 * t) * 0.5,
        np.sin(2 * np.pi * (300 + 1500 * t) * t) * 0.3,  # a chirp
        rng.normal(0, 0.1, t.shape),
    ]).astype(np.float32)
    ours = np.asarray(spectrogram(clips))
    assert ours.shape == (3, CONFIG.num_frames(16_000), 64) == (3, 101, 64)
    for clip, mine in zip(clips, ours):
        power = librosa.feature.melspectrogram(y=clip.astype(np.float64), sr=16_000, n_fft=400, hop_length=160,
                                               n_mels=64, power=2.0, center=True, pad_mode="constant")
        reference = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None).T
        loud = reference > reference.max() - 80  # where float32's ~1e-7 relative error is far below 1e-4 dB
        assert np.abs(mine - reference)[loud].max() < 1e-4
        assert np.abs(mine - reference).max() < 1e-2


def test_wrong_sample_rate_and_too_short_clips_are_named():
    with pytest.raises(ValueError, match="audio at sample_rate 44100 Hz, but the spectrogram expects 16000 Hz"):
        log_mel_spectrogram(np.zeros(16_000), CONFIG, sample_rate=44_100)
    with pytest.raises(ValueError, match="a clip of 100 samples is shorter than half a window"):
        log_mel_spectrogram(np.zeros(100), CONFIG)
    with pytest.raises(ValueError, match="fmin < fmax"):
        mel_filterbank(16_000, 400, 64, 0.0, 9000.0)
