"""Vector quantization: continuous vectors to the nearest of K learned codes (VQ-VAE's bottleneck).

A VQ-VAE (van den Oord et al., 2017) encodes an image into a grid of vectors z and replaces each
by its nearest codebook entry,

    k*(z) = argmin_k ||z − e_k||²  = argmin_k (||e_k||² − 2 z·e_k)       (||z||² is the same for all k)
    z_q   = e_{k*(z)}

so the image becomes a grid of integers k* that a transformer can model like words (DALL-E's
first stage, Ramesh et al., 2021; MaskGIT's tokens). The argmin has no gradient; the
straight-through estimator passes the decoder's gradient to the encoder unchanged,

    z_st = z + stop_gradient(z_q − z)        forward: z_q      backward: ∂L/∂z = ∂L/∂z_st

and the commitment loss β ||z − stop_gradient(z_q)||² keeps the encoder's outputs near the codes
they chose (β = 0.25 in the paper).

The codebook is learned by exponential moving averages instead of a codebook loss (the paper's
appendix; VQ-VAE-2, Razavi et al., 2019): with n_k the number of vectors assigned to code k in a
batch and s_k their sum,

    N_k ← γ N_k + (1 − γ) n_k          m_k ← γ m_k + (1 − γ) s_k
    e_k = m_k / Ñ_k,   Ñ_k = (N_k + ε) / (Σ_j N_j + K ε) · Σ_j N_j      (Laplace smoothing)

e_k is then the running mean of the vectors that chose it: no learning rate to tune, and a code
moves as fast as its vectors do. Why this and not DALL-E's dVAE (Gumbel-softmax relaxation over
all K codes): the EMA codebook trains stably at a small scale with one loss term, its codes are
deterministic (the prior learns exactly what the decoder reads), and it is what MaskGIT and
VQGAN build on. A code that no vector chooses stops moving and is wasted ("dead"); `restart_dead_codes`
moves each such code onto an encoder output of the batch, so the whole codebook stays in use.
How much of it is used is measured by the perplexity of the code histogram, exp(H(p)), between 1
(one code) and K (all used equally).

Everything here is a pure function of arrays; the state of the averages is an `EmaCodebook`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def nearest_codes(vectors: Array, codebook: Array) -> Array:
    """Index of the nearest code of each vector: [..., D], [K, D] -> int32 [...].

    argmin_k ||z − e_k||², computed as argmin_k (||e_k||² − 2 z·e_k) in float32.
    """
    z = vectors.astype(jnp.float32)
    e = codebook.astype(jnp.float32)
    distances = jnp.sum(e**2, axis=-1) - 2.0 * jnp.einsum("...d,kd->...k", z, e, precision=jax.lax.Precision.HIGHEST)
    # The first k at the minimum, as jnp.argmin gives it, but as two plain reductions: XLA:CPU runs
    # argmin's (value, index) reduction unvectorised, 3x slower, and the tokenizer's train step
    # takes it twice (bench/profile_step.py --config configs/vq_tiny.py).
    best = jnp.min(distances, axis=-1, keepdims=True)
    return jnp.argmax(distances == best, axis=-1).astype(jnp.int32)


class Quantized(NamedTuple):
    """What `quantize` returns.

    Attributes:
      straight_through: z + stop_gradient(z_q − z) [..., D]: z_q forward, the identity backward.
      codes: the nearest code's index [...].
      commitment_loss: mean over vectors of ||z − stop_gradient(z_q)||² (times no β: the caller's weight).
    """

    straight_through: Array
    codes: Array
    commitment_loss: Array


def quantize(vectors: Array, codebook: Array) -> Quantized:
    """Each vector [..., D] replaced by its nearest code of `codebook` [K, D] (see the module docstring)."""
    # --8<-- [start:quantize]
    codes = nearest_codes(vectors, codebook)
    quantized = jnp.take(codebook, codes, axis=0).astype(vectors.dtype)
    # Forward: z_q. Backward: the identity (the stop_gradient term has no gradient).
    straight_through = vectors + jax.lax.stop_gradient(quantized - vectors)
    commitment = jnp.mean(jnp.sum((vectors.astype(jnp.float32) - jax.lax.stop_gradient(quantized).astype(jnp.float32)) ** 2,
                                  axis=-1))
    # --8<-- [end:quantize]
    return Quantized(straight_through, codes, commitment)


class EmaCodebook(NamedTuple):
    """The codebook learned by moving averages.

    Attributes:
      counts: N_k [K], the running number of vectors assigned to each code.
      sums: m_k [K, D], the running sum of those vectors.
      codebook: e_k [K, D] = m_k / Ñ_k (Laplace-smoothed counts).
    """

    counts: Array
    sums: Array
    codebook: Array


def init_ema_codebook(codebook: Array) -> EmaCodebook:
    """A starting state whose codebook is `codebook` [K, D] (each code counted once)."""
    counts = jnp.ones(codebook.shape[0], jnp.float32)
    return EmaCodebook(counts, codebook.astype(jnp.float32), codebook.astype(jnp.float32))


def ema_update(state: EmaCodebook, vectors: Array, codes: Array, decay: float = 0.99,
               epsilon: float = 1e-5) -> EmaCodebook:
    """One step of the averages from a batch: vectors [..., D] and their chosen codes [...].

        N_k ← γ N_k + (1 − γ) n_k,   m_k ← γ m_k + (1 − γ) s_k,   e_k = m_k / Ñ_k

    with n_k = #{i : code_i = k}, s_k = Σ_{code_i = k} z_i, Ñ_k = (N_k + ε) / (Σ N + K ε) · Σ N.
    Under a sharded batch the sums over i are global (XLA adds the partial sums of every shard).
    """
    num_codes, dim = state.sums.shape
    z = vectors.reshape(-1, dim).astype(jnp.float32)
    one_hot = jax.nn.one_hot(codes.reshape(-1), num_codes, dtype=jnp.float32)  # [N, K]
    batch_counts = jnp.sum(one_hot, axis=0)
    batch_sums = jnp.einsum("nk,nd->kd", one_hot, z, precision=jax.lax.Precision.HIGHEST)
    # --8<-- [start:ema]
    counts = decay * state.counts + (1.0 - decay) * batch_counts
    sums = decay * state.sums + (1.0 - decay) * batch_sums
    total = jnp.sum(counts)
    smoothed = (counts + epsilon) / (total + num_codes * epsilon) * total
    # --8<-- [end:ema]
    return EmaCodebook(counts, sums, sums / smoothed[:, None])


def restart_dead_codes(state: EmaCodebook, vectors: Array, rng: Array, threshold: float = 1e-3,
                       by_error: bool = False) -> EmaCodebook:
    """Codes whose running count N_k fell below `threshold` move onto vectors of the batch.

    A restarted code gets e_k = m_k = z and N_k = 1, as if it had just been chosen once; live codes
    are unchanged. z is drawn from `vectors` [..., D] uniformly (Jukebox's rule), or with
    `by_error` in proportion to its squared distance to the nearest live code,

        P(z_i) = d_i² / Σ_j d_j²,   d_i = min_{k live} ||z_i − e_k||     (k-means++'s seeding rule)

    so codes go where the codebook quantizes worst rather than where vectors are most common
    (uniform when every vector sits on a live code or no code is live).
    """
    dim = state.sums.shape[1]
    z = vectors.reshape(-1, dim).astype(jnp.float32)
    num_codes = state.counts.shape[0]
    dead = state.counts < threshold
    if by_error:
        # --8<-- [start:restart]
        e = state.codebook.astype(jnp.float32)
        squared = jnp.sum(z**2, -1, keepdims=True) + jnp.sum(e**2, -1) - 2.0 * jnp.einsum(
            "nd,kd->nk", z, e, precision=jax.lax.Precision.HIGHEST)
        error = jnp.maximum(jnp.min(jnp.where(dead, jnp.inf, squared), axis=-1), 0.0)  # [N]
        usable = jnp.all(jnp.isfinite(error)) & (jnp.sum(error) > 0)
        logits = jnp.where(usable, jnp.log(jnp.where(usable, error, 1.0)), 0.0)
        picks = jax.random.categorical(rng, logits, shape=(num_codes,))
        # --8<-- [end:restart]
    else:
        picks = jax.random.randint(rng, (num_codes,), 0, z.shape[0])
    fresh = z[picks]
    codebook = jnp.where(dead[:, None], fresh, state.codebook)
    return EmaCodebook(jnp.where(dead, 1.0, state.counts), jnp.where(dead[:, None], fresh, state.sums), codebook)


def code_perplexity(codes: Array, num_codes: int) -> Array:
    """exp(H(p)) of the histogram p of `codes` (any shape) over `num_codes`: 1 to K."""
    p = jnp.mean(jax.nn.one_hot(codes.reshape(-1), num_codes, dtype=jnp.float32), axis=0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(entropy)
