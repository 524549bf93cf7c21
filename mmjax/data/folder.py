"""Your own images and captions as a dataset: a folder becomes a TFDS ArrayRecord dataset, once.

    python -m mmjax.data.build --input photos/ --output data/ --name my_photos --image-size 224

    photos/                       any layout, images at any depth
      captions.jsonl              {"image": "2024/cat.jpg", "caption": "a cat on a mat", "label": "cat"}
                                  ("caption": a string or a list of strings; "label" optional)
      (or captions.csv)           image,caption,label   (a header line; one row per caption)
    ->
    data/my_photos/1.0.0/         the TFDS dataset (ArrayRecord files, dataset_info.json)
    data/my_photos/summary.json   what was kept, converted, truncated and skipped, and why
    data/my_photos/tokenizer.model   sentencepiece, trained on the training captions
    data/my_photos/class_names.json  the labels, in class-id order (when the manifest has labels)

Each example: `image` uint8 [S, S, 3] (the shorter side resized to S, then the centre S x S),
`captions` (its captions, UTF-8), `scene_key` (the image's path: retrieval counts a hit when the
retrieved item is the same image) and `label` (class id, -1 without labels). The split into
`train` and `validation` hashes each image's path with the seed, so an image stays in its split
when others are added, and the same folder and seed give the same dataset.

Bad data, by rule. Every case is counted in summary.json, and the first 50 skipped paths are
listed with their reasons; `--strict` makes the first case an error naming the file instead.
    skipped    an image listed but missing, a zero-byte file, a file that does not decode
               (unreadable or truncated), a manifest line that is not valid (not JSON, no
               "image" or no caption), a path outside the input folder, an image with no
               non-empty caption, an image smaller than --min-size (when given)
    converted  greyscale, greyscale + alpha, RGBA, CMYK, palette and 16-bit images become RGB
               (transparent pixels on white; 16-bit values scaled to 8)
    upscaled   an image whose shorter side is under the image size (kept, resized up)
    truncated  a caption longer than --text-len tokens: its longest prefix of whole words that fits
    duplicates an image listed more than once: one example, with the captions of every listing
               (repeated captions once)
Empty captions are dropped (counted in `empty_captions`); an image left with none is skipped.

The build is all or nothing. Everything is written into a hidden staging folder beside the
target (`data/.my_photos.incomplete-<pid>`), which is renamed to `data/my_photos` only when the
dataset, the summary and the tokenizer are complete; an interrupted build leaves only the staging
folder, which the next build deletes before it starts. An existing dataset is never overwritten
unless `overwrite=True` (`--overwrite`), and then only after the new one is complete.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from mmjax.data.generated_builder import GeneratedDatasetMessages
from mmjax.data.tokenizer import Tokenizer, train_tokenizer

MANIFESTS = ("captions.jsonl", "captions.csv")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_LISTED = 50  # skipped paths listed in summary.json
VERSION = "1.0.0"


class BadDataError(ValueError):
    """--strict: a file or manifest line that breaks a rule; the message names it."""


@dataclasses.dataclass
class Entry:
    """One image of the manifest, with every caption listed for it."""

    image: str  # path relative to the input folder, normalised
    captions: list[str]
    label: str | None
    where: str  # "captions.jsonl line 12", for messages


@dataclasses.dataclass
class Summary:
    """What the build did: the counts of summary.json."""

    examples: int = 0
    train: int = 0
    validation: int = 0
    skipped: int = 0
    converted: int = 0
    upscaled: int = 0
    truncated: int = 0
    duplicates: int = 0
    empty_captions: int = 0
    converted_modes: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped_examples: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def skip(self, path: str, reason: str, strict: bool) -> None:
        if strict:
            raise BadDataError(f"{path}: {reason} (--strict stops at the first bad file; drop the flag to skip such files)")
        self.skipped += 1
        if len(self.skipped_examples) < MAX_LISTED:
            self.skipped_examples.append({"path": path, "reason": reason})


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """How a folder becomes a dataset (the command line's options; see the module docstring)."""

    image_size: int = 224
    validation_fraction: float = 0.1
    seed: int = 0
    text_len: int = 77
    vocab_size: int = 8000
    min_size: int = 0  # 0: upscale small images; N: skip images whose shorter side is < N
    strict: bool = False
    jpeg_quality: int = 95


# --- reading the manifest ----------------------------------------------------------------------------


def find_manifest(input_dir: str) -> str:
    """The path of captions.jsonl or captions.csv in `input_dir` (an error if neither or both)."""
    found = [name for name in MANIFESTS if os.path.isfile(os.path.join(input_dir, name))]
    if len(found) != 1:
        what = "neither" if not found else "both"
        raise FileNotFoundError(
            f"{input_dir} has {what} of {' and '.join(MANIFESTS)}: put exactly one manifest there, one "
            'line per image: {"image": "path/relative/to/the/folder.jpg", "caption": "..."} '
            "(or a CSV with columns image,caption[,label])"
        )
    return os.path.join(input_dir, found[0])


def read_manifest(input_dir: str, summary: Summary, strict: bool = False) -> list[Entry]:
    """The manifest's images in first-listed order; bad lines skipped (counted) or, strict, an error.

    An image listed more than once becomes one entry with all its captions (counted as duplicates).
    """
    path = find_manifest(input_dir)
    name = os.path.basename(path)
    rows = _jsonl_rows(path) if name.endswith(".jsonl") else _csv_rows(path)
    entries: dict[str, Entry] = {}
    for line, row in rows:
        where = f"{name} line {line}"
        if isinstance(row, str):  # a parse error
            summary.skip(where, row, strict)
            continue
        image, captions, label = row.get("image"), row.get("caption"), row.get("label")
        if not isinstance(image, str) or not image.strip():
            summary.skip(where, 'no "image" path', strict)
            continue
        if captions is None:
            summary.skip(where, 'no "caption"', strict)
            continue
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            summary.skip(where, '"caption" must be a string or a list of strings', strict)
            continue
        relative = _inside(input_dir, image)
        if relative is None:
            summary.skip(image, f"outside the input folder ({where})", strict)
            continue
        kept = [" ".join(c.split()) for c in captions]
        summary.empty_captions += sum(not c for c in kept)
        kept = [c for c in kept if c]
        label = None if label in (None, "") else str(label)
        if relative in entries:
            summary.duplicates += 1
            entry = entries[relative]
            entry.captions += [c for c in kept if c not in entry.captions]
            continue
        entries[relative] = Entry(relative, list(dict.fromkeys(kept)), label, where)
    return list(entries.values())


def _jsonl_rows(path: str) -> Iterator[tuple[int, dict | str]]:
    with open(path, encoding="utf-8") as file:
        for line, text in enumerate(file, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                yield line, f"not valid JSON ({error.msg})"
                continue
            yield line, row if isinstance(row, dict) else "not a JSON object"


def _csv_rows(path: str) -> Iterator[tuple[int, dict | str]]:
    with open(path, encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        missing = {"image", "caption"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: the header line must name the columns image,caption[,label]; "
                             f"missing {sorted(missing)} (found {reader.fieldnames})")
        for row in reader:
            yield reader.line_num, {k: v for k, v in row.items() if k is not None}


def _inside(root: str, path: str) -> str | None:
    """`path` relative to `root`, normalised; None if it leaves `root` (absolute, or via ..)."""
    if os.path.isabs(path):
        return None
    normalised = os.path.normpath(path.strip())
    if normalised.startswith(".." + os.sep) or normalised == "..":
        return None
    return normalised.replace(os.sep, "/")


# --- images ---------------------------------------------------------------------------------------------


def load_image(path: str, image_size: int, min_size: int = 0) -> tuple[np.ndarray | None, str | None, dict]:
    """(uint8 [S, S, 3], None, notes) for a good file, (None, reason, {}) for a bad one.

    notes: {"converted": original mode} and/or {"upscaled": True}. The image is turned upright
    (EXIF orientation), made RGB, its shorter side resized to S and its centre S x S kept.
    """
    if not os.path.exists(path):
        return None, "listed in the manifest but missing", {}
    if os.path.getsize(path) == 0:
        return None, "empty file (0 bytes)", {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()  # decode now: a truncated file fails here, not later
                image = ImageOps.exif_transpose(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        return None, f"cannot be decoded as an image ({_one_line(error)})", {}
    notes: dict[str, Any] = {}
    if image.mode != "RGB":
        notes["converted"] = image.mode
        image = to_rgb(image)
    shorter = min(image.size)
    if min_size and shorter < min_size:
        return None, f"{image.size[0]}x{image.size[1]} is smaller than --min-size {min_size}", {}
    if shorter < image_size:
        notes["upscaled"] = True
    return resize_and_crop(image, image_size), None, notes


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency composited on white, 16/32-bit values scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_and_crop(image: Image.Image, size: int) -> np.ndarray:
    """The shorter side resized to `size` (bicubic, antialiased), then the centre size x size."""
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new, Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# --- captions and splits -------------------------------------------------------------------------------


def truncate_caption(caption: str, tokenizer: Tokenizer, text_len: int) -> tuple[str, bool]:
    """The caption, or its longest prefix of whole words whose tokens (with end-of-text) fit
    `text_len`; and whether it was cut."""
    if len(tokenizer.encode(caption)) <= text_len:
        return caption, False
    words = caption.split()
    low, high = 1, len(words) - 1  # the longest prefix that fits, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if len(tokenizer.encode(" ".join(words[:middle]))) <= text_len:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low]), True


def split_of(path: str, seed: int, validation_fraction: float) -> str:
    """"validation" for a fraction of paths, "train" for the rest: a hash of (seed, path), so an
    image keeps its split when others are added."""
    digest = hashlib.sha256(f"{seed}:{path}".encode("utf-8")).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction else "train"


# --- the TFDS builder ------------------------------------------------------------------------------------


class FolderDataset(GeneratedDatasetMessages, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The TFDS builder of a folder dataset; `folder_builder` makes one per dataset name.

    `examples` holds each split's prepared examples, their images as paths of JPEG files written
    by the first pass of the build (TFDS stores the bytes as they are).
    """

    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, examples: dict[str, Sequence[dict]] | None = None, **kwargs):
        self._examples = examples or {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Images and captions from a folder (mmjax.data.folder).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "scene_key": tfds.features.Text(),
                "label": np.int64,
            }),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self._examples}

    def _generate_examples(self, split: str):
        for example in self._examples[split]:
            with open(example["image"], "rb") as file:  # the encoded JPEG, stored as it is
                yield example["scene_key"], {**example, "image": file.read()}


def folder_builder(name: str) -> type[FolderDataset]:
    """The builder class of dataset `name` (TFDS names a dataset's folder after its builder)."""
    return type(f"FolderDataset_{name}", (FolderDataset,), {"name": name}, skip_registration=True)


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"--name {name!r}: a dataset name is lower-case letters, digits and _ , starting "
                         "with a letter (e.g. my_photos)")


def build_folder_dataset(input_dir: str, output_dir: str, name: str, options: BuildOptions = BuildOptions(),
                         overwrite: bool = False) -> Summary:
    """Builds `output_dir/name` from `input_dir` (see the module docstring); returns the summary."""
    check_name(name)
    input_dir, output_dir = os.path.abspath(input_dir), os.path.abspath(output_dir)
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"--input {input_dir} is not a folder")
    target = os.path.join(output_dir, name)
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists: pass --overwrite to replace it, or choose another --name")
    os.makedirs(output_dir, exist_ok=True)
    for stale in os.listdir(output_dir):  # what an interrupted build of this name left behind
        if stale.startswith(f".{name}.incomplete-"):
            shutil.rmtree(os.path.join(output_dir, stale), ignore_errors=True)
    staging = os.path.join(output_dir, f".{name}.incomplete-{os.getpid()}")
    try:
        summary = _build_into(staging, input_dir, name, options)
        _replace(os.path.join(staging, name), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _build_into(staging: str, input_dir: str, name: str, options: BuildOptions) -> Summary:
    summary = Summary()
    entries = read_manifest(input_dir, summary, options.strict)
    for entry in entries:
        if not entry.captions:
            summary.skip(entry.image, f"no non-empty caption ({entry.where})", options.strict)
    entries = [e for e in entries if e.captions]
    if not entries:
        raise ValueError(f"{input_dir}: no usable image in the manifest (see the reasons above: "
                         f"{summary.skipped_examples[:3]})")
    labels = sorted({e.label for e in entries if e.label is not None}, key=_label_order)
    class_id = {label: i for i, label in enumerate(labels)}

    # The tokenizer is fitted on the training captions, before any image is read.
    splits = {e.image: split_of(e.image, options.seed, options.validation_fraction) for e in entries}
    dataset_dir = os.path.join(staging, name)
    os.makedirs(dataset_dir)
    tokenizer = train_tokenizer([c for e in entries if splits[e.image] == "train" for c in e.captions],
                                options.vocab_size, os.path.join(dataset_dir, "tokenizer.model"))

    # Pass 1: every image read, checked and encoded once, into the staging folder (an image that
    # breaks a rule is counted here, so the splits' sizes are known before TFDS writes them).
    work = os.path.join(staging, "_images")
    os.makedirs(work)
    kept: dict[str, list[dict]] = {"train": [], "validation": []}
    for number, entry in enumerate(tqdm(entries, desc="images", unit="image", file=sys.stderr)):
        image, reason, notes = load_image(os.path.join(input_dir, entry.image), options.image_size, options.min_size)
        if image is None:
            summary.skip(entry.image, reason, options.strict)
            continue
        if "converted" in notes:
            summary.converted += 1
            summary.converted_modes[notes["converted"]] = summary.converted_modes.get(notes["converted"], 0) + 1
        summary.upscaled += bool(notes.get("upscaled"))
        captions = []
        for caption in entry.captions:
            caption, cut = truncate_caption(caption, tokenizer, options.text_len)
            summary.truncated += cut
            captions.append(caption)
        encoded = os.path.join(work, f"{number}.jpg")
        with open(encoded, "wb") as file:
            file.write(_jpeg(image, options.jpeg_quality))
        kept[splits[entry.image]].append({"image": encoded, "captions": captions, "scene_key": entry.image,
                                          "label": class_id.get(entry.label, -1)})
    summary.train, summary.validation = len(kept["train"]), len(kept["validation"])
    summary.examples = summary.train + summary.validation
    if not summary.train:
        raise ValueError(f"{input_dir}: no image is left for the training split ({summary.skipped} skipped; "
                         "lower --validation-fraction if they all fell into validation)")

    # Pass 2: TFDS writes the ArrayRecord files of each non-empty split. Its own progress bars
    # would name the staging folder; one line says what happens instead.
    print(f"Writing {summary.examples:,} examples as ArrayRecord files...", file=sys.stderr)
    builder = folder_builder(name)(data_dir=staging, examples={k: v for k, v in kept.items() if v})
    tfds.disable_progress_bar()
    try:
        builder.download_and_prepare(file_format="array_record")
    finally:
        tfds.enable_progress_bar()
    shutil.rmtree(work)
    with open(os.path.join(dataset_dir, "class_names.json"), "w", encoding="utf-8") as file:
        json.dump(labels, file)
    with open(os.path.join(dataset_dir, "summary.json"), "w", encoding="utf-8") as file:
        json.dump({**dataclasses.asdict(summary), "image_size": options.image_size,
                   "text_len": options.text_len, "seed": options.seed,
                   "validation_fraction": options.validation_fraction, "classes": len(labels),
                   "tokenizer_pieces": tokenizer.vocab_size}, file, indent=2)
    return summary


def _label_order(label: str):
    """Labels that are all integers sort as numbers ("2" before "10"), others as text."""
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _replace(new: str, target: str) -> None:
    """Renames `new` onto `target`; an existing target is moved aside first and deleted after."""
    aside = None
    if os.path.exists(target):
        aside = f"{target}.replaced-{os.getpid()}"
        os.rename(target, aside)
    os.rename(new, target)
    if aside:
        shutil.rmtree(aside, ignore_errors=True)


# --- reading a built dataset -------------------------------------------------------------------------------


def dataset_path(data_dir: str, name: str) -> str:
    return os.path.join(os.path.abspath(data_dir), name)


def is_folder_dataset(data_dir: str, name: str) -> bool:
    return os.path.isfile(os.path.join(dataset_path(data_dir, name), "summary.json"))


def load_folder_split(data_dir: str, name: str, split: str) -> Sequence[dict[str, Any]]:
    """A random-access source of one split of a built folder dataset."""
    directory = os.path.join(dataset_path(data_dir, name), VERSION)
    builder = tfds.builder_from_directory(directory)
    if split not in builder.info.splits:
        raise ValueError(f"dataset {name} in {data_dir} has no split {split!r}; it has "
                         f"{sorted(builder.info.splits)} (set config.eval.split)")
    return builder.as_data_source(split=split)
