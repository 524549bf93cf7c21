"""VQA accuracy against an explicit per-question loop."""

import numpy as np
import pytest

from mmjax.evaluation.vqa_metrics import vqa_accuracy

TYPES = ("colour", "shape", "count")


def test_matches_explicit_loop_on_random_predictions():
    rng = np.random.default_rng(0)
    n = 500
    answers = rng.integers(0, 6, n)
    predictions = np.where(rng.random(n) < 0.7, answers, rng.integers(0, 6, n))
    types = rng.integers(0, 3, n)
    results = vqa_accuracy(predictions, answers, types, TYPES)
    right = [p == a and a != 0 for p, a in zip(predictions, answers)]
    assert results["accuracy"] == pytest.approx(np.mean(right))
    for t, name in enumerate(TYPES):
        assert results[f"accuracy/{name}"] == pytest.approx(np.mean([r for r, ty in zip(right, types) if ty == t]))
    assert results["unknown_answers"] == pytest.approx(np.mean(answers == 0))


def test_unknown_answers_are_always_wrong_and_absent_types_omitted():
    results = vqa_accuracy(np.array([0, 1]), np.array([0, 1]), np.array([0, 0]), TYPES)
    assert results["accuracy"] == 0.5 and "accuracy/shape" not in results


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="equal-length 1-D"):
        vqa_accuracy(np.zeros(3), np.zeros(2), np.zeros(3), TYPES)
    with pytest.raises(ValueError, match="at least one question"):
        vqa_accuracy(np.zeros(0), np.zeros(0), np.zeros(0), TYPES)
