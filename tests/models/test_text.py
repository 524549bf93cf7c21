"""Text tower: end-of-text pooling, padding invariance, causality."""

import jax
import numpy as np
import pytest

from mmjax.models.text import TextTransformer, last_token_index


def make_tower(**kw):
    args = dict(vocab_size=50, max_len=16, width=32, depth=2, num_heads=4, mlp_dim=64)
    args.update(kw)
    return TextTransformer(**args)


def random_ids(rng, lengths, seq):
    ids = np.zeros((len(lengths), seq), np.int32)
    for i, n in enumerate(lengths):
        ids[i, : n - 1] = rng.integers(3, 50, n - 1)
        ids[i, n - 1] = 2  # end of text
    return ids


def test_last_token_index():
    ids = np.array([[5, 6, 2, 0, 0], [5, 2, 0, 0, 0], [4, 4, 4, 4, 2]])
    np.testing.assert_array_equal(last_token_index(ids), [2, 1, 4])


@pytest.mark.parametrize("causal", [True, False])
def test_pooled_embedding_is_invariant_to_padding(causal):
    rng = np.random.default_rng(0)
    ids = random_ids(rng, [4, 7, 2], 8)
    tower = make_tower(causal=causal, pool="eot" if causal else "mean")
    params = tower.init(jax.random.key(0), ids)
    pooled = tower.apply(params, ids)["pooled"]
    padded = np.pad(ids, ((0, 0), (0, 8)))  # 8 more padding tokens
    pooled_padded = tower.apply(params, padded)["pooled"]
    np.testing.assert_allclose(pooled, pooled_padded, rtol=1e-5, atol=1e-5)


def test_pooling_reads_the_end_of_text_token():
    rng = np.random.default_rng(1)
    ids = random_ids(rng, [5, 3], 8)
    tower = make_tower()
    params = tower.init(jax.random.key(0), ids)
    out = tower.apply(params, ids)
    np.testing.assert_allclose(out["pooled"][0], out["tokens"][0, 4], rtol=1e-6)
    np.testing.assert_allclose(out["pooled"][1], out["tokens"][1, 2], rtol=1e-6)


def test_causal_tower_prefix_outputs_ignore_later_tokens():
    rng = np.random.default_rng(2)
    ids = random_ids(rng, [8], 8)
    tower = make_tower()
    params = tower.init(jax.random.key(0), ids)
    changed = ids.copy()
    changed[0, 5:7] = (changed[0, 5:7] + 7) % 47 + 3
    a = tower.apply(params, ids)["tokens"]
    b = tower.apply(params, changed)["tokens"]
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_too_long_text_and_bad_pool_are_named():
    tower = make_tower(max_len=4)
    with pytest.raises(ValueError, match="exceeds the text tower's max_len 4"):
        tower.init(jax.random.key(0), np.ones((1, 6), np.int32))
    with pytest.raises(ValueError, match="pool must be"):
        make_tower(pool="cls")
