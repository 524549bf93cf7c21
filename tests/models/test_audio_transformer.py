"""The audio tower (mmjax/models/audio.py): the spectrogram it reads, its patches, and clear errors for short clips."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax.data.audio import SpectrogramConfig, log_mel_spectrogram
from mmjax.models.audio import AudioTransformer

SPECTROGRAM = SpectrogramConfig(sample_rate=8000, n_fft=256, hop_length=125, n_mels=32)
TOWER = AudioTransformer(num_frames=64, patch_frames=4, patch_bins=16, width=32, depth=1, num_heads=2,
                         mlp_dim=64, spectrogram=SPECTROGRAM)


def tone_and_noise(batch=2, samples=8000):
    rng = np.random.default_rng(0)
    t = np.arange(samples) / 8000
    return (0.3 * np.sin(2 * np.pi * rng.uniform(300, 1500, (batch, 1)) * t) + 0.01 * rng.normal(size=(batch, samples))
            ).astype(np.float32)


def test_it_reads_the_standardised_log_mel_of_the_first_frames():
    waveform = tone_and_noise()
    spec = TOWER.apply({}, waveform, method=AudioTransformer.log_mel)
    full = log_mel_spectrogram(waveform, SPECTROGRAM)  # 1 + 8000 // 125 = 65 frames
    assert full.shape == (2, 65, 32) and spec.shape == (2, 64, 32)
    np.testing.assert_allclose(spec, (np.asarray(full)[:, :64] + 40.0) / 40.0, rtol=1e-6, atol=1e-6)


def test_tokens_are_patches_of_time_steps_and_bands():
    waveform = tone_and_noise()
    params = nn.unbox(jax.jit(TOWER.init)(jax.random.key(0), waveform))
    out = jax.jit(TOWER.apply)(params, waveform)
    assert out["tokens"].shape == (2, (64 // 4) * (32 // 16), 32) and out["pooled"].shape == (2, 32)
    assert params["params"]["pos_embed"]["time_embedding"].shape == (16, 32)
    assert params["params"]["pos_embed"]["space_embedding"].shape == (2, 32)


def test_a_clip_too_short_for_the_frames_is_named():
    with pytest.raises(ValueError, match="a clip of 4000 samples gives 33 spectrogram frames, fewer than "
                                         "AudioTransformer.num_frames=64: use clips of at least 7875 samples"):
        TOWER.init(jax.random.key(0), tone_and_noise(samples=4000))
