"""Box geometry against an explicit float64 reference (loops over pairs), hand-computed values,
degenerate boxes, and jit/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import boxes

# Compiled once per input shape: called op by op, every primitive would compile on its own, ten
# times slower in all.
box_area = jax.jit(boxes.box_area)
cxcywh_to_xyxy = jax.jit(boxes.cxcywh_to_xyxy)
xyxy_to_cxcywh = jax.jit(boxes.xyxy_to_cxcywh)
pairwise_iou = jax.jit(boxes.pairwise_iou)
pairwise_generalized_iou = jax.jit(boxes.pairwise_generalized_iou)
elementwise_generalized_iou = jax.jit(boxes.elementwise_generalized_iou)


def reference_iou_giou(box_a, box_b):
    """(IoU, GIoU) of two xyxy boxes, written out scalar by scalar in float64."""
    ax0, ay0, ax1, ay1 = (float(v) for v in box_a)
    bx0, by0, bx1, by1 = (float(v) for v in box_b)
    intersection = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - intersection
    iou = intersection / union if union > 0 else 0.0
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    giou = iou - (enclosing - union) / enclosing if enclosing > 0 else iou
    return iou, giou


def reference_pairwise(boxes_a, boxes_b):
    iou = np.zeros((len(boxes_a), len(boxes_b)))
    giou = np.zeros((len(boxes_a), len(boxes_b)))
    for n, box_a in enumerate(boxes_a):
        for m, box_b in enumerate(boxes_b):
            iou[n, m], giou[n, m] = reference_iou_giou(box_a, box_b)
    return iou, giou


def random_xyxy(rng, num_boxes):
    """Valid normalised boxes of varied size, many of them overlapping."""
    corner = rng.uniform(0, 0.7, size=(num_boxes, 2))
    size = rng.uniform(0.02, 0.5, size=(num_boxes, 2))
    return np.concatenate([corner, corner + size], axis=1)


def test_pairwise_iou_and_giou_equal_the_float64_reference_on_random_boxes():
    rng = np.random.default_rng(0)
    boxes_a, boxes_b = random_xyxy(rng, 9), random_xyxy(rng, 7)
    expected_iou, expected_giou = reference_pairwise(boxes_a, boxes_b)
    assert (expected_iou > 0).any() and (expected_iou == 0).any()  # both overlaps and disjoint pairs
    np.testing.assert_allclose(pairwise_iou(boxes_a, boxes_b), expected_iou, atol=1e-6)
    np.testing.assert_allclose(pairwise_generalized_iou(boxes_a, boxes_b), expected_giou, atol=1e-6)


def test_elementwise_giou_is_the_diagonal_of_the_pairwise_giou():
    rng = np.random.default_rng(1)
    boxes_a, boxes_b = random_xyxy(rng, 6), random_xyxy(rng, 6)
    _, expected_giou = reference_pairwise(boxes_a, boxes_b)
    np.testing.assert_allclose(elementwise_generalized_iou(boxes_a, boxes_b), np.diag(expected_giou), atol=1e-6)


def test_leading_batch_dimensions_broadcast():
    rng = np.random.default_rng(2)
    batch_a = np.stack([random_xyxy(rng, 4), random_xyxy(rng, 4)])  # [2, 4, 4]
    batch_b = np.stack([random_xyxy(rng, 3), random_xyxy(rng, 3)])  # [2, 3, 4]
    iou, giou = pairwise_iou(batch_a, batch_b), pairwise_generalized_iou(batch_a, batch_b)
    assert iou.shape == giou.shape == (2, 4, 3)
    for b in range(2):
        expected_iou, expected_giou = reference_pairwise(batch_a[b], batch_b[b])
        np.testing.assert_allclose(iou[b], expected_iou, atol=1e-6)
        np.testing.assert_allclose(giou[b], expected_giou, atol=1e-6)
    # one set of boxes against a batch: the unbatched side broadcasts
    shared = pairwise_iou(batch_a[0], batch_b)
    assert shared.shape == (2, 4, 3)
    np.testing.assert_allclose(shared[1], reference_pairwise(batch_a[0], batch_b[1])[0], atol=1e-6)
    elementwise = elementwise_generalized_iou(batch_a[:, :3], batch_b)
    assert elementwise.shape == (2, 3)


def test_hand_computed_values():
    unit = np.array([[0.0, 0.0, 1.0, 1.0]])
    # identical boxes overlap completely
    assert float(pairwise_iou(unit, unit)[0, 0]) == 1.0
    assert float(pairwise_generalized_iou(unit, unit)[0, 0]) == 1.0
    # two units apart: IoU 0, |C| = 4, |A ∪ B| = 2, so GIoU = -(4 - 2) / 4
    far = np.array([[3.0, 0.0, 4.0, 1.0]])
    assert float(pairwise_iou(unit, far)[0, 0]) == 0.0
    assert float(pairwise_generalized_iou(unit, far)[0, 0]) == -0.5
    # touching boxes: no overlap, but C is exactly the union
    touching = np.array([[1.0, 0.0, 2.0, 1.0]])
    assert float(pairwise_iou(unit, touching)[0, 0]) == 0.0
    assert float(pairwise_generalized_iou(unit, touching)[0, 0]) == 0.0
    # half overlap: |A ∩ B| = 0.5, |A ∪ B| = 1.5, C = [0, 1.5] x [0, 1] = the union
    shifted = np.array([[0.5, 0.0, 1.5, 1.0]])
    np.testing.assert_allclose(pairwise_iou(unit, shifted)[0, 0], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(pairwise_generalized_iou(unit, shifted)[0, 0], 1 / 3, rtol=1e-6)
    # a box inside another: IoU = area ratio, and C is the outer box, so GIoU = IoU
    inner = np.array([[0.25, 0.25, 0.75, 0.75]])
    assert float(pairwise_iou(inner, unit)[0, 0]) == 0.25
    assert float(pairwise_generalized_iou(inner, unit)[0, 0]) == 0.25


def test_degenerate_boxes_give_finite_values():
    point = np.array([0.5, 0.5, 0.5, 0.5])
    line = np.array([0.2, 0.5, 0.8, 0.5])
    unit = np.array([0.0, 0.0, 1.0, 1.0])
    degenerate = np.stack([point, point, line, unit, np.array([0.9, 0.9, 0.9, 0.9])])
    iou, giou = pairwise_iou(degenerate, degenerate), pairwise_generalized_iou(degenerate, degenerate)
    assert np.isfinite(iou).all() and np.isfinite(giou).all()
    expected_iou, expected_giou = reference_pairwise(degenerate, degenerate)
    np.testing.assert_allclose(iou, expected_iou, atol=1e-6)
    np.testing.assert_allclose(giou, expected_giou, atol=1e-6)
    # an empty union is IoU 0, an empty enclosing box GIoU = IoU: identical points score 0
    assert float(iou[0, 1]) == 0.0 and float(giou[0, 1]) == 0.0
    # two distinct points: empty union, but an enclosing box of positive area
    np.testing.assert_allclose(giou[0, 4], -1.0, atol=1e-6)


def test_format_conversions_and_area():
    boxes_cxcywh = np.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.0, 0.1]])
    boxes_xyxy = cxcywh_to_xyxy(boxes_cxcywh)
    np.testing.assert_allclose(boxes_xyxy, [[0.4, 0.3, 0.6, 0.7], [0.1, 0.85, 0.1, 0.95]], atol=1e-7)
    np.testing.assert_allclose(box_area(boxes_xyxy), [0.08, 0.0], atol=1e-7)
    # round trips, with any leading dimensions
    rng = np.random.default_rng(3)
    batch_xyxy = random_xyxy(rng, 12).reshape(3, 4, 4)
    assert cxcywh_to_xyxy(xyxy_to_cxcywh(batch_xyxy)).shape == (3, 4, 4)
    np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(batch_xyxy)), batch_xyxy, atol=1e-6)
    batch_cxcywh = xyxy_to_cxcywh(batch_xyxy)
    np.testing.assert_allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(batch_cxcywh)), batch_cxcywh, atol=1e-6)


def test_numpy_boxes_work_outside_jit():
    rng = np.random.default_rng(4)
    boxes_a, boxes_b = random_xyxy(rng, 3), random_xyxy(rng, 2)
    np.testing.assert_allclose(boxes.pairwise_iou(boxes_a, boxes_b), reference_pairwise(boxes_a, boxes_b)[0],
                               atol=1e-6)


def test_integer_and_bfloat16_boxes_are_computed_in_float32():
    pixels = np.array([[0, 0, 10, 10]], dtype=np.int32)
    assert pairwise_iou(pixels, pixels).dtype == jnp.float32
    assert cxcywh_to_xyxy(jnp.ones((2, 4), jnp.bfloat16)).dtype == jnp.float32


def test_a_box_without_four_coordinates_is_rejected():
    with pytest.raises(ValueError, match="4 coordinates"):
        boxes.box_area(np.zeros((3, 5)))


def test_giou_loss_jits_and_has_finite_gradients_even_for_degenerate_boxes():
    @jax.jit
    def giou_loss(predicted_cxcywh, target_cxcywh):
        return jnp.sum(1 - elementwise_generalized_iou(cxcywh_to_xyxy(predicted_cxcywh),
                                                       cxcywh_to_xyxy(target_cxcywh)))

    @jax.jit
    def mean_pairwise_iou(predicted_xyxy, target_xyxy):
        return jnp.mean(pairwise_iou(predicted_xyxy, target_xyxy))

    predicted = jnp.array([[0.5, 0.5, 0.2, 0.2],    # overlaps its target
                           [0.1, 0.1, 0.05, 0.05],  # far from its target: IoU is 0 but GIoU is not flat
                           [0.5, 0.5, 0.0, 0.0],    # a collapsed box on a collapsed target
                           [0.3, 0.3, 0.0, 0.1]])   # zero width
    target = jnp.array([[0.55, 0.5, 0.2, 0.3],
                        [0.9, 0.9, 0.05, 0.05],
                        [0.5, 0.5, 0.0, 0.0],
                        [0.3, 0.3, 0.2, 0.2]])
    loss, gradient = jax.value_and_grad(giou_loss)(predicted, target)
    assert np.isfinite(loss) and np.isfinite(gradient).all()
    # GIoU pulls the far box towards its target even though their IoU is 0
    assert float(gradient[1, 0]) < 0 and float(gradient[1, 1]) < 0
    expected = sum(1 - reference_iou_giou(a, b)[1]
                   for a, b in zip(np.asarray(cxcywh_to_xyxy(predicted)), np.asarray(cxcywh_to_xyxy(target))))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    iou_gradient = jax.grad(mean_pairwise_iou)(cxcywh_to_xyxy(predicted), cxcywh_to_xyxy(target))
    assert np.isfinite(iou_gradient).all()
