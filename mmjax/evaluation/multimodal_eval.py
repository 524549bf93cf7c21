"""Evaluating a many-tower model (`MultiTowerCLIP`): retrieval both ways between every two modalities.

For each pair of modalities (a, b), trained or not, every item of the split is embedded in both
(text: all of an item's captions) and each query ranks the whole gallery by cosine similarity:

    a -> b: recall@K = fraction of queries with a hit among their top K
    a hit:  a retrieved item that shares the query's `data.hit_key(a, b)`: the same scene for
            video and text; for a sound of `moving_shapes`, the same sounds in the same order
            (a sound cannot show colour or direction, so any clip making those sounds is right)

Keys are named `{a}_to_{b}_r{K}` ("video_to_text_r1", "text_to_video_r1", "video_to_audio_r1").
On the test split, `compositional_test` (clips with held-out combinations) is scored too, its keys
prefixed "compositional_".
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from mmjax.data.pipeline import iterate_in_order
from mmjax.evaluation.batching import batched_apply
from mmjax.evaluation.clip_eval import as_str
from mmjax.evaluation.metrics import group_ids, image_text_retrieval
from mmjax.evaluation.report import format_table, plot_text_to_image_grid, results_filename, write_results
from mmjax.models.multi_tower import all_pairs

KS = (1, 5, 10)


def embed_media_split(encoders: dict[str, Callable], source, tokenizer, text_len: int, hit_fields: set[str],
                      batch_size: int = 256, num_threads: int = 2, show_progress: bool = True) -> dict[str, Any]:
    """Embeds every clip of `source` in each medium of `encoders` and every caption.

    `encoders[m](batch) -> [b, d]` for each medium m ("video": uint8 [b, T, S, S, 3], "audio":
    int16 [b, samples]) and "text" (int32 [b, text_len]). Returns {f"{m}_embeddings"} ([n, d] per
    medium, [t, d] for text), caption_item [t], first_caption [n], captions [t], the example fields
    in `hit_fields` ([n] each), and the media themselves (for the report).
    """
    media = [m for m in encoders if m != "text"]

    def transform(example):
        out = {m: np.asarray(example[m]) for m in media}
        out["captions"] = [c.decode("utf-8") if isinstance(c, bytes) else c for c in example["captions"]]
        out.update({k: as_str(example[k]) for k in hit_fields})
        return out

    columns: dict[str, list] = {m: [] for m in media} | {k: [] for k in hit_fields}
    captions, caption_item = [], []
    examples = iterate_in_order(source, transform, batch_size=None, num_threads=num_threads)
    for index, example in enumerate(tqdm(examples, total=len(source), desc="read", unit="clip",
                                         disable=not show_progress, leave=False)):
        for name in columns:
            columns[name].append(example[name])
        captions += example["captions"]
        caption_item += [index] * len(example["captions"])
    caption_item = np.asarray(caption_item)
    out: dict[str, Any] = {k: np.asarray(columns[k]) for k in hit_fields}
    for m in media:
        out[m] = np.stack(columns[m])
        out[f"{m}_embeddings"] = batched_apply(encoders[m], out[m], batch_size=batch_size)
    token_ids = tokenizer.encode_batch(captions, text_len)
    out["text_embeddings"] = batched_apply(encoders["text"], token_ids, batch_size=batch_size)
    out.update(caption_item=caption_item, first_caption=np.searchsorted(caption_item, np.arange(len(source))),
               captions=np.asarray(captions))
    return out



def pair_retrieval(embedded: dict[str, Any], a: str, b: str, hit_key: str, ks=KS) -> dict[str, float]:
    """Recall@K of a -> b and b -> a (see the module docstring)."""
    keys = embedded[hit_key]
    item_keys = {m: keys if m != "text" else keys[embedded["caption_item"]] for m in (a, b)}
    groups_a, groups_b = group_ids(item_keys[a], item_keys[b])
    results = image_text_retrieval(embedded[f"{a}_embeddings"], embedded[f"{b}_embeddings"], groups_a, groups_b, ks)
    renamed = {}
    for name, value in results.items():
        direction, k = name.split("_")
        renamed[f"{a}_to_{b}_{k}" if direction == "i2t" else f"{b}_to_{a}_{k}"] = float(value)
    return renamed


def evaluate_split(task: Any, params: Any, data: Any, config: Any, split: str) -> tuple[dict[str, float], dict]:
    """Recall@{1,5,10} both ways for every pair of the task's modalities on one split."""
    encoders = {}
    for modality in task.modalities:
        fn = jax.jit(lambda p, x, m=modality: task.encode(p, m, x))
        encoders[modality] = lambda x, fn=fn: fn(params, x)
    pairs = all_pairs(task.modalities)
    hit_fields = {data.hit_key(a, b) for a, b in pairs}
    embedded = embed_media_split(encoders, data.split(split), data.tokenizer, config.data.text_len, hit_fields,
                                 batch_size=config.eval.batch_size, num_threads=config.data.num_threads)
    results = {}
    for a, b in pairs:
        results.update(pair_retrieval(embedded, a, b, data.hit_key(a, b)))
    return results, embedded


def evaluate_multimodal(task: Any, params: Any, data: Any, config: Any, split: str = "test",
                        return_details: bool = False):
    """`evaluate_split` on `split` (and on `compositional_test` too when `split` is "test")."""
    results, details = evaluate_split(task, params, data, config, split)
    if split == "test" and config.eval.get("with_compositional", True):
        more, _ = evaluate_split(task, params, data, config, "compositional_test")
        results.update({f"compositional_{k}": v for k, v in more.items()})
    if return_details:
        details["hit_keys"] = {f"{a}_{b}": data.hit_key(a, b) for a, b in all_pairs(task.modalities)}
        return results, details
    return results


def filmstrip(video: np.ndarray, frames: int = 3) -> np.ndarray:
    """uint8 [T, S, S, 3] -> [S, frames·S + gaps, 3]: the first, middle and last frames side by side."""
    picks = np.linspace(0, len(video) - 1, frames).round().astype(int)
    gap = np.full((video.shape[1], 2, 3), 255, np.uint8)
    parts = [part for i in picks for part in (video[i], gap)][:-1]
    return np.concatenate(parts, axis=1)


def write_multimodal_report(workdir: str, results: dict[str, float], details: dict[str, Any], config: Any,
                            modalities: tuple[str, ...], num_examples: int = 6, k: int = 4) -> None:
    """results.json, a printed table per split (R@1/5/10 of every direction), and for video a PNG of
    captions with their top-k clips (as filmstrips; green border: a hit)."""
    write_results(workdir, {"split": config.eval.split, **results}, results_filename(config.eval.split))
    for prefix, split in (("", config.eval.split), ("compositional_", "compositional_test")):
        rows = []
        for a, b in all_pairs(modalities):
            for query, gallery in ((a, b), (b, a)):
                key = f"{prefix}{query}_to_{gallery}"
                if f"{key}_r1" in results:
                    rows.append({"direction": f"{query} -> {gallery}",
                                 **{f"R@{n}": results[f"{key}_r{n}"] for n in KS},
                                 "hit": details["hit_keys"][f"{a}_{b}"].replace("_key", "")})
        if rows:
            print(format_table(rows, title=f"Retrieval on {split}"))
    if "video" in modalities:
        first = details["first_caption"]
        query = np.arange(min(num_examples, len(first)))
        texts, videos = details["text_embeddings"], details["video_embeddings"]
        top = np.argsort(-(texts[first[query]] @ videos.T), axis=1)[:, :k]
        keys = details[details["hit_keys"]["video_text"]]
        strips = np.stack([[filmstrip(details["video"][j]) for j in row] for row in top])
        plot_text_to_image_grid([details["captions"][first[i]] for i in query], strips,
                                [[keys[j] == keys[i] for j in row] for i, row in zip(query, top)],
                                os.path.join(workdir, "retrieval_text_to_video.png"))
