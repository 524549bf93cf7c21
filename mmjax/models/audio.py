"""Audio tower: an Audio Spectrogram Transformer (AST, Gong et al., 2021) that reads raw samples.

    waveform float [batch, samples] in [-1, 1]
      -> log-mel spectrogram in JAX (mmjax.data.audio)    [batch, frames, n_mels]  (dB)
      -> keep the first `num_frames` frames, standardise: (S − mean_db) / (2·std_db)
      -> SpectrogramPatchEmbed: pf×pm patches, one matmul  [batch, (F/pf)·(M/pm), width]
      -> + positions E_time[t] + E_freq[m] (factorised) or one joint table
      -> Encoder, mean of the tokens                       [batch, width]

The spectrogram is part of the model, so it runs on the accelerator inside the compiled step:
the input pipeline ships int16 samples (2 bytes each) and needs no DSP library. A centred STFT
of n samples has 1 + n // hop frames; the last is centred on the clip's end and half padding,
and `num_frames` (a multiple of the patch's frames) drops it, as AST crops or pads to a fixed
length. The standardisation is AST's, with fixed dataset-level constants rather than
per-clip statistics, so the loudness of a clip stays visible to the model.

Why factorised positions: time and frequency mean different things (a patch's frequency band is
its pitch, its time step its order), so the model gets one vector for each; a pitch is recognised
at any time step through the same E_freq.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.data.audio import SpectrogramConfig, log_mel_spectrogram
from mmjax.models.video import encode_and_mean_pool
from mmjax.nn.embed import SpaceTimePositionEmbedding, SpectrogramPatchEmbed
from mmjax.nn.transformer import gelu

Array = jax.Array


class AudioTransformer(nn.Module):
    """Audio tower. `__call__(waveform)` returns {"tokens": [batch, seq, width], "pooled": [batch, width]}.

    Attributes:
      spectrogram: the STFT and mel settings (its sample_rate is the rate the tower expects).
      num_frames: spectrogram frames kept (a multiple of patch_frames, at most 1 + samples // hop).
      patch_frames, patch_bins: the patch, pf frames × pm mel bins (n_mels a multiple of pm).
      mean_db, std_db: the standardisation constants.
      width, depth, num_heads, mlp_dim: transformer size.
    """

    num_frames: int
    patch_frames: int
    patch_bins: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    spectrogram: SpectrogramConfig = SpectrogramConfig()
    mean_db: float = -40.0
    std_db: float = 20.0
    factorised_positions: bool = True
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    scan: bool = True
    unroll: int | bool = 1  # see mmjax.nn.transformer.Encoder
    remat: bool | Callable = False
    dtype: jnp.dtype = jnp.float32

    def log_mel(self, waveform: Array) -> Array:
        """float [batch, samples] -> standardised log-mel [batch, num_frames, n_mels] (float32)."""
        available = self.spectrogram.num_frames(waveform.shape[-1])
        if available < self.num_frames:
            raise ValueError(
                f"a clip of {waveform.shape[-1]} samples gives {available} spectrogram frames, fewer than "
                f"AudioTransformer.num_frames={self.num_frames}: use clips of at least "
                f"{(self.num_frames - 1) * self.spectrogram.hop_length} samples")
        spec = log_mel_spectrogram(waveform, self.spectrogram)[:, : self.num_frames]
        return (spec - self.mean_db) / (2.0 * self.std_db)

    @nn.compact
    def __call__(self, waveform: Array, deterministic: bool = True) -> dict[str, Array]:
        spec = self.log_mel(waveform)
        tokens = SpectrogramPatchEmbed(self.patch_frames, self.patch_bins, self.width, dtype=self.dtype,
                                       name="patch_embed")(spec.astype(self.dtype))
        tokens = SpaceTimePositionEmbedding(self.num_frames // self.patch_frames,
                                            self.spectrogram.n_mels // self.patch_bins,
                                            factorised=self.factorised_positions, name="pos_embed")(tokens)
        return encode_and_mean_pool(self, tokens, deterministic)
