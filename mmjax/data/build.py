"""Build a dataset once, before training: your own folder of images and captions, or a TFDS dataset.

    python -m mmjax.data.build --input photos/ --output data/ --name my_photos --image-size 224
    python -m mmjax.data.build --tfds coco_captions --output data/ [--manual-dir downloads/]

Then train on it by name:

    python train.py --config configs/clip_tiny.py --workdir runs/photos \\
        --config.data.name=my_photos --config.data.data_dir=data --config.data.image_size=224

A folder needs a manifest, captions.jsonl or captions.csv (mmjax/data/folder.py says what it holds
and how bad data is handled). The build prints what it kept, converted, truncated and skipped,
writes the same into `<output>/<name>/summary.json`, and appears whole or not at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from mmjax.data import folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmjax.data.build", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="a folder of images with captions.jsonl or captions.csv")
    source.add_argument("--tfds", metavar="NAME", help="a TFDS dataset to prepare as ArrayRecord (e.g. coco_captions)")
    parser.add_argument("--output", required=True, help="the data folder (config.data.data_dir)")
    parser.add_argument("--name", help="the dataset's name (config.data.name); for --input")
    defaults = folder.BuildOptions()
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="side of the stored square images")
    parser.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="decides which images are held out")
    parser.add_argument("--text-len", type=int, default=defaults.text_len,
                        help="tokens a caption may take (end-of-text included); longer ones are truncated")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="sentencepiece pieces")
    parser.add_argument("--min-size", type=int, default=defaults.min_size,
                        help="skip images whose shorter side is smaller (0: upscale them)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file, naming it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of this name")
    parser.add_argument("--manual-dir", help="for --tfds: where the dataset's manually downloaded files are")
    args = parser.parse_args(argv)
    try:
        if args.tfds:
            from mmjax.data.tfds_sources import prepare_tfds

            builder = prepare_tfds(args.tfds, args.output, args.manual_dir)
            print(f"{args.tfds} is ready in {builder.data_dir}: "
                  + ", ".join(f"{name} {split.num_examples:,}" for name, split in builder.info.splits.items()))
            return 0
        if not args.name:
            parser.error("--input needs --name (the dataset's name, e.g. my_photos)")
        options = folder.BuildOptions(
            image_size=args.image_size, validation_fraction=args.validation_fraction, seed=args.seed,
            text_len=args.text_len, vocab_size=args.vocab_size, min_size=args.min_size, strict=args.strict,
        )
        summary = folder.build_folder_dataset(args.input, args.output, args.name, options, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(describe(summary, folder.dataset_path(args.output, args.name)))
    return 0


def describe(summary: folder.Summary, path: str) -> str:
    counts = dataclasses.asdict(summary)
    lines = [f"Built {path}: {summary.examples:,} examples ({summary.train:,} train, {summary.validation:,} validation)."]
    for key in ("skipped", "converted", "upscaled", "truncated", "duplicates", "empty_captions"):
        if counts[key]:
            lines.append(f"  {key:15s} {counts[key]:,}")
    if summary.converted_modes:
        lines.append("  converted from  " + ", ".join(f"{mode} {n}" for mode, n in sorted(summary.converted_modes.items())))
    for skipped in summary.skipped_examples[:5]:
        lines.append(f"  skipped {skipped['path']}: {skipped['reason']}")
    if summary.skipped > 5:
        lines.append(f"  ... {summary.skipped - 5} more skipped (all counted, the first "
                     f"{len(summary.skipped_examples)} listed in summary.json)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
