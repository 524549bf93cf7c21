"""Image preprocessing of pretrained CLIP models: resize the shortest side, center crop, normalise.

A pretrained model only gives its published numbers on inputs prepared the way it was trained:

    PIL image (any size, any mode)
      -> resize so the shortest side is `resize_size`, bicubic (PIL's own filter)
      -> center crop [image_size, image_size]
      -> RGB, uint8 [image_size, image_size, 3]
      -> x / 255, then (x - mean) / std per channel      float32 [image_size, image_size, 3]

with OpenAI's channel statistics of its training set (`OPENAI_CLIP_MEAN`, `OPENAI_CLIP_STD`).
The result is channels-last, as mmjax's ViT takes it (PyTorch models take channels first).

Two codebases, two conventions, both reproduced exactly because they differ by a pixel:

- "torchvision" (OpenAI's `clip.py` and open_clip): resize, crop, then convert to RGB. The crop's
  top-left corner is `round((size - crop) / 2)` with Python's round-half-to-even.
- "hf" (Hugging Face's `CLIPImageProcessor`): convert to RGB, resize, crop. The corner is
  `(size - crop) // 2`.
For a 427x640 photograph resized to 224x335, the first takes columns 56..279, the second 55..278.
In both, the long side is `int(resize_size * long / short)` (truncated, not rounded).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

# OpenAI's CLIP training-set statistics, used by every OpenAI-trained and most open_clip models.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CONVENTIONS = ("torchvision", "hf")
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def resized_size(height: int, width: int, shortest_side: int) -> tuple[int, int]:
    """(height, width) after scaling the shortest side to `shortest_side`, the other truncated.

    This is torchvision's `Resize(int)` and Hugging Face's `shortest_edge` arithmetic, e.g.
    (427, 640) -> (224, 335) because 224 · 640 / 427 = 335.7.
    """
    if height <= width:
        return shortest_side, int(shortest_side * width / height)
    return int(shortest_side * height / width), shortest_side


def crop_offset(size: int, crop: int, convention: str) -> int:
    """First row (or column) of a centered crop of length `crop` out of `size`."""
    if convention == "torchvision":
        return int(round((size - crop) / 2.0))
    return (size - crop) // 2


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """How a model wants its images. `__call__(image)` -> float32 [image_size, image_size, 3].

    Attributes:
      image_size: side of the square crop the model sees (224 for ViT-B/32).
      resize_size: the shortest side before cropping; defaults to `image_size`.
      mean, std: per-channel statistics, applied after scaling pixels to [0, 1].
      interpolation: "bicubic" (every OpenAI and Hugging Face CLIP) or "bilinear".
      convention: "torchvision" (OpenAI, open_clip) or "hf" (Hugging Face); see the module doc.
    """

    image_size: int
    resize_size: int | None = None
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    convention: str = "torchvision"

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}; got {self.convention!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}; got {self.interpolation!r}")
        if (self.resize_size or self.image_size) < self.image_size:
            raise ValueError(
                f"resize_size {self.resize_size} is smaller than the crop {self.image_size}: "
                "the shortest side must be at least the crop size"
            )

    def resize_and_crop(self, image: Image.Image) -> np.ndarray:
        """A PIL image -> uint8 [image_size, image_size, 3] RGB pixels, before normalisation."""
        if self.convention == "hf":
            image = image.convert("RGB")
        height, width = resized_size(image.height, image.width, self.resize_size or self.image_size)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), INTERPOLATIONS[self.interpolation])
        top = crop_offset(height, self.image_size, self.convention)
        left = crop_offset(width, self.image_size, self.convention)
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [..., 3] -> float32 (pixels / 255 - mean) / std."""
        x = np.asarray(pixels, np.float32) / np.float32(255.0)
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.normalize(self.resize_and_crop(image))


def load_image(path: str) -> Image.Image:
    """Opens an image file, decoding it fully now (so a broken file fails here, naming it)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
