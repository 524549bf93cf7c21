"""Zero-shot image classification from the command line, with imported or mmjax-trained CLIPs.

    # A Hugging Face CLIP folder (config.json, model.safetensors, vocab.json, merges.txt):
    python -m mmjax.zero_shot --checkpoint clip-vit-base-patch32 --images photos/ --labels "cat,dog,car"
    # open_clip weights (+ open_clip_config.json beside them, or --quick_gelu for bare OpenAI weights):
    python -m mmjax.zero_shot --checkpoint vit_b32/open_clip_model.safetensors \
        --tokenizer bpe_simple_vocab_16e6.txt.gz --images photos/ --labels_file labels.txt --top_k 3
    # A run folder of mmjax's own trainer, with the config it was trained with:
    python -m mmjax.zero_shot --checkpoint runs/clip_tiny --config configs/clip_tiny.py \
        --images photos/ --labels "red circle,blue square"
    # ImageNet top-1 / top-5 (TFDS imagenet2012, built once from the manually downloaded tars):
    python -m mmjax.zero_shot --checkpoint clip-vit-base-patch32 --tfds imagenet2012 \
        --tfds_data_dir ~/tensorflow_datasets --manual_dir ~/imagenet

CLIP's recipe (Radford et al., 2021): every label is written into prompt templates ("a photo of a
{}."), the text tower embeds each prompt and the class embedding is their renormalised mean; an
image's class probabilities are softmax(logit_scale · cos(image, class)) over the given labels.
Each image is decoded, resized and cropped as the model's own codebase does it
(`mmjax.interop.preprocess`), normalised, embedded and ranked against the classes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
from typing import Any, Callable, Sequence

import jax
import numpy as np
from PIL import Image

from mmjax.evaluation.batching import batched_apply
from mmjax.evaluation.clip_eval import class_embeddings
from mmjax.evaluation.metrics import PROMPT_TEMPLATES, zero_shot_accuracy
from mmjax.data.tfds_sources import classification_set
from mmjax.interop.preprocess import ImagePreprocessing, load_image
from mmjax.models.clip import CLIP

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclasses.dataclass
class ZeroShotClassifier:
    """A dual encoder ready to classify.

    Attributes:
      encode_images: uint8 [b, S, S, 3] crops -> unit-norm embeddings [b, d].
      encode_texts: int32 token ids [b, text_len] -> unit-norm embeddings [b, d].
      tokenizer: anything with `encode_batch(texts, max_len) -> int32 [n, max_len]`.
      text_len: the padded text length the text tower takes.
      resize_and_crop: a PIL image -> uint8 [S, S, 3], as the model was trained.
      logit_scale: the learned temperature's multiplier exp(t).
      templates: the prompt templates used when none are given.
    """

    encode_images: Callable[[np.ndarray], np.ndarray]
    encode_texts: Callable[[np.ndarray], np.ndarray]
    tokenizer: Any
    text_len: int
    resize_and_crop: Callable[[Image.Image], np.ndarray]
    logit_scale: float
    templates: tuple[str, ...] = PROMPT_TEMPLATES


# ----------------------------------------------------------------------------------------------
# Loading a classifier from any of the three kinds of checkpoint.


def load_classifier(
    checkpoint: str,
    *,
    config: Any = None,
    tokenizer: str | None = None,
    quick_gelu: bool | None = None,
    open_clip_config: str | None = None,
) -> ZeroShotClassifier:
    """A classifier from an mmjax run folder (needs `config`), a Hugging Face CLIP folder or
    open_clip weights (a file, or a folder with open_clip_model.safetensors)."""
    if os.path.isdir(os.path.join(checkpoint, "checkpoints")):
        if config is None:
            raise ValueError(
                f"{checkpoint} is an mmjax run folder: pass --config, the config file it was trained "
                "with (e.g. configs/clip_tiny.py)"
            )
        return _load_mmjax_run(checkpoint, config)
    if config is not None:
        raise ValueError(f"--config is for mmjax run folders (with checkpoints/ inside); {checkpoint} is not one")
    return _load_imported(checkpoint, tokenizer, quick_gelu, open_clip_config)


def _load_imported(checkpoint: str, tokenizer_path: str | None, quick_gelu: bool | None,
                   open_clip_config: str | None) -> ZeroShotClassifier:
    # Imported here: the tokenizer needs the `interop` extras, which mmjax's own runs do not.
    from mmjax.data.clip_tokenizer import ClipTokenizer
    from mmjax.interop import load_hf_clip, load_open_clip

    hf_config = os.path.join(checkpoint, "config.json")
    if os.path.isdir(checkpoint) and os.path.exists(hf_config):
        imported = load_hf_clip(checkpoint)
    else:
        imported = load_open_clip(checkpoint, open_clip_config, quick_gelu)
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    if tokenizer_path is None:
        try:
            tokenizer = ClipTokenizer.load(folder or ".")
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{error}. Pass --tokenizer: vocab.json (with merges.txt beside it) or open_clip's "
                "bpe_simple_vocab_16e6.txt.gz"
            ) from None
    else:
        tokenizer = ClipTokenizer.load(tokenizer_path)
    tokenizer.check_vocab_size(imported.config.text.vocab_size)

    model, preprocessing = imported.model, imported.preprocessing
    params = jax.device_put(imported.params)
    image_fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=CLIP.encode_image))
    text_fn = jax.jit(lambda p, ids: model.apply({"params": p}, ids, method=CLIP.encode_text))
    scale = model.apply({"params": params}, method=CLIP.logit_scalars)["logit_scale"]
    return ZeroShotClassifier(
        encode_images=lambda pixels: image_fn(params, preprocessing.normalize(pixels)),
        encode_texts=lambda ids: text_fn(params, ids),
        tokenizer=tokenizer,
        text_len=imported.context_length,
        resize_and_crop=preprocessing.resize_and_crop,
        logit_scale=float(scale),
    )


def _load_mmjax_run(workdir: str, config: Any) -> ZeroShotClassifier:
    """The latest checkpoint of a run, restored as `eval.py` does, with the run's tokenizer."""
    from mmjax.training.evaluate import load_run

    task, params, _, tokenizer = load_run(workdir, config)
    if not hasattr(task, "encode_images") or not hasattr(task, "encode_texts"):
        raise ValueError(f"the task of this config ({type(task).__name__}) has no image and text encoders")
    image_fn, text_fn = jax.jit(task.encode_images), jax.jit(task.encode_texts)
    scale = task.model.apply({"params": params}, method=CLIP.logit_scalars)["logit_scale"]
    # mmjax's tasks normalise uint8 pixels themselves, inside the compiled function.
    crop = ImagePreprocessing(image_size=config.data.image_size)
    return ZeroShotClassifier(
        encode_images=lambda pixels: image_fn(params, pixels),
        encode_texts=lambda ids: text_fn(params, ids),
        tokenizer=tokenizer,
        text_len=config.data.text_len,
        resize_and_crop=crop.resize_and_crop,
        logit_scale=float(scale),
        templates=tuple(config.eval.get("prompt_templates", PROMPT_TEMPLATES)),
    )


# ----------------------------------------------------------------------------------------------
# Classifying.


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(f"every prompt template needs exactly one '{{}}' for the label; got {bad or 'none'}")
    return tuple(templates)


def check_labels(labels: Sequence[str]) -> list[str]:
    labels = [label.strip() for label in labels]
    if len(labels) < 2 or any(not label for label in labels):
        raise ValueError(f"give at least two non-empty labels; got {labels}")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"labels must be distinct; repeated: {duplicates}")
    return labels


def label_embeddings(classifier: ZeroShotClassifier, labels: Sequence[str],
                     templates: Sequence[str] | None = None, batch_size: int = 256) -> np.ndarray:
    """[num_labels, d]: prompt-ensembled unit-norm embeddings of every label."""
    templates = check_templates(templates or classifier.templates)
    batch_size = min(batch_size, len(labels) * len(templates))
    return class_embeddings(classifier.encode_texts, list(labels), classifier.tokenizer,
                            classifier.text_len, templates, batch_size=batch_size)


def embed_images(classifier: ZeroShotClassifier, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
    """[n, d] unit-norm embeddings of PIL images."""
    pixels = np.stack([classifier.resize_and_crop(image) for image in images])
    return batched_apply(classifier.encode_images, pixels, batch_size=min(batch_size, len(pixels)))


def classify(classifier: ZeroShotClassifier, image_embeddings: np.ndarray, label_embeddings: np.ndarray) -> np.ndarray:
    """[n, num_labels] probabilities: softmax over labels of logit_scale · cosine similarity."""
    logits = classifier.logit_scale * np.asarray(image_embeddings, np.float64) @ np.asarray(label_embeddings, np.float64).T
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def list_images(directory: str) -> list[str]:
    """The image files directly inside `directory`, sorted by name."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--images {directory} is not a folder")
    paths = sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {directory}")
    return paths


def classify_folder(classifier: ZeroShotClassifier, directory: str, labels: Sequence[str],
                    templates: Sequence[str] | None = None, top_k: int = 5,
                    batch_size: int = 32) -> list[dict[str, Any]]:
    """[{"image": path, "top": [(label, probability), ...]}] for every readable image of `directory`.

    A file that does not decode (corrupt, truncated, not an image) is skipped with a warning on
    stderr, and the number skipped is printed at the end: one bad file does not end the run.
    """
    labels = check_labels(labels)
    paths, images, skipped = [], [], 0
    for path in list_images(directory):
        try:
            images.append(load_image(path))
            paths.append(path)
        except ValueError as error:
            skipped += 1
            print(f"Warning: skipping {error}", file=sys.stderr)
    if skipped:
        print(f"Warning: skipped {skipped} unreadable file(s) of {len(paths) + skipped} in {directory}.",
              file=sys.stderr)
    if not images:
        raise FileNotFoundError(f"no readable image in {directory} ({skipped} unreadable)")
    probabilities = classify(classifier, embed_images(classifier, images, batch_size),
                             label_embeddings(classifier, labels, templates))
    results = []
    for path, row in zip(paths, probabilities):
        order = np.argsort(-row, kind="stable")[:top_k]
        results.append({"image": path, "top": [(labels[i], float(row[i])) for i in order]})
    return results


def evaluate_source(classifier: ZeroShotClassifier, source: Sequence[dict], class_names: Sequence[str],
                    templates: Sequence[str] | None = None, batch_size: int = 64,
                    num_threads: int = 4) -> dict[str, float]:
    """Zero-shot top-1 / top-5 / mean per-class accuracy over a labelled random-access source of
    {"image": uint8 [H, W, 3], "label": int} examples (a TFDS data source, say)."""
    from mmjax.data.pipeline import iterate_in_order

    def transform(example: dict) -> dict:
        image = Image.fromarray(np.asarray(example["image"]))
        return {"pixels": classifier.resize_and_crop(image), "label": np.int64(example["label"])}

    images, labels = [], []
    for batch in iterate_in_order(source, transform, batch_size=batch_size, num_threads=num_threads):
        images.append(batched_apply(classifier.encode_images, batch["pixels"], batch_size=batch_size))
        labels.append(batch["label"])
    classes = label_embeddings(classifier, list(class_names), templates)
    return zero_shot_accuracy(np.concatenate(images), classes, np.concatenate(labels), ks=(1, 5))


class _Subset:
    """The first `limit` examples of a source."""

    def __init__(self, source: Sequence, limit: int):
        self.source, self.limit = source, min(limit, len(source))

    def __len__(self) -> int:
        return self.limit

    def __getitem__(self, index: int):
        return self.source[index]


# ----------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str]) -> None:
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from mmjax.training.checkpoint import CheckpointDamaged

    try:
        _run(_FLAGS)
    except (ValueError, FileNotFoundError, ImportError, CheckpointDamaged) as error:
        # A wrong path, label or checkpoint: the message says what to do; a traceback would not.
        sys.exit(f"error: {error}")


def _run(flags: types.SimpleNamespace) -> None:
    from absl import app

    classifier = load_classifier(
        flags.checkpoint.value, config=flags.config.value, tokenizer=flags.tokenizer.value,
        quick_gelu=flags.quick_gelu.value, open_clip_config=flags.open_clip_config.value,
    )
    templates = flags.template.value or None
    if flags.tfds.value:
        source, names, set_templates = classification_set(flags.tfds.value, flags.split.value,
                                                          flags.tfds_data_dir.value, flags.manual_dir.value)
        templates = templates or set_templates
        if flags.tfds.value == "imagenet2012":
            from mmjax.interop.imagenet import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

            names, templates = IMAGENET_CLASSNAMES, flags.template.value or OPENAI_IMAGENET_TEMPLATES
        if flags.limit.value:
            source = _Subset(source, flags.limit.value)
        results = evaluate_source(classifier, source, names, templates, batch_size=flags.batch_size.value)
        print(f"{flags.tfds.value}/{flags.split.value}, {len(source)} images, "
              f"{len(templates or classifier.templates)} templates:")
        for key, value in results.items():
            print(f"  {key:>24s}  {100 * value:6.2f}%")
        return
    if flags.images.value is None:
        raise app.UsageError("pass --images DIR (or --tfds NAME for a labelled dataset)")
    if (flags.labels.value is None) == (flags.labels_file.value is None):
        raise app.UsageError("pass exactly one of --labels 'a,b,c' and --labels_file FILE")
    if flags.labels.value is not None:
        labels = flags.labels.value.split(",")
    else:
        with open(flags.labels_file.value, encoding="utf-8") as f:
            labels = [line for line in f.read().splitlines() if line.strip()]
    results = classify_folder(classifier, flags.images.value, labels, templates, top_k=flags.top_k.value,
                              batch_size=flags.batch_size.value)
    for result in results:
        print(os.path.basename(result["image"]))
        for label, probability in result["top"]:
            print(f"  {probability:7.4f}  {label}")
    if flags.output.value:
        with open(flags.output.value, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


def _define_flags() -> types.SimpleNamespace:
    """The command-line flags, defined only when this module runs as the program (so importing it
    from a test or another program defines none)."""
    from absl import flags
    from ml_collections import config_flags

    return types.SimpleNamespace(
        checkpoint=flags.DEFINE_string("checkpoint", None, "A Hugging Face CLIP folder, open_clip weights "
                                       "(file or folder), or an mmjax run folder.", required=True),
        config=config_flags.DEFINE_config_file("config", None, "For an mmjax run folder: its config file."),
        tokenizer=flags.DEFINE_string("tokenizer", None, "vocab.json (merges.txt beside it) or "
                                      "bpe_simple_vocab_16e6.txt.gz; default: found beside the checkpoint."),
        quick_gelu=flags.DEFINE_bool("quick_gelu", None, "open_clip weights without a config: True for "
                                     "OpenAI's weights."),
        open_clip_config=flags.DEFINE_string("open_clip_config", None, "open_clip model config JSON; default: "
                                             "open_clip_config.json beside the weights."),
        images=flags.DEFINE_string("images", None, "Folder of images to classify."),
        labels=flags.DEFINE_string("labels", None, "Comma-separated labels."),
        labels_file=flags.DEFINE_string("labels_file", None, "File with one label per line."),
        template=flags.DEFINE_multi_string("template", None, "A prompt template with '{}' (repeatable); "
                                           "default: the model's or CLIP's generic ones."),
        top_k=flags.DEFINE_integer("top_k", 5, "Labels printed per image."),
        batch_size=flags.DEFINE_integer("batch_size", 32, "Images per forward pass."),
        output=flags.DEFINE_string("output", None, "Also write the results as JSON here."),
        tfds=flags.DEFINE_string("tfds", None, "Evaluate on a labelled TFDS dataset instead (e.g. imagenet2012)."),
        split=flags.DEFINE_string("split", "validation", "TFDS split."),
        tfds_data_dir=flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory."),
        manual_dir=flags.DEFINE_string("manual_dir", None, "Folder of manually downloaded files (ImageNet's tars)."),
        limit=flags.DEFINE_integer("limit", 0, "Evaluate only the first N examples (0: all)."),
    )


if __name__ == "__main__":
    from absl import app

    _FLAGS = _define_flags()
    app.run(main)
