"""COCO mAP against pycocotools' COCOeval on the same inputs, hand cases, and input validation."""

import contextlib
import io

import numpy as np
import pytest

from mmjax.evaluation.detection_metrics import coco_map


def coco_eval(ground_truth, detections, max_detections=None):
    """COCOeval (bbox) on in-memory inputs: (stats, precision [T, R, K] of area "all").

    With max_detections=None the default parameters run, summarize() included; otherwise maxDets
    is [max_detections] and stats is None. Detections go to loadRes in image order and input order
    within an image, ground truths get ids from 1 (COCO reads a matched id of 0 as "no match").
    """
    coco_module = pytest.importorskip("pycocotools.coco")
    cocoeval_module = pytest.importorskip("pycocotools.cocoeval")
    images, annotations, results, labels = [], [], [], set()
    for image_id, ((gt_boxes, gt_labels), (det_boxes, det_labels, det_scores)) in enumerate(
        zip(ground_truth, detections), start=1
    ):
        images.append({"id": image_id})
        for box, label in zip(gt_boxes, gt_labels):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
            labels.add(int(label))
        for box, label, score in zip(det_boxes, det_labels, det_scores):
            x0, y0, x1, y1 = (float(v) for v in box)
            results.append({"image_id": image_id, "category_id": int(label),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
            labels.add(int(label))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_module.COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": label} for label in sorted(labels)]}
        gt.createIndex()
        evaluator = cocoeval_module.COCOeval(gt, gt.loadRes(results), "bbox")
        if max_detections is not None:
            evaluator.params.maxDets = [max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        stats = None
        if max_detections is None:
            evaluator.summarize()
            stats = evaluator.stats
    maximum_detections_index = len(evaluator.params.maxDets) - 1
    return stats, evaluator.eval["precision"][:, :, :, 0, maximum_detections_index], evaluator.params


def coco_summary(precision, params):
    """map, map50, map75 and per-class AP@0.5 from COCOeval's precision, as summarize() takes them."""
    def mean_of_valid(values):
        return float(np.mean(values[values > -1]))

    categories = params.catIds
    at_50 = precision[params.iouThrs == 0.5]
    return {
        "map": mean_of_valid(precision),
        "map50": mean_of_valid(at_50),
        "map75": mean_of_valid(precision[params.iouThrs == 0.75]),
        "ap50_per_class": {int(c): float(np.mean(at_50[0, :, k])) for k, c in enumerate(categories)
                           if (at_50[0, :, k] > -1).all()},
    }


def random_case(rng, num_images=8, num_classes=5, max_per_image=100):
    """Jittered copies of the ground truth (a range of IoUs), duplicates, wrong labels, false
    positives and scores with ties; image 0 has no ground truth, class 3 no detection, class 5
    only detections."""
    ground_truth, detections = [], []
    for image in range(num_images):
        num_gt = 0 if image == 0 else int(rng.integers(1, 7))
        corner = rng.uniform(0, 0.6, size=(num_gt, 2))
        gt_boxes = np.concatenate([corner, corner + rng.uniform(0.05, 0.4, size=(num_gt, 2))], axis=1)
        gt_labels = rng.integers(0, num_classes, num_gt)
        ground_truth.append((gt_boxes, gt_labels))

        copies = rng.integers(0, num_gt, int(rng.integers(num_gt, 3 * num_gt + 1))) if num_gt else np.zeros(0, int)
        size = gt_boxes[copies, 2:] - gt_boxes[copies, :2]
        centre = 0.5 * (gt_boxes[copies, :2] + gt_boxes[copies, 2:]) + rng.normal(0, 0.1, size.shape) * size
        size = size * np.exp(rng.normal(0, 0.15, size.shape))
        jittered = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        copy_labels = np.where(rng.random(len(copies)) < 0.15, rng.integers(0, num_classes + 1, len(copies)),
                               gt_labels[copies])
        num_false = int(rng.integers(0, 5))
        corner = rng.uniform(0, 0.8, size=(num_false, 2))
        false_boxes = np.concatenate([corner, corner + rng.uniform(0.02, 0.2, size=(num_false, 2))], axis=1)
        det_boxes = np.concatenate([jittered, false_boxes]).reshape(-1, 4)
        det_labels = np.concatenate([copy_labels, rng.integers(0, num_classes + 1, num_false)])
        det_labels = np.where(det_labels == 3, 4, det_labels)
        scores = np.round(rng.random(len(det_boxes)), 1)  # ties, within and across images
        order = rng.permutation(len(det_boxes))[:max_per_image]
        detections.append((det_boxes[order], det_labels[order].astype(np.int64), scores[order]))
    return ground_truth, detections


def assert_equal_to_coco(result, reference):
    for key in ("map", "map50", "map75"):
        assert abs(result[key] - reference[key]) < 1e-12, (key, result[key], reference[key])
    assert result["ap50_per_class"].keys() == reference["ap50_per_class"].keys()
    for label, ap in reference["ap50_per_class"].items():
        assert abs(result["ap50_per_class"][label] - ap) < 1e-12, (label, result["ap50_per_class"][label], ap)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_cocoeval_summarize_on_random_detections(seed):
    ground_truth, detections = random_case(np.random.default_rng(seed))
    stats, precision, params = coco_eval(ground_truth, detections)
    result = coco_map(ground_truth, detections)
    assert abs(result["map"] - stats[0]) < 1e-12
    assert abs(result["map50"] - stats[1]) < 1e-12
    assert abs(result["map75"] - stats[2]) < 1e-12
    assert_equal_to_coco(result, coco_summary(precision, params))
    # the case is not trivial: some matches at 0.5 fail at 0.75, and not all is found
    assert 0 < result["map"] < result["map50"] < 1 and result["map75"] < result["map50"]
    assert 3 not in result["ap50_per_class"] or result["ap50_per_class"][3] == 0.0
    assert 5 not in result["ap50_per_class"]


def test_equals_cocoeval_in_pixel_units_and_with_a_detection_cap():
    rng = np.random.default_rng(3)
    ground_truth, detections = random_case(rng, num_images=5, num_classes=3)
    # pixel coordinates: a scale changes no IoU, but COCO's arithmetic sees other floats
    scale = np.array([640.0, 480.0, 640.0, 480.0])
    ground_truth = [(boxes * scale, labels) for boxes, labels in ground_truth]
    detections = [(boxes * scale, labels, scores) for boxes, labels, scores in detections]
    for max_detections in (100, 3):
        _, precision, params = coco_eval(ground_truth, detections, max_detections=max_detections)
        assert_equal_to_coco(coco_map(ground_truth, detections, max_detections=max_detections),
                             coco_summary(precision, params))
    capped = coco_map(ground_truth, detections, max_detections=3)
    assert capped["map50"] != coco_map(ground_truth, detections)["map50"]


def perfect_case():
    boxes = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8], [0.2, 0.6, 0.3, 0.9]])
    labels = np.array([0, 1, 0])
    ground_truth = [(boxes, labels), (boxes[:1], labels[:1])]
    detections = [(boxes, labels, np.array([0.9, 0.8, 0.7])), (boxes[:1], labels[:1], np.array([0.5]))]
    return ground_truth, detections


def test_perfect_detections_score_one():
    ground_truth, detections = perfect_case()
    result = coco_map(ground_truth, detections)
    for key in ("map", "map50", "map75"):
        assert result[key] == pytest.approx(1.0, abs=1e-15)
    assert result["ap50_per_class"] == pytest.approx({0: 1.0, 1: 1.0}, abs=1e-15)
    # a threshold of 1 is read as 1 - 1e-10, so an IoU rounded just below 1 still matches
    nearly = [(np.array([[0.0, 0.0, 1.0, 1.0 - 1e-12]]), np.array([0]))]
    exact = [(np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([0]), np.array([0.9]))]
    assert coco_map(nearly, exact, iou_thresholds=[1.0])["map"] == pytest.approx(1.0, abs=1e-15)


def test_perfect_detections_score_what_cocoeval_scores_to_the_last_bit():
    ground_truth, detections = perfect_case()
    # COCO's precision TP / (TP + FP + ε) is 1 / (1 + ε) < 1 at TP = 1 (but 2 / (2 + ε) rounds
    # to 1), so a class with a single object scores 1 - 2e-16
    single = ([ground_truth[1]], [detections[1]])
    for case in ((ground_truth, detections), single):
        stats, _, _ = coco_eval(*case)
        result = coco_map(*case)
        assert (result["map"], result["map50"], result["map75"]) == tuple(stats[:3])
    assert coco_map(*single)["map"] < 1.0


def test_a_detection_of_the_wrong_class_scores_zero():
    boxes = np.array([[0.1, 0.1, 0.4, 0.5]])
    result = coco_map([(boxes, np.array([1]))], [(boxes, np.array([2]), np.array([0.9]))])
    assert result == {"map": 0.0, "map50": 0.0, "map75": 0.0, "ap50_per_class": {1: 0.0}}


def test_a_detection_takes_the_later_ground_truth_on_a_tie_in_iou():
    # detection A overlaps both ground truths by IoU 9/11; B overlaps only the first enough.
    # COCO's scan gives A the second, so B can take the first: two true positives.
    ground_truth = [(np.array([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]]), np.array([0, 0]))]
    detections = [(np.array([[1.0, 0.0, 11.0, 10.0], [-2.0, 0.0, 8.0, 10.0]]), np.array([0, 0]),
                   np.array([0.9, 0.8]))]
    result = coco_map(ground_truth, detections)
    assert result["map50"] == pytest.approx(1.0, abs=1e-15)
    stats, _, _ = coco_eval(ground_truth, detections)
    assert abs(result["map"] - stats[0]) < 1e-12 and abs(result["map50"] - stats[1]) < 1e-12


def test_an_iou_on_the_threshold_compares_as_in_cocos_arithmetic():
    # half of the ground truth in pixels: IoU is exactly 0.5, and >= 0.5 matches
    ground_truth = [(np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([0]))]
    detections = [(np.array([[0.0, 0.0, 10.0, 5.0]]), np.array([0]), np.array([0.9]))]
    assert coco_map(ground_truth, detections)["map50"] == pytest.approx(1.0, abs=1e-15)
    # IoU 0.5 in exact arithmetic; from (x, y, w, h) as COCO computes it, it is 0.4999999999999998,
    # while min/max of the xyxy corners directly would give 0.5000000000000001 and a match
    ground_truth = [(np.array([[0.42, 0.2, 0.76, 0.83]]), np.array([0]))]
    detections = [(np.array([[0.35, 0.32, 0.95, 0.83]]), np.array([0]), np.array([0.9]))]
    result = coco_map(ground_truth, detections)
    assert result["map50"] == 0.0
    stats, _, _ = coco_eval(ground_truth, detections)
    assert result["map50"] == stats[1] and result["map"] == stats[0]


def test_images_without_detections_and_empty_arrays():
    boxes = np.array([[0.1, 0.1, 0.4, 0.5]])
    ground_truth = [(boxes, np.array([0])), (boxes, np.array([0])), (np.zeros((0, 4)), [])]
    detections = [(boxes, np.array([0]), np.array([0.9])), ([], [], []), ([], [], [])]
    result = coco_map(ground_truth, detections)
    # one of two objects found, the first ranked: precision 1 up to recall 0.5, 51 of 101 levels
    assert result["map50"] == pytest.approx(51 / 101, abs=1e-15)


@pytest.mark.parametrize("ground_truth, detections, message", [
    ([(np.zeros((2, 4)), np.array([0]))], [(np.zeros((0, 4)), [], [])],
     r"ground_truth\[0\] labels must be \[2\] \(one per box\), got shape \(1,\)"),
    ([(np.zeros((1, 4)), np.array([0]))], [(np.zeros((1, 4)), np.array([0]), np.array([0.5, 0.4]))],
     r"detections\[0\] scores must be \[1\] \(one per box\), got shape \(2,\)"),
    ([(np.zeros((1, 4)), np.array([0]))], [(np.zeros((1, 4)), np.array([0, 1]), np.array([0.5]))],
     r"detections\[0\] labels must be \[1\]"),
    ([(np.zeros((1, 4)), np.array([0]))], [(np.array([[0.5, 0.1, 0.4, 0.2]]), np.array([0]), np.array([0.5]))],
     r"detections\[0\] boxes_xyxy\[0\] must be \(x0, y0, x1, y1\) with x0 <= x1 and y0 <= y1, "
     r"got \[0.5, 0.1, 0.4, 0.2\]"),
    ([(np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.5, 1.0, 0.4]]), np.array([0, 0]))], [(np.zeros((0, 4)), [], [])],
     r"ground_truth\[0\] boxes_xyxy\[1\] must be \(x0, y0, x1, y1\)"),
    ([(np.zeros((1, 4)), np.array([0]))], [],
     r"detections must have one entry per image of ground_truth: expected 1 images, got 0"),
    ([(np.zeros((1, 3)), np.array([0]))], [(np.zeros((0, 4)), [], [])],
     r"ground_truth\[0\] boxes_xyxy must be \[num_boxes, 4\], got shape \(1, 3\)"),
    ([(np.zeros((1, 4)), np.array([0.5]))], [(np.zeros((0, 4)), [], [])],
     r"ground_truth\[0\] labels must be integers, got dtype float64"),
    ([(np.zeros((1, 4)), np.array([0]))], [(np.zeros((1, 4)), np.array([0]))],
     r"detections\[0\] must be \(boxes_xyxy, labels, scores\): expected 3 items, got 2"),
    ([(np.zeros((0, 4)), [])], [(np.zeros((0, 4)), [], [])],
     r"ground_truth has no boxes"),
    ([], [], r"ground_truth has no boxes"),
    ([(np.array([[0.0, 0.0, np.nan, 1.0]]), np.array([0]))], [(np.zeros((0, 4)), [], [])],
     r"ground_truth\[0\] boxes_xyxy must be finite"),
    ([(np.zeros((1, 4)), np.array([0]))], [(np.zeros((1, 4)), np.array([0]), np.array([np.nan]))],
     r"detections\[0\] scores contain NaN"),
])
def test_invalid_input_is_rejected_with_the_field_and_the_values(ground_truth, detections, message):
    with pytest.raises(ValueError, match=message):
        coco_map(ground_truth, detections)


def test_invalid_parameters_are_rejected():
    ground_truth = [(np.zeros((1, 4)), np.array([0]))]
    detections = [(np.zeros((0, 4)), [], [])]
    with pytest.raises(ValueError, match="max_detections must be a positive integer, got 0"):
        coco_map(ground_truth, detections, max_detections=0)
    with pytest.raises(ValueError, match="iou_thresholds"):
        coco_map(ground_truth, detections, iou_thresholds=[0.5, 1.5])


def test_top1_label_accuracy_names_each_object_once():
    """AP forgives a confusion that the top-1 label does not: the purple square (label 1) is
    found as label 0 at 0.9 and as label 1 at 0.2."""
    from mmjax.evaluation.detection_metrics import top1_label_accuracy

    truth = [(np.array([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]]), np.array([1, 2]))]
    found = [(np.array([[0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.31, 0.3], [0.6, 0.6, 0.9, 0.9], [0.0, 0.0, 0.05, 0.05]]),
              np.array([0, 1, 2, 3]), np.array([0.9, 0.2, 0.8, 0.95]))]
    assert coco_map(truth, found)["ap50_per_class"][1] == pytest.approx(1.0)
    assert top1_label_accuracy(truth, found) == 0.5
    assert top1_label_accuracy(truth, found, classes=[2]) == 1.0
    assert top1_label_accuracy(truth, found, classes=[7]) is None
    # An object no detection overlaps is named wrongly.
    assert top1_label_accuracy(truth, [(found[0][0][:1], found[0][1][:1], found[0][2][:1])]) == 0.0
