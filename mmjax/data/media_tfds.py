"""The `moving_shapes` (video) and `sounds` (audio) worlds written to disk once as TFDS datasets.

    build_world(MovingShapes, data_dir)                   generate every split, write ArrayRecord
      -> data_dir/moving_shapes/default/1.0.0/moving_shapes-train.array_record-00000-of-00001, ...
    load_world_split(MovingShapes, data_dir, "train")     a random-access source: len(), source[i]

They are built like `shapes` (see `shapes_tfds`, which says why a generated world is written at
all): ArrayRecord files, read through `as_data_source()` without TensorFlow, written into a
temporary folder that is renamed only once complete. A variant of a world (other split sizes or
world fields) gets a config named after what it changes ("train200-seed3"), never overwriting
the standard one ("default").

How the media are stored (TFDS features that decode with NumPy and PIL alone):
  video   the T frames stacked top to bottom as one PNG, [T·S, S, 3]; `load_world_split`
          gives back uint8 [T, S, S, 3]. A PNG of the strip is lossless and about half the raw
          size (the backgrounds are noisy); TFDS's Video feature would need ffmpeg.
  audio   int16 PCM samples [num_samples] (2 bytes a sample); the model turns them into a
          log-mel spectrogram itself (`mmjax.models.audio`).

Example of `moving_shapes` (n = objects): index, video, audio, captions [bytes], scene_key,
sound_key, label, object_shape / object_colour / object_size / object_direction int64 [n],
object_start_box / object_end_box float32 [n, 4], background uint8 [3].
Example of `sounds` (n = events): index, audio, captions, scene_key, label, event_kind /
event_pitch / event_duration int64 [n], event_start / event_length float32 [n].
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mmjax.data import moving_shapes, shapes, sounds
from mmjax.data.generated_builder import GeneratedDatasetMessages

DEFAULT_SPLIT_SIZES = {"train": 10_000, "validation": 1_000, "test": 1_000, "compositional_test": 1_000}


@dataclasses.dataclass(eq=False)
class WorldBuilderConfig(tfds.core.BuilderConfig):
    """A TFDS config: the world's config dataclass (`world`) and each split's size."""

    world: Any = None
    split_sizes: dict[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPLIT_SIZES))


def variant_name(world: Any, split_sizes: dict[str, int]) -> str:
    """"default" for the standard world and sizes, else what differs: "train200-seed3"."""
    parts = [f"{split}{n}" for split, n in split_sizes.items() if n != DEFAULT_SPLIT_SIZES[split]]
    default_world = type(world)()
    for field in dataclasses.fields(world):
        value = getattr(world, field.name)
        if value != getattr(default_world, field.name):
            parts.append(f"{field.name}{value}".replace(" ", "").replace("'", ""))
    return "-".join(parts) or "default"


class _WorldBuilder(GeneratedDatasetMessages, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What the two worlds' builders share: versions, splits, generation; each adds its features."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    code_path = None  # nothing is downloaded, so no checksums file is looked for (see shapes_tfds)
    WORLD: ClassVar[Any]  # the world's module: generate_example(config, split, index)
    DESCRIPTION: ClassVar[str]

    def _world_features(self) -> dict[str, Any]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "index": np.int64,
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "scene_key": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=self.WORLD.class_names()),
            **self._world_features(),
        }
        return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                     features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # nothing to download: the data is drawn
        return {split: self._generate_examples(split, n) for split, n in self.builder_config.split_sizes.items()}

    def _generate_examples(self, split: str, num_examples: int) -> Iterator[tuple[int, dict]]:
        for index in range(num_examples):
            example = self.WORLD.generate_example(self.builder_config.world, split, index)
            record = {"index": index, "captions": example["captions"], "scene_key": example["scene_key"],
                      "label": example["label"]}
            yield index, {**record, **self._encode(example)}

    def _encode(self, example: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


def _audio_feature(num_samples: int) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(num_samples,), dtype=np.int16)


class MovingShapes(_WorldBuilder, skip_registration=True):
    """TFDS builder of `moving_shapes` (see `mmjax.data.moving_shapes`)."""

    WORLD = moving_shapes
    BUILDER_CONFIGS = [WorldBuilderConfig(name="default", world=moving_shapes.MovingShapesConfig())]
    DEFAULT_CONFIG_NAME = "default"
    DESCRIPTION = ("Synthetic clips of coloured shapes that move one after the other, each making the sound of "
                   "its shape, with captions true by construction (mmjax.data.moving_shapes).")

    def _world_features(self) -> dict[str, Any]:
        world = self.builder_config.world
        size, frames = world.image_size, world.num_frames
        objects = tfds.features.Tensor(shape=(None,), dtype=np.int64)
        boxes = tfds.features.Tensor(shape=(None, 4), dtype=np.float32)
        return {
            "video": tfds.features.Image(shape=(frames * size, size, 3), encoding_format="png"),
            "audio": _audio_feature(world.num_samples),
            "sound_key": tfds.features.Text(),
            "object_shape": objects, "object_colour": objects, "object_size": objects,
            "object_direction": objects, "object_start_box": boxes, "object_end_box": boxes,
            "background": tfds.features.Tensor(shape=(3,), dtype=np.uint8),
        }

    def _encode(self, example: dict[str, Any]) -> dict[str, Any]:
        video = example["video"]
        png = io.BytesIO()
        Image.fromarray(video.reshape(-1, *video.shape[2:])).save(png, format="PNG")
        fields = ("audio", "sound_key", "object_shape", "object_colour", "object_size", "object_direction",
                  "object_start_box", "object_end_box", "background")
        return {"video": png.getvalue(), **{k: example[k] for k in fields}}


class Sounds(_WorldBuilder, skip_registration=True):
    """TFDS builder of `sounds` (see `mmjax.data.sounds`)."""

    WORLD = sounds
    BUILDER_CONFIGS = [WorldBuilderConfig(name="default", world=sounds.SoundsConfig())]
    DEFAULT_CONFIG_NAME = "default"
    DESCRIPTION = ("Synthetic clips of tones, sweeps, buzzes, trills and noise bursts in sequence, with captions "
                   "true by construction (mmjax.data.sounds).")

    def _world_features(self) -> dict[str, Any]:
        events = tfds.features.Tensor(shape=(None,), dtype=np.int64)
        times = tfds.features.Tensor(shape=(None,), dtype=np.float32)
        return {
            "audio": _audio_feature(self.builder_config.world.num_samples),
            "event_kind": events, "event_pitch": events, "event_duration": events,
            "event_start": times, "event_length": times,
        }

    def _encode(self, example: dict[str, Any]) -> dict[str, Any]:
        fields = ("audio", "event_kind", "event_pitch", "event_duration", "event_start", "event_length")
        return {k: example[k] for k in fields}


# --- Building and loading -------------------------------------------------------------------------

WORLD_CONFIGS = {MovingShapes: moving_shapes.MovingShapesConfig, Sounds: sounds.SoundsConfig}


def make_world_builder(builder_class: type[_WorldBuilder], data_dir: str | os.PathLike,
                       **overrides: Any) -> _WorldBuilder:
    """The builder of this world variant: split sizes (num_train, ...) and world fields (seed, ...)."""
    sizes = dict(DEFAULT_SPLIT_SIZES)
    world_fields = {}
    for name, value in overrides.items():
        split = name.removeprefix("num_")
        if name.startswith("num_") and split in sizes:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"num_{split} must be an int >= 1; got {value!r}")
            sizes[split] = value
        else:
            world_fields[name] = value
    world_class = WORLD_CONFIGS[builder_class]
    known = {f.name for f in dataclasses.fields(world_class)}
    unknown = sorted(set(world_fields) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} of the {builder_class.name} world; "
                         f"{world_class.__name__} has {sorted(known)}")
    world = world_class(**world_fields)
    name = variant_name(world, sizes)
    config = name if name == "default" else WorldBuilderConfig(name=name, world=world, split_sizes=sizes)
    return builder_class(data_dir=os.fspath(data_dir), config=config)


def build_world(builder_class: type[_WorldBuilder], data_dir: str | os.PathLike, **overrides: Any) -> _WorldBuilder:
    """Generates and writes every split once (a later call finds it built); returns the builder."""
    builder = make_world_builder(builder_class, data_dir, **overrides)
    if not builder.is_prepared():
        print(f"Building the {builder.name} dataset in {builder.data_dir} (once; later runs read it).",
              file=sys.stderr)
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP),
        )
    return builder


class _Clips(Sequence):
    """A split whose "video" strips [T·S, S, 3] are handed out as clips [T, S, S, 3]."""

    def __init__(self, source: Sequence, num_frames: int):
        self._source, self._num_frames = source, num_frames

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = dict(self._source[index])
        strip = np.asarray(example["video"])
        example["video"] = strip.reshape(self._num_frames, strip.shape[0] // self._num_frames, *strip.shape[1:])
        return example


def load_world_split(builder_class: type[_WorldBuilder], data_dir: str | os.PathLike, split: str = "train",
                     **overrides: Any) -> Sequence[dict[str, Any]]:
    """A random-access source of one built split (FileNotFoundError, saying how to build it, if absent)."""
    if split not in shapes.SPLITS:
        raise ValueError(f"split must be one of {shapes.SPLITS}; got {split!r}")
    builder = make_world_builder(builder_class, data_dir, **overrides)
    if not builder.is_prepared():
        args = ", ".join([repr(os.fspath(data_dir))] + [f"{k}={v!r}" for k, v in overrides.items()])
        raise FileNotFoundError(
            f"the {builder.name} dataset (config {builder.builder_config.name!r}) is not built in "
            f"{os.fspath(data_dir)!r}. Build it with:\n  python -c \"from mmjax.data.media_tfds import "
            f"build_world, {builder_class.__name__}; build_world({builder_class.__name__}, {args})\"")
    source = builder.as_data_source(split=split)
    if builder_class is MovingShapes:
        return _Clips(source, builder.builder_config.world.num_frames)
    return source
