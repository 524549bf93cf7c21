"""The `shapes` world (`shapes.py`) written to disk once as a TFDS dataset, read with random access.

    build_shapes(data_dir, image_size=64)          generate every split, write ArrayRecord files
      -> data_dir/shapes/64/1.0.0/shapes-train.array_record-00000-of-00001, ...
    load_split(data_dir, 64, "train")              -> a random-access source: len(), source[i]

Why write it at all, when `generate_example` is a cheap function? Because a training run then reads
finished examples (PNG-decoded images and text) from many threads or processes, every model sees
the identical bytes, and TFDS's `DatasetInfo` records the features and split sizes beside the data.

No TensorFlow is needed: the files are ArrayRecord (the default TFRecord format would call
TensorFlow to write and to read), images are handed to TFDS as PNG bytes (a NumPy array would be
encoded by TensorFlow), and reading goes through `builder.as_data_source()`, which decodes with
NumPy and PIL.

What an example of `load_split(...)` looks like (n = number of objects, S = image size; as TFDS
4.9 decodes them without TensorFlow):

    index           int                  which example of `generate_example(config, split, index)`
    image           np.ndarray uint8 [S, S, 3]
    captions        list[bytes]          num_captions UTF-8 texts
    questions       list[bytes]          num_questions UTF-8 texts
    answers         list[bytes]
    question_types  list[bytes]
    scene_key       bytes
    background      np.ndarray uint8 [3]  the scene's background tone
    objects         dict of lists, n entries each:
                      shape, colour, size, cell   np.int64 ClassLabel ids (indices into the
                                                  names in shapes.py)
                      box                         np.ndarray float32 [4]
    label           int                  class of the largest object (`shapes.class_names()`)
    boxes           np.ndarray float32 [n, 4]   normalised [y0, x0, y1, x1]
    box_labels      np.ndarray int64 [n]

`scene_from_example` turns one back into a `shapes.Scene`.

TFDS stores examples shuffled by their key, so `source[0]` is not example 0: use the `index`
feature to find which generated example a record is.

Writing is crash-safe: `download_and_prepare` writes into a temporary sibling directory
(`.../shapes/64/incomplete.XXXXXX_1.0.0/`) and renames it to `.../1.0.0/` only when every split and
the `dataset_info.json` are written. A killed build leaves no half-dataset behind (at most a stale
`incomplete.*` directory), and the next build starts over.

Which dataset a directory holds is named by its builder config: "32", "64" and "224" are the
standard ones (default split sizes and world); `make_builder` names any other variant after what
it changes, e.g. "64-train40-validation40-test40-compositional_test40-seed3", so variants never
collide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mmjax.data import shapes
from mmjax.data.generated_builder import GeneratedDatasetMessages

DEFAULT_SPLIT_SIZES = {
    "train": 20_000,
    "validation": 1_000,
    "test": 1_000,
    "compositional_test": 1_000,
}
STANDARD_IMAGE_SIZES = (32, 64, 224)


@dataclasses.dataclass(eq=False)
class ShapesBuilderConfig(tfds.core.BuilderConfig):
    """A TFDS config: the world to draw (`world`) and how many examples each split has."""

    world: shapes.ShapesConfig = shapes.ShapesConfig()
    split_sizes: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_SPLIT_SIZES)
    )


def _config_name(world: shapes.ShapesConfig, split_sizes: dict[str, int]) -> str:
    """The config name: "64" (standard), or "64-" + what differs, e.g. "64-train40-seed3"."""
    parts = [str(world.image_size)]
    parts += [f"{split}{n}" for split, n in split_sizes.items() if n != DEFAULT_SPLIT_SIZES[split]]
    default_world = shapes.ShapesConfig(image_size=world.image_size)
    for field in dataclasses.fields(world):
        value = getattr(world, field.name)
        if value == getattr(default_world, field.name):
            continue
        if field.name == "heldout_pairs":  # too long for a name: a short stable digest instead
            value = hashlib.sha256(repr(value).encode()).hexdigest()[:8]
        parts.append(f"{field.name}{value}")
    return "-".join(parts)


def _builder_config(world: shapes.ShapesConfig, split_sizes: dict[str, int]) -> ShapesBuilderConfig:
    return ShapesBuilderConfig(
        name=_config_name(world, split_sizes),
        description=f"{world.image_size}x{world.image_size} images; splits {split_sizes}; {world}",
        world=world,
        split_sizes=dict(split_sizes),
    )


class Shapes(GeneratedDatasetMessages, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder of the `shapes` benchmark (see `mmjax.data.shapes`).

    Not registered in TFDS's global registry (`skip_registration`): it is built by direct reference
    (`make_builder`), so a reader can always jump to the definition.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        _builder_config(shapes.ShapesConfig(image_size=size), DEFAULT_SPLIT_SIZES)
        for size in STANDARD_IMAGE_SIZES
    ]
    DEFAULT_CONFIG_NAME = "64"
    # Where TFDS would look for a checksums file of downloads: there are no downloads. (Finding the
    # source file of a builder in a package also makes TFDS 4.9 import `importlib_resources`, a
    # package it does not require on Python >= 3.9.)
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.world.image_size
        texts = tfds.features.Sequence(tfds.features.Text())
        features = tfds.features.FeaturesDict(
            {
                "index": np.int64,
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                "captions": texts,
                "questions": texts,
                "answers": texts,
                "question_types": texts,
                "scene_key": tfds.features.Text(),
                "background": tfds.features.Tensor(shape=(3,), dtype=np.uint8),
                "objects": tfds.features.Sequence(
                    {
                        "shape": tfds.features.ClassLabel(names=shapes.SHAPE_NAMES),
                        "colour": tfds.features.ClassLabel(names=shapes.COLOUR_NAMES),
                        "size": tfds.features.ClassLabel(names=shapes.SIZE_NAMES),
                        "cell": tfds.features.ClassLabel(names=shapes.CELL_NAMES),
                        "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                    }
                ),
                "label": tfds.features.ClassLabel(names=shapes.class_names()),
                "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                "box_labels": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Synthetic scenes of coloured shapes on a 3x3 grid with captions, questions and "
                "answers, class labels and boxes, all true by construction (mmjax.data.shapes). "
                "The compositional_test split holds colour-shape pairs never seen in the others."
            ),
            features=features,
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # nothing to download: the data is drawn
        return {
            split: self._generate_examples(split, n)
            for split, n in self.builder_config.split_sizes.items()
        }

    def _generate_examples(self, split: str, num_examples: int) -> Iterator[tuple[int, dict]]:
        world = self.builder_config.world
        for index in range(num_examples):
            example = shapes.generate_example(world, split, index)
            yield index, to_tfds_example(example, index)


def to_tfds_example(example: dict[str, Any], index: int) -> dict[str, Any]:
    """`shapes.generate_example`'s dict -> the values TFDS encodes (the image as PNG bytes)."""
    png = io.BytesIO()
    Image.fromarray(example["image"]).save(png, format="PNG")
    scene = example["scene"]
    return {
        "index": index,
        "image": png.getvalue(),
        "captions": example["captions"],
        "questions": example["questions"],
        "answers": example["answers"],
        "question_types": example["question_types"],
        "scene_key": example["scene_key"],
        "background": np.asarray(scene.background, np.uint8),
        "objects": [
            {
                "shape": o.shape,
                "colour": o.colour,
                "size": o.size,
                "cell": o.cell,
                "box": np.asarray(o.box, np.float32),
            }
            for o in scene.objects
        ],
        "label": example["label"],
        "boxes": example["boxes"],
        "box_labels": example["box_labels"],
    }


def scene_from_example(example: dict[str, Any]) -> shapes.Scene:
    """The `shapes.Scene` of an example read by `load_split` (its boxes rounded to float32)."""
    objects = example["objects"]
    return shapes.Scene(
        objects=tuple(
            shapes.ShapeObject(
                shape=int(objects["shape"][i]),
                colour=int(objects["colour"][i]),
                size=int(objects["size"][i]),
                cell=int(objects["cell"][i]),
                box=tuple(float(v) for v in objects["box"][i]),
            )
            for i in range(len(objects["shape"]))
        ),
        background=tuple(int(v) for v in example["background"]),
    )


# --- Building and loading -------------------------------------------------------------------------


def _split_sizes(
    num_train: int, num_validation: int, num_test: int, num_compositional_test: int
) -> dict[str, int]:
    sizes = {
        "train": num_train,
        "validation": num_validation,
        "test": num_test,
        "compositional_test": num_compositional_test,
    }
    for split, n in sizes.items():
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"num_{split} must be an int >= 1; got {n!r}")
    return sizes


def make_builder(
    data_dir: str | os.PathLike,
    image_size: int = 64,
    *,
    num_train: int = DEFAULT_SPLIT_SIZES["train"],
    num_validation: int = DEFAULT_SPLIT_SIZES["validation"],
    num_test: int = DEFAULT_SPLIT_SIZES["test"],
    num_compositional_test: int = DEFAULT_SPLIT_SIZES["compositional_test"],
    **world_overrides: Any,
) -> Shapes:
    """The `Shapes` builder for these split sizes and world (nothing is generated or read yet).

    `world_overrides` are other `shapes.ShapesConfig` fields (seed, max_objects, ...). The standard
    variants get the class's configs "32" / "64" / "224"; others a config named after what differs.
    """
    world = shapes.ShapesConfig(image_size=image_size, **world_overrides)
    config = _builder_config(
        world, _split_sizes(num_train, num_validation, num_test, num_compositional_test)
    )
    standard = {c.name for c in Shapes.BUILDER_CONFIGS}
    # TFDS refuses a new config object named like a class config: pass the standard ones by name
    return Shapes(
        data_dir=os.fspath(data_dir), config=config.name if config.name in standard else config
    )


# The overrides `python -m mmjax.data.build_shapes` has a flag for (`--name value`).
CLI_OVERRIDES = (
    "num_train",
    "num_validation",
    "num_test",
    "num_compositional_test",
    "seed",
    "min_objects",
    "max_objects",
    "num_captions",
    "num_questions",
)


def build_command(data_dir: str | os.PathLike, image_size: int = 64, **overrides: Any) -> str:
    """The shell command that builds this dataset variant (used in error messages)."""
    data_dir = os.fspath(data_dir)
    if any(name not in CLI_OVERRIDES for name in overrides):  # e.g. heldout_pairs: no flag
        args = ", ".join(
            [repr(data_dir), str(image_size)] + [f"{k}={v!r}" for k, v in overrides.items()]
        )
        return f'python -c "from mmjax.data.shapes_tfds import build_shapes; build_shapes({args})"'
    command = f"python -m mmjax.data.build_shapes --data_dir {data_dir} --config {image_size}"
    return command + "".join(f" --{name} {value}" for name, value in overrides.items())


def build_shapes(data_dir: str | os.PathLike, image_size: int = 64, **overrides: Any) -> Shapes:
    """Generates and writes every split (ArrayRecord), unless already built; returns the builder.

    `overrides`: num_train, num_validation, num_test, num_compositional_test and
    `shapes.ShapesConfig` fields, as for `make_builder`. TFDS shows a progress bar per split.
    """
    builder = make_builder(data_dir, image_size, **overrides)
    if not builder.is_prepared():
        print(f"Building the shapes dataset in {builder.data_dir} (once; later runs read it).", file=sys.stderr)
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(
                compute_stats=tfds.download.ComputeStatsMode.SKIP
            ),
        )
    return builder


def load_split(
    data_dir: str | os.PathLike, image_size: int = 64, split: str = "train", **overrides: Any
) -> Sequence[dict[str, Any]]:
    """A random-access source of one built split: `len(source)`, `source[i]` -> example dict.

    The example dict is described in the module docstring. Raises FileNotFoundError, with the
    command that builds it, when the dataset variant is not in `data_dir`.
    """
    if split not in shapes.SPLITS:
        raise ValueError(f"split must be one of {shapes.SPLITS}; got {split!r}")
    builder = make_builder(data_dir, image_size, **overrides)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"the shapes dataset (config {builder.builder_config.name!r}) is not built in "
            f"{os.fspath(data_dir)!r} (expected {os.fspath(builder.data_path)!r}). Build it with:\n"
            f"  {build_command(data_dir, image_size, **overrides)}"
        )
    return builder.as_data_source(split=split)
