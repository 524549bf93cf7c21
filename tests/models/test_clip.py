"""CLIP dual encoder: embeddings, temperature, config errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.models.clip import build_clip


def tiny_config():
    return ml_collections.ConfigDict(dict(
        embed_dim=16,
        image=dict(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, pool="mean"),
        text=dict(vocab_size=40, max_len=8, width=32, depth=1, num_heads=2, mlp_dim=64),
    ))


def test_embeddings_are_unit_norm_and_temperature_initialised():
    model = build_clip(tiny_config())
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 16, 16, 3)).astype(np.float32)
    ids = rng.integers(3, 40, (3, 8)).astype(np.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, ids))
    out = model.apply(params, images, ids)
    assert out["image_embeddings"].shape == (3, 16) and out["text_embeddings"].shape == (3, 16)
    np.testing.assert_allclose(jnp.linalg.norm(out["image_embeddings"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(out["text_embeddings"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-5)
    assert "bias" not in params["params"]["image_projection"]


def test_logit_scale_is_clamped_at_100():
    model = build_clip(tiny_config())
    images, ids = np.ones((1, 16, 16, 3), np.float32), np.full((1, 8), 5, np.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, ids))
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.full_like(x, 7.0) if p[-1].key == "logit_scale" else x, params)
    assert float(model.apply(params, images, ids)["logit_scale"]) == 100.0


def test_config_typo_names_the_field():
    config = tiny_config()
    config.image.widht = 3
    with pytest.raises(ValueError, match=r"config.model.image has unknown field\(s\) \['widht'\]"):
        build_clip(config)
