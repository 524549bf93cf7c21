"""BERT's token masking for masked language modelling (Devlin et al., 2019; used by ALBEF, BLIP).

    token_ids    [ a    red   circle  at   the   top   left   EOS  PAD  PAD ]
    input_ids    [ a    MASK  circle  at   the   top   blue   EOS  PAD  PAD ]
    target_ids   [ a    red   circle  at   the   top   left   EOS  PAD  PAD ]
    loss_mask    [ .    x     .       .    .     .     x      .    .    .   ]

About 15% of the maskable positions (those holding neither a special token nor padding) are
chosen; each chosen position is replaced by the mask token with probability 0.8, by a random
ordinary token with probability 0.1, and kept with probability 0.1. The model sees `input_ids`
and is scored at the chosen positions against `target_ids` (`mmjax.losses.mlm_loss`). Random
and kept tokens stop the model from assuming that only the mask token needs predicting.

It runs in the input pipeline, on one example at a time, in NumPy, with the example's own
`np.random.Generator`, so it is a deterministic function of the pipeline's seed.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def mask_tokens(
    token_ids: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    mask_probability: float = 0.15,
    replace_with_mask: float = 0.8,
    replace_with_random: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chooses positions to predict and corrupts them with BERT's 80/10/10 scheme.

    How many: with n maskable positions and u ~ Uniform[0, 1), the number chosen is

        k = max(1, floor(n · mask_probability + u))        (k = 0 when n = 0)

    so E[k] = n · mask_probability exactly whenever n · mask_probability >= 1 (stochastic
    rounding, not the upward bias of rounding a short text's 0.45 up to 1 every time), and a text
    with any maskable token always has at least one target (unless mask_probability is 0): texts
    with fewer than 1 / mask_probability maskable tokens have exactly one, a rate of 1 / n. The k
    positions are drawn uniformly without replacement among the maskable ones.

    How: each chosen position independently becomes `mask_id` with probability
    `replace_with_mask`, a token drawn uniformly from the ordinary ids (those in [0, vocab_size)
    that are neither in `special_ids` nor `mask_id`) with probability `replace_with_random` (it
    may draw the original token), and is left as it was otherwise.

    Args:
      token_ids: int [L], one tokenized text, padded.
      rng: the example's random generator.
      mask_id: the id of the mask token (may be >= vocab_size, e.g. a row appended to the
        embedding table).
      vocab_size: random replacements are drawn from [0, vocab_size).
      special_ids: ids that are never chosen nor drawn as replacements; it must contain the
        padding id, e.g. (PAD_ID, UNK_ID, EOS_ID) of `mmjax.data.tokenizer`.
      mask_probability: the expected fraction of maskable positions that are chosen.
      replace_with_mask: the fraction of chosen positions that become `mask_id`.
      replace_with_random: the fraction of chosen positions that become a random ordinary token.

    Returns:
      (input_ids [L], target_ids [L], loss_mask [L] bool): the corrupted ids the model reads (the
      dtype of `token_ids`), the original ids (a copy of `token_ids`), and the chosen positions.
    """
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
    replace_probability = replace_with_mask + replace_with_random
    if min(replace_with_mask, replace_with_random) < 0 or replace_probability > 1:
        raise ValueError(
            "replace_with_mask and replace_with_random must be >= 0 and sum to at most 1, got "
            f"{replace_with_mask} and {replace_with_random}"
        )
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 1:
        raise ValueError(f"masks one text at a time: expected [L], got {token_ids.shape}")
    excluded_ids = np.union1d(np.asarray(list(special_ids), np.int64), [mask_id])

    # choose k of the n maskable positions, k = max(1, floor(n·p + u)) (see the docstring)
    maskable = np.flatnonzero(~np.isin(token_ids, excluded_ids))
    num_maskable = len(maskable)
    num_chosen = int(np.floor(num_maskable * mask_probability + rng.random()))
    if num_maskable and mask_probability > 0:
        num_chosen = min(num_maskable, max(num_chosen, 1))
    chosen = rng.choice(maskable, size=num_chosen, replace=False)

    # decide each chosen position's fate: mask token, random ordinary token, or unchanged
    fate = rng.random(num_chosen)
    to_mask = chosen[fate < replace_with_mask]
    to_random = chosen[(fate >= replace_with_mask) & (fate < replace_probability)]

    input_ids = token_ids.copy()
    input_ids[to_mask] = mask_id
    if replace_with_random > 0:
        input_ids[to_random] = _random_ordinary_ids(rng, len(to_random), vocab_size, excluded_ids)
    loss_mask = np.zeros(token_ids.shape, bool)
    loss_mask[chosen] = True
    return input_ids, token_ids.copy(), loss_mask


def _random_ordinary_ids(
    rng: np.random.Generator, count: int, vocab_size: int, excluded_ids: np.ndarray
) -> np.ndarray:
    """`count` ids drawn uniformly from [0, vocab_size) minus `excluded_ids` (sorted, unique).

    Draws r uniformly from [0, number of ordinary ids) and returns the r-th ordinary id, without
    building the list of ordinary ids: if e_k is the k-th excluded id, e_k - k ordinary ids lie
    below it, so the r-th ordinary id is r + #{k : e_k - k <= r}.
    """
    excluded_ids = excluded_ids[(excluded_ids >= 0) & (excluded_ids < vocab_size)]
    num_ordinary = vocab_size - len(excluded_ids)
    if num_ordinary <= 0:
        raise ValueError(f"no ordinary token ids in [0, {vocab_size}) to draw replacements from")
    rank = rng.integers(0, num_ordinary, size=count)
    ordinary_below = excluded_ids - np.arange(len(excluded_ids))
    return rank + np.searchsorted(ordinary_below, rank, side="right")
