"""Tubelet and spectrogram patch embeddings: each equals an explicit reshape + matmul written with
loops, central-frame initialisation embeds a static video like its image, and positions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.embed import (PatchEmbed, SpaceTimePositionEmbedding, SpectrogramPatchEmbed, TubeletEmbed,
                            central_frame_kernel)


def test_tubelet_embed_equals_an_explicit_loop_over_tubelets():
    rng = np.random.default_rng(0)
    video = rng.normal(size=(2, 4, 8, 12, 3)).astype(np.float32)  # T=4, H=8, W=12
    module = TubeletEmbed(patch_size=4, tubelet_size=2, width=5)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0), video))
    kernel, bias = (np.asarray(params["params"]["conv"][k], np.float64) for k in ("kernel", "bias"))
    assert kernel.shape == (2, 4, 4, 3, 5)
    tokens = np.asarray(module.apply(params, video))
    expected = []
    for t in range(2):  # time-major, then row-major
        for i in range(2):
            for j in range(3):
                block = video[:, 2 * t:2 * t + 2, 4 * i:4 * i + 4, 4 * j:4 * j + 4].astype(np.float64)
                expected.append(np.einsum("bthwc,thwcd->bd", block, kernel) + bias)
    np.testing.assert_allclose(tokens, np.stack(expected, axis=1), rtol=1e-5, atol=1e-5)


def test_central_frame_initialisation_embeds_a_static_video_like_its_image():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    image_embed = PatchEmbed(patch_size=4, width=6)
    image_params = nn.unbox(jax.jit(image_embed.init)(jax.random.key(1), image))["params"]["conv"]
    video_params = {"params": {"conv": {"kernel": central_frame_kernel(image_params["kernel"], 3),
                                        "bias": image_params["bias"]}}}
    video = np.repeat(image[:, None], 6, axis=1)  # 6 identical frames, tubelets of 3
    video_tokens = TubeletEmbed(patch_size=4, tubelet_size=3, width=6).apply(video_params, video)
    image_tokens = image_embed.apply({"params": {"conv": image_params}}, image)
    np.testing.assert_allclose(np.asarray(video_tokens).reshape(2, 2, 4, 6),
                               np.broadcast_to(np.asarray(image_tokens)[:, None], (2, 2, 4, 6)), atol=1e-5)
    kernel = np.asarray(central_frame_kernel(image_params["kernel"], 3))
    assert np.all(kernel[[0, 2]] == 0) and np.array_equal(kernel[1], np.asarray(image_params["kernel"]))


def test_spectrogram_patch_embed_equals_an_explicit_loop_over_patches():
    rng = np.random.default_rng(2)
    spectrogram = rng.normal(size=(2, 12, 8)).astype(np.float32)  # 12 frames, 8 mel bins
    module = SpectrogramPatchEmbed(patch_frames=4, patch_bins=4, width=5)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(2), spectrogram))
    kernel, bias = (np.asarray(params["params"]["conv"][k], np.float64) for k in ("kernel", "bias"))
    tokens = np.asarray(module.apply(params, spectrogram))
    expected = [np.einsum("bfm,fmd->bd", spectrogram[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4].astype(np.float64),
                          kernel[..., 0, :]) + bias for i in range(3) for j in range(2)]
    np.testing.assert_allclose(tokens, np.stack(expected, axis=1), rtol=1e-5, atol=1e-5)


def test_wrong_clip_length_and_spectrogram_size_name_both_values():
    with pytest.raises(ValueError, match="clip length 5 frames is not a multiple of tubelet_size 2"):
        TubeletEmbed(patch_size=4, tubelet_size=2, width=4).init(jax.random.key(0), jnp.zeros((1, 5, 8, 8, 3)))
    with pytest.raises(ValueError, match="12 frames x 10 mel bins does not divide into 4x4"):
        SpectrogramPatchEmbed(4, 4, 4).init(jax.random.key(0), jnp.zeros((1, 12, 10)))


@pytest.mark.parametrize("factorised", [True, False])
def test_space_time_positions_joint_or_factorised(factorised):
    tokens = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3 * 4, 8)), jnp.float32)
    module = SpaceTimePositionEmbedding(num_times=3, num_places=4, factorised=factorised)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(3), tokens))["params"]
    added = np.asarray(module.apply({"params": params}, tokens) - tokens)[0].reshape(3, 4, 8)
    if factorised:
        expected = np.asarray(params["time_embedding"])[:, None] + np.asarray(params["space_embedding"])[None]
        assert sum(np.size(x) for x in jax.tree.leaves(params)) == (3 + 4) * 8
    else:
        expected = np.asarray(params["embedding"]).reshape(3, 4, 8)
    np.testing.assert_allclose(added, expected, atol=1e-6)
    assert len({tuple(np.round(v, 6)) for v in added.reshape(12, 8)}) == 12  # every position distinct
