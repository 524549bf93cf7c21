"""Losses against explicit NumPy float64 formulas; masking, gradients and ITM negative sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from mmjax.losses import (
    caption_loss,
    clip_loss,
    gradient_difference_loss,
    itm_loss,
    masked_softmax_cross_entropy,
    mlm_loss,
    sample_itm_negatives,
    siglip_loss,
)

# Jitted once per shape: op-by-op (eager) execution compiles every primitive and is far slower.
clip = jax.jit(clip_loss)
siglip = jax.jit(siglip_loss)
cross_entropy = jax.jit(masked_softmax_cross_entropy, static_argnames="label_smoothing")
itm = jax.jit(itm_loss)
mlm = jax.jit(mlm_loss)
caption = jax.jit(caption_loss, static_argnames=("pad_id", "label_smoothing"))
mlm_gradient = jax.jit(jax.grad(lambda logits, *args: mlm_loss(logits, *args)[0]))
caption_gradient = jax.jit(
    jax.grad(lambda logits, *args: caption_loss(logits, *args)[0]), static_argnums=(2, 3)
)
itm_gradient = jax.jit(jax.grad(lambda logits, *args: itm_loss(logits, *args)[0]))
sample_many = jax.jit(jax.vmap(sample_itm_negatives, in_axes=(0, None, None)))


def numpy_clip_loss(x, y, scale):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    logits = scale * x @ y.T
    n = len(x)
    i2t = -np.mean([logits[i, i] - np.log(np.sum(np.exp(logits[i]))) for i in range(n)])
    t2i = -np.mean([logits[j, j] - np.log(np.sum(np.exp(logits[:, j]))) for j in range(n)])
    return (i2t + t2i) / 2


def unit(rng, n, d):
    v = rng.standard_normal((n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("n,d,scale", [(4, 8, 1.0), (16, 32, 14.3), (33, 5, 100.0)])
def test_clip_loss_matches_numpy(n, d, scale):
    rng = np.random.default_rng(n)
    x, y = unit(rng, n, d), unit(rng, n, d)
    loss, metrics = clip(x, y, scale)
    np.testing.assert_allclose(float(loss), numpy_clip_loss(x, y, scale), rtol=1e-5)
    assert 0.0 <= float(metrics["i2t_accuracy"]) <= 1.0


def test_clip_loss_is_low_for_matched_pairs_and_log_n_at_chance():
    rng = np.random.default_rng(0)
    x = unit(rng, 8, 16)
    loss, metrics = clip(x, x, 100.0)
    assert float(loss) < 1e-3 and float(metrics["i2t_accuracy"]) == 1.0
    same = np.tile(x[:1], (8, 1))
    loss, _ = clip(same, same, 10.0)
    np.testing.assert_allclose(float(loss), np.log(8), rtol=1e-5)


def numpy_siglip_loss(x, y, scale, bias):
    """Pair by pair: -log σ(z·l) = log(1 + exp(-z·l)), summed over all pairs, divided by B."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    total = 0.0
    for i in range(len(x)):
        for j in range(len(y)):
            z = 1.0 if i == j else -1.0
            total += np.logaddexp(0.0, -z * (scale * x[i] @ y[j] + bias))
    return total / len(x)


@pytest.mark.parametrize("n,d,scale,bias", [(4, 8, 10.0, -10.0), (16, 32, 3.0, 0.5), (33, 5, 100.0, -10.0)])
def test_siglip_loss_matches_numpy(n, d, scale, bias):
    rng = np.random.default_rng(n)
    x = unit(rng, n, d)
    y = unit(np.random.default_rng(0), n, d) + x  # captions that resemble their images
    y = (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)
    loss, metrics = siglip(x, y, scale, bias)
    np.testing.assert_allclose(float(loss), numpy_siglip_loss(x, y, scale, bias), rtol=1e-5)
    logits = x.astype(np.float64) @ y.T.astype(np.float64)
    assert float(metrics["i2t_accuracy"]) == pytest.approx(np.mean(logits.argmax(1) == np.arange(n)))
    assert float(metrics["t2i_accuracy"]) == pytest.approx(np.mean(logits.argmax(0) == np.arange(n)))


def test_siglip_loss_of_separated_pairs_and_its_gradients_at_extreme_logits():
    # orthogonal matched pairs: every positive logit is s + b = 10, every negative b = -10,
    # so each of the n² pairs costs softplus(-10) and the loss is n · softplus(-10)
    n = 8
    x = np.eye(n, 16, dtype=np.float32)
    loss, metrics = siglip(x, x, 20.0, -10.0)
    np.testing.assert_allclose(float(loss), n * np.logaddexp(0.0, -10.0), rtol=1e-5)
    assert float(metrics["i2t_accuracy"]) == float(metrics["t2i_accuracy"]) == 1.0
    # anti-aligned pairs at scale 100: positive logits -110 saturate σ but not log σ, so the
    # gradients stay finite, and each positive pulls the bias up with the full force 1:
    # ∂L/∂b = (Σ_i -(1 - σ(-110)) + Σ_{i≠j} σ(-10)) / n ≈ -1
    grads = jax.jit(jax.grad(lambda *a: siglip_loss(*a)[0], argnums=(0, 1, 2, 3)))(x, -x, 100.0, -10.0)
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_allclose(float(grads[3]), -1.0 + (n - 1) / (1 + np.exp(10.0)), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Cross-entropy losses: NumPy float64 references, written out position by position.
# ------------------------------------------------------------------------------------------------


def numpy_log_softmax(row):
    row = np.asarray(row, np.float64)
    shifted = row - row.max()
    return shifted - np.log(np.sum(np.exp(shifted)))


def numpy_weighted_ce(logits, labels, weights, smoothing=0.0):
    """(loss, nll, accuracy): weighted means over positions, 0 when the weights sum to 0."""
    logits = np.asarray(logits, np.float64).reshape(-1, np.shape(logits)[-1])
    labels, weights = np.ravel(labels), np.ravel(weights).astype(np.float64)
    loss_sum = nll_sum = correct_sum = 0.0
    for row, label, weight in zip(logits, labels, weights):
        if weight == 0:
            continue
        log_p = numpy_log_softmax(row)
        nll = -log_p[label]
        ce = (1 - smoothing) * nll - smoothing * np.mean(log_p)
        loss_sum += weight * ce
        nll_sum += weight * nll
        correct_sum += weight * float(np.argmax(row) == label)
    total = weights.sum()
    if total == 0:
        return 0.0, 0.0, 0.0
    return loss_sum / total, nll_sum / total, correct_sum / total


def random_lm_batch(seed, batch=3, length=7, vocab=11):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((batch, length, vocab))).astype(np.float32)
    targets = rng.integers(0, vocab, (batch, length)).astype(np.int32)
    # make some predictions right, so accuracy is not trivially 0
    right = rng.random((batch, length)) < 0.4
    targets = np.where(right, logits.argmax(-1), targets).astype(np.int32)
    return rng, logits, targets


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_masked_softmax_cross_entropy_matches_numpy_with_float_weights(smoothing):
    rng, logits, labels = random_lm_batch(1)
    weights = rng.random(labels.shape) * (rng.random(labels.shape) < 0.6)
    loss, metrics = cross_entropy(
        logits, labels, weights.astype(np.float32), label_smoothing=smoothing
    )
    want_loss, want_nll, want_accuracy = numpy_weighted_ce(logits, labels, weights, smoothing)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["nll"]), want_nll, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), want_accuracy, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_itm_loss_matches_numpy_weighted_and_unweighted(seed):
    rng = np.random.default_rng(seed)
    n = 12
    logits = (2 * rng.standard_normal((n, 2))).astype(np.float32)
    labels = rng.integers(0, 2, n).astype(np.int32)
    weights = (rng.random(n) < 0.7).astype(np.float32)

    loss, metrics = itm(logits, labels)
    want_loss, _, want_accuracy = numpy_weighted_ce(logits, labels, np.ones(n))
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), want_accuracy, rtol=1e-6)

    # binary cross-entropy with σ(logit_1 - logit_0), written out directly
    p_match = 1 / (1 + np.exp(-(logits[:, 1].astype(np.float64) - logits[:, 0])))
    bce = -(labels * np.log(p_match) + (1 - labels) * np.log(1 - p_match))
    loss, metrics = itm(logits, labels, weights)
    np.testing.assert_allclose(float(loss), np.sum(weights * bce) / weights.sum(), rtol=1e-5)
    _, _, want_accuracy = numpy_weighted_ce(logits, labels, weights)
    np.testing.assert_allclose(float(metrics["accuracy"]), want_accuracy, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_mlm_loss_matches_numpy_over_masked_positions(seed):
    rng, logits, targets = random_lm_batch(seed)
    loss_mask = rng.random(targets.shape) < 0.3
    loss_mask[0, 0] = True
    loss, metrics = mlm(logits, targets, loss_mask)
    want_loss, _, want_accuracy = numpy_weighted_ce(logits, targets, loss_mask)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), want_accuracy, rtol=1e-6)


def test_mlm_loss_unmasked_positions_carry_no_loss_and_exactly_zero_gradient():
    rng, logits, targets = random_lm_batch(3)
    loss_mask = rng.random(targets.shape) < 0.3
    loss_mask[0, 0], loss_mask[0, 1] = True, False
    gradient = mlm_gradient(logits, targets, loss_mask)
    assert np.all(np.asarray(gradient)[~loss_mask] == 0.0)
    assert np.all(np.abs(np.asarray(gradient)[loss_mask]).sum(-1) > 0)

    # anything at an unmasked position, even inf or NaN, changes neither the loss nor the gradient
    poisoned = logits.copy()
    poisoned[~loss_mask] = rng.standard_normal(poisoned[~loss_mask].shape) * 1e3
    poisoned[0, 1, :2] = [np.inf, np.nan]
    loss, _ = mlm(poisoned, targets, loss_mask)
    np.testing.assert_allclose(float(loss), float(mlm(logits, targets, loss_mask)[0]), rtol=1e-6)
    poisoned_gradient = mlm_gradient(poisoned, targets, loss_mask)
    np.testing.assert_array_equal(np.asarray(poisoned_gradient), np.asarray(gradient))


def test_empty_masks_give_zero_loss_and_finite_zero_gradient():
    _, logits, targets = random_lm_batch(4)
    empty = np.zeros(targets.shape, bool)
    all_padding = np.zeros_like(targets)
    itm_logits, itm_labels = logits.reshape(-1, 11)[:12, :2], targets.reshape(-1)[:12] % 2
    itm_weights = np.zeros(12, np.float32)
    cases = {
        "mlm": (mlm(logits, targets, empty), mlm_gradient(logits, targets, empty)),
        "caption": (
            caption(logits, all_padding, pad_id=0, label_smoothing=0.2),
            caption_gradient(logits, all_padding, 0, 0.2),
        ),
        "itm": (
            itm(itm_logits, itm_labels, itm_weights),
            itm_gradient(itm_logits, itm_labels, itm_weights),
        ),
    }
    for name, ((loss, metrics), gradient) in cases.items():
        assert float(loss) == 0.0, name
        assert np.all(np.isfinite(np.asarray(gradient))) and not np.any(np.asarray(gradient)), name
        assert all(np.isfinite(float(value)) for value in metrics.values()), name


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_caption_loss_matches_numpy_over_non_padding_targets(smoothing):
    rng, logits, targets = random_lm_batch(5)
    pad_id = 0
    lengths = [7, 4, 1]  # each caption is followed by padding
    for b, length in enumerate(lengths):
        caption_ids = targets[b, :length]
        caption_ids[caption_ids == pad_id] = pad_id + 1
        targets[b, length:] = pad_id
    loss, metrics = caption(logits, targets, pad_id=pad_id, label_smoothing=smoothing)
    want_loss, want_nll, want_accuracy = numpy_weighted_ce(
        logits, targets, targets != pad_id, smoothing
    )
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["perplexity"]), np.exp(want_nll), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), want_accuracy, rtol=1e-6)

    gradient = caption_gradient(logits, targets, pad_id, smoothing)
    assert np.all(np.asarray(gradient)[targets == pad_id] == 0.0)


def test_label_smoothing_equals_cross_entropy_against_the_smoothed_distribution():
    # optax's convention: target = (1-ε)·one_hot + ε/V
    _, logits, targets = random_lm_batch(6)
    targets[targets == 0] = 1  # no padding
    smoothing, vocab = 0.2, logits.shape[-1]
    target_distribution = (1 - smoothing) * np.eye(vocab)[targets] + smoothing / vocab
    log_p = np.apply_along_axis(numpy_log_softmax, -1, logits)
    want = -np.mean(np.sum(target_distribution * log_p, axis=-1))
    loss, _ = caption(logits, targets, pad_id=0, label_smoothing=smoothing)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_bfloat16_logits_give_float32_losses_computed_in_float32():
    rng, logits, targets = random_lm_batch(7)
    logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
    rounded = np.asarray(logits_bf16, np.float64)  # the values the model actually produced
    loss_mask = rng.random(targets.shape) < 0.5
    loss, _ = mlm(logits_bf16, targets, loss_mask)
    assert loss.dtype == jnp.float32
    want = numpy_weighted_ce(rounded, targets, loss_mask)[0]
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    loss, _ = caption(logits_bf16, targets, pad_id=0, label_smoothing=0.2)
    assert loss.dtype == jnp.float32
    want = numpy_weighted_ce(rounded, targets, targets != 0, smoothing=0.2)[0]
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# ITM hard negatives.
# ------------------------------------------------------------------------------------------------
#
# Sampling compiles threefry, which is slow on CPU, so every test below reuses one of two compiled
# shapes: [12 images, 24 texts] with 400 keys, and [4, 6] with 20000 keys. Keys are built from
# NumPy bits (any 64 bits are a valid threefry key), which compiles nothing.
# ------------------------------------------------------------------------------------------------


def random_keys(seed, num_keys):
    bits = np.random.default_rng(seed).integers(0, 2**32, (num_keys, 2), dtype=np.uint32)
    return jax.random.wrap_key_data(bits)


def duplicate_scene_batch(seed, num_images=12, captions_per_image=2, num_scenes=4):
    """similarity [12, 24] and positive_mask [12, 24]: 12 images drawn from only 4 scenes (many
    duplicates), two captions each; image 0 matches every caption, so it has no negative."""
    rng = np.random.default_rng(seed)
    image_scene = rng.integers(0, num_scenes, num_images)
    text_scene = np.repeat(image_scene, captions_per_image)  # [B_txt], the captions of image i
    positive_mask = image_scene[:, None] == text_scene[None, :]
    positive_mask[0] = True
    # positives are the most similar pairs, so a sampler that leaked them would pick them often
    similarity = 3 * rng.standard_normal(positive_mask.shape) + 20 * positive_mask
    return similarity.astype(np.float32), positive_mask


def test_itm_negatives_are_never_positives_with_duplicate_scenes():
    for seed in range(5):
        similarity, positive_mask = duplicate_scene_batch(seed)
        negatives = sample_many(random_keys(seed, 400), similarity, positive_mask)
        negatives = jax.tree.map(np.asarray, negatives)
        b_img, b_txt = positive_mask.shape
        assert negatives.negative_text_for_image.shape == (400, b_img)
        assert negatives.negative_image_for_text.shape == (400, b_txt)

        image_has_negative = (~positive_mask).any(1)
        text_has_negative = (~positive_mask).any(0)
        assert positive_mask.sum() > 3 * b_txt and image_has_negative.sum() < b_img
        np.testing.assert_array_equal(negatives.image_has_negative[0], image_has_negative)
        np.testing.assert_array_equal(negatives.text_has_negative[0], text_has_negative)

        text_is_positive = positive_mask[np.arange(b_img), negatives.negative_text_for_image]
        image_is_positive = positive_mask[negatives.negative_image_for_text, np.arange(b_txt)]
        assert not np.any(text_is_positive[:, image_has_negative])
        assert not np.any(image_is_positive[:, text_has_negative])


# Rows 0-2 and columns 0-4 have negatives; image 3 and text 5 match everything (no negative).
SMALL_SIMILARITY = np.array(
    [
        [2.0, 1.0, 0.0, -1.0, 0.5, 4.0],
        [0.3, 3.0, -0.5, 1.5, 0.0, 1.0],
        [-1.0, 0.0, 1.0, 2.0, 2.5, 0.0],
        [0.7, -3.0, 0.2, 1.0, -0.4, 2.0],
    ],
    np.float32,
)
SMALL_POSITIVES = np.array(
    [
        [True, False, False, False, True, True],
        [False, True, False, False, False, True],
        [False, False, True, False, False, True],
        [True, True, True, True, True, True],
    ]
)


@pytest.fixture(scope="module")
def small_matrix_draws():
    """20000 draws of ItmNegatives for SMALL_SIMILARITY, as NumPy arrays."""
    negatives = sample_many(random_keys(1, 20_000), SMALL_SIMILARITY, SMALL_POSITIVES)
    return jax.tree.map(np.asarray, negatives)


def test_itm_negative_sampling_matches_softmax_over_non_positives(small_matrix_draws):
    num_draws = len(small_matrix_draws.negative_text_for_image)

    def check(draws, logits, positives):
        """draws [num_draws] of one row (column); logits, positives [num_candidates]."""
        expected = np.where(positives, 0.0, np.exp(logits.astype(np.float64)))
        expected = num_draws * expected / expected.sum()
        counts = np.bincount(draws, minlength=len(logits))
        valid = ~positives
        assert counts[positives].sum() == 0
        # chi-square goodness of fit, with a loose bound (mean + 6 standard deviations)
        chi_square = np.sum((counts[valid] - expected[valid]) ** 2 / expected[valid])
        dof = valid.sum() - 1
        assert chi_square < dof + 6 * np.sqrt(2 * dof), (chi_square, counts, expected)
        # harder (more similar) negatives are drawn more often
        order = np.argsort(logits[valid])
        assert np.all(np.diff(counts[valid][order]) > 0), counts

    for i in range(3):  # one text per image, along a row
        draws = small_matrix_draws.negative_text_for_image[:, i]
        check(draws, SMALL_SIMILARITY[i], SMALL_POSITIVES[i])
    for j in range(5):  # one image per text, along a column
        draws = small_matrix_draws.negative_image_for_text[:, j]
        check(draws, SMALL_SIMILARITY[:, j], SMALL_POSITIVES[:, j])


def test_itm_negatives_without_any_candidate_fall_back_to_the_least_similar_and_are_flagged(
    small_matrix_draws,
):
    draws = small_matrix_draws
    np.testing.assert_array_equal(draws.image_has_negative[0], [True, True, True, False])
    np.testing.assert_array_equal(draws.text_has_negative[0], [True, True, True, True, True, False])
    # the fallback is the argmin of the row (column), itself a positive, the same on every draw
    assert np.all(draws.negative_text_for_image[:, 3] == 1)
    assert np.all(draws.negative_image_for_text[:, 5] == 2)
    assert draws.negative_text_for_image.dtype == np.int32


def test_itm_negatives_are_deterministic_given_rng_and_independent_of_sharding():
    similarity, positive_mask = duplicate_scene_batch(0)
    keys = random_keys(3, 400)
    first = sample_many(keys, similarity, positive_mask)
    again = sample_many(keys, similarity, positive_mask)
    other = sample_many(random_keys(4, 400), similarity, positive_mask)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert np.any(np.asarray(first.negative_text_for_image != other.negative_text_for_image))

    # the global matrix with its texts sharded over the devices gives the same draws
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    by_text = NamedSharding(mesh, PartitionSpec(None, "data"))
    sharded = sample_many(
        keys, jax.device_put(similarity, by_text), jax.device_put(positive_mask, by_text)
    )
    for a, b in zip(first, sharded):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_itm_loss_weights_out_images_without_negative():
    similarity, positive_mask = duplicate_scene_batch(2)
    negatives = sample_many(random_keys(2, 400), similarity, positive_mask)
    weights = np.asarray(negatives.image_has_negative[0], np.float32)  # [12]
    assert weights[0] == 0 and weights[1:].sum() > 0
    logits = np.random.default_rng(0).standard_normal((12, 2)).astype(np.float32)
    labels = np.zeros(12, np.int32)  # (image, its hard negative text): no match
    loss, _ = itm(logits, labels, weights)
    want = numpy_weighted_ce(logits, labels, weights)[0]
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert np.all(np.asarray(itm_gradient(logits, labels, weights))[0] == 0.0)


def test_gradient_difference_loss_equals_pixel_loops_in_float64():
    rng = np.random.default_rng(0)
    predictions, targets = rng.normal(size=(2, 2, 5, 4, 3)).astype(np.float32)
    p, t = predictions.astype(np.float64), targets.astype(np.float64)
    expected_height, expected_width = [], []
    for b in range(2):
        for c in range(3):
            for i in range(5):
                for j in range(4):
                    if i + 1 < 5:
                        expected_height.append(((p[b, i + 1, j, c] - p[b, i, j, c]) - (t[b, i + 1, j, c] - t[b, i, j, c])) ** 2)
                    if j + 1 < 4:
                        expected_width.append(((p[b, i, j + 1, c] - p[b, i, j, c]) - (t[b, i, j + 1, c] - t[b, i, j, c])) ** 2)
    expected = np.mean(expected_height) + np.mean(expected_width)
    np.testing.assert_allclose(gradient_difference_loss(predictions, targets), expected, rtol=1e-5)


def test_gradient_difference_loss_ignores_a_brightness_offset_and_charges_a_blurred_edge():
    rng = np.random.default_rng(1)
    targets = np.zeros((1, 8, 8, 1), np.float32)
    targets[:, :, 4:] = 1.0  # a vertical edge
    offset = targets + rng.uniform(0.1, 0.5)
    assert float(gradient_difference_loss(offset, targets)) < 1e-10
    blurred = targets.copy()
    blurred[:, :, 3], blurred[:, :, 4] = 0.25, 0.75  # the same mean, the edge spread over 3 steps
    # Each row's width differences are off by 0.25, −0.5, 0.25: 0.375 a row, over 8 x 7 differences
    # along width (none along height).
    assert float(gradient_difference_loss(blurred, targets)) == pytest.approx(8 * 0.375 / 56, rel=1e-6)
