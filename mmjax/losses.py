"""Losses, as pure functions of arrays.

Every loss is computed in float32, whatever dtype the model ran in: a log-softmax over a row of
bfloat16 logits loses the small differences that carry the gradient signal.

    clip_loss                 late fusion: symmetric InfoNCE over a batch of embeddings (CLIP)
    sample_itm_negatives      mid fusion: hard negatives for image-text matching (ALBEF, BLIP)
    itm_loss                  mid fusion: does this image match this text? (2-way softmax CE)
    mlm_loss                  mid fusion: predict masked text tokens from the image and the text
    caption_loss              generation: teacher-forced next-token CE (BLIP's decoder, captioners)

The last three share `masked_softmax_cross_entropy`, a weighted mean of softmax cross-entropy
over positions, where a position of weight 0 carries exactly zero loss and zero gradient.
"""

from __future__ import annotations

from typing import NamedTuple

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


# ------------------------------------------------------------------------------------------------
# The shared helper: weighted softmax cross-entropy.
# ------------------------------------------------------------------------------------------------


def masked_softmax_cross_entropy(
    logits: Array, labels: Array, weights: Array, *, label_smoothing: float = 0.0
) -> tuple[Array, dict[str, Array]]:
    """Weighted mean of softmax cross-entropy over positions; weight 0 means "not a target".

    With p_n = softmax(logits_n) over the V classes of position n, weights w_n >= 0 and
    smoothing ε (the target puts 1-ε on the label and ε spread evenly over all V classes):

        CE_n   = -(1-ε) · log p_n[y_n]  -  ε/V · Σ_v log p_n[v]
        NLL_n  = -log p_n[y_n]
        loss   = Σ_n w_n CE_n / Σ_n w_n            (0 when Σ_n w_n = 0, never NaN)
        nll    = Σ_n w_n NLL_n / Σ_n w_n           (0 when Σ_n w_n = 0)
        accuracy = Σ_n w_n [argmax p_n = y_n] / Σ_n w_n

    A position with w_n = 0 carries exactly zero loss and exactly zero gradient, even if its logits
    are not finite: its logits are replaced by zeros before the log-softmax, so no inf or NaN
    reaches the sum, and the gradient of that replacement is a select, not a product.

    Args:
      logits: [..., V], any float dtype; the math runs in float32.
      labels: [...] int, the target class of each position (any value where w_n = 0).
      weights: [...] float or bool, w_n; bool masks are cast to 0/1.
      label_smoothing: ε in [0, 1).

    Returns:
      (loss [], metrics) where metrics holds `accuracy` [] and `nll` [] (the unsmoothed CE,
      equal to the loss when ε = 0).

    Example:
      >>> logits = jnp.array([[2.0, 0.0], [0.0, 9.0]])
      >>> loss, metrics = masked_softmax_cross_entropy(logits, jnp.array([0, 0]), jnp.array([1, 0]))
      >>> round(float(loss), 4), float(metrics["accuracy"])   # only the first position counts
      (0.1269, 1.0)
    """
    weights = weights.astype(jnp.float32)
    is_target = weights != 0

    # hide the logits of non-targets, so their (possibly non-finite) values cannot reach the sum
    logits = jnp.where(is_target[..., None], logits.astype(jnp.float32), 0.0)

    # per-position cross-entropy against the (smoothed) one-hot target
    log_p = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if label_smoothing:
        cross_entropy = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1)
    else:
        cross_entropy = nll

    # weighted means; all-zero weights give 0 (the inner `where` keeps the gradient finite)
    weight_sum = jnp.sum(weights)
    has_targets = weight_sum > 0
    safe_weight_sum = jnp.where(has_targets, weight_sum, 1.0)

    def weighted_mean(values: Array) -> Array:
        return jnp.where(has_targets, jnp.sum(weights * values) / safe_weight_sum, 0.0)

    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    metrics = {"accuracy": weighted_mean(correct), "nll": weighted_mean(nll)}
    return weighted_mean(cross_entropy), metrics


# ------------------------------------------------------------------------------------------------
# Mid fusion (ALBEF, Li et al. 2021; BLIP, Li et al. 2022): image-text matching and masked LM.
# ------------------------------------------------------------------------------------------------


class ItmNegatives(NamedTuple):
    """Hard negatives for image-text matching, one per image and one per text.

    Attributes:
      negative_text_for_image: int32 [B_img], a text index for each image.
      negative_image_for_text: int32 [B_txt], an image index for each text.
      image_has_negative: bool [B_img], False where every text is a positive of the image: the index
        is then a fallback (the least similar text, itself a positive) and must be given weight 0.
      text_has_negative: bool [B_txt], the same for each text.
    """

    negative_text_for_image: Array
    negative_image_for_text: Array
    image_has_negative: Array
    text_has_negative: Array


def sample_itm_negatives(rng: Array, similarity: Array, positive_mask: Array) -> ItmNegatives:
    """ALBEF's hard negative mining: sample one non-matching text per image and vice versa.

    With s_ij = similarity[i, j] and P the positive pairs (positive_mask, True for every image-text
    pair that shows the same scene, including duplicates of a scene elsewhere in the batch):

        text for image i  ~  q_i(j) = exp(s_ij) / Σ_{j' : (i, j') ∉ P} exp(s_ij')   for (i, j) ∉ P
        image for text j  ~  r_j(i) = exp(s_ij) / Σ_{i' : (i', j) ∉ P} exp(s_i'j)   for (i, j) ∉ P

    i.e. softmax over the non-positive entries of a row (column). Positives have probability
    exactly 0 (their logits are -inf in the Gumbel-max sampler), so a duplicate of the same scene
    is never presented as a mismatch. Negatives that the contrastive head finds similar, the hard
    ones, are drawn more often. ALBEF uses the contrastive logits (similarity / temperature).

    A row with no non-positive entry (e.g. a batch of one scene) has no negative: its index falls
    back to the least similar item (argmin of the row), which is a positive, and its entry in
    `image_has_negative` / `text_has_negative` is False, so `itm_loss` can weight it 0.

    The function is shard-agnostic: it takes the global [B_img, B_txt] matrix (the caller gathers
    embeddings across data shards first) and returns global indices. It is deterministic given
    `rng`. No gradient flows through the sampled indices.

    Args:
      rng: a PRNG key.
      similarity: [B_img, B_txt] float, the image-text similarity logits.
      positive_mask: [B_img, B_txt] bool, True where image i and text j match.

    Returns:
      ItmNegatives(negative_text_for_image [B_img], negative_image_for_text [B_txt],
                   image_has_negative [B_img], text_has_negative [B_txt]).
    """
    similarity = jax.lax.stop_gradient(similarity).astype(jnp.float32)
    rng_text, rng_image = jax.random.split(rng)

    # rule out the positives: -inf never wins the Gumbel-max argmax
    negative_logits = jnp.where(positive_mask, -jnp.inf, similarity)

    # one text per image (along a row), one image per text (along a column)
    text_for_image = jax.random.categorical(rng_text, negative_logits, axis=1)
    image_for_text = jax.random.categorical(rng_image, negative_logits, axis=0)

    # rows/columns made only of positives: fall back to the least similar item, flagged invalid
    image_has_negative = jnp.any(~positive_mask, axis=1)
    text_has_negative = jnp.any(~positive_mask, axis=0)
    text_for_image = jnp.where(image_has_negative, text_for_image, jnp.argmin(similarity, axis=1))
    image_for_text = jnp.where(text_has_negative, image_for_text, jnp.argmin(similarity, axis=0))
    return ItmNegatives(
        negative_text_for_image=text_for_image.astype(jnp.int32),
        negative_image_for_text=image_for_text.astype(jnp.int32),
        image_has_negative=image_has_negative,
        text_has_negative=text_has_negative,
    )


def itm_loss(
    logits: Array, labels: Array, weights: Array | None = None
) -> tuple[Array, dict[str, Array]]:
    """Image-text matching: binary cross-entropy, written as a 2-way softmax cross-entropy.

    Class 1 is "the text describes the image", class 0 is "it does not". With
    p_n = softmax(logits_n) and weights w_n (all 1 when `weights` is None):

        loss = -Σ_n w_n log p_n[y_n] / Σ_n w_n        (0 when Σ_n w_n = 0)

    ALBEF scores B positive pairs, B (image, hard negative text) and B (hard negative image, text)
    pairs; the negatives' `image_has_negative` / `text_has_negative` from `sample_itm_negatives`
    are their weights, so a pair without a real negative does not count.

    Args:
      logits: [N, 2] float, the ITM head's output.
      labels: [N] int in {0, 1}.
      weights: [N] float or bool, or None for a plain mean.

    Returns:
      (loss [], {"accuracy": []}), the accuracy weighted like the loss.
    """
    if weights is None:
        weights = jnp.ones(labels.shape, jnp.float32)
    loss, metrics = masked_softmax_cross_entropy(logits, labels, weights)
    return loss, {"accuracy": metrics["accuracy"]}


def mlm_loss(
    logits: Array, target_ids: Array, loss_mask: Array
) -> tuple[Array, dict[str, Array]]:
    """Masked language modelling: cross-entropy at the masked positions only (BERT, ALBEF).

    With M the masked positions (loss_mask, from `mmjax.data.masking.mask_tokens`) and
    p_bl = softmax(logits[b, l]):

        loss = -1/|M| Σ_{(b,l) ∈ M} log p_bl[target_ids[b, l]]        (0 when M is empty)

    Positions outside M carry exactly zero loss and zero gradient.

    Args:
      logits: [B, L, V] float, the text decoder head's output.
      target_ids: [B, L] int, the original (unmasked) token ids.
      loss_mask: [B, L] bool, True at the positions chosen for masking.

    Returns:
      (loss [], {"accuracy": []}), the accuracy over M.
    """
    loss, metrics = masked_softmax_cross_entropy(logits, target_ids, loss_mask)
    return loss, {"accuracy": metrics["accuracy"]}


# ------------------------------------------------------------------------------------------------
# Generation: captioning.
# ------------------------------------------------------------------------------------------------


def caption_loss(
    logits: Array, target_ids: Array, pad_id: int = 0, label_smoothing: float = 0.0
) -> tuple[Array, dict[str, Array]]:
    """Teacher-forced next-token cross-entropy, averaged over the non-padding targets.

    The logits and targets are already aligned: logits[:, t] is the prediction made after reading
    the decoder inputs up to position t, and target_ids[:, t] is the token it should predict. The
    caller builds the decoder inputs by shifting the targets right (a begin token in front):

        decoder inputs   [BOS   a     red   circle  EOS   PAD ]
        target_ids       [a     red   circle  EOS   PAD   PAD ]     (PAD: no loss)

    With T the positions where target_ids != pad_id, p_bt = softmax(logits[b, t]) and label
    smoothing ε:

        CE_bt      = -(1-ε) log p_bt[target_ids[b, t]]  -  ε/V Σ_v log p_bt[v]
        loss       = 1/|T| Σ_{(b,t) ∈ T} CE_bt                                (0 when T is empty)
        perplexity = exp( -1/|T| Σ_{(b,t) ∈ T} log p_bt[target_ids[b, t]] )   (unsmoothed)

    Args:
      logits: [B, L, V] float, the decoder's output.
      target_ids: [B, L] int, the caption's token ids, padded with `pad_id`.
      pad_id: the padding id; its positions carry exactly zero loss and zero gradient.
      label_smoothing: ε in [0, 1).

    Returns:
      (loss [], {"accuracy": [], "perplexity": []}), both metrics over T.
    """
    loss, metrics = masked_softmax_cross_entropy(
        logits, target_ids, target_ids != pad_id, label_smoothing=label_smoothing
    )
    return loss, {"accuracy": metrics["accuracy"], "perplexity": jnp.exp(metrics["nll"])}
