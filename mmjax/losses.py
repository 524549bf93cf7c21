"""Losses, as pure functions of arrays.

Every loss is computed in float32, whatever dtype the model ran in: a log-softmax over a row of
bfloat16 logits loses the small differences that carry the gradient signal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def clip_loss(
    image_embeddings: Array, text_embeddings: Array, logit_scale: Array | float
) -> tuple[Array, dict[str, Array]]:
    """The symmetric InfoNCE loss of CLIP (Radford et al., 2021; van den Oord et al., 2018).

    With unit-norm embeddings x_i (images) and y_j (texts), i, j = 1..B, and scale s = exp(t):

        logits_ij = s · <x_i, y_j>
        L_i2t = -1/B Σ_i log( exp(logits_ii) / Σ_j exp(logits_ij) )     (each image picks its text)
        L_t2i = -1/B Σ_j log( exp(logits_jj) / Σ_i exp(logits_ij) )     (each text picks its image)
        L     = (L_i2t + L_t2i) / 2

    Args:
      image_embeddings: [batch, dim], L2-normalised.
      text_embeddings: [batch, dim], L2-normalised; row i is the caption of image i.
      logit_scale: the scale s (already exponentiated).

    Returns:
      (loss [], metrics) where metrics holds the in-batch top-1 accuracy in both directions.
    """
    x = image_embeddings.astype(jnp.float32)
    y = text_embeddings.astype(jnp.float32)
    logits = jnp.asarray(logit_scale, jnp.float32) * x @ y.T  # [batch_images, batch_texts]
    labels = jnp.arange(logits.shape[0])
    log_p_i2t = jax.nn.log_softmax(logits, axis=1)
    log_p_t2i = jax.nn.log_softmax(logits, axis=0)
    loss_i2t = -jnp.mean(jnp.diagonal(log_p_i2t))
    loss_t2i = -jnp.mean(jnp.diagonal(log_p_t2i))
    metrics = {
        "i2t_accuracy": jnp.mean(jnp.argmax(logits, axis=1) == labels),
        "t2i_accuracy": jnp.mean(jnp.argmax(logits, axis=0) == labels),
    }
    return 0.5 * (loss_i2t + loss_t2i), metrics
