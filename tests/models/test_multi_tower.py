"""MultiTowerCLIP: one unit-norm space for every modality, a temperature per trained pair."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.multi_tower import MultiTowerCLIP, all_pairs, check_pairs


class MeanTower(nn.Module):
    """A stand-in tower: a Dense layer, then the mean over every axis but the batch."""

    width: int = 8

    @nn.compact
    def __call__(self, x, deterministic=True):
        h = nn.Dense(self.width)(x.reshape(x.shape[0], -1, x.shape[-1]).astype(jnp.float32))
        return {"pooled": h.mean(axis=1)}


def test_every_modality_is_embedded_with_unit_norm_and_each_trained_pair_has_a_temperature():
    model = MultiTowerCLIP(encoders={"video": MeanTower(), "audio": MeanTower(), "text": MeanTower()},
                           embed_dim=4, pairs=(("video", "text"), ("audio", "text")))
    rng = np.random.default_rng(0)
    inputs = {"video": rng.normal(size=(3, 2, 5, 6)), "audio": rng.normal(size=(3, 7, 2)),
              "text": rng.normal(size=(3, 4, 3))}
    params = model.init(jax.random.key(0), inputs)
    out = model.apply(params, inputs)
    for m in inputs:
        np.testing.assert_allclose(np.linalg.norm(out[f"{m}_embeddings"], axis=1), 1.0, rtol=1e-5)
    scales = model.apply(params, method=MultiTowerCLIP.logit_scales)
    assert sorted(scales) == ["audio_text", "video_text"]  # the untrained video-audio pair has none
    assert float(scales["video_text"]) == pytest.approx(1 / 0.07, rel=1e-5)
    assert set(params["params"]) == {"encoders_video", "encoders_audio", "encoders_text", "projections_video",
                                     "projections_audio", "projections_text", "logit_scale_video_text",
                                     "logit_scale_audio_text"}


def test_pairs_name_two_different_known_modalities():
    assert all_pairs(("video", "audio", "text")) == [("video", "audio"), ("video", "text"), ("audio", "text")]
    assert check_pairs([["video", "text"]], ("video", "text")) == (("video", "text"),)
    for bad in ([("video", "video")], [("video", "audio")], [("video",)]):
        with pytest.raises(ValueError, match="each pair must name two different modalities"):
            check_pairs(bad, ("video", "text"))
    with pytest.raises(ValueError, match="config.model.pairs is empty"):
        check_pairs((), ("video", "text"))
