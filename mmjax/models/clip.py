"""CLIP: a dual encoder that maps images and texts into one embedding space (Radford et al., 2021).

    image_embedding = normalize(W_img · ViT(image).pooled)           [batch, embed_dim]
    text_embedding  = normalize(W_txt · Text(token_ids).pooled)      [batch, embed_dim]
    logits[i, j]    = exp(t) · <image_embedding_i, text_embedding_j>  [batch, batch]

This is *late fusion*: the two modalities never see each other inside the network; they meet only
in the final dot product. That makes retrieval cheap (embed a gallery once, compare with a matrix
product) and the contrastive loss (`mmjax.losses.clip_loss`) trains both towers at once.

The temperature is learned as t = log(scale): initialised to log(1/0.07) and the scale clamped at
100, as in the paper, "to prevent scaling the logits by more than 100, which we found necessary to
prevent training instability". The projections have no bias, as in CLIP.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.text import TextTransformer
from mmjax.models.vit import ViT

Array = jax.Array

# Tower width -> shared embedding space, [width, embed_dim]: FSDP splits the tower width
# (see mmjax.training.sharding); the joint space is small and stays whole.
PROJECTION_INIT = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", None))


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-6) -> Array:
    """x / max(||x||, eps) along `axis`, computed in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


class CLIP(nn.Module):
    """Dual encoder. `__call__(images, token_ids)` returns a dict:

      image_embeddings: [batch, embed_dim], unit norm, float32
      text_embeddings:  [batch, embed_dim], unit norm, float32
      logit_scale:      [] the multiplier exp(t), clamped to `max_logit_scale`
      logit_bias:       [] (only when `logit_bias_init` is set: SigLIP's learnable bias)

    Attributes:
      image_encoder: a ViT (or any module returning {"pooled": [batch, width]}).
      text_encoder: a TextTransformer (same contract).
      embed_dim: width of the shared embedding space.
    """

    image_encoder: nn.Module
    text_encoder: nn.Module
    embed_dim: int
    logit_scale_init: float = float(np.log(1 / 0.07))
    max_logit_scale: float = 100.0
    logit_bias_init: float | None = None

    def setup(self):
        self.image_projection = nn.Dense(
            self.embed_dim, use_bias=False, kernel_init=PROJECTION_INIT, name="image_projection"
        )
        self.text_projection = nn.Dense(
            self.embed_dim, use_bias=False, kernel_init=PROJECTION_INIT, name="text_projection"
        )
        self.log_logit_scale = self.param(
            "logit_scale", nn.initializers.constant(self.logit_scale_init), ()
        )
        if self.logit_bias_init is not None:
            self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.logit_bias_init), ())

    def encode_image(self, images: Array, deterministic: bool = True) -> Array:
        """[batch, H, W, 3] float images -> [batch, embed_dim] unit-norm embeddings."""
        pooled = self.image_encoder(images, deterministic=deterministic)["pooled"]
        return l2_normalize(self.image_projection(pooled))

    def encode_text(self, token_ids: Array, deterministic: bool = True) -> Array:
        """[batch, seq] token ids -> [batch, embed_dim] unit-norm embeddings."""
        pooled = self.text_encoder(token_ids, deterministic=deterministic)["pooled"]
        return l2_normalize(self.text_projection(pooled))

    def __call__(self, images: Array, token_ids: Array, deterministic: bool = True) -> dict[str, Array]:
        out = {
            "image_embeddings": self.encode_image(images, deterministic),
            "text_embeddings": self.encode_text(token_ids, deterministic),
        }
        return {**out, **self.logit_scalars()}

    def logit_scalars(self) -> dict[str, Array]:
        """{"logit_scale": exp(t) clamped to max_logit_scale[, "logit_bias": b]}: the learned scalars
        of the loss, which depend on no input."""
        out = {"logit_scale": jnp.minimum(jnp.exp(self.log_logit_scale), self.max_logit_scale)}
        if self.logit_bias_init is not None:
            out["logit_bias"] = self.logit_bias
        return out


def build_clip(config: Any) -> CLIP:
    """Builds a CLIP from a config section with `image`, `text` and `embed_dim` fields.

    `config.image` holds ViT's attributes and `config.text` TextTransformer's, by their names, so
    a typo in a config file fails here with the unknown field named.
    """
    image_kwargs = dict(config.image)
    text_kwargs = dict(config.text)
    for cls, kwargs, section in ((ViT, image_kwargs, "image"), (TextTransformer, text_kwargs, "text")):
        known = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"config.model.{section} has unknown field(s) {unknown}; {cls.__name__} accepts {sorted(known)}"
            )
    extra = {k: config[k] for k in ("logit_scale_init", "max_logit_scale", "logit_bias_init") if k in config}
    return CLIP(
        image_encoder=ViT(**image_kwargs),
        text_encoder=TextTransformer(**text_kwargs),
        embed_dim=config.embed_dim,
        **extra,
    )
