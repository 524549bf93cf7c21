"""Find what a text names in your images, with boxes: a trained detector from the command line.

    python -m mmjax.detect --checkpoint runs/detection_tiny --config configs/detection_tiny.py \
        --images photos/ --queries "red circle,blue square" [--threshold 0.3] [--output boxes/]

Every image of the folder is resized and centre-cropped to the model's input size, and every
query phrase ("red circle" is asked as "a red circle") is embedded by the run's text tower. Each
patch token proposes one box and scores it against every query; the boxes scoring at least
`--threshold` are printed (query, score, box in pixels of the original image as x0, y0, x1, y1)
and drawn into `<output>/<image name>.png`.
"""

from __future__ import annotations

import os
import types
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from mmjax.data.detection import query_phrase, tokenize_queries
from mmjax.boxes import cxcywh_to_xyxy
from mmjax.evaluation.report import HIT_COLOR, _save_figure
from mmjax.interop.preprocess import ImagePreprocessing, load_image
from mmjax.zero_shot import list_images


def parse_queries(text: str) -> list[str]:
    """"red circle, blue square" -> ["red circle", "blue square"]; an empty list is an error."""
    queries = [q.strip() for q in text.split(",") if q.strip()]
    if not queries:
        raise ValueError(f"--queries {text!r} names nothing to find: pass e.g. --queries 'red circle,blue square'")
    return queries


def detect_images(task, params, tokenizer, config, paths: Sequence[str], queries: Sequence[str],
                  threshold: float) -> list[dict]:
    """For each image: its size and the detections scoring >= threshold, best first, as
    {"query", "score", "box": [x0, y0, x1, y1] in the original image's pixels}."""
    query_ids = tokenize_queries(tokenizer, [query_phrase(q) for q in queries], config.data.query_len)
    embeddings = task.query_embeddings(params, query_ids)
    detect = task.detect_fn(params)
    crop = ImagePreprocessing(image_size=config.data.image_size)
    results = []
    for path in paths:
        image = load_image(path)
        pixels = crop.resize_and_crop(image)
        boxes, scores = (np.asarray(x)[0] for x in detect(pixels[None], embeddings))
        # The crop is the centred square of side min(width, height), resized: map back to the image.
        side = min(image.size)
        left, top = (image.size[0] - side) / 2, (image.size[1] - side) / 2
        xyxy = np.asarray(cxcywh_to_xyxy(boxes)) * side + np.array([left, top, left, top])
        tokens, classes = np.nonzero(scores >= threshold)
        order = np.argsort(-scores[tokens, classes], kind="stable")
        found = [{"query": queries[classes[i]], "score": float(scores[tokens[i], classes[i]]),
                  "box": [round(float(v), 1) for v in xyxy[tokens[i]]]} for i in order]
        results.append({"image": path, "size": list(image.size), "detections": found})
    return results


def draw(path: str, detections: Sequence[dict], out_png: str) -> str:
    image = np.asarray(load_image(path))
    height, width = image.shape[:2]
    figure = Figure(figsize=(6, 6 * height / width))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(image)
    axes.set_axis_off()
    for d in detections:
        x0, y0, x1, y1 = d["box"]
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=HIT_COLOR, linewidth=2))
        axes.text(x0, y0, f"{d['query']} {d['score']:.2f}", color="white", fontsize=9, va="bottom",
                  bbox=dict(facecolor=HIT_COLOR, alpha=0.8, pad=1, edgecolor="none"))
    return _save_figure(figure, out_png)


def main(argv: Sequence[str]) -> None:
    from mmjax.training.user_errors import command_main

    command_main(list(argv), lambda: _run(_FLAGS))


def _run(flags: types.SimpleNamespace) -> None:
    from mmjax.training.evaluate import load_run
    from mmjax.training.library_logs import route_library_logs

    route_library_logs("detect")
    queries = parse_queries(flags.queries.value)
    paths = list_images(flags.images.value)
    config = flags.config.value
    if config is None:
        raise ValueError("pass --config, the config file the run was trained with")
    task, params, step, tokenizer = load_run(flags.checkpoint.value, config)
    if not hasattr(task, "detect_fn"):
        raise ValueError(f"the task of this config ({type(task).__name__}) is not a detector")
    results = detect_images(task, params, tokenizer, config, paths, queries, flags.threshold.value)
    if flags.output.value:
        os.makedirs(flags.output.value, exist_ok=True)
    for result in results:
        print(f"{os.path.basename(result['image'])} ({result['size'][0]}x{result['size'][1]}): "
              f"{len(result['detections'])} box{'es' if len(result['detections']) != 1 else ''} with score >= "
              f"{flags.threshold.value}")
        for d in result["detections"]:
            print(f"  {d['score']:.3f}  {d['query']:<24s} {d['box']}")
        if flags.output.value:
            name = os.path.splitext(os.path.basename(result["image"]))[0] + ".png"
            draw(result["image"], result["detections"], os.path.join(flags.output.value, name))
    if flags.output.value:
        print(f"Pictures in {flags.output.value}/ (step {step} of {flags.checkpoint.value}).")


def _define_flags() -> types.SimpleNamespace:
    from absl import flags
    from ml_collections import config_flags

    return types.SimpleNamespace(
        checkpoint=flags.DEFINE_string("checkpoint", None, "A detection run folder.", required=True),
        config=config_flags.DEFINE_config_file("config", None, "The config file the run was trained with."),
        images=flags.DEFINE_string("images", None, "Folder of images.", required=True),
        queries=flags.DEFINE_string("queries", None, "Comma-separated phrases to find.", required=True),
        threshold=flags.DEFINE_float("threshold", 0.3, "Print and draw boxes scoring at least this."),
        output=flags.DEFINE_string("output", "detections", "Folder for the pictures ('' for none)."),
    )


if __name__ == "__main__":
    from absl import app

    _FLAGS = _define_flags()
    app.run(main)
