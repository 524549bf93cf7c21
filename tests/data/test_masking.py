"""BERT masking: how many positions are chosen, the 80/10/10 split, and what is never touched."""

import numpy as np
import pytest

from mmjax.data.masking import mask_tokens

PAD, UNK, EOS = 0, 1, 2
SPECIAL_IDS = (PAD, UNK, EOS)
VOCAB_SIZE = 500
MASK_ID = VOCAB_SIZE  # a row appended to the embedding table, outside the tokenizer's vocabulary


def random_text(rng, max_len=32):
    """int32 [max_len]: ordinary tokens (some UNK), EOS, then padding."""
    length = int(rng.integers(0, max_len))  # tokens before EOS
    ids = rng.integers(3, VOCAB_SIZE, length)
    ids[rng.random(length) < 0.05] = UNK
    return np.concatenate([ids, [EOS], np.full(max_len - length - 1, PAD)]).astype(np.int32)


def mask(token_ids, rng, **kwargs):
    return mask_tokens(
        token_ids, rng, mask_id=MASK_ID, vocab_size=VOCAB_SIZE, special_ids=SPECIAL_IDS, **kwargs
    )


@pytest.fixture(scope="module")
def many_masked_texts():
    """(token_ids, input_ids, target_ids, loss_mask), each [num_texts, 32], from 4000 texts."""
    rng = np.random.default_rng(0)
    texts = [random_text(rng) for _ in range(4000)]
    outputs = [mask(text, rng) for text in texts]
    return (np.stack(texts), *(np.stack(column) for column in zip(*outputs)))


def test_special_and_padding_positions_are_never_chosen_nor_changed(many_masked_texts):
    token_ids, input_ids, target_ids, loss_mask = many_masked_texts
    special = np.isin(token_ids, SPECIAL_IDS)
    assert special.sum() > 10_000
    assert not np.any(loss_mask[special])
    np.testing.assert_array_equal(input_ids[special], token_ids[special])


def test_unchosen_positions_are_unchanged_and_targets_are_the_original_ids(many_masked_texts):
    token_ids, input_ids, target_ids, loss_mask = many_masked_texts
    np.testing.assert_array_equal(input_ids[~loss_mask], token_ids[~loss_mask])
    np.testing.assert_array_equal(target_ids, token_ids)
    assert input_ids.dtype == target_ids.dtype == np.int32 and loss_mask.dtype == bool


def test_about_15_percent_of_maskable_positions_are_chosen_and_at_least_one(many_masked_texts):
    token_ids, _, _, loss_mask = many_masked_texts
    num_maskable = (~np.isin(token_ids, SPECIAL_IDS)).sum(1)
    num_chosen = loss_mask.sum(1)
    assert np.all(num_chosen[num_maskable > 0] >= 1)
    assert np.all(num_chosen[num_maskable == 0] == 0)
    # texts with n·p >= 1 are masked at exactly p in expectation (stochastic rounding)
    long_enough = num_maskable >= 1 / 0.15
    fraction = num_chosen[long_enough].sum() / num_maskable[long_enough].sum()
    assert abs(fraction - 0.15) < 0.005, fraction
    # per text, the count is floor or ceil of n·p
    expected = num_maskable[long_enough] * 0.15
    assert np.all(np.abs(num_chosen[long_enough] - expected) < 1)
    # shorter texts get exactly one
    short = (num_maskable > 0) & ~long_enough
    assert np.all(num_chosen[short] == 1)


def test_chosen_positions_split_80_10_10(many_masked_texts):
    token_ids, input_ids, _, loss_mask = many_masked_texts
    chosen_original, chosen_input = token_ids[loss_mask], input_ids[loss_mask]
    num_chosen = len(chosen_original)
    assert num_chosen > 7000
    masked = chosen_input == MASK_ID
    kept = chosen_input == chosen_original
    randomised = ~masked & ~kept
    # a random replacement draws the original token with probability 1 / (number of ordinary ids)
    p_same = 1 / (VOCAB_SIZE - len(SPECIAL_IDS))
    tolerance = 4 * np.sqrt(0.16 / num_chosen)  # 4 standard deviations of the 80% share
    assert abs(masked.mean() - 0.8) < tolerance
    assert abs(randomised.mean() - 0.1 * (1 - p_same)) < tolerance
    assert abs(kept.mean() - 0.1 * (1 + p_same)) < tolerance
    # random replacements are ordinary tokens
    replacements = chosen_input[randomised]
    assert np.all((replacements >= 0) & (replacements < VOCAB_SIZE))
    assert not np.any(np.isin(replacements, SPECIAL_IDS))


def test_random_replacements_are_uniform_over_ordinary_ids():
    rng = np.random.default_rng(1)
    special_ids, mask_id, vocab_size = (0, 2, 5), 7, 9  # ordinary: 1, 3, 4, 6, 8
    token_ids = np.full(64, 3, np.int32)
    replacements = []
    for _ in range(300):
        input_ids, _, loss_mask = mask_tokens(
            token_ids, rng, mask_id=mask_id, vocab_size=vocab_size, special_ids=special_ids,
            mask_probability=0.5, replace_with_mask=0.0, replace_with_random=1.0,
        )
        replacements.append(input_ids[loss_mask])
    counts = np.bincount(np.concatenate(replacements), minlength=vocab_size)
    assert np.all(counts[[0, 2, 5, 7]] == 0)
    ordinary = counts[[1, 3, 4, 6, 8]]
    np.testing.assert_allclose(ordinary / ordinary.sum(), 0.2, atol=0.015)


def test_masking_is_deterministic_given_the_generator_seed():
    text = random_text(np.random.default_rng(2))
    first = mask(text, np.random.default_rng(7))
    again = mask(text, np.random.default_rng(7))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_text_without_maskable_tokens_is_returned_unchanged():
    text = np.array([EOS, PAD, PAD, PAD], np.int32)
    input_ids, target_ids, loss_mask = mask(text, np.random.default_rng(0))
    np.testing.assert_array_equal(input_ids, text)
    np.testing.assert_array_equal(target_ids, text)
    assert not loss_mask.any()


def test_invalid_arguments_are_rejected():
    text = np.array([5, 6, EOS, PAD], np.int32)
    with pytest.raises(ValueError, match="sum to at most 1"):
        mask(text, np.random.default_rng(0), replace_with_mask=0.9, replace_with_random=0.2)
    with pytest.raises(ValueError, match="one text at a time"):
        mask(text[None], np.random.default_rng(0))
