"""Detection examples from `shapes`: boxes, and the text queries a detector is asked.

Every `shapes` example carries the true box and class of each object (`boxes` [n, 4] as
normalised [y0, x0, y1, x1], `box_labels` [n] = `shapes.class_id(shape, colour)`). A class is
asked for by an object phrase, the words a caption uses for it:

    class_id(circle, red) -> "a red circle"

Training follows OWL-ViT: each image gets its own short list of queries, the phrases of the
classes it contains (positives) and phrases of classes it does not contain (negatives, drawn
from the training vocabulary), so the detector learns both to find what is asked and to find
nothing when the phrase names something absent. The training vocabulary leaves out the
held-out colour–shape pairs of the `compositional_test` split: those phrases are never seen as
a detection label, and asking for them at test time measures what open vocabulary means here.

Output of `DetectionPreprocess` (one example):

    images        uint8   [H, W, 3]
    query_ids     int32   [num_queries, query_len]   positives first in random order, then negatives
    query_valid   bool    [num_queries]              False for padding queries (too few negatives)
    boxes         float32 [max_objects, 4]           (cx, cy, w, h) in [0, 1], padded with zeros
    box_queries   int32   [max_objects]              index of each box's class among the queries
    box_valid     bool    [max_objects]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mmjax.data import shapes
from mmjax.data.tokenizer import Tokenizer


def query_phrase(class_name: str) -> str:
    """The query text of a class name: "red circle" -> "a red circle"."""
    if not class_name.strip():
        raise ValueError("a detection query is empty: name what to find, e.g. 'red circle'")
    name = class_name.strip()
    return name if name.split()[0] in ("a", "an", "the") else f"a {name}"


def heldout_class_ids(heldout_pairs: Sequence[Sequence[str]]) -> list[int]:
    """The class ids of (colour, shape) pairs held out of training, e.g. (("red", "triangle"),)."""
    return sorted(shapes.class_id(shapes.SHAPE_NAMES.index(s), shapes.COLOUR_NAMES.index(c))
                  for c, s in heldout_pairs)


def training_class_ids(heldout_pairs: Sequence[Sequence[str]]) -> list[int]:
    """Every class id but the held-out ones: the training vocabulary."""
    heldout = set(heldout_class_ids(heldout_pairs))
    return [i for i in range(len(shapes.class_names())) if i not in heldout]


def tokenize_queries(tokenizer: Tokenizer, phrases: Sequence[str], query_len: int) -> np.ndarray:
    """int32 [len(phrases), query_len]: each phrase's ids, ending with end-of-text, padded.

    A phrase longer than query_len, or with a word the tokenizer does not know, is an error that
    names it: truncating or guessing would silently ask for something else.
    """
    if not phrases:
        raise ValueError("the query list is empty: give at least one phrase, e.g. --queries 'red circle'")
    ids = np.zeros((len(phrases), query_len), np.int32)
    for row, phrase in enumerate(phrases):
        encoded = tokenizer.encode(phrase)
        if len(encoded) > query_len:
            raise ValueError(f"query {phrase!r} is {len(encoded)} tokens; config.data.query_len is {query_len}")
        unknown = tokenizer.unknown_pieces(phrase)
        if unknown:
            raise ValueError(f"query {phrase!r} has words the tokenizer does not know: {unknown}")
        ids[row, : len(encoded)] = encoded
    return ids


def yxyx_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """[n, 4] normalised [y0, x0, y1, x1] (how `shapes` stores boxes) -> [n, 4] (cx, cy, w, h)."""
    y0, x0, y1, x1 = np.moveaxis(np.asarray(boxes, np.float32), -1, 0)
    return np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def check_boxes(boxes: np.ndarray, where: str) -> None:
    """Raises ValueError naming the example if a box is not a valid normalised [y0, x0, y1, x1]."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    bad = ~((boxes >= -1e-6) & (boxes <= 1 + 1e-6)).all(axis=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        raise ValueError(f"{where}: box {boxes[np.argmax(bad)].round(4).tolist()} is not a normalised "
                         "[y0, x0, y1, x1] with 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1")


class DetectionPreprocess:
    """One `shapes` example -> image, its queries and its boxes (see the module docstring).

    Args:
      tokenizer: the dataset's tokenizer (the CLIP run's).
      class_names: the name of every class id ("red circle", ...: `shapes.class_names()`).
      train_classes: the class ids negatives are drawn from; an example with an object outside
        them is an error (it belongs to the held-out split).
      max_objects: T, the padded number of boxes.
      num_queries: Q, queries per image (positives, then negatives to fill).
      query_len: token length of a query.
      flip_probability: horizontal flips; a box's centre becomes 1 − cx, its class is unchanged.
    """

    def __init__(self, tokenizer: Tokenizer, class_names: Sequence[str], train_classes: Sequence[int],
                 max_objects: int, num_queries: int, query_len: int, flip_probability: float = 0.0):
        if num_queries < max_objects:
            raise ValueError(f"config.data.num_queries={num_queries} must be >= config.data.max_boxes={max_objects}, "
                             "or an image's own classes would not all be asked for")
        self.train_classes = np.asarray(sorted(train_classes))
        self.class_query_ids = tokenize_queries(tokenizer, [query_phrase(n) for n in class_names], query_len)
        self.max_objects, self.num_queries = max_objects, num_queries
        self.flip_probability = flip_probability

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = np.asarray(example["image"])
        labels = np.asarray(example["box_labels"], np.int64).reshape(-1)
        where = f"example {example.get('scene_key', '?')!r}"
        check_boxes(example["boxes"], where)
        if len(labels) > self.max_objects:
            raise ValueError(f"{where} has {len(labels)} objects; config.data.max_boxes is {self.max_objects}")
        if not np.isin(labels, self.train_classes).all():
            raise ValueError(f"{where} has a class outside the training vocabulary "
                             f"({sorted(set(labels) - set(self.train_classes))}): is it from the held-out split?")
        boxes = yxyx_to_cxcywh(np.asarray(example["boxes"]).reshape(-1, 4))
        if rng.random() < self.flip_probability:
            image = image[:, ::-1]
            boxes[:, 0] = 1.0 - boxes[:, 0]

        present = rng.permutation(np.unique(labels))
        absent = rng.permutation(np.setdiff1d(self.train_classes, present))
        classes = np.concatenate([present, absent])[: self.num_queries]
        query_valid = np.zeros(self.num_queries, bool)
        query_valid[: len(classes)] = True
        query_classes = np.zeros(self.num_queries, np.int64)
        query_classes[: len(classes)] = classes

        num = len(labels)
        padded_boxes = np.zeros((self.max_objects, 4), np.float32)
        padded_boxes[:num] = boxes
        box_queries = np.zeros(self.max_objects, np.int32)
        box_queries[:num] = [int(np.flatnonzero(classes == label)[0]) for label in labels]
        box_valid = np.arange(self.max_objects) < num
        return {
            "images": np.ascontiguousarray(image),
            "query_ids": self.class_query_ids[query_classes],
            "query_valid": query_valid,
            "boxes": padded_boxes,
            "box_queries": box_queries,
            "box_valid": box_valid,
        }
