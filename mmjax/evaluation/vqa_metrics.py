"""VQA accuracy, overall and per question type.

VQA is scored as classification here: the model picks one answer from a fixed vocabulary and is
right when it is the (single, unambiguous) true answer of the `shapes` question:

    accuracy       = 1/N Σ_i [ŷ_i = y_i]
    accuracy(t)    = 1/N_t Σ_{i: type_i = t} [ŷ_i = y_i]          for each question type t

(The VQAv2 metric, min(#humans who gave the answer / 3, 1) averaged over annotator subsets, reduces
to this when every question has one answer given by all annotators, as here.) An answer outside
the vocabulary has index 0 ("<unk>") and is always wrong, even when the model predicts index 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def vqa_accuracy(
    predictions: np.ndarray,
    answers: np.ndarray,
    question_types: np.ndarray,
    type_names: Sequence[str],
    unknown_index: int = 0,
) -> dict[str, float]:
    """Accuracy overall and per type.

    Args:
      predictions: int [N], predicted answer indices.
      answers: int [N], true answer indices (`unknown_index` when the answer is not in the vocabulary).
      question_types: int [N], indices into `type_names`.
      type_names: the name of each question type.

    Returns:
      {"accuracy": ..., "accuracy/<type>": ... for every type present, "unknown_answers": fraction}.
    """
    predictions, answers, question_types = (np.asarray(a) for a in (predictions, answers, question_types))
    if not (predictions.shape == answers.shape == question_types.shape) or predictions.ndim != 1:
        raise ValueError(
            f"predictions, answers and question_types must be equal-length 1-D arrays; got shapes "
            f"{predictions.shape}, {answers.shape}, {question_types.shape}"
        )
    if len(predictions) == 0:
        raise ValueError("vqa_accuracy needs at least one question")
    correct = (predictions == answers) & (answers != unknown_index)
    results = {"accuracy": float(correct.mean()), "unknown_answers": float((answers == unknown_index).mean())}
    for index, name in enumerate(type_names):
        of_type = question_types == index
        if of_type.any():
            results[f"accuracy/{name}"] = float(correct[of_type].mean())
    return results
