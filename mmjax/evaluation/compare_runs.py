"""One table of VQA accuracy across run folders: the fusion families side by side.

    python -m mmjax.evaluation.compare_runs runs/late_fusion_vqa_tiny runs/early_fusion_vqa_tiny \
        runs/albef_tiny runs/coca_tiny

Reads each run's results.json (the `test` split) and, when present,
results_compositional_test.json (written by `eval.py --config.eval.split=compositional_test`),
and prints overall and per-question-type accuracy for both, plus the training time recorded in
metrics.jsonl. Missing numbers are shown as "-".
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from mmjax.data.shapes import QUESTION_TYPES
from mmjax.evaluation.report import format_table, read_metrics_jsonl

_FAMILY = {
    "VqaTask": "classifier",
    "AlbefTask": "mid fusion (ALBEF: ITC+ITM+MLM+VQA)",
    "CocaTask": "generative (CoCa decoder)",
}


def _read(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _model_name(run: str) -> str:
    """The config's task and model builder, from the run's config.json."""
    config = _read(os.path.join(run, "config.json")) or {}
    task = str(config.get("task", "")).rsplit(".", 1)[-1].strip("'>")
    builder = str(config.get("build_model", "")).split(" ")[1] if "build_model" in config else ""
    family = {"build_late_fusion_classifier": "late fusion (pooled, MLP)",
              "build_early_fusion": "early fusion (one stream)",
              "build_mid_fusion": "mid fusion (cross-attention)"}.get(builder)
    return family or _FAMILY.get(task, task or "?")


def training_minutes(run: str) -> float | None:
    """Wall time of the training steps: the sum of log windows' steps / (steps per second)."""
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    rows = [r for r in read_metrics_jsonl(path) if "examples_per_sec" in r]
    config = _read(os.path.join(run, "config.json")) or {}
    batch = config.get("batch_size")
    if not rows or not batch:
        return None
    seconds, last = 0.0, 0
    for row in rows:
        seconds += (row["step"] - last) * batch / row["examples_per_sec"]
        last = row["step"]
    return seconds / 60


def comparison_rows(runs: list[str]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        test = _read(os.path.join(run, "results.json")) or {}
        compositional = _read(os.path.join(run, "results_compositional_test.json")) or {}
        minutes = training_minutes(run)
        row = {"run": os.path.basename(os.path.normpath(run)), "model": _model_name(run),
               "train min": f"{minutes:.1f}" if minutes is not None else "-",
               "test": test.get("vqa_accuracy", "-"),
               "compositional": compositional.get("vqa_accuracy", "-")}
        row.update({t: test.get(f"vqa_accuracy/{t}", "-") for t in QUESTION_TYPES})
        rows.append(row)
    return rows


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(__doc__)
    # A typo in a folder name would otherwise print a row of "-" that looks like a failed run.
    missing = [run for run in argv if not os.path.exists(os.path.join(run, "config.json"))]
    if missing:
        raise SystemExit(f"not run folders (no config.json): {', '.join(missing)}; pass the "
                         "--workdir folders of train.py runs, e.g. runs/coca_tiny")
    print(format_table(comparison_rows(argv),
                       title="VQA accuracy on shapes (test; compositional_test; test per question type)"))


if __name__ == "__main__":
    main(sys.argv[1:])
