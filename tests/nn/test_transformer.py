"""Encoder blocks, cross-attention blocks and the scanned stacks.

Forward passes are jitted: one compilation is much faster on a CPU than dispatching a block's
few hundred small operations one by one.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.attention import make_causal_mask, make_padding_mask, scaled_dot_product_attention
from mmjax.nn.transformer import (
    CrossAttentionBlock,
    CrossAttentionStack,
    Encoder,
    EncoderBlock,
    MlpBlock,
    quick_gelu,
    relative_position_bias,
    relative_position_count,
    relative_position_index,
)


def test_mlp_block_equals_explicit_formula():
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    module = MlpBlock(mlp_dim=16)
    p = nn.unbox(jax.jit(module.init)(jax.random.key(0), x))["params"]
    h = x @ np.asarray(p["fc1"]["kernel"]) + np.asarray(p["fc1"]["bias"])
    h = np.asarray(jax.nn.gelu(h, approximate=False))
    expected = h @ np.asarray(p["fc2"]["kernel"]) + np.asarray(p["fc2"]["bias"])
    np.testing.assert_allclose(module.apply({"params": p}, x), expected, rtol=1e-5, atol=1e-5)


def test_quick_gelu():
    x = np.linspace(-4, 4, 9)
    np.testing.assert_allclose(quick_gelu(x), x / (1 + np.exp(-1.702 * x)), rtol=1e-6)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_stack_equals_unrolled_blocks(remat):
    """Scan stacks per-layer parameters on a leading axis; applying block i with slice i is the same."""
    x = np.random.default_rng(1).standard_normal((2, 6, 16)).astype(np.float32)
    mask = make_causal_mask(6)
    scanned = Encoder(depth=3, num_heads=4, mlp_dim=32, scan=True, remat=remat)
    p = nn.unbox(jax.jit(scanned.init)(jax.random.key(0), x, mask))["params"]
    assert p["blocks"]["mlp"]["fc1"]["kernel"].shape == (3, 16, 32)
    out = jax.jit(scanned.apply)({"params": p}, x, mask)

    unrolled = Encoder(depth=3, num_heads=4, mlp_dim=32, scan=False)
    p_unrolled = {f"block_{i}": jax.tree.map(lambda a: a[i], p["blocks"]) for i in range(3)}
    p_unrolled["ln_final"] = p["ln_final"]
    expected = jax.jit(unrolled.apply)({"params": p_unrolled}, x, mask)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# unroll=2 (slow) takes the same path as unroll=True with a different loop trip count.
@pytest.mark.parametrize("unroll", [pytest.param(2, marks=pytest.mark.slow), True])
def test_unrolled_scan_keeps_parameters_outputs_and_gradients(unroll):
    """`unroll` changes the compiled program, not the model: the same stacked parameters give the
    same outputs and gradients as the one-block loop, and no while loop is left when all
    blocks are unrolled."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 16)).astype(np.float32)
    mask = make_causal_mask(6)
    looped = Encoder(depth=4, num_heads=4, mlp_dim=32)
    unrolled = Encoder(depth=4, num_heads=4, mlp_dim=32, unroll=unroll)
    p = nn.unbox(jax.jit(looped.init)(jax.random.key(0), x, mask))
    p_unrolled = nn.unbox(jax.jit(unrolled.init)(jax.random.key(0), x, mask))
    jax.tree.map(np.testing.assert_array_equal, p, p_unrolled)

    assert_unrolled_matches_loop(looped, unrolled, p, (x, mask), loop_left=unroll is not True)


def assert_unrolled_matches_loop(looped, unrolled, variables, args, loop_left=False):
    """Same loss and gradients from both modules on the same variables; a while loop in the
    unrolled program iff `loop_left`."""

    def loss(model):
        return jax.jit(jax.value_and_grad(lambda v: jnp.mean(model.apply(v, *args) ** 2)))

    (value, grads), (value_u, grads_u) = loss(looped)(variables), loss(unrolled)(variables)
    np.testing.assert_allclose(value_u, value, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads_u, grads)
    assert ("while" in jax.jit(unrolled.apply).lower(variables, *args).as_text()) == loop_left


def test_causal_stack_ignores_future_tokens():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 8, 16)).astype(np.float32)
    enc = Encoder(depth=2, num_heads=2, mlp_dim=32)
    p = nn.unbox(jax.jit(enc.init)(jax.random.key(0), x, make_causal_mask(8)))
    x2 = x.copy()
    x2[:, 6:] = rng.standard_normal((1, 2, 16))
    apply = jax.jit(enc.apply)
    a, b = apply(p, x, make_causal_mask(8)), apply(p, x2, make_causal_mask(8))
    np.testing.assert_allclose(a[:, :6], b[:, :6], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[:, 6:], b[:, 6:])


def test_dropout_only_in_training_mode():
    x = np.random.default_rng(3).standard_normal((2, 4, 16)).astype(np.float32)
    block = EncoderBlock(num_heads=2, mlp_dim=32, dropout_rate=0.5)
    p = nn.unbox(jax.jit(block.init)(jax.random.key(0), x))
    apply = jax.jit(block.apply, static_argnums=(3,))  # argument 3 is `deterministic`
    det = apply(p, x, None, True)
    np.testing.assert_array_equal(det, apply(p, x, None, True))
    # An "rbg" key: on a CPU its dropout masks compile several times faster than threefry's.
    train = apply(p, x, None, False, rngs={"dropout": jax.random.key(1, impl="rbg")})
    assert not np.allclose(det, train)


class TestCrossAttentionBlock:
    def test_shapes_with_different_text_and_image_lengths_and_widths(self):
        rng = np.random.default_rng(4)
        text = rng.standard_normal((2, 4, 16)).astype(np.float32)
        image_tokens = rng.standard_normal((2, 9, 24)).astype(np.float32)
        block = CrossAttentionBlock(num_heads=4, mlp_dim=32)
        variables = nn.unbox(jax.eval_shape(block.init, jax.random.key(0), text, image_tokens))
        # Keys/values are projected from the image width, queries from the text width.
        assert variables["params"]["cross_attn"]["key"]["kernel"].shape == (24, 4, 4)
        assert variables["params"]["cross_attn"]["query"]["kernel"].shape == (16, 4, 4)
        assert jax.eval_shape(block.apply, variables, text, image_tokens).shape == (2, 4, 16)

    def test_context_mask_makes_output_independent_of_hidden_image_tokens(self):
        rng = np.random.default_rng(5)
        text = rng.standard_normal((2, 5, 16)).astype(np.float32)
        image_tokens = rng.standard_normal((2, 7, 16)).astype(np.float32)
        image_valid = np.ones((2, 7), bool)
        image_valid[0, 4:] = False
        image_valid[1, [1, 5]] = False
        context_mask = image_valid[:, None, None, :]
        text_mask = make_padding_mask(np.ones((2, 5), bool))
        block = CrossAttentionBlock(num_heads=2, mlp_dim=32)
        p = nn.unbox(jax.jit(block.init)(jax.random.key(1), text, image_tokens, text_mask, context_mask))
        apply = jax.jit(block.apply)
        out = apply(p, text, image_tokens, text_mask, context_mask)

        changed_hidden = np.where(image_valid[..., None], image_tokens, 100.0 * rng.standard_normal(image_tokens.shape))
        out_hidden = apply(p, text, changed_hidden.astype(np.float32), text_mask, context_mask)
        np.testing.assert_allclose(out, out_hidden, rtol=1e-6, atol=1e-6)

        changed_visible = image_tokens.copy()
        changed_visible[:, 0] += 1.0
        assert not np.allclose(out, apply(p, text, changed_visible, text_mask, context_mask))

    @pytest.mark.parametrize("causal", [True, False])
    def test_causal_block_ignores_future_text_and_bidirectional_does_not(self, causal):
        rng = np.random.default_rng(6)
        text = rng.standard_normal((1, 6, 16)).astype(np.float32)
        image_tokens = rng.standard_normal((1, 3, 16)).astype(np.float32)
        block = CrossAttentionBlock(num_heads=2, mlp_dim=32, causal=causal)
        p = nn.unbox(jax.jit(block.init)(jax.random.key(2), text, image_tokens))
        later_changed = text.copy()
        later_changed[:, 4:] = rng.standard_normal((1, 2, 16))
        apply = jax.jit(block.apply)
        a, b = apply(p, text, image_tokens), apply(p, later_changed, image_tokens)
        assert np.allclose(a[:, :4], b[:, :4], rtol=1e-5, atol=1e-5) == causal
        assert not np.allclose(a[:, 4:], b[:, 4:])

    def test_masks_must_be_four_dimensional(self):
        block = CrossAttentionBlock(num_heads=2, mlp_dim=16)
        with pytest.raises(ValueError, match="context_mask"):
            jax.eval_shape(
                block.init, jax.random.key(0), jnp.zeros((2, 3, 8)), jnp.zeros((2, 4, 8)), None, jnp.ones((2, 4), bool)
            )


def cross_attention_inputs(seed):
    """Text [2, 5, 16] and image tokens [2, 7, 12], the second row of each padded, and the masks."""
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((2, 5, 16)).astype(np.float32)
    image_tokens = rng.standard_normal((2, 7, 12)).astype(np.float32)
    text_mask = make_padding_mask(np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool))
    context_mask = np.array([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]], bool)[:, None, None, :]
    return text, image_tokens, text_mask, context_mask


def test_unrolled_cross_attention_stack_keeps_outputs_and_gradients_with_masks():
    """ALBEF's fusion stack (bidirectional, padded text and image tokens) with `unroll=True`: the
    same stacked parameters give the loop's outputs and gradients, and no while loop is left."""
    args = cross_attention_inputs(8)
    looped = CrossAttentionStack(depth=3, num_heads=2, mlp_dim=32)
    unrolled = CrossAttentionStack(depth=3, num_heads=2, mlp_dim=32, unroll=True)
    p = nn.unbox(jax.jit(looped.init)(jax.random.key(4), *args))
    assert "while" in jax.jit(looped.apply).lower(p, *args).as_text()
    assert_unrolled_matches_loop(looped, unrolled, p, args)


def test_scanned_cross_attention_stack_equals_unrolled_blocks():
    """Scan (here with remat) stacks block parameters on a leading axis; slice i is block i."""
    args = cross_attention_inputs(7)

    scanned = CrossAttentionStack(depth=3, num_heads=2, mlp_dim=32, causal=True, scan=True, remat=True)
    p = nn.unbox(jax.jit(scanned.init)(jax.random.key(3), *args))["params"]
    assert p["blocks"]["cross_attn"]["key"]["kernel"].shape == (3, 12, 2, 8)
    out = jax.jit(scanned.apply)({"params": p}, *args)

    unrolled = CrossAttentionStack(depth=3, num_heads=2, mlp_dim=32, causal=True, scan=False)
    p_unrolled = {f"block_{i}": jax.tree.map(lambda a: a[i], p["blocks"]) for i in range(3)}
    p_unrolled["ln_final"] = p["ln_final"]
    expected = jax.jit(unrolled.apply)({"params": p_unrolled}, *args)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_relative_position_index_counts_offsets_between_cells():
    """index[i, j] names the offset (dy, dx) from cell i to cell j: equal offsets, equal index."""
    grid = (2, 3)
    index = relative_position_index(grid)
    cells = [(y, x) for y in range(grid[0]) for x in range(grid[1])]
    offsets = {}
    for i, (yi, xi) in enumerate(cells):
        for j, (yj, xj) in enumerate(cells):
            offsets.setdefault((yj - yi, xj - xi), set()).add(int(index[i, j]))
    assert all(len(ids) == 1 for ids in offsets.values())
    assert len(offsets) == relative_position_count(grid) == 3 * 5
    assert sorted(i for ids in offsets.values() for i in ids) == list(range(15))


def test_relative_position_bias_lets_a_head_read_its_left_neighbour():
    """Equal content logits (zero queries): a table that favours the offset (0, -1) makes every
    cell read the value of the cell to its left, wherever it is; a class token in front gets no
    bias (it attends evenly and is attended evenly)."""
    grid, heads, dim = (3, 4), 2, 5
    cells = grid[0] * grid[1]
    left = (grid[0] - 1) * (2 * grid[1] - 1) + (grid[1] - 1) - 1  # dy = 0, dx = -1
    table = np.zeros((heads, relative_position_count(grid)), np.float32)
    table[:, left] = 30.0
    rng = np.random.default_rng(9)
    value = rng.standard_normal((1, cells + 1, heads, dim)).astype(np.float32)
    query = np.zeros((1, cells + 1, heads, dim), np.float32)
    bias = relative_position_bias(jnp.asarray(table), grid, cells + 1)
    assert bias.shape == (1, heads, cells + 1, cells + 1)
    np.testing.assert_array_equal(bias[:, :, 0], 0.0)
    np.testing.assert_array_equal(bias[:, :, :, 0], 0.0)
    out = np.asarray(scaled_dot_product_attention(query, query, value, bias=bias))
    for cell in range(cells):
        if cell % grid[1]:  # not in the first column: it has a left neighbour
            np.testing.assert_allclose(out[0, 1 + cell], value[0, cell], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0, 0], value[0].mean(axis=0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="relative_position_grid"):
        relative_position_bias(jnp.asarray(table), grid, cells - 1)


def test_encoder_relative_position_bias_starts_at_zero_and_is_trained():
    """One table [heads, (2h-1)(2w-1)] per layer, stacked by the scan; zero at init, so the
    encoder starts as the one without it, and the loss reaches the table."""
    x = np.random.default_rng(10).standard_normal((2, 6, 16)).astype(np.float32)
    plain = Encoder(depth=2, num_heads=4, mlp_dim=32)
    relative = Encoder(depth=2, num_heads=4, mlp_dim=32, relative_position_grid=(2, 3))
    p = nn.unbox(jax.jit(relative.init)(jax.random.key(0), x))
    table = p["params"]["blocks"]["relative_position_bias"]
    assert table.shape == (2, 4, 15)
    np.testing.assert_array_equal(table, 0.0)
    p_plain = nn.unbox(jax.jit(plain.init)(jax.random.key(0), x))
    without_table = jax.tree.map(lambda a: a, p)
    del without_table["params"]["blocks"]["relative_position_bias"]
    jax.tree.map(np.testing.assert_array_equal, without_table, p_plain)
    np.testing.assert_allclose(jax.jit(relative.apply)(p, x), jax.jit(plain.apply)(p_plain, x), rtol=1e-6, atol=1e-6)

    grads = jax.grad(lambda v: jnp.mean(relative.apply(v, x)[:, :, 0] ** 3))(p)
    assert np.all(np.abs(grads["params"]["blocks"]["relative_position_bias"]).sum(axis=-1) > 0)
