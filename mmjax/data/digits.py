"""A real-image benchmark that needs no download: scikit-learn's handwritten digits as a folder of
images with captions, in the form `python -m mmjax.data.build` reads.

    python -m mmjax.data.digits --output data/digits_folder
    python -m mmjax.data.build --input data/digits_folder --output data --name digits --image-size 32 \\
        --validation-fraction 0.25 --text-len 16 --vocab-size 256
    python train.py --config configs/clip_digits.py --workdir runs/clip_digits      (all three: make digits)

The 1,797 images are scans of digits written by 43 people (UCI's "Optical Recognition of
Handwritten Digits", as scikit-learn ships it): 8 x 8 pixels of 17 grey levels, which the build
turns into 32 x 32 RGB. Each image gets three captions written from its label by a small grammar
("a handwritten seven", "the digit 7, written by hand", ...): words and numerals, so that a
prompt may use either. The label names (zero ... nine) are the classes of zero-shot evaluation.
A quarter of the images, chosen by the build's hash of their paths, are held out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = (
    "a handwritten {word}",
    "the digit {numeral}, written by hand",
    "a scan of the handwritten digit {word}",
    "the number {word} written with a pen",
    "a {word} ({numeral}) drawn by hand",
    "handwriting of the numeral {numeral}",
)


def captions_for(label: int, rng: np.random.Generator, count: int = 3) -> list[str]:
    """`count` distinct captions of a digit, picked from the grammar."""
    picks = rng.choice(len(TEMPLATES), size=count, replace=False)
    return [TEMPLATES[i].format(word=WORDS[label], numeral=label) for i in picks]


def write_digits_folder(output: str, seed: int = 0) -> int:
    """Writes output/images/NNNN.png and output/captions.jsonl; returns the number of images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(output, "images"), exist_ok=True)
    lines = []
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        # 0..16 ink levels, dark ink on white paper as a scan shows it.
        image = Image.fromarray((255 - np.asarray(pixels) * 255 / 16).round().astype(np.uint8), "L")
        name = f"images/{index:04d}.png"
        image.save(os.path.join(output, name))
        lines.append(json.dumps({"image": name, "caption": captions_for(int(label), rng), "label": WORDS[label]}))
    manifest = os.path.join(output, "captions.jsonl")
    with open(manifest + ".tmp", "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    os.replace(manifest + ".tmp", manifest)
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmjax.data.digits", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="the folder to write (images/ and captions.jsonl)")
    parser.add_argument("--seed", type=int, default=0, help="picks each image's captions")
    args = parser.parse_args(argv)
    try:
        count = write_digits_folder(args.output, args.seed)
    except ImportError:
        print("error: the digits come from scikit-learn: pip install scikit-learn (or pip install -e '.[dev]')",
              file=sys.stderr)
        return 1
    print(f"Wrote {count:,} digit images and their captions to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
