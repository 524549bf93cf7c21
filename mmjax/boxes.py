"""Bounding-box geometry in jax.numpy: format conversion, area, IoU and generalized IoU.

The same functions serve two callers: the DETR set loss, which evaluates them under `jax.jit` and
differentiates through them, and host-side evaluation, which passes NumPy arrays (the result is
then a jax array; float32 unless 64-bit mode is on). Every function broadcasts over leading
dimensions and keeps the four coordinates in the last one.

Boxes are normalised to the image (coordinates in [0, 1]), in one of two formats:

    cxcywh   (centre x, centre y, width, height)   what DETR predicts: a sigmoid per coordinate
    xyxy     (x0, y0, x1, y1), x0 <= x1, y0 <= y1  what the IoU formulas need

The overlap measures, for boxes A and B (Rezatofighi et al., 2019, "Generalized Intersection over
Union"):

    |A ∩ B| = max(0, min(x1_A, x1_B) - max(x0_A, x0_B)) · max(0, min(y1_A, y1_B) - max(y0_A, y0_B))
    |A ∪ B| = |A| + |B| - |A ∩ B|
    IoU     = |A ∩ B| / |A ∪ B|                                               in [0, 1]
    C       = the smallest box enclosing A and B
    GIoU    = IoU - (|C| - |A ∪ B|) / |C|                                     in (-1, 1]

IoU is 0 for every pair of disjoint boxes, far apart or touching, so it gives a regression loss
no gradient there; GIoU keeps falling as the boxes move apart (towards -1), which is why DETR's
box loss is 1 - GIoU.

Degenerate boxes (zero width or height, as a prediction can collapse to) never give NaN: an empty
union gives IoU = 0 (so two identical points have IoU 0, not 1), and an empty enclosing box gives
GIoU = IoU. The divisions are guarded on both sides of the `where`, so the gradient is finite too.
Boxes with x1 < x0 or y1 < y0 are not checked (a jitted function cannot raise); their areas come
out negative and the results mean nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Array = jax.Array


def cxcywh_to_xyxy(boxes: ArrayLike) -> Array:
    """(cx, cy, w, h) -> (cx - w/2, cy - h/2, cx + w/2, cy + h/2).

    Args:
      boxes: [..., 4] in cxcywh.

    Returns:
      [..., 4] in xyxy, in at least float32.
    """
    centre_x, centre_y, width, height = _unstack(boxes)
    return jnp.stack(
        [centre_x - 0.5 * width, centre_y - 0.5 * height, centre_x + 0.5 * width, centre_y + 0.5 * height],
        axis=-1,
    )


def xyxy_to_cxcywh(boxes: ArrayLike) -> Array:
    """(x0, y0, x1, y1) -> ((x0 + x1)/2, (y0 + y1)/2, x1 - x0, y1 - y0).

    Args:
      boxes: [..., 4] in xyxy.

    Returns:
      [..., 4] in cxcywh, in at least float32.
    """
    x0, y0, x1, y1 = _unstack(boxes)
    return jnp.stack([0.5 * (x0 + x1), 0.5 * (y0 + y1), x1 - x0, y1 - y0], axis=-1)


def box_area(boxes_xyxy: ArrayLike) -> Array:
    """|A| = (x1 - x0) · (y1 - y0).

    Args:
      boxes_xyxy: [..., 4] in xyxy.

    Returns:
      [...], in at least float32.
    """
    x0, y0, x1, y1 = _unstack(boxes_xyxy)
    return (x1 - x0) * (y1 - y0)


def pairwise_iou(boxes_a: ArrayLike, boxes_b: ArrayLike) -> Array:
    """IoU of every box of `boxes_a` with every box of `boxes_b`: IoU_nm = |A_n ∩ B_m| / |A_n ∪ B_m|.

    An empty union gives 0 (see the module docstring).

    Args:
      boxes_a: [..., num_a, 4] in xyxy.
      boxes_b: [..., num_b, 4] in xyxy; the leading dimensions broadcast against those of boxes_a,
        so a batch of images [batch, num_a, 4] × [batch, num_b, 4] gives [batch, num_a, num_b].

    Returns:
      [..., num_a, num_b], in [0, 1].
    """
    iou, _, _ = _iou_and_union(boxes_a[..., :, None, :], boxes_b[..., None, :, :])
    return iou


def pairwise_generalized_iou(boxes_a: ArrayLike, boxes_b: ArrayLike) -> Array:
    """GIoU of every box of `boxes_a` with every box of `boxes_b` (Rezatofighi et al., 2019).

        GIoU_nm = IoU_nm - (|C_nm| - |A_n ∪ B_m|) / |C_nm|,   C_nm the smallest box enclosing A_n and B_m

    This is the matching cost of DETR's Hungarian matcher (as -GIoU). An empty enclosing box gives
    GIoU = IoU (see the module docstring).

    Args:
      boxes_a: [..., num_a, 4] in xyxy.
      boxes_b: [..., num_b, 4] in xyxy; leading dimensions broadcast as in `pairwise_iou`.

    Returns:
      [..., num_a, num_b], in (-1, 1].
    """
    return elementwise_generalized_iou(boxes_a[..., :, None, :], boxes_b[..., None, :, :])


def elementwise_generalized_iou(boxes_a: ArrayLike, boxes_b: ArrayLike) -> Array:
    """GIoU of matched pairs: GIoU_i = IoU(A_i, B_i) - (|C_i| - |A_i ∪ B_i|) / |C_i|.

    DETR's box loss, 1 - GIoU, over the (prediction, target) pairs the matcher chose.

    Args:
      boxes_a: [..., 4] in xyxy.
      boxes_b: [..., 4] in xyxy; broadcasts against boxes_a.

    Returns:
      [...], the broadcast leading shape, in (-1, 1].

    Examples:
      Two unit squares two units apart: IoU = 0, |C| = 4, |A ∪ B| = 2.

      >>> float(elementwise_generalized_iou(jnp.array([0., 0., 1., 1.]), jnp.array([3., 0., 4., 1.])))
      -0.5
    """
    iou, union, (a_x0, a_y0, a_x1, a_y1, b_x0, b_y0, b_x1, b_y1) = _iou_and_union(boxes_a, boxes_b)
    # the smallest box enclosing both
    enclosing_width = jnp.maximum(a_x1, b_x1) - jnp.minimum(a_x0, b_x0)
    enclosing_height = jnp.maximum(a_y1, b_y1) - jnp.minimum(a_y0, b_y0)
    enclosing_area = enclosing_width * enclosing_height
    has_enclosing = enclosing_area > 0
    return jnp.where(has_enclosing, iou - (enclosing_area - union) / _safe(enclosing_area, has_enclosing), iou)


# --- helpers ---------------------------------------------------------------------------------------


def _iou_and_union(boxes_a: ArrayLike, boxes_b: ArrayLike) -> tuple[Array, Array, tuple[Array, ...]]:
    """(IoU, |A ∪ B|, the eight coordinates) of broadcast pairs [..., 4] × [..., 4]."""
    a_x0, a_y0, a_x1, a_y1 = _unstack(boxes_a)
    b_x0, b_y0, b_x1, b_y1 = _unstack(boxes_b)
    # disjoint boxes have a negative overlap along some axis, which is no intersection
    overlap_width = jnp.maximum(jnp.minimum(a_x1, b_x1) - jnp.maximum(a_x0, b_x0), 0)
    overlap_height = jnp.maximum(jnp.minimum(a_y1, b_y1) - jnp.maximum(a_y0, b_y0), 0)
    intersection = overlap_width * overlap_height
    union = (a_x1 - a_x0) * (a_y1 - a_y0) + (b_x1 - b_x0) * (b_y1 - b_y0) - intersection
    has_union = union > 0
    iou = jnp.where(has_union, intersection / _safe(union, has_union), 0)
    return iou, union, (a_x0, a_y0, a_x1, a_y1, b_x0, b_y0, b_x1, b_y1)


def _safe(denominator: Array, is_positive: Array) -> Array:
    """The denominator where it is positive, 1 elsewhere.

    `where(ok, x / d, 0)` alone still differentiates x / d at d = 0 for the unused branch, and
    0 · inf there is a NaN gradient; dividing by 1 instead keeps both branches finite.
    """
    return jnp.where(is_positive, denominator, 1)


def _unstack(boxes: ArrayLike) -> tuple[Array, Array, Array, Array]:
    """The four coordinates [...] of boxes [..., 4], promoted to at least float32.

    Integer (pixel) boxes and bfloat16 predictions are both computed in float32: a bfloat16
    difference of two coordinates near 1 keeps only about two decimal digits.
    """
    boxes = jnp.asarray(boxes)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have 4 coordinates in the last dimension, got shape {boxes.shape}")
    boxes = boxes.astype(jnp.promote_types(boxes.dtype, jnp.float32))
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
