"""Everything a run needs from the data layer, from the `config.data` section.

    prepare_data(config.data)                     config.data.name picks the dataset:
        "shapes" (the default)                    the synthetic world, built here if missing
        the name of a built folder dataset        `python -m mmjax.data.build --input DIR --name NAME`
        a TFDS image-text set ("coco_captions")   prepared once as ArrayRecord (mmjax.data.tfds_sources)
        "moving_shapes", "sounds"                 the video and audio worlds, built here if missing
                                                  (MediaWorldData: clips instead of images)
    -> data
        .split(name)        random-access source of examples {image uint8 [S, S, 3], captions,
                            scene_key, label} ("train", "validation", and for shapes "test" and
                            "compositional_test")
        .tokenizer          sentencepiece: the run's own copy when resuming, else config.data.tokenizer
                            if set, else the dataset's (trained on its training captions, saved beside it)
        .class_names        text name of each zero-shot class ("red circle", "cat", ...); may be empty
        .name, .item        what the dataset is called, and what a retrieval hit shares ("scene", "image")
        .mirror_text        how a caption follows a horizontal flip (shapes only; None: no flips)
      shapes also has .answer_vocabulary(), .question_types and .parse_caption (VQA, captioning).

Building the dataset and training the tokenizer happen once; later runs find both on disk. In a
multi-process run only process 0 builds; the others wait for it at a barrier.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Sequence

import jax

from mmjax.data import folder, moving_shapes, shapes, sounds, tfds_sources
from mmjax.data.media_tfds import WORLD_CONFIGS, MovingShapes, Sounds, build_world, load_world_split, make_world_builder
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
    """The `shapes` world: structured truth for every caption, question and box."""

    data_dir: str
    image_size: int
    variant: dict[str, Any]
    tokenizer: Tokenizer
    tokenizer_path: str
    class_names: list[str]
    mirror_text: Callable[[str], str] = shapes.mirror_text
    parse_caption: Callable[[str], str | None] = shapes.parse_caption
    question_types: tuple[str, ...] = shapes.QUESTION_TYPES
    name: str = "shapes"
    item: str = "scene"  # a retrieval hit shows the same scene (same objects and properties)

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


@dataclasses.dataclass
class ImageTextData:
    """Images and captions without structured truth: a built folder dataset or a TFDS set.

    A retrieval hit is the same image (`scene_key` is the image's path or id); zero-shot classes
    are the labels of the dataset, if it has any. No caption is known to survive a flip.
    """

    name: str
    image_size: int
    tokenizer: Tokenizer
    tokenizer_path: str
    class_names: list[str]
    split_source: Callable[[str], Sequence[dict[str, Any]]]
    mirror_text: Callable[[str], str] | None = None
    parse_caption: Callable[[str], str | None] | None = None
    question_types: tuple[str, ...] = ()
    item: str = "image"

    def split(self, name: str) -> Sequence[dict[str, Any]]:
        return self.split_source(name)

    def answer_vocabulary(self) -> list[str]:
        raise ValueError(f"dataset {self.name} has no questions and answers: the VQA configs train on shapes "
                         "(config.data.name='shapes')")


def prepare_data(data_config: Any, build_if_missing: bool = True, tokenizer_path: str | None = None):
    """The dataset `config.data.name` names (see the module docstring), with its tokenizer.

    `tokenizer_path` overrides the tokenizer: a run evaluates and resumes with the one it was trained
    with (the copy in its run folder), whatever the data folder holds now.
    """
    name = data_config.get("name", "shapes")
    tokenizer_path = tokenizer_path or data_config.get("tokenizer") or None
    if name == "shapes":
        return prepare_shapes(data_config, build_if_missing, tokenizer_path)
    if name in ("moving_shapes", "sounds"):
        return prepare_media_world(data_config, build_if_missing, tokenizer_path)
    data_dir = os.path.abspath(data_config.data_dir)
    if folder.is_folder_dataset(data_dir, name):
        return _prepare_folder(data_config, name, data_dir, tokenizer_path)
    return _prepare_tfds_image_text(data_config, name, data_dir, tokenizer_path)


def _prepare_folder(data_config: Any, name: str, data_dir: str, tokenizer_path: str | None) -> ImageTextData:
    path = folder.dataset_path(data_dir, name)
    with open(os.path.join(path, "summary.json"), encoding="utf-8") as file:
        built_size = json.load(file)["image_size"]
    if built_size != data_config.image_size:
        raise ValueError(f"dataset {name} in {data_dir} holds {built_size} px images but config.data.image_size is "
                         f"{data_config.image_size}: set --config.data.image_size={built_size}, or rebuild it with "
                         f"--image-size {data_config.image_size}")
    with open(os.path.join(path, "class_names.json"), encoding="utf-8") as file:
        class_names = json.load(file)
    tokenizer_path = tokenizer_path or os.path.join(path, "tokenizer.model")
    return ImageTextData(name=name, image_size=built_size, tokenizer=Tokenizer.load(tokenizer_path),
                         tokenizer_path=tokenizer_path, class_names=class_names,
                         split_source=functools.partial(folder.load_folder_split, data_dir, name))


def _prepare_tfds_image_text(data_config: Any, name: str, data_dir: str, tokenizer_path: str | None) -> ImageTextData:
    def split(split_name: str):
        return tfds_sources.image_text_split(name, split_name, data_dir, data_config.image_size)

    if tokenizer_path is None:
        tokenizer_path = os.path.join(data_dir, name, f"tokenizer_{data_config.vocab_size}.model")
    if not os.path.exists(tokenizer_path):
        if jax.process_index() == 0:
            train = split("train")
            texts = [c for i in range(min(len(train), _TOKENIZER_EXAMPLES)) for c in train[i]["captions"]]
            train_tokenizer(texts, data_config.vocab_size, tokenizer_path)
        _barrier("tokenizer_trained")
    return ImageTextData(name=name, image_size=data_config.image_size, tokenizer=Tokenizer.load(tokenizer_path),
                         tokenizer_path=tokenizer_path, class_names=[], split_source=split)


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
    fields = ("captions",) if corpus == "captions" else ("captions", "questions", "answers")
    _fit_tokenizer_once(train, fields, data_config.vocab_size, tokenizer_path)
    return ShapesData(
        data_dir=data_dir,
        image_size=data_config.image_size,
        variant=variant,
        tokenizer=Tokenizer.load(tokenizer_path),
        tokenizer_path=tokenizer_path,
        class_names=shapes.class_names(),
    )


def _fit_tokenizer_once(train: Sequence[dict[str, Any]], fields: tuple[str, ...], vocab_size: int,
                        tokenizer_path: str) -> None:
    """Trains a sentencepiece model on the texts of the first training examples, unless it exists."""
    if not os.path.exists(tokenizer_path):
        if jax.process_index() == 0:
            n = min(len(train), _TOKENIZER_EXAMPLES)
            texts = [t.decode("utf-8") if isinstance(t, bytes) else t
                     for i in range(n) for field in fields for t in train[i][field]]
            train_tokenizer(texts, vocab_size, tokenizer_path)
        _barrier("tokenizer_trained")


@dataclasses.dataclass
class MediaWorldData:
    """A video or audio world (`moving_shapes`, `sounds`): clips with captions and structured truth.

    `shows[m]` names the example field that says what modality m shows: a retrieval hit between
    two modalities shares the coarser of the two (`hit_key`). A caption and a video show the whole
    scene ("scene_key"); a moving-shapes sound shows only which shapes of which size moved, in
    order ("sound_key"): it cannot carry colour or direction.
    """

    name: str
    builder_class: type
    data_dir: str
    variant: dict[str, Any]
    tokenizer: Tokenizer
    tokenizer_path: str
    class_names: list[str]
    shows: dict[str, str]
    mirror_text: Callable[[str], str] | None = None
    parse_caption: Callable[[str], str | None] | None = None
    question_types: tuple[str, ...] = ()
    item: str = "clip"

    def split(self, name: str) -> Sequence[dict[str, Any]]:
        return load_world_split(self.builder_class, self.data_dir, name, **self.variant)

    def hit_key(self, a: str, b: str) -> str:
        """The example field two retrieved items must share for modalities a and b to count a hit."""
        keys = {self.shows[a], self.shows[b]}
        return "scene_key" if keys == {"scene_key"} else (keys - {"scene_key"}).pop()

    def answer_vocabulary(self) -> list[str]:
        raise ValueError(f"dataset {self.name} has no questions and answers: the VQA configs train on shapes")


def _media_variant(data_config: Any, world_config: type) -> dict[str, Any]:
    """The config.data fields that pick a variant of a world: split sizes and world fields."""
    names = {f"num_{split}" for split in shapes.SPLITS} | {f.name for f in dataclasses.fields(world_config)}
    return {k: data_config[k] for k in data_config.keys() if k in names}


def prepare_media_world(data_config: Any, build_if_missing: bool = True,
                        tokenizer_path: str | None = None) -> MediaWorldData:
    """Builds (if allowed and missing) and opens `moving_shapes` or `sounds`, and their tokenizer."""
    name = data_config.name
    builder_class = {"moving_shapes": MovingShapes, "sounds": Sounds}[name]
    variant = _media_variant(data_config, WORLD_CONFIGS[builder_class])
    data_dir = os.path.abspath(data_config.data_dir)
    if build_if_missing:
        if jax.process_index() == 0:
            build_world(builder_class, data_dir, **variant)
        _barrier(f"{name}_built")
    builder = make_world_builder(builder_class, data_dir, **variant)
    train = load_world_split(builder_class, data_dir, "train", **variant)
    tokenizer_path = tokenizer_path or os.path.join(
        os.fspath(builder.data_path), f"tokenizer_{data_config.vocab_size}.model")
    _fit_tokenizer_once(train, ("captions",), data_config.vocab_size, tokenizer_path)
    if builder_class is MovingShapes:
        world, shows = moving_shapes, {"video": "scene_key", "audio": "sound_key", "text": "scene_key"}
        mirror = shapes.mirror_text  # "moves left" becomes "moves right" in a mirrored clip
    else:
        world, shows, mirror = sounds, {"audio": "scene_key", "text": "scene_key"}, None
    return MediaWorldData(name=name, builder_class=builder_class, data_dir=data_dir, variant=variant,
                          tokenizer=Tokenizer.load(tokenizer_path), tokenizer_path=tokenizer_path,
                          class_names=world.class_names(), shows=shows, mirror_text=mirror,
                          parse_caption=world.parse_caption)


def _media_world(data_config: Any) -> Any:
    """The world config (MovingShapesConfig or SoundsConfig) that `data_config` describes."""
    builder_class = {"moving_shapes": MovingShapes, "sounds": Sounds}.get(data_config.get("name"))
    if builder_class is None:
        raise ValueError(f"config.data.name must be 'moving_shapes' or 'sounds' for a video or audio model; "
                         f"got {data_config.get('name')!r}")
    split_sizes = {f"num_{split}" for split in shapes.SPLITS}
    world_fields = _media_variant(data_config, WORLD_CONFIGS[builder_class])
    return WORLD_CONFIGS[builder_class](**{k: v for k, v in world_fields.items() if k not in split_sizes})


def media_sample_rate(data_config: Any) -> int:
    """The sample rate of the audio of the world `data_config` names."""
    return _media_world(data_config).sample_rate


def media_shapes(data_config: Any) -> dict[str, tuple[int, ...]]:
    """Per-example shape of each medium of the world `data_config` names (without building it):
    {"video": (T, S, S, 3), "audio": (samples,)} for moving_shapes, {"audio": (samples,)} for sounds."""
    world = _media_world(data_config)
    if isinstance(world, moving_shapes.MovingShapesConfig):
        return {"video": (world.num_frames, world.image_size, world.image_size, 3), "audio": (world.num_samples,)}
    return {"audio": (world.num_samples,)}


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
