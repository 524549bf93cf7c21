"""Key/value-cache decoding: token by token under jit equals one full causal forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.attention import MultiHeadAttention, make_causal_mask
from mmjax.nn.transformer import CrossAttentionBlock, CrossAttentionStack


def decode_in_chunks(step, params, cache, x, chunk_sizes):
    """Feeds x [batch, len, width] through `step` chunk by chunk; returns outputs and final cache."""
    outputs, start = [], 0
    for size in chunk_sizes:
        out, cache = step(params, cache, x[:, start : start + size])
        outputs.append(np.asarray(out))
        start += size
    assert start == x.shape[1]
    return np.concatenate(outputs, axis=1), cache


@pytest.mark.parametrize("chunk_sizes", [[1] * 7, [3, 1, 1, 2]], ids=["token_by_token", "prompt_chunk"])
def test_attention_decoding_matches_full_causal_pass(chunk_sizes):
    rng = np.random.default_rng(sum(chunk_sizes) + len(chunk_sizes))
    x = rng.standard_normal((2, 7, 16)).astype(np.float32)
    mha = MultiHeadAttention(num_heads=4)
    # init on a full-length dummy creates an empty cache [batch, max_len, heads, head_dim].
    variables = jax.jit(lambda: mha.init(jax.random.key(1), jnp.zeros_like(x), decode=True))()
    params, cache = variables["params"], variables["cache"]
    assert cache["cached_key"].shape == cache["cached_value"].shape == (2, 7, 4, 4)
    assert int(cache["cache_index"]) == 0 and not np.any(np.asarray(cache["cached_key"]))

    traces = []

    @jax.jit
    def step(params, cache, x_new):
        traces.append(x_new.shape)  # runs once per compilation, not per call
        out, updated = mha.apply({"params": params, "cache": cache}, x_new, decode=True, mutable=["cache"])
        return out, updated["cache"]

    decoded, cache = decode_in_chunks(step, params, cache, x, chunk_sizes)
    full = jax.jit(lambda p: mha.apply({"params": p}, x, mask=make_causal_mask(7)))(params)
    np.testing.assert_allclose(decoded, full, rtol=1e-5, atol=1e-5)
    assert int(cache["cache_index"]) == 7
    # Static shapes: one compilation per distinct chunk size, however many steps.
    assert len(traces) == len(set(chunk_sizes))


def test_scanned_stack_decoding_with_image_context_matches_full_causal_pass():
    rng = np.random.default_rng(20)
    batch, text_len, width, image_len, image_width, depth = 2, 6, 16, 5, 12, 2
    text = rng.standard_normal((batch, text_len, width)).astype(np.float32)
    image_tokens = rng.standard_normal((batch, image_len, image_width)).astype(np.float32)
    image_valid = np.ones((batch, image_len), bool)
    image_valid[0, 3:] = False
    context_mask = image_valid[:, None, None, :]

    stack = CrossAttentionStack(depth=depth, num_heads=2, mlp_dim=32, causal=True)
    variables = jax.jit(
        lambda: stack.init(jax.random.key(2), jnp.zeros_like(text), image_tokens, None, context_mask, decode=True)
    )()
    params, cache = variables["params"], variables["cache"]
    # The cache is scanned like the parameters: one slice per layer on the leading axis.
    assert cache["blocks"]["self_attn"]["cached_key"].shape == (depth, batch, text_len, 2, 8)
    assert cache["blocks"]["self_attn"]["cache_index"].shape == (depth,)

    @jax.jit
    def step(params, cache, token):
        out, updated = stack.apply(
            {"params": params, "cache": cache},
            token,
            image_tokens,
            None,
            context_mask,
            decode=True,
            mutable=["cache"],
        )
        return out, updated["cache"]

    decoded, cache = decode_in_chunks(step, params, cache, text, [1] * text_len)
    full = jax.jit(lambda p: stack.apply({"params": p}, text, image_tokens, None, context_mask))(params)
    np.testing.assert_allclose(decoded, full, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache["blocks"]["self_attn"]["cache_index"], [text_len] * depth)


# The errors below are raised while tracing, so jax.eval_shape finds them without compiling.


def test_decode_without_a_cache_is_named():
    mha = MultiHeadAttention(num_heads=2)

    def apply_without_cache():
        params = mha.init(jax.random.key(0), jnp.zeros((1, 4, 8)))["params"]
        return mha.apply({"params": params}, jnp.zeros((1, 1, 8)), decode=True, mutable=["cache"])

    with pytest.raises(ValueError, match=r"init\(\.\.\., decode=True\)"):
        jax.eval_shape(apply_without_cache)


def test_cache_shape_mismatch_is_named():
    mha = MultiHeadAttention(num_heads=2)

    def apply_with_wrong_batch():
        variables = mha.init(jax.random.key(0), jnp.zeros((1, 4, 8)), decode=True)
        return mha.apply(variables, jnp.zeros((2, 1, 8)), decode=True, mutable=["cache"])

    with pytest.raises(ValueError, match="do not fit the cache"):
        jax.eval_shape(apply_with_wrong_batch)


def test_cross_attention_and_bidirectional_blocks_refuse_to_decode():
    mha = MultiHeadAttention(num_heads=2)
    with pytest.raises(ValueError, match="cross-attention"):
        jax.eval_shape(lambda: mha.init(jax.random.key(0), jnp.zeros((1, 4, 8)), jnp.zeros((1, 3, 8)), decode=True))
    block = CrossAttentionBlock(num_heads=2, mlp_dim=16, causal=False)
    with pytest.raises(ValueError, match="causal=True"):
        jax.eval_shape(lambda: block.init(jax.random.key(0), jnp.zeros((1, 4, 8)), jnp.zeros((1, 3, 8)), decode=True))
