"""COCO-style mean average precision for box detection, in NumPy, equal to pycocotools' COCOeval.

Average precision (AP) summarises how well one class is detected over all images at once:

1. Every detection of the class, from every image, is ranked by score, best first.
2. Going down the ranking, a detection is a true positive (TP) when it overlaps a ground-truth
   box of its class that no better-ranked detection has taken, by IoU >= t, and a false positive
   (FP) otherwise. After the first k detections:

       recall(k)    = TP(k) / number of ground-truth boxes
       precision(k) = TP(k) / (TP(k) + FP(k))

3. The precision-recall curve is made monotone from the right (the best precision at any recall
   at least as high), and read at the 101 recall levels r = 0, 0.01, ..., 1:

       p_interp(r) = max_{k : recall(k) >= r} precision(k)        (0 when no k reaches r)
       AP_t        = (1/101) Σ_r p_interp(r)

mAP averages AP_t over the classes that have ground truth and over ten IoU thresholds
t = 0.50, 0.55, ..., 0.95, which rewards tight boxes as well as found objects; mAP@0.5 ("map50",
the PASCAL VOC threshold) and mAP@0.75 are the same average at one threshold.

Why copy COCO's conventions to the last detail: detection papers report COCOeval's numbers, and
small choices move them by tenths of a point: the 101-point interpolation (VOC used 11 points, or
the area under the raw curve), how ties in score are ordered, which ground truth a detection takes
when several qualify, the 100-detection cap. So `coco_map` follows `COCOeval.evaluate`,
`evaluateImg`, `accumulate` and `summarize` (bbox, area range "all", maxDets 100) step for step:

- Per (image, class), detections are sorted by score with a stable sort (ties keep input order)
  and cut to the first `max_detections`. The cap is per class, not per image: an image may keep
  100 detections of every class.
- IoU is pycocotools' `bbIou` on (x, y, w, h) boxes in float64, without a "+1 pixel" term:
  w = x1 - x0, and the intersection width is min(x_A + w_A, x_B + w_B) - max(x_A, x_B), the
  same operations in the same order, so an IoU that lands on a threshold compares identically.
- Greedy matching, one IoU threshold t at a time: each detection in score order takes, among the
  ground truths not yet taken, the one with the highest IoU >= min(t, 1 - 1e-10); on a tie in IoU
  the later ground truth (in input order) wins, as COCO's scan replaces its best on equality.
- Per class, the kept detections of all images are concatenated in image order and sorted by
  score with a stable sort again; precision is TP / (TP + FP + ε), ε = np.spacing(1), and the
  101 recall levels are located with searchsorted(side="left").
- A class without ground truth has no AP (COCO marks it -1) and is left out of every mean, even
  when it has detections; detections of such a class therefore change nothing.

Not supported, because a list of (boxes, labels) does not carry them: crowd annotations and
"ignore" regions, and the small/medium/large area ranges.

Boxes may be in any units (normalised or pixels), as long as ground truth and detections agree:
IoU does not depend on the scale.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# COCO's thresholds, built as COCOeval builds them: np.arange(0.5, 0.96, 0.05) accumulates
# rounding error, and a threshold slightly above 0.75 is not 0.75.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
# The 101 recall levels of COCO's interpolated precision.
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
# COCO caps every threshold here, so that a threshold of 1 still matches an IoU of 1 that
# rounding left a hair below it.
_MAX_IOU_THRESHOLD = 1 - 1e-10


def coco_map(
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    iou_thresholds: Sequence[float] | np.ndarray = COCO_IOU_THRESHOLDS,
    max_detections: int = 100,
) -> dict[str, float | dict[int, float]]:
    """COCO box mAP, equal to COCOeval's AP, AP50 and AP75 (area "all", maxDets=100).

        AP_{c,t} = (1/101) Σ_{r ∈ {0, 0.01, ..., 1}} p_interp_{c,t}(r)
        map      = mean over classes c with ground truth and thresholds t of AP_{c,t}
        map50    = mean over c of AP_{c,0.5};   map75 = mean over c of AP_{c,0.75}

    See the module docstring for the matching and interpolation rules. map50 and map75 are
    evaluated at 0.5 and 0.75 whatever `iou_thresholds` holds; `iou_thresholds` sets only `map`.

    A perfect detector can score 1 - 2e-16 rather than 1, as in COCOeval: the precision
    TP / (TP + FP + ε) at TP = 1, FP = 0 rounds to just below 1 (at TP >= 2 it rounds to 1).

    Args:
      ground_truth: one (boxes_xyxy [n, 4] float, labels [n] int) per image.
      detections: one (boxes_xyxy [k, 4] float, labels [k] int, scores [k] float) per image, the
        same images in the same order; an image without detections is a pair of empty arrays
        and an empty scores array.
      iou_thresholds: [num_thresholds] IoU thresholds in [0, 1] averaged into `map`.
      max_detections: detections kept per image and class, the best-scored first.

    Returns:
      {"map": ..., "map50": ..., "map75": ..., "ap50_per_class": {label: AP@0.5}}, the last for
      every label that has ground truth, in ascending order.

    Raises:
      ValueError: for inputs of the wrong shape or length, boxes with x1 < x0 or y1 < y0, values
        that are not finite, or no ground-truth box at all (AP is undefined without one).

    Examples:
      >>> boxes, labels = np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([3])
      >>> result = coco_map([(boxes, labels)], [(boxes, labels, np.array([0.9]))])
      >>> round(result["map"], 12), round(result["ap50_per_class"][3], 12)
      (1.0, 1.0)
    """
    ground_truth = [_check_ground_truth(i, entry) for i, entry in enumerate(ground_truth)]
    detections = [_check_detections(i, entry) for i, entry in enumerate(detections)]
    if len(ground_truth) != len(detections):
        raise ValueError(
            f"detections must have one entry per image of ground_truth: expected {len(ground_truth)} "
            f"images, got {len(detections)}"
        )
    iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    in_range = np.all((iou_thresholds >= 0) & (iou_thresholds <= 1))
    if iou_thresholds.ndim != 1 or iou_thresholds.size == 0 or not in_range:
        raise ValueError(f"iou_thresholds must be a non-empty [num_thresholds] in [0, 1], got {iou_thresholds}")
    if int(max_detections) != max_detections or max_detections < 1:
        raise ValueError(f"max_detections must be a positive integer, got {max_detections}")
    classes = np.unique(np.concatenate([np.zeros(0, np.int64), *(labels for _, labels in ground_truth)]))
    if classes.size == 0:
        raise ValueError("ground_truth has no boxes: average precision is undefined without a ground-truth object")

    # 0.5 and 0.75 appended, so map50 and map75 exist whatever thresholds `map` averages over
    thresholds = np.concatenate([iou_thresholds, [0.5, 0.75]])
    precision = np.stack(
        [_interpolated_precision(ground_truth, detections, label, thresholds, int(max_detections))
         for label in classes],
        axis=-1,
    )  # [num_thresholds + 2, num_recall_thresholds, num_classes]
    num_thresholds = len(iou_thresholds)
    # the mean of a flattened [thresholds, recalls, classes] array, as COCOeval.summarize takes it
    return {
        "map": float(np.mean(precision[:num_thresholds].ravel())),
        "map50": float(np.mean(precision[num_thresholds].ravel())),
        "map75": float(np.mean(precision[num_thresholds + 1].ravel())),
        "ap50_per_class": {int(label): float(np.mean(precision[num_thresholds, :, k]))
                           for k, label in enumerate(classes)},
    }


# --- steps -----------------------------------------------------------------------------------------


def top1_label_accuracy(
    ground_truth: Sequence, detections: Sequence, classes: Sequence[int] | None = None, iou_threshold: float = 0.5,
) -> float | None:
    """The fraction of true objects whose best-scoring overlapping detection has their class.

    For each true box g (of a class in `classes`, if given): among the detections of any class
    with IoU(d, g) >= iou_threshold, take the one of highest score; g counts as right when its
    label is g's. No overlapping detection counts as wrong.

    Why beside AP: AP ranks each class's detections on their own, so an object whose box scores
    0.9 as "blue square" and 0.2 as "purple square" is still a true positive for the purple
    squares if nothing else scores higher as one. This asks what the detector would answer if it
    had to name each object once: confusions between classes show here, not in AP.

    Args:
      ground_truth: as in `coco_map`.
      detections: as in `coco_map`.
      classes: count only true boxes of these labels (e.g. the held-out ones); None: all.
      iou_threshold: the overlap a detection needs to be about the object.

    Returns:
      The accuracy, or None when no true box is counted.
    """
    if len(ground_truth) != len(detections):
        raise ValueError(f"detections must have one entry per image of ground_truth ({len(ground_truth)}), "
                         f"got {len(detections)}")
    right = counted = 0
    for image, (truth, found) in enumerate(zip(ground_truth, detections)):
        gt_boxes, gt_labels = _check_ground_truth(image, truth)
        det_boxes, det_labels, det_scores = _check_detections(image, found)
        iou = _coco_box_iou(det_boxes, gt_boxes) if len(det_boxes) and len(gt_boxes) else np.zeros((len(det_boxes), len(gt_boxes)))
        for g, label in enumerate(gt_labels):
            if classes is not None and label not in classes:
                continue
            counted += 1
            near = np.flatnonzero(iou[:, g] >= iou_threshold)
            if len(near):
                right += int(det_labels[near[np.argmax(det_scores[near])]] == label)
    return right / counted if counted else None


def _interpolated_precision(
    ground_truth: list[tuple[np.ndarray, np.ndarray]],
    detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    label: int,
    thresholds: np.ndarray,
    max_detections: int,
) -> np.ndarray:
    """p_interp(r) of one class at every threshold and recall level, COCOeval.accumulate's loop.

    Returns:
      [num_thresholds, 101] precision, for a class that has ground truth.
    """
    scores, matched, num_ground_truth = [np.zeros(0)], [np.zeros((len(thresholds), 0), dtype=bool)], 0
    for (gt_boxes, gt_labels), (det_boxes, det_labels, det_scores) in zip(ground_truth, detections):
        gt_boxes = gt_boxes[gt_labels == label]
        num_ground_truth += len(gt_boxes)
        is_label = det_labels == label
        if not is_label.any():
            continue  # nothing to match: the image's objects of this class are all missed
        det_boxes, det_scores = det_boxes[is_label], det_scores[is_label]
        # best score first, input order among ties, then the cap
        order = np.argsort(-det_scores, kind="mergesort")[:max_detections]
        scores.append(det_scores[order])
        matched.append(_greedy_match(_coco_box_iou(det_boxes[order], gt_boxes), thresholds))
    scores = np.concatenate(scores)
    # image order among ties, as COCO concatenates per-image results before sorting
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate(matched, axis=1)[:, order]  # [num_thresholds, num_kept_detections]

    true_positives = np.cumsum(matched, axis=1).astype(np.float64)
    false_positives = np.cumsum(~matched, axis=1).astype(np.float64)
    recall = true_positives / num_ground_truth
    precision = true_positives / (true_positives + false_positives + np.spacing(1))
    # monotone from the right: the best precision at this recall or any higher one
    precision = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)

    num_detections = matched.shape[1]
    interpolated = np.zeros((len(thresholds), len(COCO_RECALL_THRESHOLDS)))
    for t in range(len(thresholds)):
        # the first detection whose recall reaches each level; none reaches it past the end
        first = np.searchsorted(recall[t], COCO_RECALL_THRESHOLDS, side="left")
        reached = first < num_detections
        interpolated[t, reached] = precision[t, first[reached]]
    return interpolated


def _greedy_match(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Which detections are true positives, by COCOeval.evaluateImg's greedy matching.

    Detection d, in order, takes the ground truth g not yet taken with the highest iou[d, g] that
    is >= min(t, 1 - 1e-10); among equal IoUs the last such g, because COCO's scan over the ground
    truths replaces its best candidate whenever one is not worse.

    Args:
      iou: [num_detections, num_ground_truth], detections best-scored first.
      thresholds: [num_thresholds].

    Returns:
      bool [num_thresholds, num_detections].
    """
    num_detections, num_ground_truth = iou.shape
    matched = np.zeros((len(thresholds), num_detections), dtype=bool)
    if num_ground_truth == 0:
        return matched
    minimum_iou = np.minimum(thresholds, _MAX_IOU_THRESHOLD)[:, None]  # [num_thresholds, 1]
    taken = np.zeros((len(thresholds), num_ground_truth), dtype=bool)
    rows = np.arange(len(thresholds))
    for d in range(num_detections):
        candidates = np.where(~taken & (iou[d] >= minimum_iou), iou[d], -np.inf)  # [thresholds, gt]
        best = candidates.max(axis=1)
        found = best > -np.inf
        # the last index holding the best value: argmax of the reversed row finds the first
        last_best = num_ground_truth - 1 - np.argmax((candidates == best[:, None])[:, ::-1], axis=1)
        matched[found, d] = True
        taken[rows[found], last_best[found]] = True
    return matched


def _coco_box_iou(det_boxes_xyxy: np.ndarray, gt_boxes_xyxy: np.ndarray) -> np.ndarray:
    """IoU [num_detections, num_ground_truth], pycocotools' bbIou operation for operation.

    `boxes.pairwise_iou` is the same quantity, but it computes from xyxy directly and in float32;
    COCO computes from (x, y, w, h) in float64, and x0 + (x1 - x0) need not round back to x1.

        w_∩ = min(x_d + w_d, x_g + w_g) - max(x_d, x_g)      (h_∩ alike; 0 if either is <= 0)
        IoU = w_∩ h_∩ / ((w_d h_d + w_g h_g) - w_∩ h_∩)
    """
    det_xywh = _xyxy_to_xywh(det_boxes_xyxy)[:, None, :]
    gt_xywh = _xyxy_to_xywh(gt_boxes_xyxy)[None, :, :]
    dx, dy, dw, dh = np.moveaxis(det_xywh, -1, 0)
    gx, gy, gw, gh = np.moveaxis(gt_xywh, -1, 0)
    overlap_width = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    overlap_height = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    overlaps = (overlap_width > 0) & (overlap_height > 0)
    intersection = overlap_width * overlap_height
    union = dw * dh + gw * gh - intersection
    return np.where(overlaps, intersection / np.where(overlaps, union, 1), 0.0)


def _xyxy_to_xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], axis=1)


# --- input checks ----------------------------------------------------------------------------------


def _check_ground_truth(image: int, entry) -> tuple[np.ndarray, np.ndarray]:
    if len(entry) != 2:
        raise ValueError(f"ground_truth[{image}] must be (boxes_xyxy, labels): expected 2 items, got {len(entry)}")
    boxes = _check_boxes(f"ground_truth[{image}] boxes_xyxy", entry[0])
    labels = _check_labels(f"ground_truth[{image}] labels", entry[1], len(boxes))
    return boxes, labels


def _check_detections(image: int, entry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(entry) != 3:
        raise ValueError(
            f"detections[{image}] must be (boxes_xyxy, labels, scores): expected 3 items, got {len(entry)}"
        )
    boxes = _check_boxes(f"detections[{image}] boxes_xyxy", entry[0])
    labels = _check_labels(f"detections[{image}] labels", entry[1], len(boxes))
    scores = np.asarray(entry[2], dtype=np.float64)
    if scores.shape != (len(boxes),):
        raise ValueError(f"detections[{image}] scores must be [{len(boxes)}] (one per box), got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"detections[{image}] scores contain NaN")
    return boxes, labels, scores


def _check_boxes(field: str, boxes) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape in ((0,), (0, 4)):  # `[]` as well as np.zeros((0, 4))
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{field} must be [num_boxes, 4], got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{field} must be finite, got {boxes[~np.isfinite(boxes).all(axis=1)][0]}")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        index = int(np.argmax(inverted))
        raise ValueError(
            f"{field}[{index}] must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {boxes[index].tolist()}"
        )
    return boxes


def _check_labels(field: str, labels, num_boxes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size == 0:
        labels = labels.astype(np.int64)
    if labels.shape != (num_boxes,):
        raise ValueError(f"{field} must be [{num_boxes}] (one per box), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{field} must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int64)
