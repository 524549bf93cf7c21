"""Text tower: end-of-text pooling, padding invariance, causality."""

import jax
import numpy as np
import pytest

from mmjax.models.text import TextTransformer, last_token_index, pool_index


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
    params = jax.jit(tower.init)(jax.random.key(0), ids)
    pooled = tower.apply(params, ids)["pooled"]
    padded = np.pad(ids, ((0, 0), (0, 8)))  # 8 more padding tokens
    pooled_padded = tower.apply(params, padded)["pooled"]
    np.testing.assert_allclose(pooled, pooled_padded, rtol=1e-5, atol=1e-5)


def test_pooling_reads_the_end_of_text_token():
    rng = np.random.default_rng(1)
    ids = random_ids(rng, [5, 3], 8)
    tower = make_tower()
    params = jax.jit(tower.init)(jax.random.key(0), ids)
    out = tower.apply(params, ids)
    np.testing.assert_allclose(out["pooled"][0], out["tokens"][0, 4], rtol=1e-6)
    np.testing.assert_allclose(out["pooled"][1], out["tokens"][1, 2], rtol=1e-6)


def test_causal_tower_prefix_outputs_ignore_later_tokens():
    rng = np.random.default_rng(2)
    ids = random_ids(rng, [8], 8)
    tower = make_tower()
    params = jax.jit(tower.init)(jax.random.key(0), ids)
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
    with pytest.raises(ValueError, match="pool='eos' pools at the first `eos_id`: set eos_id"):
        make_tower(pool="eos")


def test_pool_index_of_each_convention():
    # OpenAI's layout: start 48, text, end-of-text 49 (the largest id), padding 0 -- or padding 49.
    ids = np.array([[48, 5, 0, 49, 0, 0], [48, 49, 49, 49, 49, 49], [48, 7, 8, 9, 10, 49]])
    np.testing.assert_array_equal(pool_index(ids, "argmax"), [3, 1, 5])  # ties: the first
    np.testing.assert_array_equal(pool_index(ids, "eos", eos_id=49), [3, 1, 5])
    np.testing.assert_array_equal(pool_index(ids, "eos", eos_id=7), [0, 0, 1])
    # "eot" counts the non-zero ids: the inner 0 of row 0 moves it off the end token, which is
    # why imported OpenAI towers pool by "argmax" or "eos" instead.
    np.testing.assert_array_equal(pool_index(ids, "eot"), [2, 5, 5])


def test_unmasked_tower_reads_id_zero_as_a_token_and_ignores_padding():
    """Imported OpenAI towers: id 0 is the token "!", attended like any other, and what follows
    the end-of-text token cannot change the pooled output."""
    rng = np.random.default_rng(3)
    ids = np.zeros((4, 10), np.int32)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 48, rng.integers(1, 40, (4, 3)), 49
    ids[1, 2] = ids[3, 2] = 0  # a "!" inside the text
    ids[2:, 5:] = rng.integers(1, 49, (2, 5))  # rows 2, 3: rows 0, 1 followed by other tokens
    ids[2:, :5] = ids[:2, :5]
    tower = make_tower(depth=1, pool="argmax", mask_padding=False)
    params = jax.jit(tower.init)(jax.random.key(0), ids)
    out = jax.jit(tower.apply)(params, ids)
    np.testing.assert_allclose(out["pooled"], out["tokens"][:, 4], rtol=1e-6)
    np.testing.assert_allclose(out["pooled"][2:], out["pooled"][:2], rtol=1e-5, atol=1e-6)
    # The same weights with the padding mask drop the "!" and read the second text differently.
    masked = jax.jit(make_tower(depth=1, pool="argmax", mask_padding=True).apply)(params, ids)["pooled"]
    np.testing.assert_allclose(masked[0], out["pooled"][0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(masked[1], out["pooled"][1], atol=1e-4)
