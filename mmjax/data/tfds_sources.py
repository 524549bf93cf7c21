"""TFDS datasets by name, read without TensorFlow: image-text sets to train on, labelled sets to
classify zero-shot.

    prepare_tfds("coco_captions", data_dir)      builds it once as ArrayRecord (or says how)
    ImageTextSource(builder, "train", 224)       examples as mmjax's pipeline reads them:
                                                 image uint8 [S, S, 3], captions, scene_key, label
    classification_set("cifar10", "test", data_dir)
        -> (source of {"image", "label"}, class names, CLIP's prompt templates for the set)

Preparing a TFDS dataset downloads its files, which a machine without network cannot do; TFDS then
looks in its manual folder (`--manual-dir`, default `<data_dir>/downloads/manual`) for files placed
there by hand, and the error says so. Once prepared (as ArrayRecord, `file_format="array_record"`),
reading goes through `as_data_source`, which decodes with NumPy and PIL: TensorFlow is needed at
most for preparing (some TFDS builders use it), never for training.

Class names are TFDS's label names made readable ("aquarium_fish" -> "aquarium fish"); the
prompt templates are those of the CLIP paper for the set (openai/CLIP, data/prompts.md), and the
generic "a photo of a {}." for others.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
from PIL import Image

from mmjax.data.folder import resize_and_crop

_CIFAR_TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
    "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
    "a photo of the small {}.", "a photo of the big {}.",
)
_CALTECH_TEMPLATES = (
    "a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.", "a sketch of a {}.",
    "a tattoo of a {}.", "a toy {}.", "a rendition of a {}.", "a embroidered {}.", "a cartoon {}.",
    "a {} in a video game.", "a plushie {}.", "a origami {}.", "art of a {}.", "graffiti of a {}.",
    "a drawing of a {}.", "a doodle of a {}.", "a photo of the {}.", "a painting of the {}.",
    "the plastic {}.", "a sculpture of the {}.", "a sketch of the {}.", "a tattoo of the {}.",
    "the toy {}.", "a rendition of the {}.", "the embroidered {}.", "the cartoon {}.",
    "the {} in a video game.", "the plushie {}.", "the origami {}.", "art of the {}.",
    "graffiti of the {}.", "a drawing of the {}.", "a doodle of the {}.",
)
# The CLIP paper's templates (openai/CLIP, data/prompts.md) for the sets TFDS has.
CLIP_TEMPLATES: dict[str, tuple[str, ...]] = {
    "cifar10": _CIFAR_TEMPLATES,
    "cifar100": _CIFAR_TEMPLATES,
    "caltech101": _CALTECH_TEMPLATES,
    "oxford_iiit_pet": ("a photo of a {}, a type of pet.",),
    "oxford_flowers102": ("a photo of a {}, a type of flower.",),
    "food101": ("a photo of {}, a type of food.",),
    "stl10": ("a photo of a {}.", "a photo of the {}."),
}
GENERIC_TEMPLATES = ("a photo of a {}.",)

# The label names of sets whose TFDS builders learn them from the downloaded files (an unprepared
# or mock-data builder only knows "0".."N-1"), in label order: the files' names, as CLIP used them.
KNOWN_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "cifar100": tuple("""
        apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
        camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
        dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
        leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
        otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
        rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
        sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
        willow_tree wolf woman worm""".split()),
}


def prepare_tfds(name: str, data_dir: str | None, manual_dir: str | None = None):
    """The TFDS builder of `name`, prepared as ArrayRecord in `data_dir` (once).

    A prepared dataset is read from its files alone (`read_only_builder.builder_from_files`:
    `<data_dir>/<name>/<default config>/<version>/dataset_info.json`), so neither the
    builder's code nor TensorFlow is needed; preparing may need both (COCO's builder imports
    TensorFlow). Raises FileNotFoundError saying what to do when it cannot be prepared here.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import read_only_builder

    root = data_dir or os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
    try:
        return read_only_builder.builder_from_files(name, data_dir=root)
    except tfds.core.registered.DatasetNotFoundError:  # not prepared in `root`: prepare it below
        pass
    command = f"python -m mmjax.data.build --tfds {name} --output DATA_DIR"
    manual = manual_dir or os.path.join(root, "downloads", "manual")  # where TFDS looks by default
    try:
        builder = tfds.builder(name, data_dir=root, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(f"TFDS has no dataset {name!r} ({str(error).splitlines()[0]})") from None
    except (ImportError, RuntimeError) as error:
        if "tensorflow" not in str(error).lower():
            raise
        raise FileNotFoundError(
            f"the TFDS dataset {name} is not prepared in {root}, and TFDS's code that prepares it needs "
            f"TensorFlow: pip install tensorflow and run `{command} --manual-dir {manual}` once, with "
            f"{_expected_files(name)} in {manual} when there is no network (or prepare it elsewhere and "
            f"copy DATA_DIR/{name} here); training reads the prepared files without TensorFlow"
        ) from None
    if builder.is_prepared():
        return builder
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    except Exception as error:  # noqa: BLE001 - network, missing manual files, checksums: all the same to the user
        raise FileNotFoundError(
            f"could not prepare the TFDS dataset {name} in {builder.data_dir} "
            f"({_first_line(error)}). Without network, TFDS reads the dataset's files from its manual "
            f"folder: put {_expected_files(name, builder.builder_config)} in {manual} (or pass --manual-dir), or prepare it "
            f"where there is network (`{command}`) and copy DATA_DIR/{name} here"
        ) from None
    return builder


def _expected_files(name: str, config: Any = None) -> str:
    """The files TFDS downloads for dataset `name`, for messages: read from the checksums file TFDS
    ships for it (`url size sha256 [filename]` lines, or `filename size sha256` for manual files), without constructing the builder,
    which may need TensorFlow. Where the file lists several configs' files, those that name the
    default config ("2014" for coco_captions) and those that name none are the ones meant."""
    import inspect

    import tensorflow_datasets as tfds

    names: list[str] = []
    try:
        cls = tfds.builder_cls(name)
        candidates = [os.path.join(os.path.dirname(inspect.getfile(cls)), "checksums.tsv"),
                      os.path.join(os.path.dirname(tfds.__file__), "url_checksums", f"{name}.txt")]
        config = config or (cls.BUILDER_CONFIGS[0] if getattr(cls, "BUILDER_CONFIGS", None) else None)
    except Exception:  # noqa: BLE001 - no such builder, or one that cannot be imported here
        candidates = []
    for path in candidates:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as file:
                rows = [line.split() for line in file if line.strip() and not line.startswith("#")]
            names = sorted({row[3] if len(row) > 3 and row[3] else row[0].rsplit("/", 1)[-1] for row in rows})
            break
    config_name = getattr(config, "name", None)
    if config_name and any(config_name in n for n in names):
        # Files of other configs name them ("train2017.zip" beside "train2014.zip"); files that
        # name no config (COCO's "caption_datasets.zip", the Karpathy splits) serve every one.
        others = {token for n in names for token in re.findall(r"\d{4}", n)} - {config_name}
        names = [n for n in names if config_name in n or not any(token in n for token in others)]
    if not names:
        return "its downloaded files"
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def readable(label: str) -> str:
    """A TFDS label name as a prompt says it: "aquarium_fish" -> "aquarium fish"."""
    return " ".join(label.replace("_", " ").split())


def classification_set(name: str, split: str, data_dir: str | None = None, manual_dir: str | None = None):
    """(random-access source of {"image", "label"}, class names, prompt templates) of a labelled
    TFDS set (cifar10, cifar100, imagenet2012, oxford_iiit_pet, caltech101, ...)."""
    builder = prepare_tfds(name, data_dir, manual_dir)
    if "label" not in builder.info.features:
        raise ValueError(f"TFDS dataset {name} has no 'label' feature: it is not a classification set")
    names = list(builder.info.features["label"].names)
    if names == [str(i) for i in range(len(names))] and len(KNOWN_CLASS_NAMES.get(name, ())) == len(names):
        names = list(KNOWN_CLASS_NAMES[name])
    names = [readable(n) for n in names]
    if builder.info.splits and split not in builder.info.splits:
        raise ValueError(f"TFDS dataset {name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split), names, CLIP_TEMPLATES.get(name, GENERIC_TEMPLATES)


def coco_example(example: dict[str, Any]) -> tuple[np.ndarray, list[str], str]:
    """(image, captions, image id) of a `coco_captions` example."""
    texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in example["captions"]["text"]]
    return np.asarray(example["image"]), texts, str(example["image/id"])


# How each image-text set's examples read: a function per TFDS name (a new set is one function).
IMAGE_TEXT_READERS: dict[str, Callable[[dict], tuple[np.ndarray, list[str], str]]] = {
    "coco_captions": coco_example,
}


class ImageTextSource(Sequence):
    """A split of a TFDS image-text set as mmjax's pipeline reads examples: `image` uint8 [S, S, 3]
    (the shorter side resized to S, the centre kept), `captions`, `scene_key` (the image's id: a
    retrieval hit is the same image) and `label` -1."""

    def __init__(self, source: Sequence, read: Callable[[dict], tuple[np.ndarray, list[str], str]], image_size: int):
        self._source, self._read, self.image_size = source, read, image_size

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, captions, key = self._read(self._source[index])
        captions = [c for c in captions if c.strip()]
        if not captions:  # training on an invented caption would teach the model a false pair
            raise ValueError(f"example {index} (image {key}) of this TFDS split has no non-empty caption")
        square = resize_and_crop(Image.fromarray(image).convert("RGB"), self.image_size)
        return {"image": square, "captions": captions, "scene_key": key, "label": -1}


def image_text_split(name: str, split: str, data_dir: str | None, image_size: int,
                     manual_dir: str | None = None) -> ImageTextSource:
    if name not in IMAGE_TEXT_READERS:
        raise ValueError(f"config.data.name={name!r} is not a dataset built in {data_dir} (build it with "
                         f"`python -m mmjax.data.build --input DIR --output {data_dir} --name {name}`, or set "
                         f"config.data.data_dir), nor a TFDS image-text set mmjax reads "
                         f"({', '.join(sorted(IMAGE_TEXT_READERS))}), nor 'shapes'")
    builder = prepare_tfds(name, data_dir, manual_dir)
    return ImageTextSource(builder.as_data_source(split=split), IMAGE_TEXT_READERS[name], image_size)


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."
