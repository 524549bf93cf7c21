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


def clips() -> np.ndarray:
    """Tones, a chirp and noise: what the sounds world is made of. [3, 16000] at 16 kHz."""
    rng = np.random.default_rng(0)
    t = np.arange(16_000) / 16_000
    return np.stack([
        np.sin(2 * np.pi * 440 * t) * 0.5,
        np.sin(2 * np.pi * (300 + 1500 * t) * t) * 0.3,  # a chirp
        rng.normal(0, 0.1, t.shape),
    ]).astype(np.float32)


def check_against(reference_db: np.ndarray, ours: np.ndarray) -> None:
    """Within 1e-4 dB over the 40 dB below each clip's peak; float32's rounding (about 1e-7 of
    the loudest bin's amplitude) grows to ~1e-2 dB in bins 80 dB down, which are bounded too."""
    for mine, reference in zip(ours, reference_db):
        loud = reference > reference.max() - 40
        assert np.abs(mine - reference)[loud].max() < 1e-4
        audible = reference > reference.max() - 80
        assert np.abs(mine - reference)[audible].max() < 2e-2


def test_log_mel_spectrogram_equals_a_float64_reference_within_1e_4_db():
    """The reference: a float64 NumPy STFT (scipy's periodic Hann window, zero-padded centred
    frames), librosa's mel filter bank and librosa's power_to_db."""
    from scipy.signal import get_window

    audio = clips()
    ours = np.asarray(spectrogram(audio))
    assert ours.shape == (3, CONFIG.num_frames(16_000), 64) == (3, 101, 64)
    padded = np.pad(audio.astype(np.float64), [(0, 0), (200, 200)])
    index = np.arange(101)[:, None] * 160 + np.arange(400)[None, :]
    power = np.abs(np.fft.rfft(padded[:, index] * get_window("hann", 400, fftbins=True), axis=-1)) ** 2
    mel = power @ librosa.filters.mel(sr=16_000, n_fft=400, n_mels=64).T
    check_against(librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None), ours)


# Slow (about 40 s): librosa's own STFT compiles its numba kernels on first use.
@pytest.mark.slow
def test_log_mel_spectrogram_equals_librosas_melspectrogram():
    audio = clips()
    reference = [librosa.power_to_db(librosa.feature.melspectrogram(
        y=clip.astype(np.float64), sr=16_000, n_fft=400, hop_length=160, n_mels=64, power=2.0, center=True,
        pad_mode="constant"), ref=1.0, amin=1e-10, top_db=None).T for clip in audio]
    check_against(np.stack(reference), np.asarray(spectrogram(audio)))


def test_wrong_sample_rate_and_too_short_clips_are_named():
    with pytest.raises(ValueError, match="audio at sample_rate 44100 Hz, but the spectrogram expects 16000 Hz"):
        log_mel_spectrogram(np.zeros(16_000), CONFIG, sample_rate=44_100)
    with pytest.raises(ValueError, match="a clip of 100 samples is shorter than half a window"):
        log_mel_spectrogram(np.zeros(100), CONFIG)
    with pytest.raises(ValueError, match="fmin < fmax"):
        mel_filterbank(16_000, 400, 64, 0.0, 9000.0)
