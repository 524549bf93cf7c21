"""Evaluating a VQA model on every question of a split, overall and per question type.

    for each scene of the split, each of its questions (7 on `shapes`, one per type):
        prediction = answer(image, question)
    accuracy, accuracy per type          (`mmjax.evaluation.vqa_metrics.vqa_accuracy`)

Any model that answers fits: a classifier over the answer vocabulary (`answer_fn` returns answer
indices) or a generator whose text answers are mapped to the vocabulary (an answer it writes
that is not in the vocabulary counts as wrong). No augmentation: questions are read as written.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from mmjax.data.pipeline import all_questions, iterate_in_order
from mmjax.evaluation.batching import batched_apply
from mmjax.evaluation.report import format_table, results_filename, write_results, write_text_atomically
from mmjax.evaluation.vqa_metrics import vqa_accuracy


def collect_questions(source, tokenizer, question_len: int, answer_vocabulary, question_types,
                      num_threads: int = 2, show_progress: bool = True) -> dict[str, np.ndarray]:
    """Every question of `source`, in order, with its scene's image index.

    Returns images uint8 [n, H, W, 3] (one per scene), image_index int [n·Q] (the scene of each
    question), question_ids int32 [n·Q, question_len], answer int32 [n·Q], question_type int32
    [n·Q], questions and answers (str) [n·Q].
    """

    def transform(example):
        rows = all_questions(example, tokenizer, question_len, answer_vocabulary, question_types)
        rows["images"] = np.asarray(example["image"])
        return rows

    parts: dict[str, list] = {}
    batches = iterate_in_order(source, transform, batch_size=64, num_threads=num_threads)
    for batch in tqdm(batches, total=-(-len(source) // 64), desc="questions", unit="batch",
                      disable=not show_progress, leave=False):
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    data = {k: np.concatenate(v) for k, v in parts.items()}
    n, q = data["answer"].shape
    out = {k: data[k].reshape(n * q, *data[k].shape[2:]) for k in
           ("question_ids", "answer", "question_type", "questions", "answers")}
    out["images"] = data["images"]
    out["image_index"] = np.repeat(np.arange(n), q)
    return out


def evaluate_vqa(answer_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], data: Any, config: Any,
                 split: str, answer_vocabulary: list[str], return_details: bool = False):
    """VQA accuracy of `answer_fn` on every question of `split`.

    Args:
      answer_fn: (uint8 images [b, H, W, 3], int32 question_ids [b, question_len]) -> int answer
        indices [b] (-1 or 0 for an answer outside the vocabulary). Called in batches of
        config.eval.batch_size.
      data: the prepared dataset (`prepare_shapes`).
      answer_vocabulary: the answer classes; index 0 is "<unk>".

    Returns:
      {"vqa_accuracy", "vqa_accuracy/<type>" ...} (+ the per-question details).
    """
    questions = collect_questions(data.split(split), data.tokenizer, config.data.question_len,
                                  answer_vocabulary, data.question_types, config.data.num_threads)
    images = questions["images"][questions["image_index"]]
    predictions = batched_apply(answer_fn, images, questions["question_ids"],
                                batch_size=config.eval.batch_size)
    scores = vqa_accuracy(predictions, questions["answer"], questions["question_type"], data.question_types)
    results = {f"vqa_{k}": v for k, v in scores.items()}
    if return_details:
        questions.update(predictions=np.asarray(predictions), answer_vocabulary=answer_vocabulary,
                         question_types=data.question_types)
        return results, questions
    return results


def vqa_rows(results: dict[str, float], question_types) -> list[dict[str, Any]]:
    """One table row: overall accuracy then each question type's."""
    row = {"overall": results["vqa_accuracy"]}
    row.update({t: results.get(f"vqa_accuracy/{t}", float("nan")) for t in question_types})
    return [row]


def write_vqa_report(workdir: str, results: dict[str, float], details: dict[str, Any], config: Any,
                     answer_vocabulary: list[str], question_types, title: str = "VQA accuracy",
                     num_examples: int = 20) -> None:
    """Prints the accuracy table; writes the results file and some answered questions as text."""
    split = config.eval.split
    write_results(workdir, {"split": split, **results}, results_filename(split))
    print(format_table(vqa_rows(results, question_types),
                       title=f"{title} on shapes/{split} ({len(details['answer'])} questions)"))
    lines = []
    for i in range(min(num_examples, len(details["answer"]))):
        predicted = details["predictions"][i]
        answer = answer_vocabulary[predicted] if 0 <= predicted < len(answer_vocabulary) else "<other>"
        mark = "ok " if predicted == details["answer"][i] and details["answer"][i] != 0 else "BAD"
        lines.append(f"{mark} scene {details['image_index'][i]:4d}  {details['questions'][i]}  "
                     f"-> {answer}   (truth: {details['answers'][i]})")
    write_text_atomically(os.path.join(workdir, f"vqa_examples_{split}.txt"), "\n".join(lines) + "\n")
