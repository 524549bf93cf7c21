"""Losses, as pure functions of arrays.

Every loss is computed in float32, whatever dtype the model ran in: a log-softmax over a row of
bfloat16 logits loses the small differences that carry the gradient signal.

    clip_loss                 late fusion: symmetric InfoNCE over a batch of embeddings (CLIP)
    siglip_loss               late fusion: pairwise sigmoid loss with a learnable bias (SigLIP)
    sharded_clip_loss         clip_loss of the global batch, each device computing its own rows
    sharded_siglip_loss       siglip_loss of the global batch, texts passed around a ring of devices
    sample_itm_negatives      mid fusion: hard negatives for image-text matching (ALBEF, BLIP)
    itm_loss                  mid fusion: does this image match this text? (2-way softmax CE)
    mlm_loss                  mid fusion: predict masked text tokens from the image and the text
    caption_loss              generation: teacher-forced next-token CE (BLIP's decoder, captioners)
    sigmoid_focal_loss        detection: per-(box, query) binary loss that down-weights easy negatives
    match_predictions         detection: DETR's optimal assignment of predicted to true boxes
    detection_set_loss        detection: DETR's set loss (matching, then focal + L1 + GIoU; OWL-ViT)
    gradient_difference_loss  generation: squared error of neighbouring pixels' differences (sharp edges)

The two sharded losses run inside `jax.shard_map` over the mesh axes that split the batch and
equal their unsharded formula (value, gradients and accuracies, up to float rounding); without a
mesh they are the unsharded formula.

The last three share `masked_softmax_cross_entropy`, a weighted mean of softmax cross-entropy
over positions, where a position of weight 0 carries exactly zero loss and zero gradient.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, PartitionSpec

from mmjax.boxes import cxcywh_to_xyxy, elementwise_generalized_iou, pairwise_generalized_iou, pairwise_iou
from mmjax.linear_assignment import batched_linear_sum_assignment

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
    # --8<-- [start:clip_loss]
    x = image_embeddings.astype(jnp.float32)
    y = text_embeddings.astype(jnp.float32)
    logits = jnp.asarray(logit_scale, jnp.float32) * x @ y.T  # [batch_images, batch_texts]
    labels = jnp.arange(logits.shape[0])
    log_p_i2t = jax.nn.log_softmax(logits, axis=1)
    log_p_t2i = jax.nn.log_softmax(logits, axis=0)
    loss_i2t = -jnp.mean(jnp.diagonal(log_p_i2t))
    loss_t2i = -jnp.mean(jnp.diagonal(log_p_t2i))
    # --8<-- [end:clip_loss]
    metrics = {
        "i2t_accuracy": jnp.mean(jnp.argmax(logits, axis=1) == labels),
        "t2i_accuracy": jnp.mean(jnp.argmax(logits, axis=0) == labels),
    }
    return 0.5 * (loss_i2t + loss_t2i), metrics


def siglip_loss(
    image_embeddings: Array, text_embeddings: Array, logit_scale: Array | float, logit_bias: Array | float
) -> tuple[Array, dict[str, Array]]:
    """The pairwise sigmoid loss of SigLIP (Zhai et al., 2023).

    Every image-text pair of the batch is its own binary question, "is this the caption of this
    image?", so no softmax normalises over the batch. With unit-norm x_i, y_j, i, j = 1..B, scale
    s = exp(t) and bias b (the paper initialises t = log 10 and b = -10, so that the B² - B
    negatives start with a small loss):

        logits_ij = s · <x_i, y_j> + b
        z_ij      = +1 if i = j, -1 otherwise
        L         = -1/B Σ_i Σ_j log σ(z_ij · logits_ij)

    The sum over the B² pairs is divided by B, not B², as in big_vision: each image's row of
    binary losses is normalised by its number of positives (one) and the rows are averaged, so
    the loss is per image like `clip_loss` and does not shrink as the batch grows.

    Args:
      image_embeddings: [batch, dim], L2-normalised.
      text_embeddings: [batch, dim], L2-normalised; row i is the caption of image i.
      logit_scale: the scale s (already exponentiated).
      logit_bias: the bias b.

    Returns:
      (loss [], metrics) where metrics holds the in-batch top-1 accuracy in both directions
      (as in `clip_loss`: does each image's highest logit fall on its own text, and vice versa).
    """
    loss_sum, logits = _sigmoid_block(
        image_embeddings, text_embeddings, logit_scale, logit_bias, diagonal_is_positive=True
    )
    labels = jnp.arange(logits.shape[0])
    metrics = {
        "i2t_accuracy": jnp.mean(jnp.argmax(logits, axis=1) == labels),
        "t2i_accuracy": jnp.mean(jnp.argmax(logits, axis=0) == labels),
    }
    return loss_sum / logits.shape[0], metrics


def _sigmoid_block(
    image_embeddings: Array,
    text_embeddings: Array,
    logit_scale: Array | float,
    logit_bias: Array | float,
    diagonal_is_positive: bool,
) -> tuple[Array, Array]:
    """-Σ_ij log σ(z_ij · logits_ij) over one block of images [m, dim] × texts [n, dim].

    Returns (the summed loss [], the block's logits [m, n]). On the block of an image's own
    texts (diagonal_is_positive, m = n) the diagonal is positive; on any other block every pair
    is a negative, so z = -1 throughout and no label matrix is built.
    """
    # --8<-- [start:sigmoid_block]
    x = image_embeddings.astype(jnp.float32)
    y = text_embeddings.astype(jnp.float32)
    logits = jnp.asarray(logit_scale, jnp.float32) * x @ y.T + jnp.asarray(logit_bias, jnp.float32)
    if diagonal_is_positive:
        signs = jnp.where(jnp.eye(*logits.shape, dtype=bool), 1.0, -1.0)
    else:
        signs = -1.0
    # log_sigmoid, not log(sigmoid(...)): σ(-110) underflows to 0 in float32, log σ(-110) = -110
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits)), logits
    # --8<-- [end:sigmoid_block]


# ------------------------------------------------------------------------------------------------
# Late fusion across devices: the global batch is split over the data-parallel mesh axes.
# ------------------------------------------------------------------------------------------------

# The mesh axes the trainer splits the batch over (both data parallel, see
# mmjax.training.sharding); the `tensor` axis holds a replica of each slice of the batch.
BATCH_AXES = ("data", "fsdp")


class BatchShards(NamedTuple):
    """How the batch is split: over which mesh axes, into how many slices.

    Attributes:
      mesh: the explicit mesh, or the context mesh of `jax.set_mesh`; None when there is none.
      axes: the batch axes present in the mesh with more than one device, in mesh-spec order.
      count: the product of their sizes, the number of distinct slices of the batch.
    """

    mesh: Mesh | AbstractMesh | None
    axes: tuple[str, ...]
    count: int


def batch_shards(
    mesh: Mesh | AbstractMesh | None = None, axis_names: tuple[str, ...] = BATCH_AXES
) -> BatchShards:
    """The batch axes of `mesh` (default: the context mesh), skipping absent and size-1 axes.

    Without a mesh (evaluation, a unit test, an unsharded step) `count` is 1 and the sharded
    losses fall back to their plain formula.
    """
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return BatchShards(None, (), 1)
    axes = tuple(axis for axis in axis_names if mesh.shape.get(axis, 1) > 1)
    return BatchShards(mesh, axes, math.prod(mesh.shape[axis] for axis in axes))


def _map_over_batch_shards(
    per_device: Callable, shards: BatchShards, batch_size: int, num_replicated: int
) -> Callable:
    """`per_device(images [B/n, dim], texts [B/n, dim], *replicated)` as one global function.

    Only the batch axes are manual: the other mesh axes (tensor) stay under the compiler, which
    is free to split the per-device work further. Under a jit the embeddings are resharded to
    the batch split if they arrive laid out otherwise. `per_device` must return values that are
    equal on every device (a psum or pmean over `shards.axes`), hence out_specs P().

    `check_vma` stays on: JAX then tracks which values vary across the batch shards, rejects an
    output that is not the same everywhere, and in the backward pass sums the gradients of the
    replicated scale and bias over the devices (the transpose of using one value everywhere).
    """
    if batch_size % shards.count:
        raise ValueError(
            f"a batch of {batch_size} does not split evenly over the {shards.count} devices of "
            f"the mesh axes {shards.axes}"
        )
    batch = PartitionSpec(shards.axes)
    return jax.shard_map(
        per_device,
        mesh=shards.mesh,
        in_specs=(batch, batch) + (PartitionSpec(),) * num_replicated,
        out_specs=PartitionSpec(),
        axis_names=set(shards.axes),
    )


def sharded_clip_loss(
    image_embeddings: Array,
    text_embeddings: Array,
    logit_scale: Array | float,
    *,
    mesh: Mesh | None = None,
    axis_names: tuple[str, ...] = BATCH_AXES,
) -> tuple[Array, dict[str, Array]]:
    """`clip_loss` of the global batch, computed as "gather with gradient, local loss" (open_clip).

    Device p of the n batch shards holds the images x and texts y of rows R_p (B/n of them).
    It all-gathers every image and text ([B, dim] each; the gather is differentiable: its
    transpose sums each device's contribution back onto the device that owns the row) and
    computes only its own rows of the two softmaxes:

        image_to_text[i, :] = s · x_i · Yᵀ       i ∈ R_p     [B/n, B]   (row i of logits)
        text_to_image[j, :] = s · y_j · Xᵀ       j ∈ R_p     [B/n, B]   (column j of logits)
        L_p = -1/(2·B/n) Σ_{i ∈ R_p} [ log softmax(image_to_text[i])_i + log softmax(text_to_image[i])_i ]
        L   = 1/n Σ_p L_p                                                     (= clip_loss)

    Every row and every column of the global [B, B] logits is computed once, on the device that
    owns its image or text; no device holds more than two [B/n, B] blocks. The loss, its gradients and the accuracies equal
    `clip_loss` on the gathered batch. Without a mesh, or with one batch shard, it is
    `clip_loss`.

    Args:
      image_embeddings: [batch, dim], L2-normalised, the global batch (split over the mesh).
      text_embeddings: [batch, dim], L2-normalised; row i is the caption of image i.
      logit_scale: the scale s (already exponentiated).
      mesh: the mesh; by default the context mesh of `jax.set_mesh`.
      axis_names: the mesh axes that split the batch; absent or size-1 axes are skipped.

    Returns:
      (loss [], {"i2t_accuracy": [], "t2i_accuracy": []}), the same as `clip_loss`.
    """
    shards = batch_shards(mesh, axis_names)
    if shards.count == 1:
        return clip_loss(image_embeddings, text_embeddings, logit_scale)

    def per_device(images: Array, texts: Array, scale: Array) -> tuple[Array, dict[str, Array]]:
        images, texts = images.astype(jnp.float32), texts.astype(jnp.float32)
        scale = jnp.asarray(scale, jnp.float32)
        local_batch = images.shape[0]
        # global row indices of this device's pairs: the batch is split in mesh order
        rows = jax.lax.axis_index(shards.axes) * local_batch + jnp.arange(local_batch)

        # everyone's embeddings, [B, dim]; the gradient flows back to the owners
        all_images = jax.lax.all_gather(images, shards.axes, tiled=True)
        all_texts = jax.lax.all_gather(texts, shards.axes, tiled=True)

        # this device's rows of logits and of logitsᵀ, [B/n, B] each
        image_to_text = scale * images @ all_texts.T
        text_to_image = scale * texts @ all_images.T

        def own_log_probability(logits: Array) -> Array:
            log_p = jax.nn.log_softmax(logits, axis=1)
            return jnp.take_along_axis(log_p, rows[:, None], axis=1)[:, 0]

        # every device has B/n rows, so the mean of the local means is the global mean
        local_loss = -0.5 * jnp.mean(own_log_probability(image_to_text) + own_log_probability(text_to_image))
        metrics = {
            "i2t_accuracy": jnp.mean(jnp.argmax(image_to_text, axis=1) == rows),
            "t2i_accuracy": jnp.mean(jnp.argmax(text_to_image, axis=1) == rows),
        }
        return jax.lax.pmean((local_loss, metrics), shards.axes)

    run = _map_over_batch_shards(per_device, shards, image_embeddings.shape[0], num_replicated=1)
    return run(image_embeddings, text_embeddings, jnp.asarray(logit_scale, jnp.float32))


def sharded_siglip_loss(
    image_embeddings: Array,
    text_embeddings: Array,
    logit_scale: Array | float,
    logit_bias: Array | float,
    *,
    mesh: Mesh | None = None,
    axis_names: tuple[str, ...] = BATCH_AXES,
) -> tuple[Array, dict[str, Array]]:
    """`siglip_loss` of the global batch, chunked: texts travel around a ring of devices.

    The sigmoid loss is a plain sum over pairs, so it splits into blocks with no normaliser
    to share (SigLIP's "chunked" implementation, as in big_vision). The n batch shards form a
    ring; device p holds images X_p and texts Y_p ([B/n, dim] each) and, at step k, the texts
    Y_{p-k} of the device k places behind it:

        step 0:          L_p  = -Σ log σ(z ⊙ (s · X_p Y_pᵀ + b))        (own texts: diagonal +1)
        step k = 1..n-1: Y ← ppermute(Y)   (each device passes its texts on to the next)
                         L_p += -Σ log σ(-(s · X_p Y_{p-k}ᵀ + b))       (all negatives)
        L = 1/B Σ_p L_p                                                     (= siglip_loss)

    After n-1 steps every image has met every text once, so L is the global loss; the largest
    pairwise array a device ever holds is one [B/n, B/n] block, in the forward and in the
    backward pass (each step is rematerialised, so the blocks are not kept for the gradient),
    and the communication is n-1 passes of [B/n, dim] to a neighbour. The loss, its gradients
    and the accuracies equal `siglip_loss` on the gathered batch. Without a mesh, or with one
    batch shard, it is `siglip_loss`.

    The top-1 accuracies need each image's best text over all B texts: a running (best logit,
    its global index) per image stays on its device, and the one per text travels with the text.

    Args:
      image_embeddings: [batch, dim], L2-normalised, the global batch (split over the mesh).
      text_embeddings: [batch, dim], L2-normalised; row i is the caption of image i.
      logit_scale: the scale s (already exponentiated).
      logit_bias: the bias b.
      mesh: the mesh; by default the context mesh of `jax.set_mesh`.
      axis_names: the mesh axes that split the batch; absent or size-1 axes are skipped.

    Returns:
      (loss [], {"i2t_accuracy": [], "t2i_accuracy": []}), the same as `siglip_loss`.
    """
    shards = batch_shards(mesh, axis_names)
    if shards.count == 1:
        return siglip_loss(image_embeddings, text_embeddings, logit_scale, logit_bias)
    num_shards, global_batch = shards.count, image_embeddings.shape[0]
    # device p sends to p+1, so at step k it holds the texts that started on device p-k
    ring = [(p, (p + 1) % num_shards) for p in range(num_shards)]

    def per_device(images: Array, texts: Array, scale: Array, bias: Array):
        local_batch = images.shape[0]
        me = jax.lax.axis_index(shards.axes)
        local = jnp.arange(local_batch)

        # Recomputed in the backward pass instead of saved, so the n blocks of one device are
        # never alive together; the best logit per row/column is a metric, not differentiated.
        @functools.partial(jax.checkpoint, static_argnums=(1,))
        def block(texts: Array, diagonal_is_positive: bool):
            loss_sum, logits = _sigmoid_block(images, texts, scale, bias, diagonal_is_positive)
            logits = jax.lax.stop_gradient(logits)
            image_best = (jnp.max(logits, axis=1), jnp.argmax(logits, axis=1))
            text_best = (jnp.max(logits, axis=0), jnp.argmax(logits, axis=0))
            return loss_sum, image_best, text_best

        # step 0: own texts, positives on the diagonal
        loss_sum, image_best, text_best = block(texts, True)
        image_best = (image_best[0], image_best[1] + me * local_batch)  # global text index
        text_best = (text_best[0], text_best[1] + me * local_batch)  # global image index

        def ring_step(carry, step):
            texts, loss_sum, image_best, text_best = carry
            # pass the texts (and their running best image) on to the next device
            texts, text_best = jax.lax.ppermute((texts, text_best), shards.axes, ring)
            step_loss, image_candidate, text_candidate = block(texts, False)
            texts_from = (me - step) % num_shards
            image_best = _keep_best(image_best, image_candidate, texts_from * local_batch)
            text_best = _keep_best(text_best, text_candidate, me * local_batch)
            return (texts, loss_sum + step_loss, image_best, text_best), None

        carry = (texts, loss_sum, image_best, text_best)
        carry, _ = jax.lax.scan(ring_step, carry, jnp.arange(1, num_shards))
        _, loss_sum, image_best, text_best = carry

        # after n-1 steps this device holds the texts that started on device p+1
        image_rows = me * local_batch + local
        text_rows = (me + 1) % num_shards * local_batch + local
        correct = {
            "i2t_accuracy": jnp.sum(image_best[1] == image_rows),
            "t2i_accuracy": jnp.sum(text_best[1] == text_rows),
        }
        loss_sum, correct = jax.lax.psum((loss_sum, correct), shards.axes)
        return loss_sum / global_batch, {name: count / global_batch for name, count in correct.items()}

    run = _map_over_batch_shards(per_device, shards, global_batch, num_replicated=2)
    return run(
        image_embeddings,
        text_embeddings,
        jnp.asarray(logit_scale, jnp.float32),
        jnp.asarray(logit_bias, jnp.float32),
    )


def _keep_best(
    best: tuple[Array, Array], candidate: tuple[Array, Array], offset: Array
) -> tuple[Array, Array]:
    """Running argmax: (best logit, global index) updated with a block's (max, local argmax).

    Ties go to the lower global index, as `jnp.argmax` over the whole row would decide them.
    """
    best_logit, best_index = best
    logit, index = candidate[0], candidate[1] + offset
    better = (logit > best_logit) | ((logit == best_logit) & (index < best_index))
    return jnp.where(better, logit, best_logit), jnp.where(better, index, best_index)


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

    Examples:
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

    # --8<-- [start:itm_negatives]
    # rule out the positives: -inf never wins the Gumbel-max argmax
    negative_logits = jnp.where(positive_mask, -jnp.inf, similarity)

    # one text per image (along a row), one image per text (along a column)
    text_for_image = jax.random.categorical(rng_text, negative_logits, axis=1)
    image_for_text = jax.random.categorical(rng_image, negative_logits, axis=0)
    # --8<-- [end:itm_negatives]

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


# ------------------------------------------------------------------------------------------------
# Detection: DETR's set loss.
# ------------------------------------------------------------------------------------------------


def sigmoid_focal_loss(logits: Array, targets: Array, alpha: float = 0.25, gamma: float = 2.0) -> Array:
    """Elementwise focal loss of sigmoid logits (Lin et al., 2017), float32, same shape as logits.

    With p = σ(x), target y ∈ {0, 1}, p_t = p if y = 1 else 1 − p and α_t = α if y = 1 else 1 − α:

        FL(x, y) = −α_t (1 − p_t)^γ log p_t

    log p_t is computed from the logits (log σ(x) = −softplus(−x)), so it is finite for any x.
    Why focal: a detector's (box, query) pairs are almost all negatives, most of them easy (a
    background patch against a query absent from the image); (1 − p_t)^γ makes the ones already
    classified well contribute almost nothing, so the few positives and the hard negatives
    decide the gradient. γ = 0, α = 1/2 is half the plain binary cross-entropy.
    """
    x = logits.astype(jnp.float32)
    y = targets.astype(jnp.float32)
    p = jax.nn.sigmoid(x)
    cross_entropy = y * jax.nn.softplus(-x) + (1.0 - y) * jax.nn.softplus(x)  # −log p_t
    p_t = y * p + (1.0 - y) * (1.0 - p)
    alpha_t = y * alpha + (1.0 - y) * (1.0 - alpha)
    return alpha_t * (1.0 - p_t) ** gamma * cross_entropy


class DetectionLossWeights(NamedTuple):
    """λ of each term, the same in the matching cost and in the loss (Deformable DETR's values,
    which OWL-ViT keeps): class 2, L1 5, GIoU 2."""

    class_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def matching_cost(logits: Array, boxes: Array, target_boxes: Array, target_queries: Array,
                  weights: DetectionLossWeights = DetectionLossWeights()) -> Array:
    """The cost of assigning prediction n to true box t, [B, T, N] (float32, no gradient).

        C[t, n] = λ_cls · (FL(x_{n,q_t}, 1) − FL(x_{n,q_t}, 0))       prediction n's class score for t's query
                + λ_L1  · ‖b_n − b̂_t‖₁                                 (cx, cy, w, h)
                − λ_GIoU · GIoU(b_n, b̂_t)

    The class term is Deformable DETR's focal cost: what labelling n as t's class would save over
    labelling it background, low where n already scores t's query high.

    Args:
      logits: [B, N, Q] sigmoid logits of N predictions against each image's Q queries.
      boxes: [B, N, 4] predicted (cx, cy, w, h).
      target_boxes: [B, T, 4] true (cx, cy, w, h), padded.
      target_queries: [B, T] int, the index among the image's queries of each true box's class.
    """
    logits, boxes = jax.lax.stop_gradient(logits), jax.lax.stop_gradient(boxes)
    # x_{n, q_t}: every prediction's logit for the query of every target, [B, T, N]
    target_logits = jnp.take_along_axis(logits, target_queries[:, None, :], axis=2).swapaxes(1, 2)
    focal = functools.partial(sigmoid_focal_loss, alpha=weights.focal_alpha, gamma=weights.focal_gamma)
    class_cost = focal(target_logits, jnp.ones_like(target_logits)) - focal(target_logits, jnp.zeros_like(target_logits))
    l1_cost = jnp.sum(jnp.abs(target_boxes[:, :, None, :] - boxes[:, None, :, :]), axis=-1)
    giou = pairwise_generalized_iou(cxcywh_to_xyxy(target_boxes), cxcywh_to_xyxy(boxes))
    return weights.class_weight * class_cost + weights.l1_weight * l1_cost - weights.giou_weight * giou


def match_predictions(cost: Array, target_valid: Array) -> Array:
    """DETR's bipartite matching: for each true box, the prediction it is assigned, [B, T] int32
    (-1 for padding targets).

        σ* = argmin_σ Σ_{t valid} C[t, σ(t)]      σ injective: each prediction takes at most one box

    solved exactly per image by the Hungarian algorithm in JAX (`mmjax.linear_assignment`), inside
    the jitted step: a host callback to SciPy would stop every device at every step to wait for
    the host, and could not run on an accelerator at all. Padding targets (target_valid False)
    do not change the assignment of the real ones. No gradient flows through the assignment.
    """
    return batched_linear_sum_assignment(jax.lax.stop_gradient(cost), target_valid).row_to_col


def detection_set_loss(
    logits: Array,
    boxes: Array,
    target_boxes: Array,
    target_queries: Array,
    target_valid: Array,
    query_valid: Array | None = None,
    weights: DetectionLossWeights = DetectionLossWeights(),
) -> tuple[Array, dict[str, Array]]:
    """DETR's set loss with OWL-ViT's sigmoid classification, over a batch of images.

    Each image has N predictions (one per patch token), Q text queries and up to T true boxes,
    each labelled with the index of its class among the image's queries. First the predictions
    are matched one-to-one to the true boxes (`matching_cost`, `match_predictions`); then, with
    σ(t) the prediction matched to box t and M = max(1, number of true boxes in the batch):

        y[n, q]  = 1 if n = σ(t) and q = q_t for some box t, else 0
        L_cls    = 1/M Σ_{n, q valid} FL(x_{n,q}, y[n, q])
        L_L1     = 1/M Σ_t ‖b_σ(t) − b̂_t‖₁
        L_GIoU   = 1/M Σ_t (1 − GIoU(b_σ(t), b̂_t))
        loss     = λ_cls L_cls + λ_L1 L_L1 + λ_GIoU L_GIoU

    Unmatched predictions learn only "no query here". Normalising by the number of boxes, not of
    predictions, keeps the loss per object: a batch of emptier scenes does not weigh less.

    Args:
      logits: [B, N, Q] float, sigmoid logits.
      boxes: [B, N, 4] float, predicted (cx, cy, w, h) in [0, 1].
      target_boxes: [B, T, 4] float, true (cx, cy, w, h), padded (any value) where not valid.
      target_queries: [B, T] int in [0, Q).
      target_valid: [B, T] bool.
      query_valid: [B, Q] bool, False for padding queries (no loss), or None (all valid).
      weights: the λ and the focal loss's α, γ.

    Returns:
      (loss [], {"class_loss", "l1_loss", "giou_loss", "matched_iou"}), each [].
    """
    logits, boxes = logits.astype(jnp.float32), boxes.astype(jnp.float32)
    target_boxes = target_boxes.astype(jnp.float32)
    batch, num_predictions, num_queries = logits.shape
    valid = target_valid.astype(jnp.float32)
    num_boxes = jnp.maximum(jnp.sum(valid), 1.0)

    # --8<-- [start:set_loss]
    cost = matching_cost(logits, boxes, target_boxes, target_queries, weights)
    assigned = jnp.maximum(match_predictions(cost, target_valid), 0)  # padding targets: any index, weight 0

    # One-hot class targets at (σ(t), q_t) of every real box: [B, N, Q]
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], assigned.shape)
    targets = jnp.zeros_like(logits).at[rows, assigned, target_queries].max(valid)
    focal = sigmoid_focal_loss(logits, targets, weights.focal_alpha, weights.focal_gamma)
    if query_valid is not None:
        focal = focal * query_valid[:, None, :].astype(jnp.float32)
    class_loss = jnp.sum(focal) / num_boxes

    matched = jnp.take_along_axis(boxes, assigned[..., None], axis=1)  # [B, T, 4]
    l1_loss = jnp.sum(jnp.abs(matched - target_boxes).sum(-1) * valid) / num_boxes
    giou = elementwise_generalized_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(target_boxes))
    giou_loss = jnp.sum((1.0 - giou) * valid) / num_boxes
    loss = weights.class_weight * class_loss + weights.l1_weight * l1_loss + weights.giou_weight * giou_loss
    # --8<-- [end:set_loss]

    iou = jnp.diagonal(pairwise_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(target_boxes)), axis1=-2, axis2=-1)
    return loss, {"class_loss": class_loss, "l1_loss": l1_loss, "giou_loss": giou_loss,
                  "matched_iou": jnp.sum(iou * valid) / num_boxes}


def gradient_difference_loss(predictions: Array, targets: Array) -> Array:
    """Mean squared error of the images' finite differences along height and width [].

        GDL = mean_{b,i,j,c} (Δy x̂ − Δy x)²  +  mean_{b,i,j,c} (Δx x̂ − Δx x)²
        Δy x[b, i, j, c] = x[b, i+1, j, c] − x[b, i, j, c]      (Δx likewise along width)

    predictions, targets: [batch, height, width, channels]. Mathieu et al. 2016, "Deep multi-scale
    video prediction beyond mean square error" (their α = 2). Added to a pixel MSE it makes an
    autoencoder draw edges where the picture has them: the MSE alone is satisfied by a blur that
    spreads an edge's error over its neighbours, and on a 6-pixel shape that blur is the
    difference between a cross and a diamond; a blurred edge's differences are too small all
    along it, and this term charges for each of them.
    """
    # --8<-- [start:gradient_difference]
    predictions = predictions.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    along_height = jnp.diff(predictions, axis=1) - jnp.diff(targets, axis=1)
    along_width = jnp.diff(predictions, axis=2) - jnp.diff(targets, axis=2)
    return jnp.mean(along_height**2) + jnp.mean(along_width**2)
    # --8<-- [end:gradient_difference]
