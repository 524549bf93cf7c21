"""Does the step ever wait for data? Examples/s the training loader delivers vs what the step eats.

    python bench/input_pipeline.py --config configs/clip_tiny.py
    python bench/input_pipeline.py --config configs/clip_s16.py --set data.num_train=2048

The loader is the one `train.py` uses (`make_train_loader`: grain, shuffled, decoded, augmented
and tokenized, batched by `config.data.num_threads` threads); the dataset is built first if it is
missing. The loader is timed alone, with no step competing for the cores: on a CPU host the
two share them during training, so the ratio "delivered / consumed" must be large (the target is
5x) for data loading to stay hidden behind the step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.step import parse_overrides  # noqa: E402
from bench.workload import load_config  # noqa: E402


def _rate(source, preprocess, config, batches: int, warmup: int) -> tuple[float, dict]:
    from mmjax.data.pipeline import make_train_loader

    loader = make_train_loader(source, preprocess, batch_size=config.batch_size, seed=config.seed,
                               num_threads=config.data.num_threads)
    for _ in range(warmup):
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(loader)
    return batches * config.batch_size / (time.perf_counter() - start), batch


def measure(config_path: str, batches: int = 20, warmup: int = 3, **overrides) -> dict:
    """Examples/s of the first epoch (every example read and decoded) and, with
    `config.data.cache_decoded`, of later epochs (decoded examples kept in memory)."""
    from mmjax.data.pipeline import DecodedCache
    from mmjax.data.prepare import prepare_shapes
    from mmjax.training.setup import build_task

    config = load_config(config_path, **overrides)
    data = prepare_shapes(config.data)
    preprocess = build_task(config).train_preprocess(data, config)
    source = data.split("train")
    first_epoch, batch = _rate(source, preprocess, config, batches, warmup)
    row = {
        "config": os.path.basename(config_path),
        "overrides": overrides,
        "batch_size": config.batch_size,
        "image_size": config.data.image_size,
        "num_threads": config.data.num_threads,
        "batch_shapes": {k: list(v.shape) for k, v in batch.items()},
        "loader_examples_per_s": first_epoch,
        "cache_decoded": bool(config.data.get("cache_decoded", False)),
    }
    if row["cache_decoded"]:
        cache = DecodedCache(source)
        start = time.perf_counter()
        for i in range(len(cache)):  # what the first epoch does along the way
            cache[i]
        row["decode_all_s"] = time.perf_counter() - start
        row["cached_examples_per_s"], _ = _rate(cache, preprocess, config, batches, warmup)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    row = measure(args.config, args.batches, **parse_overrides(args.set))
    if args.json:
        print(json.dumps(row))
        return
    print(f"{row['config']} loader ({row['num_threads']} threads, batch {row['batch_size']}, "
          f"{row['image_size']} px): first epoch {row['loader_examples_per_s']:.0f} examples/s"
          + (f", later epochs (decoded examples cached) {row['cached_examples_per_s']:.0f}"
             if row["cache_decoded"] else ""))


if __name__ == "__main__":
    main()
