"""Evaluating a dual encoder: image<->text retrieval and zero-shot classification.

Retrieval (the COCO protocol, judged by meaning). Embed every image of the split and every one of
its captions (5 per image), then

    image -> text: rank all captions by cosine similarity to the image; a hit at K when one of the
                   top-K captions describes the *same scene* (same objects and properties);
    text -> image: rank all images for each caption; a hit at K when one of the top-K images shows
                   the same scene.

"Same scene" is decided by the dataset's structured truth (`scene_key`), never by string equality:
one scene has many phrasings, and two images can show the same scene. A dataset without structured
truth (a folder of photos) has one key per image: a hit is the same image. With
`config.eval.retrieval_hit = "label"` a hit is an item of the same class instead (for a dataset whose
captions say no more than the label, such as the handwritten digits). Images may have any number
of captions.

Zero-shot classification (CLIP's recipe). Each class name ("red circle") is put into several
prompt templates ("a photo of a red circle."), their text embeddings are averaged into one class
embedding, and each image is assigned the class with the most similar embedding. The label is
the shape and colour of the largest object.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from mmjax.data.pipeline import iterate_in_order
from mmjax.evaluation.batching import batched_apply
from mmjax.evaluation.metrics import (
    PROMPT_TEMPLATES,
    class_embeddings_from_prompts,
    group_ids,
    image_text_retrieval,
    zero_shot_accuracy,
)
from mmjax.evaluation.report import (
    format_table,
    plot_retrieval_grid,
    plot_text_to_image_grid,
    results_filename,
    write_results,
)


def embed_split(encode_images: Callable, encode_texts: Callable, source, tokenizer, text_len: int,
                batch_size: int = 256, num_threads: int = 2, show_progress: bool = True) -> dict[str, Any]:
    """Embeds every image and caption of `source` with the given (jitted) encoders.

    `encode_images(uint8 [b, H, W, 3]) -> [b, d]`, `encode_texts(int32 [b, text_len]) -> [b, d]`.
    Images may have different numbers of captions. Returns image_embeddings [n, d],
    text_embeddings [t, d] (all captions, image by image), caption_image int [t] (the image of
    each caption), first_caption int [n] (the row of each image's first caption), scene_keys [n],
    labels [n], captions [t] (str), images uint8 [n, H, W, 3], token_ids int32 [t, text_len].
    """

    def transform(example):
        captions = [c.decode("utf-8") if isinstance(c, bytes) else c for c in example["captions"]]
        return {"images": np.asarray(example["image"]), "captions": captions,
                "scene_key": example["scene_key"], "label": int(example["label"])}

    images, captions, scene_keys, labels, caption_image = [], [], [], [], []
    examples = iterate_in_order(source, transform, batch_size=None, num_threads=num_threads)
    for index, example in enumerate(tqdm(examples, total=len(source), desc="read", unit="image",
                                         disable=not show_progress, leave=False)):
        images.append(example["images"])
        captions += example["captions"]
        caption_image += [index] * len(example["captions"])
        scene_keys.append(as_str(example["scene_key"]))
        labels.append(example["label"])
    images = np.stack(images)
    caption_image = np.asarray(caption_image)
    token_ids = tokenizer.encode_batch(captions, text_len)
    return {
        "image_embeddings": batched_apply(encode_images, images, batch_size=batch_size),
        "text_embeddings": batched_apply(encode_texts, token_ids, batch_size=batch_size),
        "caption_image": caption_image,
        "first_caption": np.searchsorted(caption_image, np.arange(len(images))),
        "scene_keys": np.asarray(scene_keys),
        "labels": np.asarray(labels, np.int64),
        "captions": np.asarray(captions),
        "images": images,
        "token_ids": token_ids,
    }


def as_str(value: Any) -> str:
    """A text field as read from a dataset (bytes from TFDS, str from a folder) -> str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def class_embeddings(encode_texts: Callable, class_names: list[str], tokenizer, text_len: int,
                     templates: tuple[str, ...] = PROMPT_TEMPLATES, batch_size: int = 256) -> np.ndarray:
    """[num_classes, d]: prompt-ensembled, unit-norm text embeddings of every class name."""
    prompts = [template.format(name) for name in class_names for template in templates]
    token_ids = tokenizer.encode_batch(prompts, text_len)
    embeddings = batched_apply(encode_texts, token_ids, batch_size=batch_size)
    return class_embeddings_from_prompts(embeddings.reshape(len(class_names), len(templates), -1))


def evaluate_clip(task: Any, params: Any, data: Any, config: Any, split: str = "test",
                  return_details: bool = False):
    """Retrieval recall@{1,5,10} both ways and zero-shot accuracy on `split`.

    Returns a dict of floats (and, with `return_details`, the embeddings and captions used, for
    the example grids).
    """
    # Compile each encoder once, with the parameters closed over as arguments (not constants).
    image_fn, text_fn = jax.jit(task.encode_images), jax.jit(task.encode_texts)
    encode_images = lambda images: image_fn(params, images)  # noqa: E731
    encode_texts = lambda token_ids: text_fn(params, token_ids)  # noqa: E731
    embedded = embed_split(encode_images, encode_texts, data.split(split), data.tokenizer,
                           config.data.text_len, batch_size=config.eval.batch_size,
                           num_threads=config.data.num_threads)
    image_groups, text_groups = retrieval_groups(embedded, config.eval.get("retrieval_hit", "item"))
    results = image_text_retrieval(
        embedded["image_embeddings"], embedded["text_embeddings"], image_groups, text_groups, ks=(1, 5, 10)
    )
    if data.class_names and np.all(embedded["labels"] >= 0):
        zero_shot = zero_shot_accuracy(
            embedded["image_embeddings"],
            class_embeddings(encode_texts, data.class_names, data.tokenizer, config.data.text_len,
                             tuple(config.eval.prompt_templates), batch_size=config.eval.batch_size),
            embedded["labels"],
            ks=(1, 5) if len(data.class_names) >= 5 else (1,),
        )
        results.update({f"zero_shot_{k}": v for k, v in zero_shot.items()})
    results = {k: float(v) for k, v in results.items()}
    if return_details:
        embedded["image_groups"], embedded["text_groups"] = image_groups, text_groups
        embedded["dataset"], embedded["hit"] = data.name, _hit_description(data, config)
        return results, embedded
    return results


def retrieval_groups(embedded: dict[str, Any], hit: str = "item") -> tuple[np.ndarray, np.ndarray]:
    """(image groups [n], caption groups [t]): a retrieved caption or image is a hit when its group
    is the query's. hit="item": the same scene or image (`scene_key`); "label": the same class."""
    if hit == "item":
        keys = embedded["scene_keys"]
    elif hit == "label":
        keys = embedded["labels"].astype(str)
    else:
        raise ValueError(f"config.eval.retrieval_hit must be 'item' (same scene or image) or 'label' (same "
                         f"class); got {hit!r}")
    return group_ids(keys, keys[embedded["caption_image"]])


def _hit_description(data: Any, config: Any) -> str:
    return "same class" if config.eval.get("retrieval_hit", "item") == "label" else f"same {data.item}"


def write_artifacts(workdir: str, results: dict[str, float], details: dict[str, Any], config: Any,
                    num_examples: int = 8, k: int = 5) -> None:
    """results.json, a printed results table, and PNG grids of retrieval examples."""
    write_results(workdir, {"split": config.eval.split, **results}, results_filename(config.eval.split))
    rows = [
        {"direction": "image -> text", **{f"R@{n}": results[f"i2t_r{n}"] for n in (1, 5, 10)}},
        {"direction": "text -> image", **{f"R@{n}": results[f"t2i_r{n}"] for n in (1, 5, 10)}},
    ]
    where = f"{details.get('dataset', 'shapes')}/{config.eval.split}"
    print(format_table(rows, title=f"Retrieval on {where} (hit = {details.get('hit', 'same scene')})"))
    if "zero_shot_top1" in results:
        print(format_table(
            [{"zero-shot top-1": results["zero_shot_top1"], "top-5": results.get("zero_shot_top5", float("nan")),
              "mean per class": results["zero_shot_mean_per_class_accuracy"]}],
            title=f"Zero-shot classification ({len(details['labels'])} images)",
        ))

    # Example grids: the first `num_examples` images of the split and their first captions.
    first = details["first_caption"]
    images, texts = details["image_embeddings"], details["text_embeddings"]
    query = np.arange(min(num_examples, len(images)))
    i2t = np.argsort(-(images[query] @ texts.T), axis=1)[:, :k]
    plot_retrieval_grid(
        details["images"][query],
        [details["captions"][first[i]] for i in query],
        [[details["captions"][j] for j in row] for row in i2t],
        [[details["text_groups"][j] == details["image_groups"][i] for j in row] for i, row in zip(query, i2t)],
        os.path.join(workdir, "retrieval_image_to_text.png"),
    )
    t2i = np.argsort(-(texts[first[query]] @ images.T), axis=1)[:, :k]
    plot_text_to_image_grid(
        [details["captions"][first[i]] for i in query],
        details["images"][t2i],
        [[details["image_groups"][j] == details["image_groups"][i] for j in row] for i, row in zip(query, t2i)],
        os.path.join(workdir, "retrieval_text_to_image.png"),
    )
