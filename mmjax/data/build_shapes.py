"""Builds the `shapes` dataset on disk (once) and prints where it is.

    python -m mmjax.data.build_shapes --data_dir ~/data --config 64
    python -m mmjax.data.build_shapes --data_dir /tmp/data --config 32 --num_train 2000 --seed 1

`--config` is the image size (32, 64 and 224 are the standard ones). The other flags change the
split sizes or the world (`shapes.ShapesConfig`); a variant that differs from the standard one is
written under its own config name (see `shapes_tfds.make_builder`), so nothing is overwritten.
If the variant is already built, nothing is generated. Writing is crash-safe (see `shapes_tfds`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from mmjax.data import shapes_tfds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="root folder of TFDS datasets")
    parser.add_argument("--config", type=int, default=64, help="image size in pixels (32, 64, 224)")
    for split, size in shapes_tfds.DEFAULT_SPLIT_SIZES.items():
        parser.add_argument(f"--num_{split}", type=int, default=size, help=f"examples in {split}")
    # ShapesConfig fields; None = the ShapesConfig default
    for name in ("seed", "min_objects", "max_objects", "num_captions", "num_questions"):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"ShapesConfig.{name}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {
        name: value
        for name, value in vars(args).items()
        if name not in ("data_dir", "config")
        and value is not None
        and value != shapes_tfds.DEFAULT_SPLIT_SIZES.get(name.removeprefix("num_"))
    }
    start = time.perf_counter()
    builder = shapes_tfds.build_shapes(args.data_dir, args.config, **overrides)
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f"shapes/{builder.builder_config.name} is at {builder.data_dir}")
    print(f"splits: {splits} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
