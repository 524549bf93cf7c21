"""Evaluating a captioner: generate a caption for every image of a split and score it.

    caption_i = decode(generate(image_i))                       (greedy, or beam search)
    BLEU-1..4, CIDEr-D against the split's 5 reference captions per image   (`caption_metrics`)
    exact scene match: parse(caption_i) == scene_key_i          (the meaning, not the wording)

The generated captions are written to `captions_<split>.txt` in the run folder, marked by whether
they describe the scene exactly.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from mmjax.evaluation.batching import batched_apply
from mmjax.evaluation.caption_metrics import cider_d, corpus_bleu, exact_scene_match
from mmjax.evaluation.report import write_text_atomically


def evaluate_captions(generate_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                      references: list[list[str]], scene_keys: list[str], tokenizer,
                      parse: Callable[[str], str | None], batch_size: int) -> tuple[dict[str, float], list[str]]:
    """Caption metrics of `generate_fn` (uint8 images [b, H, W, 3] -> token ids [b, T]).

    Returns ({"bleu_1".."bleu_4", "cider", "exact_scene_match"}, the generated captions).
    """
    tokens = batched_apply(generate_fn, images, batch_size=batch_size)
    captions = [tokenizer.decode(row) for row in tokens]
    results = dict(corpus_bleu(captions, references))
    results["cider"] = cider_d(captions, references)[0]
    results["exact_scene_match"] = exact_scene_match(captions, scene_keys, parse)
    return results, captions


def write_captions(workdir: str, split: str, captions: list[str], scene_keys: list[str],
                   parse: Callable[[str], str | None]) -> str:
    """captions_<split>.txt: one generated caption per image, `ok` where it parses to the scene."""
    lines = [f"{'ok ' if parse(c) == k else 'BAD'} {i:4d}  {c}" for i, (c, k) in enumerate(zip(captions, scene_keys))]
    return write_text_atomically(os.path.join(workdir, f"captions_{split}.txt"), "\n".join(lines) + "\n")
