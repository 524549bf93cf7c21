"""The input pipeline: a random-access source -> shuffled, augmented, tokenized batches.

    source (TFDS ArrayRecord, random access)
      -> this process's slice (every process reads different examples)
      -> shuffle (a new permutation each epoch), repeat forever
      -> per example: pick one of the captions, flip the image *and* mirror the caption's
         left/right words, tokenize                          (seeded by the example's index)
      -> batch [local_batch, ...]
      -> threads prefetch batches while the device computes

It is built on grain's `MapDataset`, so every stage is a deterministic function of (seed, index):
the iterator's state is just a position, saved in each checkpoint, and a resumed run reads the
exact batches an uninterrupted run would have read.

Truth survives augmentation: a horizontal flip turns "a red circle at the top left" into a picture
of a red circle at the top right, so the caption's left and right are swapped with it. Crops are not
used: they could cut an object out while the caption still names it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np

from mmjax.data.tokenizer import Tokenizer


class ContrastivePreprocess:
    """One example -> {"images": uint8 [H, W, 3], "token_ids": int32 [text_len]}.

    Args:
      tokenizer: text -> ids.
      text_len: fixed text length (padded / truncated).
      flip_probability: chance of a horizontal flip (with the caption mirrored).
      mirror_text: the function that swaps left/right words of a caption.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        text_len: int,
        flip_probability: float = 0.0,
        mirror_text: Callable[[str], str] | None = None,
    ):
        if flip_probability > 0 and mirror_text is None:
            raise ValueError("flip_probability > 0 needs mirror_text, or captions become false")
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.flip_probability = flip_probability
        self.mirror_text = mirror_text

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        captions = example["captions"]
        caption = captions[rng.integers(len(captions))]
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8")
        image = np.asarray(example["image"])
        if self.flip_probability and rng.random() < self.flip_probability:
            image = image[:, ::-1]
            caption = self.mirror_text(caption)
        return {
            "images": np.ascontiguousarray(image),
            "token_ids": self.tokenizer.encode_batch([caption], self.text_len)[0],
        }


def make_train_loader(
    source: Sequence,
    preprocess: Callable[[dict, np.random.Generator], dict],
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch_batches: int = 4,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's batches (`batch_size` rows each).

    `get_state()` / `set_state()` on the returned iterator save and restore the position.
    """
    if batch_size < 1:
        raise ValueError(f"local batch size must be >= 1; got {batch_size}")
    if len(source) < batch_size * process_count:
        raise ValueError(
            f"the training split has {len(source)} examples, fewer than one global batch of "
            f"{batch_size * process_count}: lower config.batch_size or build a larger split"
        )
    dataset = (
        grain.MapDataset.source(source)[process_index::process_count]
        .shuffle(seed=seed)
        .repeat(None)
        .random_map(preprocess, seed=seed + 1)
        .batch(batch_size, drop_remainder=True)
    )
    # Threads overlap loading with the device step; the batches they produce are still in order.
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
    return iter(dataset.to_iter_dataset(read_options))


def iterate_in_order(
    source: Sequence,
    transform: Callable[[dict], dict],
    *,
    batch_size: int,
    num_threads: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `source` once, in index order, transformed and batched (last batch short).

    Used by evaluation, which must see each test example exactly once.
    """
    dataset = grain.MapDataset.source(source).map(transform).batch(batch_size, drop_remainder=False)
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads)))
