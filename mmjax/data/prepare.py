"""Everything a run needs from the data layer, from the `config.data` section.

    prepare_shapes(config.data) -> ShapesData
        .split("train" | "validation" | "test" | "compositional_test")  random-access source
        .tokenizer          sentencepiece, trained on the training captions (and, with
                            `tokenizer_corpus="captions_and_questions"`, the questions and
                            answers too), saved beside the data
        .class_names        text name of each zero-shot class ("red circle", ...)
        .answer_vocabulary()  the VQA answers seen in training, index 0 = "<unk>" (saved beside the data)
        .question_types     the question type names
        .mirror_text        the caption mirroring that keeps flipped images truthful
        .parse_caption      caption -> scene key (None if the grammar cannot read it)

Building the dataset and training the tokenizer happen once; later runs find both on disk. In a
multi-process run only process 0 builds; the others wait for it at a barrier.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax

from mmjax.data import shapes
from mmjax.data.pipeline import build_answer_vocabulary, load_answer_vocabulary, save_answer_vocabulary
from mmjax.data.shapes_tfds import build_shapes, load_split, make_builder
from mmjax.data.tokenizer import Tokenizer, train_tokenizer

# config.data fields that select the dataset variant (passed to the TFDS builder).
_VARIANT_FIELDS = ("num_train", "num_validation", "num_test", "num_compositional_test",
                   "seed", "min_objects", "max_objects", "num_captions")

# Training examples the tokenizer and the answer vocabulary are fitted on (the grammar's words
# and answers are covered many times over).
_TOKENIZER_EXAMPLES = 4000
_ANSWER_EXAMPLES = 4000

# What the tokenizer is fitted on (config.data.tokenizer_corpus) -> its file name beside the data.
# Captions alone never contain "?" or the letters of "above" and "object", which a caption-only
# tokenizer would read as unknown pieces; VQA models fit theirs on the questions and answers too.
TOKENIZER_CORPORA = {
    "captions": "tokenizer_{vocab_size}.model",
    "captions_and_questions": "tokenizer_{vocab_size}_qa.model",
}


@dataclasses.dataclass
class ShapesData:
    data_dir: str
    image_size: int
    variant: dict[str, Any]
    tokenizer: Tokenizer
    tokenizer_path: str
    class_names: list[str]
    mirror_text: Callable[[str], str] = shapes.mirror_text
    parse_caption: Callable[[str], str | None] = shapes.parse_caption
    question_types: tuple[str, ...] = shapes.QUESTION_TYPES

    def split(self, name: str) -> Sequence[dict[str, Any]]:
        return load_split(self.data_dir, self.image_size, name, **self.variant)

    def answer_vocabulary(self) -> list[str]:
        """The VQA answer classes: fitted on training answers once, then read from beside the data."""
        path = os.path.join(
            os.fspath(make_builder(self.data_dir, self.image_size, **self.variant).data_path), "answers.json"
        )
        if not os.path.exists(path):
            if jax.process_index() == 0:
                train = self.split("train")
                n = min(len(train), _ANSWER_EXAMPLES)
                save_answer_vocabulary(build_answer_vocabulary(a for i in range(n) for a in train[i]["answers"]), path)
            _barrier("answers_written")
        return load_answer_vocabulary(path)


def prepare_shapes(
    data_config: Any, build_if_missing: bool = True, tokenizer_path: str | None = None
) -> ShapesData:
    """Builds (if allowed and missing) and opens the `shapes` dataset and its tokenizer.

    `tokenizer_path` overrides the dataset's tokenizer: a run evaluates and resumes with the
    tokenizer it was trained with (the copy in its run folder), whatever the data folder holds now.
    """
    variant = {k: data_config[k] for k in _VARIANT_FIELDS if k in data_config}
    data_dir = os.path.abspath(data_config.data_dir)
    if build_if_missing:
        if jax.process_index() == 0:
            build_shapes(data_dir, data_config.image_size, **variant)
        _barrier("shapes_built")
    builder = make_builder(data_dir, data_config.image_size, **variant)
    train = load_split(data_dir, data_config.image_size, "train", **variant)

    corpus = data_config.get("tokenizer_corpus", "captions")
    if corpus not in TOKENIZER_CORPORA:
        raise ValueError(
            f"config.data.tokenizer_corpus must be one of {sorted(TOKENIZER_CORPORA)}; got {corpus!r}"
        )
    if tokenizer_path is None:
        name = TOKENIZER_CORPORA[corpus].format(vocab_size=data_config.vocab_size)
        tokenizer_path = os.path.join(os.fspath(builder.data_path), name)
    if not os.path.exists(tokenizer_path):
        if jax.process_index() == 0:
            n = min(len(train), _TOKENIZER_EXAMPLES)
            fields = ("captions",) if corpus == "captions" else ("captions", "questions", "answers")
            texts = [t.decode("utf-8") if isinstance(t, bytes) else t
                     for i in range(n) for field in fields for t in train[i][field]]
            train_tokenizer(texts, data_config.vocab_size, tokenizer_path)
        _barrier("tokenizer_trained")
    return ShapesData(
        data_dir=data_dir,
        image_size=data_config.image_size,
        variant=variant,
        tokenizer=Tokenizer.load(tokenizer_path),
        tokenizer_path=tokenizer_path,
        class_names=shapes.class_names(),
    )


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
