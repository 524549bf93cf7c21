"""PatchEmbed against an explicit reshape + matmul; position and token embeddings."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.embed import ConvStem, LearnedPositionEmbedding, PatchEmbed, TokenEmbed, sincos_2d_position_embedding


@pytest.mark.parametrize("hw,p,c", [((8, 8), 4, 3), ((12, 8), 4, 3), ((6, 9), 3, 2)])
def test_patch_embed_equals_reshape_and_matmul(hw, p, c):
    rng = np.random.default_rng(sum(hw) + p)
    images = rng.standard_normal((2, *hw, c)).astype(np.float32)
    module = PatchEmbed(patch_size=p, width=5)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0), images))["params"]
    out = np.asarray(module.apply({"params": params}, images))
    h, w = hw[0] // p, hw[1] // p
    # [b, h, p, w, p, c] -> [b, h, w, p, p, c] -> [b, h*w, p*p*c]: one row per patch, row-major.
    patches = images.reshape(2, h, p, w, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(2, h * w, p * p * c)
    kernel = np.asarray(params["conv"]["kernel"], np.float64).reshape(p * p * c, 5)
    expected = patches.astype(np.float64) @ kernel + np.asarray(params["conv"]["bias"])
    assert out.shape == (2, h * w, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_patch_embed_is_the_strided_convolution_it_replaces():
    """Same parameter names, shapes and initial values as nn.Conv(kernel = stride = p) from the same
    key, and the same tokens: checkpoints, seeds and the weight converters see no difference."""
    rng = np.random.default_rng(7)
    images = rng.standard_normal((3, 12, 8, 3)).astype(np.float32)
    module = PatchEmbed(patch_size=4, width=6)
    conv = nn.Conv(6, kernel_size=(4, 4), strides=(4, 4), padding="VALID")

    class ConvParent(nn.Module):  # nn.Conv under the same name, so it draws from the same key
        @nn.compact
        def __call__(self, x):
            return nn.Conv(6, kernel_size=(4, 4), strides=(4, 4), padding="VALID", name="conv")(x)

    key = jax.random.key(3)
    params = nn.unbox(module.init(key, images))["params"]
    conv_params = ConvParent().init(key, images)["params"]["conv"]
    assert jax.tree.map(np.shape, params) == {"conv": {"kernel": (4, 4, 3, 6), "bias": (6,)}}
    np.testing.assert_allclose(params["conv"]["kernel"], conv_params["kernel"], rtol=1e-6)
    params["conv"]["bias"] = rng.standard_normal(6).astype(np.float32)
    tokens = module.apply({"params": params}, images)
    grid = conv.apply({"params": params["conv"]}, images)  # [3, 3, 2, 6]
    np.testing.assert_allclose(tokens, np.asarray(grid).reshape(3, 6, 6), rtol=1e-5, atol=1e-5)


def test_patch_embed_names_both_sizes_when_not_divisible():
    with pytest.raises(ValueError, match=r"30x32 is not a multiple of patch_size 8"):
        PatchEmbed(patch_size=8, width=4).init(jax.random.key(0), jnp.ones((1, 30, 32, 3)))


def test_sincos_embedding_formula_and_distinct_positions():
    pe = sincos_2d_position_embedding(3, 4, 16)
    assert pe.shape == (12, 16)
    omega = 1.0 / 10000 ** (np.arange(4) / 3)
    y, x = 2, 1  # patch index 2*4+1 = 9
    expected = np.concatenate([np.sin(x * omega), np.cos(x * omega), np.sin(y * omega), np.cos(y * omega)])
    np.testing.assert_allclose(pe[9], expected, rtol=1e-6)
    assert len({tuple(np.round(r, 5)) for r in pe}) == 12
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_position_embedding(2, 2, 6)


def test_learned_position_embedding_adds_prefix_of_table():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    module = LearnedPositionEmbedding(max_len=5)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0), x))["params"]
    out = module.apply({"params": params}, x)
    np.testing.assert_allclose(out, x + np.asarray(params["embedding"])[:3], rtol=1e-6)
    with pytest.raises(ValueError, match="exceeds max_len"):
        module.apply({"params": params}, np.ones((1, 6, 4), np.float32))


def test_token_embed_lookup_and_tied_attend():
    ids = np.array([[3, 1, 0]])
    module = TokenEmbed(vocab_size=7, width=4)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0), ids))["params"]
    table = np.asarray(params["embed"]["embedding"])
    np.testing.assert_allclose(module.apply({"params": params}, ids), table[ids], rtol=1e-6)
    vec = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    logits = module.apply({"params": params}, vec, method=TokenEmbed.attend)
    np.testing.assert_allclose(logits, vec @ table.T, rtol=1e-5, atol=1e-6)


def test_conv_stem_tokens_are_row_major_patches_whose_receptive_field_is_centred_on_the_patch():
    """ConvStem: log2(p) strided 3x3 convolutions and a 1x1 projection give one token per p x p
    patch in PatchEmbed's order; token (r, c) reads rows 16r - 8 .. 16r + 22 (and columns likewise)
    at p = 16, its patch and half a patch around it, centred on the patch (16r + 7.5) within half
    a pixel. The pixels a token reads are those with a non-zero gradient of the token."""
    rng = np.random.default_rng(16)
    images = rng.standard_normal((2, 48, 64, 3)).astype(np.float32)
    stem = ConvStem(patch_size=16, width=32)
    params = jax.jit(stem.init)(jax.random.key(0), images)
    assert [k for k in nn.unbox(params)["params"]] == ["conv_0", "conv_1", "conv_2", "conv_3", "project"]
    assert nn.unbox(params)["params"]["conv_0"]["kernel"].shape == (3, 3, 3, 4)  # 32 / 2^3 channels
    apply = jax.jit(stem.apply)
    tokens = apply(params, images)
    assert tokens.shape == (2, 3 * 4, 32)

    @jax.jit
    def reads(images):
        """[tokens, H, W]: which pixels (any channel, any image of the batch) each token depends on."""
        def token_sum(images, t):
            return apply(params, images)[:, t].sum()
        grads = jax.vmap(jax.grad(token_sum), in_axes=(None, 0))(images, jnp.arange(12))
        return jnp.abs(grads).max(axis=(1, 4)) > 0

    # ReLUs can zero a pixel's gradient by chance; the union over a few images cannot miss one.
    mask = np.any([reads(rng.standard_normal(images.shape).astype(np.float32)) for _ in range(3)], axis=0)
    for t in range(12):
        r, c = divmod(t, 4)
        rows, cols = np.nonzero(mask[t].any(axis=1))[0], np.nonzero(mask[t].any(axis=0))[0]
        want_rows = np.arange(max(16 * r - 8, 0), min(16 * r + 22, 47) + 1)
        want_cols = np.arange(max(16 * c - 8, 0), min(16 * c + 22, 63) + 1)
        np.testing.assert_array_equal(rows, want_rows, err_msg=f"token {(r, c)}")
        np.testing.assert_array_equal(cols, want_cols, err_msg=f"token {(r, c)}")
        assert mask[t][np.ix_(rows, cols)].all()  # a full rectangle
    # Changing a patch moves its own token most: the RF's weight peaks on the patch.
    changed = images.copy()
    changed[:, 16:32, 16:32] = rng.standard_normal((2, 16, 16, 3))
    diff = np.abs(apply(params, changed) - tokens).mean(axis=(0, 2)).reshape(3, 4)
    assert np.argmax(diff) == 1 * 4 + 1 and diff[2, 3] == 0 and diff[0, 3] == 0
    with pytest.raises(ValueError, match="power of two"):
        ConvStem(patch_size=12, width=32).init(jax.random.key(0), images)
