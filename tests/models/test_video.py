"""The video tower: shapes, order in time, and clear errors for clips it cannot cut."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax.models.video import VideoTransformer

TOWER = VideoTransformer(patch_size=8, tubelet_size=2, width=32, depth=1, num_heads=2, mlp_dim=64)


@pytest.fixture(scope="module")
def clips_and_params():
    clips = np.random.default_rng(0).uniform(-1, 1, size=(3, 4, 16, 16, 3)).astype(np.float32)
    params = nn.unbox(jax.jit(TOWER.init)(jax.random.key(0), clips))
    return clips, params


def test_tokens_are_tubelets_of_every_time_step_and_place(clips_and_params):
    clips, params = clips_and_params
    out = jax.jit(TOWER.apply)(params, clips)
    assert out["tokens"].shape == (3, 2 * 2 * 2, 32)  # (T/tt)·(H/p)·(W/p) tokens
    np.testing.assert_allclose(out["pooled"], out["tokens"].mean(axis=1), rtol=1e-6, atol=1e-6)
    assert params["params"]["tubelet_embed"]["conv"]["kernel"].shape == (2, 8, 8, 3, 32)
    assert params["params"]["pos_embed"]["time_embedding"].shape == (2, 32)


def test_the_tower_sees_the_order_of_frames(clips_and_params):
    """Reversed in time, a clip shows the opposite motion: its embedding must differ."""
    clips, params = clips_and_params
    forward = jax.jit(TOWER.apply)(params, clips)["pooled"]
    backward = jax.jit(TOWER.apply)(params, clips[:, ::-1])["pooled"]
    assert np.min(np.abs(np.asarray(forward) - np.asarray(backward)).max(axis=1)) > 1e-3


def test_a_clip_length_that_is_not_a_multiple_of_the_tubelet_is_named():
    with pytest.raises(ValueError, match="clip length 5 frames is not a multiple of tubelet_size 2"):
        TOWER.init(jax.random.key(0), np.zeros((1, 5, 16, 16, 3), np.float32))
