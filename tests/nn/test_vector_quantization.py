"""Vector quantization against explicit formulas in float64: nearest codes, straight-through
gradients, the commitment loss, the EMA codebook update, dead-code restarts, perplexity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.vector_quantization import (
    EmaCodebook,
    code_perplexity,
    ema_update,
    init_ema_codebook,
    nearest_codes,
    quantize,
    restart_dead_codes,
)

RNG = np.random.default_rng(0)
VECTORS = RNG.normal(size=(4, 6, 8)).astype(np.float32)  # [batch, positions, D]
CODEBOOK = RNG.normal(size=(16, 8)).astype(np.float32)  # [K, D]


def test_each_vector_gets_its_nearest_code():
    distances = ((VECTORS.astype(np.float64)[..., None, :] - CODEBOOK.astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(nearest_codes(VECTORS, CODEBOOK), distances.argmin(-1))


def test_a_tie_between_codes_goes_to_the_first_as_argmin_breaks_it():
    # Codes 3 and 9 (and 11) are the same vector: every vector whose nearest is that one gets 3.
    codebook = CODEBOOK.copy()
    codebook[9] = codebook[11] = codebook[3]
    vectors = np.concatenate([VECTORS.reshape(-1, 8), codebook[3:4] + 1e-3]).astype(np.float32)
    codes = np.asarray(nearest_codes(vectors, codebook))
    distances = ((vectors.astype(np.float64)[:, None, :] - codebook.astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(codes, distances.argmin(-1))
    assert codes[-1] == 3 and not np.isin(codes, (9, 11)).any()


def test_straight_through_is_the_code_forward_and_the_identity_backward():
    out = quantize(VECTORS, CODEBOOK)
    np.testing.assert_allclose(out.straight_through, CODEBOOK[np.asarray(out.codes)], rtol=1e-6, atol=1e-6)
    weights = RNG.normal(size=VECTORS.shape).astype(np.float32)
    grad = jax.grad(lambda z: jnp.sum(weights * quantize(z, CODEBOOK).straight_through))(VECTORS)
    np.testing.assert_allclose(grad, weights, rtol=1e-6)  # dL/dz = dL/dz_q, unchanged


def test_commitment_loss_and_its_gradient_pull_the_vector_to_its_code():
    out = quantize(VECTORS, CODEBOOK)
    z_q = CODEBOOK[np.asarray(out.codes)].astype(np.float64)
    diff = VECTORS.astype(np.float64) - z_q
    np.testing.assert_allclose(float(out.commitment_loss), np.mean(np.sum(diff**2, -1)), rtol=1e-6)
    grad = jax.grad(lambda z: quantize(z, CODEBOOK).commitment_loss)(VECTORS)
    np.testing.assert_allclose(grad, 2 * diff / (4 * 6), rtol=1e-5, atol=1e-7)  # no gradient into the codes


def test_the_ema_update_follows_the_formulas_and_leaves_an_unchosen_code_in_place():
    state = EmaCodebook(jnp.asarray(RNG.uniform(0.5, 2.0, 16), jnp.float32), jnp.asarray(CODEBOOK * 1.5),
                        jnp.asarray(CODEBOOK))
    codes = np.asarray(nearest_codes(VECTORS, CODEBOOK)).reshape(-1)
    gamma, eps = 0.9, 1e-5
    new = ema_update(state, VECTORS, codes.reshape(4, 6), decay=gamma, epsilon=eps)
    z = VECTORS.reshape(-1, 8).astype(np.float64)
    n = np.bincount(codes, minlength=16)
    s = np.stack([z[codes == k].sum(0) for k in range(16)])
    counts = gamma * np.asarray(state.counts, np.float64) + (1 - gamma) * n
    sums = gamma * np.asarray(state.sums, np.float64) + (1 - gamma) * s
    smoothed = (counts + eps) / (counts.sum() + 16 * eps) * counts.sum()
    np.testing.assert_allclose(new.counts, counts, rtol=1e-6)
    np.testing.assert_allclose(new.sums, sums, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.codebook, sums / smoothed[:, None], rtol=1e-5, atol=1e-6)
    unchosen = np.flatnonzero(n == 0)
    assert len(unchosen) > 0  # 24 vectors, 16 codes: some are not chosen
    np.testing.assert_allclose(new.sums[unchosen], gamma * np.asarray(state.sums)[unchosen], rtol=1e-6)


def test_repeated_updates_move_each_code_to_the_mean_of_its_vectors():
    centres = RNG.normal(size=(4, 8)).astype(np.float32) * 5
    vectors = (np.repeat(centres, 50, axis=0) + 0.1 * RNG.normal(size=(200, 8))).astype(np.float32)
    state = init_ema_codebook(jnp.asarray(centres + RNG.normal(size=(4, 8)).astype(np.float32)))
    for _ in range(300):
        state = ema_update(state, vectors, nearest_codes(vectors, state.codebook), decay=0.95)
    means = vectors.reshape(4, 50, 8).mean(1)
    np.testing.assert_allclose(state.codebook, means, atol=1e-3)


def test_dead_codes_restart_on_batch_vectors_and_live_codes_stay():
    state = init_ema_codebook(jnp.asarray(CODEBOOK))
    state = state._replace(counts=state.counts.at[jnp.asarray([2, 7])].set(0.0))
    restarted = restart_dead_codes(state, VECTORS, jax.random.key(0), threshold=1e-3)
    batch = VECTORS.reshape(-1, 8)
    for k in (2, 7):
        assert any(np.allclose(restarted.codebook[k], v) for v in batch) and float(restarted.counts[k]) == 1.0
    live = np.asarray([k for k in range(16) if k not in (2, 7)])
    np.testing.assert_array_equal(np.asarray(restarted.codebook)[live], CODEBOOK[live])


@pytest.mark.parametrize("codes, expected", [(np.arange(16) % 8, 8.0), (np.zeros(10, np.int32), 1.0)])
def test_perplexity_counts_the_codes_in_use(codes, expected):
    assert float(code_perplexity(jnp.asarray(codes), 16)) == pytest.approx(expected, rel=1e-6)


def test_restarts_by_error_draw_vectors_in_proportion_to_their_squared_distance_to_live_codes():
    # Three live codes; 4000 dead ones, some sitting exactly on batch vectors (a dead code must not
    # count as quantizing its vector well). Each dead code restarts on one of the 9 vectors.
    rng = np.random.default_rng(1)
    live = rng.normal(size=(3, 8)).astype(np.float32)
    spread = rng.uniform(0.1, 2.0, (9, 1))  # distances to the live codes from small to large
    vectors = (live[rng.integers(3, size=9)] + rng.normal(size=(9, 8)) * spread).astype(np.float32)
    vectors[0] = live[1]  # on a live code: never drawn
    dead = rng.normal(size=(4000, 8)).astype(np.float32)
    dead[:9] = vectors
    state = init_ema_codebook(jnp.asarray(np.concatenate([live, dead])))
    state = state._replace(counts=state.counts.at[3:].set(0.0))
    restarted = restart_dead_codes(state, vectors, jax.random.key(0), threshold=0.5, by_error=True)
    new = np.asarray(restarted.codebook)[3:]
    picked = np.argmin(((new[:, None, :] - vectors[None]) ** 2).sum(-1), axis=1)
    assert np.allclose(new, vectors[picked]) and np.all(np.asarray(restarted.counts) == 1.0)
    d2 = ((vectors.astype(np.float64)[:, None, :] - live.astype(np.float64)[None]) ** 2).sum(-1).min(1)
    expected = d2 / d2.sum()
    frequency = np.bincount(picked, minlength=9) / len(picked)
    assert frequency[0] == 0.0
    # Within 4 binomial standard deviations of d_i² / Σ d_j² (and far from uniform's 1/9).
    sigma = np.sqrt(expected * (1 - expected) / len(picked))
    np.testing.assert_array_less(np.abs(frequency - expected), 4 * sigma + 1e-12)
    np.testing.assert_array_equal(np.asarray(restarted.codebook)[:3], live)


def test_restarts_by_error_fall_back_to_uniform_when_no_code_is_live():
    state = init_ema_codebook(jnp.asarray(CODEBOOK))._replace(counts=jnp.zeros(16))
    restarted = restart_dead_codes(state, VECTORS, jax.random.key(0), threshold=1e-3, by_error=True)
    batch = VECTORS.reshape(-1, 8)
    assert np.all(np.isfinite(restarted.codebook))
    assert all(any(np.allclose(code, v) for v in batch) for code in np.asarray(restarted.codebook))
