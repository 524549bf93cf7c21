"""scaled_dot_product_attention and MultiHeadAttention against a NumPy float64 reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mmjax.nn.attention import (
    MultiHeadAttention,
    combine_masks,
    fused_dot_product_attention,
    make_causal_mask,
    make_padding_mask,
    scaled_dot_product_attention,
)


def reference_attention(q, k, v, mask=None, bias=None):
    """softmax(q kᵀ/√d + bias) v in float64 with an explicit loop over batch and heads."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, lq, h, d = q.shape
    lk = k.shape[1]
    out = np.zeros((b, lq, h, v.shape[-1]))
    mask = None if mask is None else np.broadcast_to(np.asarray(mask), (b, h, lq, lk))
    bias = None if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (b, h, lq, lk))
    for bi in range(b):
        for hi in range(h):
            logits = q[bi, :, hi] @ k[bi, :, hi].T / np.sqrt(d)
            if bias is not None:
                logits = logits + bias[bi, hi]
            for qi in range(lq):
                row = logits[qi]
                valid = np.ones(lk, bool) if mask is None else mask[bi, hi, qi]
                if not valid.any():
                    continue  # fully masked row -> zeros
                e = np.where(valid, np.exp(row - row[valid].max()), 0.0)
                out[bi, qi, hi] = (e / e.sum()) @ v[bi, :, hi]
    return out


def random_qkv(seed, b, lq, lk, h, d):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((b, lq, h, d)).astype(np.float32),
        rng.standard_normal((b, lk, h, d)).astype(np.float32),
        rng.standard_normal((b, lk, h, d)).astype(np.float32),
    )


def rel_err(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-12)


@pytest.mark.parametrize("shape", [(2, 5, 5, 4, 8), (3, 7, 11, 2, 16), (1, 1, 9, 1, 4), (2, 16, 3, 8, 32)])
def test_matches_float64_reference_without_mask(shape):
    q, k, v = random_qkv(sum(shape), *shape)
    out = scaled_dot_product_attention(q, k, v)
    assert out.shape == (shape[0], shape[1], shape[3], shape[4])
    assert rel_err(out, reference_attention(q, k, v)) < 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_with_random_mask_and_bias(seed):
    b, lq, lk, h, d = 2, 6, 9, 3, 8
    q, k, v = random_qkv(seed, b, lq, lk, h, d)
    rng = np.random.default_rng(100 + seed)
    mask = rng.random((b, h, lq, lk)) < 0.6
    bias = rng.standard_normal((1, h, lq, lk)).astype(np.float32)
    out = scaled_dot_product_attention(q, k, v, mask=mask, bias=bias)
    assert rel_err(out, reference_attention(q, k, v, mask, bias)) < 1e-5


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    q, k, v = random_qkv(3, 2, 4, 5, 2, 8)
    mask = np.ones((2, 1, 4, 5), bool)
    mask[0, :, 1] = False  # query 1 of example 0 sees nothing
    mask[1] = False  # example 1 sees nothing at all
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    np.testing.assert_array_equal(np.asarray(out[0, 1]), 0.0)
    np.testing.assert_array_equal(np.asarray(out[1]), 0.0)
    assert rel_err(out, reference_attention(q, k, v, mask)) < 1e-5
    grads = jax.grad(lambda q, k, v: jnp.sum(scaled_dot_product_attention(q, k, v, mask=mask) ** 2), (0, 1, 2))(q, k, v)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(np.asarray(grads[0][1]), 0.0)


def test_gradients_match_finite_differences():
    q, k, v = random_qkv(4, 1, 3, 4, 2, 4)
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    mask = np.random.default_rng(5).random((1, 2, 3, 4)) < 0.7
    mask[..., 0] = True
    with jax.enable_x64(True):
        check_grads(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask=mask), (q, k, v), order=2, modes=["rev"])


def test_causal_mask_makes_outputs_independent_of_future_tokens():
    q, k, v = random_qkv(6, 2, 8, 8, 2, 8)
    mask = make_causal_mask(8)
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    k2, v2 = k.copy(), v.copy()
    k2[:, 5:] = np.random.default_rng(7).standard_normal(k2[:, 5:].shape)
    v2[:, 5:] = np.random.default_rng(8).standard_normal(v2[:, 5:].shape)
    out2 = scaled_dot_product_attention(q, k2, v2, mask=mask)
    np.testing.assert_allclose(out[:, :5], out2[:, :5], rtol=1e-6, atol=1e-6)
    assert not np.allclose(out[:, 5:], out2[:, 5:])
    assert rel_err(out, reference_attention(q, k, v, np.asarray(mask))) < 1e-5


def test_padding_mask_shape_and_semantics():
    valid_q = np.array([[1, 1, 0], [1, 0, 0]], bool)
    valid_k = np.array([[1, 0, 1, 1], [1, 1, 1, 0]], bool)
    mask = np.asarray(make_padding_mask(valid_q, valid_k))
    assert mask.shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(mask[:, 0], valid_q[:, :, None] & valid_k[:, None, :])
    assert combine_masks(None, None) is None
    np.testing.assert_array_equal(combine_masks(mask, None), mask)


def test_fused_path_equals_reference_including_masked_rows():
    q, k, v = random_qkv(9, 2, 5, 7, 2, 8)
    mask = np.random.default_rng(10).random((2, 1, 5, 7)) < 0.5
    mask[0, :, 2] = False
    out = fused_dot_product_attention(q, k, v, mask=mask)
    assert rel_err(out, reference_attention(q, k, v, mask)) < 1e-5


def test_bad_shapes_are_named():
    q, k, v = random_qkv(0, 1, 2, 3, 1, 4)
    with pytest.raises(ValueError, match="head_dim"):
        scaled_dot_product_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match=r"\[batch, len, heads, head_dim\]"):
        scaled_dot_product_attention(q[0], k, v)


class TestMultiHeadAttention:
    def _reference(self, params, x_q, x_kv, mask=None):
        p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        proj = lambda x, name: np.einsum("bld,dhk->blhk", x, p[name]["kernel"]) + p[name]["bias"]
        q, k, v = proj(x_q, "query"), proj(x_kv, "key"), proj(x_kv, "value")
        heads = reference_attention(q, k, v, mask)
        return np.einsum("blhk,hkd->bld", heads, p["out"]["kernel"]) + p["out"]["bias"]

    @pytest.mark.parametrize("use_fused", [False, True])
    def test_cross_attention_with_different_lengths(self, use_fused):
        rng = np.random.default_rng(11)
        x_q = rng.standard_normal((2, 4, 16)).astype(np.float32)
        x_kv = rng.standard_normal((2, 9, 24)).astype(np.float32)
        mask = rng.random((2, 1, 4, 9)) < 0.7
        mha = MultiHeadAttention(num_heads=4, head_dim=8, use_fused=use_fused)
        params = nn.unbox(jax.jit(mha.init)(jax.random.key(0), x_q, x_kv, mask=mask))["params"]
        out = mha.apply({"params": params}, x_q, x_kv, mask=mask)
        assert out.shape == (2, 4, 16)
        assert rel_err(out, self._reference(params, x_q, x_kv, mask)) < 1e-5

    def test_self_attention_is_permutation_equivariant(self):
        rng = np.random.default_rng(12)
        x = rng.standard_normal((2, 7, 32)).astype(np.float32)
        mha = MultiHeadAttention(num_heads=4)
        params = nn.unbox(jax.jit(mha.init)(jax.random.key(1), x))
        perm = rng.permutation(7)
        out = mha.apply(params, x)
        out_perm = mha.apply(params, x[:, perm])
        np.testing.assert_allclose(np.asarray(out)[:, perm], out_perm, rtol=1e-5, atol=1e-5)

    def test_width_not_divisible_by_heads_is_named(self):
        with pytest.raises(ValueError, match="not divisible by num_heads"):
            MultiHeadAttention(num_heads=3).init(jax.random.key(0), jnp.ones((1, 2, 16)))
