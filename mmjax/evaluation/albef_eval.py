"""Evaluating a mid-fusion (ALBEF-style) model: contrastive retrieval, ITM, re-ranking, VQA.

Image-text matching accuracy. For every scene i of the split, three pairs are scored by the ITM
head, p(match) = softmax(itm_logits)[1], and called a match when p > 0.5:

    positive        (image i, caption i·c)                                         label 1
    hard negative   (image i, the caption of another scene most similar to image i
                     by the contrastive embeddings)                                label 0
    random negative (image i, caption of scene i + n/2 mod n, if it is a different scene)  label 0

    itm_accuracy         = accuracy over positives and hard negatives (balanced, 2n pairs)
    itm_accuracy_random  = accuracy over positives and random negatives

The hard negatives are the pairs the contrastive stage confuses, e.g. the same objects with two
positions swapped: the ones re-ranking must get right.

Retrieval re-ranked by ITM (ALBEF, §3.4): rank the gallery by contrastive similarity, keep each
query's top k, re-order those k by p(match) of the pair (`metrics.reranked_recall`). The towers
run once per image and once per caption; only the fusion stack and the ITM head run per pair
(n·k pairs image->text, n·c·k text->image).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mmjax.evaluation.batching import batched_apply
from mmjax.evaluation.metrics import (
    cosine_similarity_chunks,
    group_ids,
    image_text_retrieval,
    reranked_recall,
    top_k_indices,
)
from mmjax.evaluation.report import format_table, results_filename, write_results
from mmjax.evaluation.vqa_eval import vqa_rows


def hard_negative_captions(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                           image_groups: np.ndarray, text_groups: np.ndarray) -> np.ndarray:
    """For each image, the most similar caption of a *different* scene: int [n_img]."""
    negatives = np.empty(len(image_embeddings), np.int64)
    for rows, scores in cosine_similarity_chunks(image_embeddings, text_embeddings):
        scores = np.where(image_groups[rows, None] == text_groups[None, :], -np.inf, scores)
        negatives[rows] = np.argmax(scores, axis=1)
    return negatives


def evaluate_matching(
    embedded: dict[str, Any],
    image_tokens: dict[str, np.ndarray],
    text_tokens: dict[str, np.ndarray],
    match_fn: Callable[..., np.ndarray],
    batch_size: int,
    rerank_k: int = 16,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """ITM accuracies and ITM-re-ranked retrieval recall.

    Args:
      embedded: `clip_eval.embed_split`'s output (contrastive embeddings, scene keys).
      image_tokens: {"tokens": [n, N, W_img]}, the image tower's output per image.
      text_tokens: {"tokens": [t, L, W_txt], "mask": [t, L]} per caption (t captions in all).
      match_fn: (text_tokens [b, L, W], text_mask [b, L], image_tokens [b, N, W]) -> p(match) [b].
      rerank_k: first-stage candidates per query.
    """
    first = embedded["first_caption"]  # the row of each image's first caption
    n = len(embedded["image_embeddings"])
    keys = embedded["scene_keys"]
    image_groups, text_groups = group_ids(keys, keys[embedded["caption_image"]])
    results = image_text_retrieval(embedded["image_embeddings"], embedded["text_embeddings"],
                                   image_groups, text_groups, ks=ks)

    def match(image_index: np.ndarray, text_index: np.ndarray) -> np.ndarray:
        """p(match) of the pairs (image_index[p], text_index[p]), the towers' outputs gathered."""
        return batched_apply(
            lambda t, i: match_fn(text_tokens["tokens"][t], text_tokens["mask"][t], image_tokens["tokens"][i]),
            text_index, image_index, batch_size=batch_size,
        )

    # ITM accuracy: positives, hard negatives, random negatives.
    images = np.arange(n)
    hard = hard_negative_captions(embedded["image_embeddings"], embedded["text_embeddings"],
                                  image_groups, text_groups)
    random_captions = first[(images + n // 2) % n]
    random_valid = text_groups[random_captions] != image_groups
    positive_p = match(images, first[images])
    hard_p = match(images, hard)
    random_p = match(images, random_captions)[random_valid]
    results["itm_accuracy"] = float(np.mean(np.concatenate([positive_p > 0.5, hard_p <= 0.5])))
    results["itm_accuracy_random"] = float(np.mean(np.concatenate([positive_p > 0.5, random_p <= 0.5])))
    results["itm_positive_recall"] = float(np.mean(positive_p > 0.5))

    # Re-ranking the contrastive top k by ITM.
    k = max(rerank_k, max(ks))
    for name, queries, gallery, query_groups, gallery_groups, is_image_query in (
        ("i2t", embedded["image_embeddings"], embedded["text_embeddings"], image_groups, text_groups, True),
        ("t2i", embedded["text_embeddings"], embedded["image_embeddings"], text_groups, image_groups, False),
    ):
        candidates = np.concatenate([top_k_indices(s, k) for _, s in cosine_similarity_chunks(queries, gallery)])
        query_index = np.repeat(np.arange(len(queries)), candidates.shape[1])
        pairs = (query_index, candidates.reshape(-1)) if is_image_query else (candidates.reshape(-1), query_index)
        scores = match(*pairs).reshape(candidates.shape)
        for cut, recall in reranked_recall(candidates, scores, query_groups, gallery_groups, ks).items():
            results[f"{name}_itm_r{cut}"] = recall
    return results


def write_albef_report(workdir: str, results: dict[str, float], config: Any, question_types) -> None:
    """Prints retrieval (contrastive vs re-ranked), ITM and VQA tables; writes the results file."""
    split = config.eval.split
    write_results(workdir, {"split": split, **results}, results_filename(split))
    rows = []
    for direction, name in (("image -> text", "i2t"), ("text -> image", "t2i")):
        for stage, infix in (("contrastive", ""), (f"ITM re-ranked (top {config.eval.rerank_k})", "itm_")):
            rows.append({"direction": direction, "ranking": stage,
                         **{f"R@{k}": results[f"{name}_{infix}r{k}"] for k in (1, 5, 10)}})
    print(format_table(rows, title=f"Retrieval on shapes/{split} (hit = same scene)"))
    print(format_table([{
        "ITM accuracy (hard negatives)": results["itm_accuracy"],
        "ITM accuracy (random negatives)": results["itm_accuracy_random"],
        "positives called a match": results["itm_positive_recall"],
    }], title="Image-text matching"))
    if "vqa_accuracy" in results:
        print(format_table(vqa_rows(results, question_types), title=f"VQA accuracy on shapes/{split}"))
