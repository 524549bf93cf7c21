"""Audio to log-mel spectrograms, as a pure JAX function (what an audio tower reads).

A waveform x[s] sampled at sample_rate Hz becomes a time-frequency image in three steps:

    1. STFT          X[f, k] = Σ_n w[n] · x[f·hop + n − n_fft/2] · exp(−2πi·k·n / n_fft)
                     frames f every `hop_length` samples, centred (the signal is padded with
                     n_fft/2 zeros on both sides), w the periodic Hann window, k ≤ n_fft/2
    2. mel power     P[f, m] = Σ_k M[m, k] · |X[f, k]|²
                     M the mel filter bank: n_mels triangles, equally spaced on the mel scale
                     between fmin and fmax, each normalised to unit area (Slaney's "slaney" norm)
    3. decibels      S[f, m] = 10 · log10(max(P[f, m], amin))

The mel scale is Slaney's (the Auditory Toolbox, librosa's default): linear below 1 kHz
(mel = 3·f / 200), logarithmic above (27 mels per factor 6.4). It spaces the filters as the ear
resolves pitch: finely at low frequencies, coarsely at high ones; a tone and its octave are a
fixed number of filters apart above 1 kHz. The result is [frames, n_mels] with
frames = 1 + ⌊samples / hop_length⌋, and the tests check it against librosa's
`melspectrogram` + `power_to_db(top_db=None)` within 1e-4 dB.

Why in JAX: the spectrogram runs on the accelerator with the model (inside the jitted step, or
in the evaluation's compiled function), batched, so the input pipeline moves raw samples and no
CPU-side DSP library is needed; the filter bank is a constant computed once in NumPy.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Slaney's mel scale: linear up to 1 kHz at 200/3 Hz per mel, then logarithmic.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(frequencies: np.ndarray) -> np.ndarray:
    """Slaney's mel of each frequency in Hz (float64)."""
    f = np.asarray(frequencies, np.float64)
    linear = f / _F_SP
    return np.where(f >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(np.maximum(f, 1e-12) / _MIN_LOG_HZ) / _LOGSTEP, linear)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """The inverse of `hz_to_mel`."""
    m = np.asarray(mels, np.float64)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """M [n_mels, n_fft/2 + 1] (float64): triangular filters on the mel scale, unit area each.

    Filter m rises linearly from the m-th to the (m+1)-th of n_mels + 2 frequencies equally spaced
    in mel between fmin and fmax and falls to zero at the (m+2)-th; it is scaled by
    2 / (f_{m+2} − f_m) so that every filter has the same area (a band's energy, not its width).
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"mel filter bank needs 0 <= fmin < fmax <= sample_rate/2 = {sample_rate / 2}; "
                         f"got fmin={fmin}, fmax={fmax}")
    fft_frequencies = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_frequencies[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


@dataclasses.dataclass(frozen=True)
class SpectrogramConfig:
    """What a log-mel spectrogram is computed with (the audio tower's input contract).

    Defaults are AST's and most audio CLIPs': 16 kHz audio, 25 ms windows every 10 ms.
    """

    sample_rate: int = 16_000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None
    amin: float = 1e-10

    def num_frames(self, num_samples: int) -> int:
        """Frames of a centred STFT: 1 + ⌊samples / hop⌋."""
        return 1 + num_samples // self.hop_length


def hann_window(n_fft: int) -> np.ndarray:
    """The periodic Hann window w[n] = 0.5 − 0.5·cos(2πn / n_fft) (the DFT-even form an STFT uses)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)


def log_mel_spectrogram(waveform: Array, config: SpectrogramConfig = SpectrogramConfig(),
                        sample_rate: int | None = None) -> Array:
    """Log-mel spectrogram in dB (see the module docstring): [..., samples] -> [..., frames, n_mels].

    Args:
      waveform: float [..., samples], any leading (batch) dimensions.
      config: the STFT and mel settings.
      sample_rate: the waveform's rate, if known: a rate other than config.sample_rate is an
        error naming both (resample first; a spectrogram at the wrong rate puts every pitch in
        the wrong filters).

    Returns:
      float32 [..., 1 + samples // hop_length, n_mels].
    """
    if sample_rate is not None and sample_rate != config.sample_rate:
        raise ValueError(f"audio at sample_rate {sample_rate} Hz, but the spectrogram expects "
                         f"{config.sample_rate} Hz: resample it first")
    waveform = jnp.asarray(waveform, jnp.float32)
    num_samples = waveform.shape[-1]
    if num_samples < config.n_fft // 2 + 1:
        raise ValueError(f"a clip of {num_samples} samples is shorter than half a window ({config.n_fft // 2 + 1})")
    # --8<-- [start:log_mel]
    half = config.n_fft // 2
    padded = jnp.pad(waveform, [(0, 0)] * (waveform.ndim - 1) + [(half, half)])
    num_frames = config.num_frames(num_samples)
    # frames[..., f, n] = padded[..., f·hop + n]: a gather of overlapping windows
    index = np.arange(num_frames)[:, None] * config.hop_length + np.arange(config.n_fft)[None, :]
    frames = padded[..., index] * hann_window(config.n_fft).astype(np.float32)
    power = jnp.abs(jnp.fft.rfft(frames, n=config.n_fft, axis=-1)) ** 2  # [..., frames, n_fft/2 + 1]
    bank = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
    mel = jnp.einsum("...fk,mk->...fm", power, bank.astype(np.float32), precision=jax.lax.Precision.HIGHEST)
    return 10.0 * jnp.log10(jnp.maximum(mel, config.amin))
    # --8<-- [end:log_mel]
