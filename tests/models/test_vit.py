"""ViT image tower."""

import jax
import numpy as np
import pytest

from mmjax.models.vit import ViT


def tower(**kw):
    args = dict(patch_size=8, width=32, depth=2, num_heads=4, mlp_dim=64)
    args.update(kw)
    return ViT(**args)


@pytest.mark.parametrize("pool,pos", [("token", "learned"), ("mean", "sincos2d"), ("token", "sincos2d")])
def test_shapes_and_pooling(pool, pos):
    images = np.random.default_rng(0).standard_normal((2, 32, 24, 3)).astype(np.float32)
    model = tower(pool=pool, position_embedding=pos, ln_pre=True)
    params = jax.jit(model.init)(jax.random.key(0), images)
    out = model.apply(params, images)
    n = (32 // 8) * (24 // 8)
    assert out["tokens"].shape == (2, n + (pool == "token"), 32)
    expected = out["tokens"][:, 0] if pool == "token" else out["tokens"].mean(axis=1)
    np.testing.assert_allclose(out["pooled"], expected, rtol=1e-6)


def test_position_embedding_breaks_permutation_symmetry():
    """Without positions, a mean-pooled ViT could not tell a picture from its shuffled patches."""
    rng = np.random.default_rng(1)
    images = rng.standard_normal((1, 16, 16, 3)).astype(np.float32)
    swapped = images.copy()
    swapped[:, :8, :8], swapped[:, 8:, 8:] = images[:, 8:, 8:], images[:, :8, :8]
    model = tower(pool="mean", position_embedding="sincos2d")
    params = jax.jit(model.init)(jax.random.key(0), images)
    assert not np.allclose(model.apply(params, images)["pooled"], model.apply(params, swapped)["pooled"])


def test_bad_attributes_and_sizes_are_named():
    with pytest.raises(ValueError, match="pool must be 'token' or 'mean'"):
        tower(pool="max")
    with pytest.raises(ValueError, match="not a multiple of patch_size 8"):
        tower().init(jax.random.key(0), np.ones((1, 20, 16, 3), np.float32))
    with pytest.raises(ValueError, match="ViT.stem must be 'patch' or 'conv'; got 'cnn'"):
        tower(stem="cnn")
    with pytest.raises(ValueError, match="not a multiple of patch_size 8"):
        tower(stem="conv").init(jax.random.key(0), np.ones((1, 20, 16, 3), np.float32))


def test_conv_stem_replaces_the_patch_projection():
    """stem="conv": the tokens come from ConvStem (its 3 convolutions for 8 px patches and a
    projection), no patch projection exists, and the grid, positions and relative bias are the
    same as the patch stem's (a 32x24 image: 4 x 3 tokens)."""
    images = np.random.default_rng(3).standard_normal((2, 32, 24, 3)).astype(np.float32)
    model = tower(stem="conv", pool="mean", position_embedding="sincos2d", relative_position_bias=True)
    params = jax.jit(model.init)(jax.random.key(0), images)["params"]
    assert "patch_embed" not in params
    assert sorted(params["conv_stem"]) == ["conv_0", "conv_1", "conv_2", "project"]
    assert params["encoder"]["blocks"]["relative_position_bias"].shape == (2, 4, 7 * 5)
    out = jax.jit(model.apply)({"params": params}, images)
    assert out["tokens"].shape == (2, 12, 32) and np.all(np.isfinite(out["tokens"]))
    # The stem feeds the tower: another image gives other tokens.
    other = jax.jit(model.apply)({"params": params}, images[::-1])
    np.testing.assert_allclose(other["tokens"], out["tokens"][::-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(other["tokens"][0], out["tokens"][0])


@pytest.mark.parametrize("pool", ["token", "mean"])
def test_relative_position_bias_is_sized_by_the_patch_grid(pool):
    """One table per layer over the (2h-1)(2w-1) offsets of the h x w patch grid (a 32x24 image in
    8 px patches: 4 x 3, so 7 x 5 offsets), whether or not a class token comes first."""
    images = np.random.default_rng(2).standard_normal((2, 32, 24, 3)).astype(np.float32)
    model = tower(pool=pool, relative_position_bias=True)
    params = jax.jit(model.init)(jax.random.key(0), images)["params"]
    assert params["encoder"]["blocks"]["relative_position_bias"].shape == (2, 4, 7 * 5)
    out = jax.jit(model.apply)({"params": params}, images)
    assert out["tokens"].shape == (2, 12 + (pool == "token"), 32)
