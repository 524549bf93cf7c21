"""MaskGIT's prior: the cosine mask schedule, bidirectional logits, the masked loss and the
parallel sampler (against a step-by-step reference), guidance, seeds, and a tiny model that learns."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.maskgit import (
    MaskedTextToImagePrior, cosine_schedule, kept_counts, random_mask, sample_parallel,
)
from mmjax.losses import masked_softmax_cross_entropy
from mmjax.models.text_to_image import NULL_TEXT_ID
from mmjax.training.text_to_image_task import code_loss

PRIOR = MaskedTextToImagePrior(text_vocab_size=17, text_len=6, num_codes=11, image_len=5, width=32, depth=2,
                               num_heads=4, mlp_dim=64)
MASK = PRIOR.mask_id


@pytest.fixture(scope="module")
def prior_params(random_prior_params):
    return random_prior_params(PRIOR)


def test_the_schedule_keeps_more_codes_each_round_and_all_after_the_last():
    assert float(cosine_schedule(0.0)) == pytest.approx(1.0)
    assert float(cosine_schedule(1.0)) == pytest.approx(0.0, abs=1e-6)
    # n_s = N − ⌊cos(π s / 2S) · N⌋, from float64
    expected = [36 - math.floor(math.cos(math.pi * s / 16) * 36) for s in range(1, 9)]
    assert kept_counts(36, 8) == expected == [1, 3, 7, 11, 16, 23, 29, 36]
    # one code a round at least, even where the schedule would fix none
    assert kept_counts(5, 5) == [1, 2, 3, 4, 5]


def test_random_masks_follow_the_cosine_schedule():
    length, rows = 36, 20000
    mask = np.asarray(random_mask(jax.random.key(3), rows, length))
    counts = mask.sum(1)
    assert counts.min() >= 1 and counts.max() <= length
    # E[⌈cos(π u / 2) · N⌉] / N by quadrature in float64, an independent reference
    u = (np.arange(200000) + 0.5) / 200000
    expected = np.mean(np.clip(np.ceil(np.cos(np.pi * u / 2) * length), 1, length)) / length
    assert abs(counts.mean() / length - expected) < 0.01
    # every position is masked about as often as any other
    assert np.abs(mask.mean(0) - mask.mean()).max() < 0.03


def test_every_code_sees_every_other_and_the_text(prior_params, changed_code_logits):
    params, text = prior_params
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 12, (3, 5))  # [MASK] (11) included
    logits, changed = changed_code_logits(PRIOR, params, text, codes, 12, rng)
    assert logits.shape == (3, 5, 11) and logits.dtype == jnp.float32
    for j, other in enumerate(changed):
        others = [i for i in range(5) if i != j]  # earlier and later positions alike: no causal mask
        assert np.abs(np.asarray(other[:, others] - logits[:, others])).min() > 0
    other_text = text.at[:, 2].set((text[:, 2] + 1) % 17)
    assert np.abs(np.asarray(PRIOR.apply({"params": params}, other_text, jnp.asarray(codes)) - logits)).min() > 0


def test_the_code_loss_is_the_cross_entropy_of_the_target_codes_only():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 6, 9))
    codes = rng.integers(0, 9, (4, 6))
    mask = rng.random((4, 6)) < 0.5
    mask[0, 0] = True
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, codes[..., None], -1)[..., 0]
    loss, metrics = code_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(codes), jnp.asarray(mask))
    np.testing.assert_allclose(float(loss), nll[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["code_accuracy"]), (logits.argmax(-1) == codes)[mask].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["code_perplexity"]), np.exp(nll[mask].mean()), rtol=1e-5)


def test_greedy_parallel_sampling_fixes_the_most_confident_masked_code_each_round(prior_params):
    """With N rounds, temperature 0 and no choice noise, each round fixes exactly one code: the
    masked position whose argmax is most probable. The reference runs the model round by round."""
    params, text = prior_params
    drawn = sample_parallel(PRIOR, params, text, jax.random.key(0), num_steps=5, temperature=0.0,
                            choice_temperature=0.0)
    codes = np.full((3, 5), MASK)
    for _ in range(5):
        logits = np.asarray(PRIOR.apply({"params": params}, text, jnp.asarray(codes)), np.float64)
        log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        best = log_probs.max(-1)
        best[codes != MASK] = -np.inf
        position = best.argmax(-1)
        rows = np.arange(3)
        codes[rows, position] = logits[rows, position].argmax(-1)
    np.testing.assert_array_equal(drawn.codes, codes)
    assert (np.asarray(drawn.codes) < 11).all()  # no [MASK] left
    # the logits returned are those of the round in which each code was fixed
    np.testing.assert_array_equal(np.asarray(drawn.logits).argmax(-1), codes)


def test_rounds_fix_codes_as_scheduled_and_seeds_repeat(prior_params):
    params, text = prior_params
    run = jax.jit(lambda p, t, r, s: sample_parallel(PRIOR, p, t, r, num_steps=3, guidance_scale=s).codes)
    first = run(params, jnp.tile(text, (8, 1)), jax.random.key(7), 2.0)
    assert (np.asarray(first) < 11).all()
    np.testing.assert_array_equal(first, run(params, jnp.tile(text, (8, 1)), jax.random.key(7), 2.0))
    assert (first != run(params, jnp.tile(text, (8, 1)), jax.random.key(8), 2.0)).any()
    # guidance at scale 1 is the conditional model
    plain = sample_parallel(PRIOR, params, text, jax.random.key(9), num_steps=3)
    np.testing.assert_array_equal(run(params, text, jax.random.key(9), 1.0), plain.codes)
    with pytest.raises(ValueError, match="num_steps must be in 1..5"):
        sample_parallel(PRIOR, params, text, jax.random.key(0), num_steps=6)


def test_a_tiny_masked_prior_learns_to_draw_the_codes_its_text_names(text_named_codes, fit_adam):
    """Codes are a function of the text (code j = (t_1 + j·t_2) mod K): trained to fill in masked
    codes, the sampler writes them all from the text alone in 2 rounds."""
    prior = MaskedTextToImagePrior(text_vocab_size=8, text_len=3, num_codes=7, image_len=4, width=32, depth=2,
                                   num_heads=2, mlp_dim=64)
    text, codes = text_named_codes

    def loss(params, key):
        mask = random_mask(key, *codes.shape)
        logits = prior.apply({"params": params}, text, jnp.where(mask, prior.mask_id, codes))
        return masked_softmax_cross_entropy(logits, jnp.asarray(codes), mask)[0]

    params, _ = fit_adam(loss, prior.init(jax.random.key(0), text, codes)["params"], 400)
    drawn = sample_parallel(prior, params, jnp.asarray(text), jax.random.key(1), num_steps=2, temperature=0.0)
    null = sample_parallel(prior, params, jnp.full_like(jnp.asarray(text), NULL_TEXT_ID), jax.random.key(1),
                           num_steps=2, temperature=0.0)
    assert np.mean(np.all(np.asarray(drawn.codes) == codes, axis=1)) > 0.95
    assert np.mean(np.all(np.asarray(null.codes) == codes, axis=1)) < 0.2  # it reads the text
