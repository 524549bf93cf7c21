"""MaskGIT's prior (Chang et al. 2022): all of a picture's codes at once, in a few parallel rounds.

The autoregressive prior (`text_to_image.py`) writes the N codes one at a time, N sequential
steps. MaskGIT trains a *bidirectional* transformer to fill in masked codes instead, and samples
by filling them in over a few rounds, keeping the most confident guesses of each round.

Training. For each picture draw u ~ U(0, 1), mask m = ⌈γ(u) · N⌉ of its codes at random
(at least one), γ(r) = cos(π r / 2) the cosine schedule, replace them with the [MASK] id K, and
score the masked positions only (`mmjax.losses.masked_softmax_cross_entropy`, weights = the mask):

    L = −(1/|M|) Σ_{j ∈ M} log p_θ(c_j | t, c_{∖M})          h = Transformer(embed([t; c̃]))

The input is [t_1 … t_T, c̃_1 … c̃_N] with every position seeing every other (no causal mask);
text and codes have their own embedding tables (K + 1 code ids: the K codes and [MASK]) and
share one position table, as in the autoregressive prior. The caption is replaced by the null
text with probability p, so classifier-free guidance works the same way.

Sampling (`sample_parallel`), S rounds from an all-[MASK] grid. Round s = 1 … S predicts every
position, draws a code for each masked one from softmax(ℓ / temperature) (guided logits with a
scale), and keeps n_s = N − ⌊γ(s / S) · N⌋ of all positions: the already known ones, then the
masked ones in order of confidence

    confidence_j = log p(drawn c_j) + τ_s · g_j,        g_j ~ Gumbel(0, 1),   τ_s = τ · (1 − s / S)

(the annealed noise of MaskGIT's `choice_temperature` τ), re-masking the rest. γ(1) = 0, so the
last round fills every code. S rounds of a full pass over T + N tokens against N cached steps of
one token: which is faster depends on the machine (docs/text_to_image.md measures both).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from mmjax.models.text_to_image import NULL_TEXT_ID, CodePrior, Samples, draw, guided_logits

Array = jax.Array


def cosine_schedule(ratio: Array | float) -> Array:
    """γ(r) = cos(π r / 2): the fraction of codes still masked at r ∈ [0, 1] (1 at 0, 0 at 1)."""
    return jnp.cos(0.5 * jnp.pi * jnp.asarray(ratio, jnp.float32))


class MaskedTextToImagePrior(CodePrior):
    """[text ids; codes with [MASK] = num_codes] -> logits over the K codes at every code position,
    bidirectionally (the fields and layers are `CodePrior`'s, with one more code id: [MASK]).

    Methods:
      __call__: (text_ids [b, T], codes [b, N] in 0..K) -> logits float32 [b, N, K], every
        position reading the whole sequence.
    """

    extra_code_ids: ClassVar[int] = 1

    @property
    def mask_id(self) -> int:
        return self.num_codes

    def __call__(self, text_ids: Array, codes: Array, deterministic: bool = True) -> Array:
        self._check_text(text_ids)
        self._check_codes(codes)
        h = self.stack(self.embed_sequence(text_ids, codes, deterministic), None, deterministic)
        return self.head(h[:, self.text_len:]).astype(jnp.float32)  # [b, N, K]


def keep_highest(scores: Array, count: Array) -> Array:
    """bool [b, L]: True at the `count` highest scores of each row (count [b, 1] or a scalar)."""
    rank = jnp.argsort(jnp.argsort(-scores, axis=-1), axis=-1)  # 0 at each row's highest score
    return rank < count


# --8<-- [start:random_mask]
def random_mask(rng: Array, batch: int, length: int) -> Array:
    """bool [batch, length]: True where a code is masked, ⌈γ(u) · N⌉ ≥ 1 of each row's N at
    random positions, u ~ U(0, 1) per row (γ: `cosine_schedule`)."""
    ratio_rng, order_rng = jax.random.split(rng)
    count = jnp.ceil(cosine_schedule(jax.random.uniform(ratio_rng, (batch, 1))) * length)
    # The positions of the `count` highest of N uniform draws: a uniformly random subset.
    return keep_highest(jax.random.uniform(order_rng, (batch, length)), jnp.clip(count, 1, length))
# --8<-- [end:random_mask]


def kept_counts(length: int, num_steps: int) -> list[int]:
    """n_s = N − ⌊γ(s / S) · N⌋ for s = 1..S: how many codes are fixed after each round (the last
    is N), at least one more each round."""
    counts, previous = [], 0
    for step in range(1, num_steps + 1):
        kept = length - math.floor(math.cos(0.5 * math.pi * step / num_steps) * length + 1e-9)
        kept = min(length, max(kept, previous + 1))
        counts.append(kept)
        previous = kept
    return counts


def sample_parallel(prior: MaskedTextToImagePrior, params: Any, text_ids: Array, rng: Array, *,
                    num_steps: int = 8, temperature: float = 1.0, top_k: int = 0, choice_temperature: float = 4.5,
                    guidance_scale: float | Array | None = None) -> Samples:
    """Codes for each caption of text_ids [b, T] in `num_steps` parallel rounds (module docstring).

    guidance_scale: None samples the conditional model alone; a number s runs each round on
    [captions; null captions] and draws from `guided_logits`, softmax(top_k(ℓ) / temperature) as
    `draw` does (temperature 0: each position's argmax). The same rng gives the same codes.
    Returns `Samples`: the codes [b, N] and the conditional logits [b, N, K] of the round in which
    each code was fixed.
    """
    if num_steps < 1 or num_steps > prior.image_len:
        raise ValueError(f"num_steps must be in 1..{prior.image_len} (one code a round at least); got {num_steps}")
    batch, length = text_ids.shape[0], prior.image_len
    guided = guidance_scale is not None
    if guided:
        text_ids = jnp.concatenate([text_ids, jnp.full_like(text_ids, NULL_TEXT_ID)], axis=0)
    counts = jnp.asarray(kept_counts(length, num_steps), jnp.int32)

    def round_(carry, inputs):
        codes, seen = carry
        step, kept, key = inputs
        draw_key, noise_key = jax.random.split(key)
        fed = jnp.concatenate([codes, codes]) if guided else codes
        logits = prior.apply({"params": params}, text_ids, fed)
        conditional = logits[:batch]
        mixed = guided_logits(conditional, logits[batch:], guidance_scale) if guided else conditional
        drawn = draw(mixed, draw_key, temperature, top_k)
        log_probs = jax.nn.log_softmax(mixed, -1)
        confidence = jnp.take_along_axis(log_probs, drawn[..., None], -1)[..., 0]
        tau = choice_temperature * (1.0 - (step + 1.0) / num_steps)
        confidence = confidence + tau * jax.random.gumbel(noise_key, confidence.shape)
        masked = codes == prior.mask_id
        confidence = jnp.where(masked, confidence, jnp.inf)  # known codes stay
        keep = keep_highest(confidence, kept)
        new = masked & keep
        codes = jnp.where(new, drawn, jnp.where(keep, codes, prior.mask_id))
        seen = jnp.where(new[..., None], conditional, seen)
        return (codes, seen), None

    start = (jnp.full((batch, length), prior.mask_id, jnp.int32),
             jnp.zeros((batch, length, prior.num_codes), jnp.float32))
    keys = jax.random.split(rng, num_steps)
    (codes, seen), _ = jax.lax.scan(round_, start, (jnp.arange(num_steps), counts, keys))
    return Samples(codes, seen)

