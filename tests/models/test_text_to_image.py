"""The text-to-image prior: causal teacher forcing, cached sampling, guidance, top-k, seeds."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.models.text_to_image import (
    NULL_TEXT_ID, TextToImagePrior, filter_top_k, guided_logits, sample,
)

PRIOR = TextToImagePrior(text_vocab_size=17, text_len=6, num_codes=11, image_len=5, width=32, depth=2,
                         num_heads=4, mlp_dim=64)


@pytest.fixture(scope="module")
def prior_params(random_prior_params):
    return random_prior_params(PRIOR)


def test_teacher_forced_logits_are_causal(prior_params, changed_code_logits):
    params, text = prior_params
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 11, (3, 5))
    logits, changed = changed_code_logits(PRIOR, params, text, codes, 11, rng)
    assert logits.shape == (3, 5, 11) and logits.dtype == jnp.float32
    for j, other in enumerate(changed):
        # logits[:, i] predict code i from codes < i: code j moves only the predictions after it
        np.testing.assert_allclose(other[:, : j + 1], logits[:, : j + 1], rtol=1e-5, atol=1e-5)
        if j < 4:
            assert np.abs(np.asarray(other[:, j + 1:] - logits[:, j + 1:])).max() > 1e-3
    # and the text moves every prediction, the first code's included
    other_text = text.at[:, 2].set((text[:, 2] + 1) % 17)
    assert np.abs(np.asarray(PRIOR.apply({"params": params}, other_text, jnp.asarray(codes))[:, 0] - logits[:, 0])).min() > 0


def test_cached_sampling_sees_the_logits_of_the_full_causal_pass(prior_params):
    params, text = prior_params
    samples = jax.jit(lambda p, t, r: sample(PRIOR, p, t, r))(params, text, jax.random.key(4))
    assert samples.codes.shape == (3, 5) and samples.codes.dtype == jnp.int32
    full = PRIOR.apply({"params": params}, text, samples.codes)
    np.testing.assert_allclose(samples.logits, full, rtol=1e-4, atol=1e-4)



TEXT_ENCODED = TextToImagePrior(text_vocab_size=17, text_len=6, num_codes=11, image_len=5, width=32, depth=2,
                                num_heads=4, mlp_dim=64, text_depth=1)


def test_with_a_text_encoder_words_see_the_whole_caption_and_cached_sampling_still_matches(random_prior_params):
    params, text = random_prior_params(TEXT_ENCODED)
    changed = text.at[:, -1].set((text[:, -1] + 1) % 17)
    # Bidirectional text: the first word's vector moves when the last word changes; without the
    # encoder (causal text) it cannot.
    first = lambda prior, p, t: prior.apply({"params": p}, t, method=type(prior).embed_text)[:, 0]
    assert float(jnp.abs(first(TEXT_ENCODED, params, text) - first(TEXT_ENCODED, params, changed)).max()) > 1e-3
    plain, plain_text = random_prior_params(PRIOR)
    np.testing.assert_array_equal(first(PRIOR, plain, plain_text), first(PRIOR, plain, plain_text.at[:, -1].set(0)))
    # The codes stay causal, and the cache reads the encoded caption as the full pass does.
    samples = jax.jit(lambda p, t, r: sample(TEXT_ENCODED, p, t, r))(params, text, jax.random.key(4))
    full = TEXT_ENCODED.apply({"params": params}, text, samples.codes)
    np.testing.assert_allclose(samples.logits, full, rtol=1e-4, atol=1e-4)


def test_a_bfloat16_prior_computes_in_bfloat16_and_returns_float32_logits_close_to_float32(prior_params):
    params, text = prior_params
    codes = jnp.asarray(np.random.default_rng(6).integers(0, 11, (3, 5)), jnp.int32)
    low = TextToImagePrior(**{**{f: getattr(PRIOR, f) for f in (
        "text_vocab_size", "text_len", "num_codes", "image_len", "width", "depth", "num_heads", "mlp_dim")},
        "dtype": jnp.bfloat16})
    logits = low.apply({"params": params}, text, codes)  # the float32 model's parameters: same tree
    assert logits.dtype == jnp.float32
    # the products run in bfloat16 (the float32 model has no bfloat16 value anywhere)
    assert "bf16" in str(jax.make_jaxpr(lambda p: low.apply({"params": p}, text, codes))(params))
    assert "bf16" not in str(jax.make_jaxpr(lambda p: PRIOR.apply({"params": p}, text, codes))(params))
    full = PRIOR.apply({"params": params}, text, codes)
    # bfloat16 keeps 8 bits of mantissa, and the error grows through the layers: here the logits
    # agree to about 3% of their largest size (0.18 of 5.1)
    np.testing.assert_allclose(logits, full, atol=0.05 * float(np.abs(np.asarray(full)).max()))
    assert np.mean(np.argmax(logits, -1) == np.argmax(full, -1)) >= 0.8

def test_guidance_scale_one_is_the_conditional_model_and_other_scales_mix_in_the_null_text(prior_params):
    params, text = prior_params
    run = jax.jit(lambda p, t, r, s: sample(PRIOR, p, t, r, guidance_scale=s))
    conditional = sample(PRIOR, params, text, jax.random.key(5))
    at_one = run(params, text, jax.random.key(5), 1.0)
    np.testing.assert_array_equal(at_one.codes, conditional.codes)
    np.testing.assert_allclose(at_one.logits, conditional.logits, rtol=1e-5, atol=1e-5)
    # the formula itself, against float64
    rng = np.random.default_rng(6)
    c, u = rng.normal(size=(2, 4, 11))
    np.testing.assert_allclose(guided_logits(jnp.asarray(c, jnp.float32), jnp.asarray(u, jnp.float32), 2.5),
                               u + 2.5 * (c - u), rtol=1e-5, atol=1e-5)
    # with a large scale, greedy codes follow ℓ_c − ℓ_u, computed from the full passes
    greedy = jax.jit(lambda p, t, s: sample(PRIOR, p, t, jax.random.key(0), temperature=0.0, guidance_scale=s))
    strong = greedy(params, text, 50.0).codes
    null = jnp.full_like(text, NULL_TEXT_ID)
    cond = PRIOR.apply({"params": params}, text, strong)
    uncond = PRIOR.apply({"params": params}, null, strong)
    np.testing.assert_array_equal(strong, np.argmax(np.asarray(guided_logits(cond, uncond, 50.0)), -1))


def test_a_fixed_seed_gives_the_same_codes_and_another_seed_others(prior_params):
    params, text = prior_params
    run = jax.jit(lambda p, t, r: sample(PRIOR, p, t, r, guidance_scale=3.0).codes)
    first = run(params, jnp.tile(text, (8, 1)), jax.random.key(7))
    np.testing.assert_array_equal(first, run(params, jnp.tile(text, (8, 1)), jax.random.key(7)))
    assert (first != run(params, jnp.tile(text, (8, 1)), jax.random.key(8))).any()


def test_top_k_keeps_the_k_largest_logits_and_top_1_is_greedy(prior_params):
    logits = jnp.asarray([[0.1, 2.0, -1.0, 1.5, 0.3]])
    kept = filter_top_k(logits, 2)
    assert kept[0, 1] == 2.0 and kept[0, 3] == 1.5
    assert (kept[0, [0, 2, 4]] < -1e30).all()
    np.testing.assert_array_equal(filter_top_k(logits, 0), logits)
    params, text = prior_params
    top1 = sample(PRIOR, params, text, jax.random.key(9), top_k=1).codes
    greedy = sample(PRIOR, params, text, jax.random.key(10), temperature=0.0).codes
    np.testing.assert_array_equal(top1, greedy)


def test_a_tiny_prior_learns_to_draw_the_codes_its_text_names(text_named_codes, fit_adam):
    """Codes are a function of the text (code j = (t_1 + j·t_2) mod K): after training, greedy
    sampling writes them for texts it has seen, from the text alone."""
    prior = TextToImagePrior(text_vocab_size=8, text_len=3, num_codes=7, image_len=4, width=32, depth=2,
                             num_heads=2, mlp_dim=64)
    text, codes = text_named_codes

    def loss(params, key):
        logits = prior.apply({"params": params}, text, codes)
        return optax.softmax_cross_entropy_with_integer_labels(logits, codes).mean()

    params, value = fit_adam(loss, prior.init(jax.random.key(0), text, codes)["params"], 300)
    drawn = sample(prior, params, jnp.asarray(text), jax.random.key(1), temperature=0.0).codes
    assert value < 0.05
    assert np.mean(np.all(np.asarray(drawn) == codes, axis=1)) > 0.95


@pytest.mark.parametrize("text_depth", [-1, 1.5])
def test_a_text_depth_that_is_not_a_count_of_blocks_is_refused_naming_the_field(text_depth):
    import ml_collections

    from mmjax.models.text_to_image import build_prior

    config = ml_collections.ConfigDict(dict(vocab_size=17, width=32, depth=2, num_heads=4, mlp_dim=64,
                                            text_depth=text_depth))
    with pytest.raises(ValueError, match=r"config.model.prior.text_depth must be an integer >= 0.*got"):
        build_prior(config, text_len=6, num_codes=11, image_len=5)
    valid = ml_collections.ConfigDict({**config.to_dict(), "text_depth": 1})
    assert build_prior(valid, text_len=6, num_codes=11, image_len=5).text_depth == 1
