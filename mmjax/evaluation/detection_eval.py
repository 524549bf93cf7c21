"""Evaluating a detector: COCO mAP on a split, every class asked for by its phrase.

    for each image of the split:
        boxes [N, 4], scores [N, C] = detector(image, every class phrase)     C = 30 on shapes
        detections = the top `max_detections` (box n, class c) pairs by score (Deformable DETR's
                     and OWL-ViT's protocol: a token may propose several classes)
    mAP@[.5:.95], mAP@0.5, mAP@0.75     (`mmjax.evaluation.detection_metrics.coco_map`)

Every image is asked for all C classes, the held-out colour–shape pairs included: a detector that
fires on "a blue cross" everywhere is charged for it on every image without one. On the test
split (no held-out objects) this is the closed-vocabulary score; on `compositional_test`
(every image holds at least one held-out object) `heldout_map50` averages AP@0.5 over the
held-out classes only: objects whose phrase was never a training label. AP scores each class on
its own and forgives confusions (a purple square found as "blue square" at 0.9 and as "purple
square" at 0.2 is still a purple square found); `top1_accuracy` names each object once, by its
best-scoring overlapping detection, and counts how often that name is right.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from tqdm.auto import tqdm

from mmjax.data import shapes
from mmjax.data.detection import heldout_class_ids, query_phrase, tokenize_queries, yxyx_to_cxcywh
from mmjax.data.pipeline import iterate_in_order
from mmjax.boxes import cxcywh_to_xyxy, pairwise_iou
from mmjax.evaluation.detection_metrics import coco_map, top1_label_accuracy
from mmjax.evaluation.report import (HIT_COLOR, MISS_COLOR, _save_figure, _show_image, format_table,
                                     results_filename, write_results)

# What the run folder's picture shows: a prediction is drawn when its score is at least this.
DRAW_THRESHOLD = 0.3


def top_detections(boxes: np.ndarray, scores: np.ndarray,
                   max_detections: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections: the best (token, class) pairs by score.

    Args:
      boxes: [N, 4] (cx, cy, w, h) per token.
      scores: [N, C] per token and class.

    Returns:
      (boxes_xyxy [k, 4], labels [k], scores [k]), best first, k = min(max_detections, N·C).
    """
    flat = scores.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:max_detections]
    tokens, labels = np.divmod(order, scores.shape[1])
    return np.asarray(cxcywh_to_xyxy(boxes[tokens])), labels, flat[order]


def detect_split(task: Any, params: Any, data: Any, config: Any, split: str, show_progress: bool = True):
    """Runs the detector over `split`: images, ground truth and detections, in order."""
    class_names = shapes.class_names()
    query_ids = tokenize_queries(data.tokenizer, [query_phrase(n) for n in class_names], config.data.query_len)
    queries = task.query_embeddings(params, query_ids)
    detect = task.detect_fn(params)
    batch_size = config.eval.batch_size
    images, truth, detections = [], [], []

    def transform(example):
        return {"image": np.asarray(example["image"]), "boxes": np.asarray(example["boxes"], np.float32),
                "labels": np.asarray(example["box_labels"], np.int64)}

    source = data.split(split)
    for example in tqdm(iterate_in_order(source, transform, batch_size=None), total=len(source),
                        desc=f"detecting {split}", unit="image", disable=not show_progress, leave=False):
        images.append(example["image"])
        truth.append((np.asarray(cxcywh_to_xyxy(yxyx_to_cxcywh(example["boxes"].reshape(-1, 4)))), example["labels"]))
    for start in range(0, len(images), batch_size):
        chunk = np.stack(images[start : start + batch_size])
        pad = batch_size - len(chunk)
        if pad:  # one compiled shape: the last batch repeats its last image
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        boxes, scores = (np.asarray(x) for x in detect(chunk, queries))
        for b in range(batch_size - pad):
            detections.append(top_detections(boxes[b], scores[b], config.eval.get("max_detections", 100)))
    return np.stack(images), truth, detections


def _score(truth, detections, prefix: str = "") -> tuple[dict[str, float], dict[int, float]]:
    metrics = coco_map(truth, detections)
    heldout = [c for c in heldout_class_ids(shapes.ShapesConfig().heldout_pairs) if c in metrics["ap50_per_class"]]
    results = {f"{prefix}map50": metrics["map50"], f"{prefix}map": metrics["map"], f"{prefix}map75": metrics["map75"],
               f"{prefix}top1_accuracy": top1_label_accuracy(truth, detections)}
    if heldout:
        results[f"{prefix}heldout_map50"] = float(np.mean([metrics["ap50_per_class"][c] for c in heldout]))
        results[f"{prefix}heldout_top1_accuracy"] = top1_label_accuracy(truth, detections, heldout)
    return results, metrics["ap50_per_class"]


def evaluate_detection(task: Any, params: Any, data: Any, config: Any, split: str, return_details: bool = False):
    """mAP of the detector on `split` (and, for "test", on `compositional_test` too, with keys
    prefixed "compositional_"); with `return_details`, (results, details) for the report."""
    images, truth, detections = detect_split(task, params, data, config, split)
    results, per_class = _score(truth, detections)
    details = {"images": images[:16], "truth": truth[:16], "detections": detections[:16], "split": split,
               "ap50_per_class": per_class, "num_images": len(images)}
    if split == "test" and config.eval.get("with_compositional", True):
        c_images, c_truth, c_detections = detect_split(task, params, data, config, "compositional_test")
        more, c_per_class = _score(c_truth, c_detections, "compositional_")
        results.update(more)
        details.update(compositional_images=c_images[:16], compositional_truth=c_truth[:16],
                       compositional_detections=c_detections[:16], compositional_ap50_per_class=c_per_class)
    return (results, details) if return_details else results


def plot_detections(images: np.ndarray, truth, detections, out_png: str, threshold: float = DRAW_THRESHOLD,
                    columns: int = 4) -> str:
    """Predicted boxes with their query text on each image: green where the prediction hits a
    true box of its class (IoU >= 0.5), red where it does not; true boxes dotted white."""
    names = shapes.class_names()
    rows = -(-len(images) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.4 * rows))
    grid = figure.add_gridspec(rows, columns, left=0.01, right=0.99, top=0.99, bottom=0.01, wspace=0.04, hspace=0.12)
    for index, image in enumerate(images):
        axes = figure.add_subplot(grid[index // columns, index % columns])
        _show_image(axes, image)
        scale = axes.get_xlim()[1] - axes.get_xlim()[0]  # displayed pixels per unit of box
        true_boxes, true_labels = truth[index]
        for x0, y0, x1, y1 in true_boxes:
            axes.add_patch(Rectangle((x0 * scale, y0 * scale), (x1 - x0) * scale, (y1 - y0) * scale,
                                     fill=False, edgecolor="white", linestyle=":", linewidth=1.2))
        boxes, labels, scores = detections[index]
        keep = scores >= threshold
        iou = np.asarray(pairwise_iou(boxes[keep], true_boxes)) if len(true_boxes) else np.zeros((keep.sum(), 0))
        for (x0, y0, x1, y1), label, score, overlaps in zip(boxes[keep], labels[keep], scores[keep], iou):
            hit = bool(np.any((overlaps >= 0.5) & (true_labels == label)))
            color = HIT_COLOR if hit else MISS_COLOR
            axes.add_patch(Rectangle((x0 * scale, y0 * scale), (x1 - x0) * scale, (y1 - y0) * scale,
                                     fill=False, edgecolor=color, linewidth=2))
            axes.text(x0 * scale, y0 * scale - 2, f"{names[label]} {score:.2f}", color="white", fontsize=8,
                      va="bottom", bbox=dict(facecolor=color, alpha=0.8, pad=1, edgecolor="none"))
    return _save_figure(figure, out_png)


def write_detection_report(workdir: str, results: dict, details: dict, config: Any) -> None:
    """Prints the mAP table; writes the results file and the pictures of predicted boxes."""
    split = details["split"]
    write_results(workdir, {"split": split, **results}, results_filename(split))
    def row(name, prefix=""):
        return {"split": name, "mAP@0.5": results[f"{prefix}map50"], "mAP@[.5:.95]": results[f"{prefix}map"],
                "mAP@0.75": results[f"{prefix}map75"], "top-1 label": results[f"{prefix}top1_accuracy"],
                "held-out AP@0.5": results.get(f"{prefix}heldout_map50"),
                "held-out top-1 label": results.get(f"{prefix}heldout_top1_accuracy")}

    rows = [row(split)] + ([row("compositional_test", "compositional_")] if "compositional_map50" in results else [])
    print(format_table(rows, title=f"Detection on shapes ({details['num_images']} {split} images, every class asked)"))
    plot_detections(details["images"], details["truth"], details["detections"],
                    os.path.join(workdir, f"detections_{split}.png"))
    if "compositional_images" in details:
        plot_detections(details["compositional_images"], details["compositional_truth"],
                        details["compositional_detections"], os.path.join(workdir, "detections_compositional_test.png"))
