"""The comparison table reads each run's results files and names its model family."""

import json

import numpy as np
import pytest

from mmjax.evaluation import compare_runs
from mmjax.evaluation.compare_runs import comparison_rows, training_minutes
from mmjax.data.shapes import QUESTION_TYPES


def write_run(path, config, test, compositional=None, metrics=()):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    (path / "results.json").write_text(json.dumps(test))
    if compositional is not None:
        (path / "results_compositional_test.json").write_text(json.dumps(compositional))
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def test_rows_hold_both_splits_per_type_accuracy_and_training_time(tmp_path):
    rng = np.random.default_rng(0)
    per_type = {f"vqa_accuracy/{t}": float(rng.random()) for t in QUESTION_TYPES}
    write_run(tmp_path / "early", {"task": "<class 'mmjax.training.vqa_task.VqaTask'>",
                                   "build_model": "function build_early_fusion", "batch_size": 10},
              {"vqa_accuracy": 0.7, **per_type}, {"vqa_accuracy": 0.6},
              [{"step": 5, "examples_per_sec": 25.0}, {"step": 10, "examples_per_sec": 50.0}])
    write_run(tmp_path / "coca", {"task": "<class 'mmjax.training.coca_task.CocaTask'>", "batch_size": 4},
              {"vqa_accuracy": 0.8})
    early, coca = comparison_rows([str(tmp_path / "early"), str(tmp_path / "coca")])
    assert early["model"] == "early fusion (one stream)" and coca["model"] == "generative (CoCa decoder)"
    assert (early["test"], early["compositional"], coca["compositional"]) == (0.7, 0.6, "-")
    assert all(early[t] == per_type[f"vqa_accuracy/{t}"] for t in QUESTION_TYPES)
    # 5 steps of 10 examples at 25/s, then 5 at 50/s: 2 s + 1 s.
    assert training_minutes(str(tmp_path / "early")) == 3.0 / 60
    assert early["train min"] == "0.1" and coca["train min"] == "-"


def test_a_folder_that_is_not_a_run_is_named_in_the_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="typo"):
        compare_runs.main([str(tmp_path / "run"), str(tmp_path / "typo")])
