"""The grain input pipeline: determinism, exact resume, per-process shards, truthful flips."""

import numpy as np
import pytest

from mmjax.data import shapes
from mmjax.data.pipeline import (
    ContrastivePreprocess,
    DecodedCache,
    MaskedLanguagePreprocess,
    VqaPreprocess,
    build_answer_vocabulary,
    iterate_in_order,
    load_answer_vocabulary,
    make_train_loader,
    save_answer_vocabulary,
)
from mmjax.data.shapes import mirror_text
from mmjax.data.tokenizer import EOS_ID, PAD_ID, train_tokenizer

WORDS = ["a red circle at the top left", "a blue square at the bottom right", "a small cross on the left"]


def fake_source(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "index": i,
            "image": rng.integers(0, 256, (8, 8, 3)).astype(np.uint8),
            "captions": [w.encode() for w in WORDS],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(WORDS * 20 + ["a red circle at the top right", "on the right"], vocab_size=60)


class RecordIndex(ContrastivePreprocess):
    """Also passes the example's index through, so tests can see which examples a batch holds."""

    def __call__(self, example, rng):
        out = super().__call__(example, rng)
        out["index"] = np.int64(example["index"])
        return out


def loader(tokenizer, source, **kw):
    args = dict(batch_size=8, seed=5, num_threads=1)
    args.update(kw)
    return make_train_loader(source, RecordIndex(tokenizer, 12), **args)


def test_same_seed_same_batches_and_epochs_cover_every_example(tokenizer):
    source = fake_source()
    a, b = loader(tokenizer, source), loader(tokenizer, source)
    batches = [next(a) for _ in range(10)]  # two epochs of 40
    for batch in batches:
        np.testing.assert_array_equal(batch["token_ids"], next(b)["token_ids"])
    first_epoch = np.concatenate([x["index"] for x in batches[:5]])
    second_epoch = np.concatenate([x["index"] for x in batches[5:]])
    assert sorted(first_epoch) == list(range(40)) and sorted(second_epoch) == list(range(40))
    assert list(first_epoch) != list(second_epoch)  # reshuffled each epoch
    assert list(first_epoch) != list(range(40))


class CountingSource(list):
    """A list that counts how often each example is read (a stand-in for decoding from disk)."""

    def __init__(self, items):
        super().__init__(items)
        self.reads = np.zeros(len(items), int)

    def __getitem__(self, index):
        self.reads[index] += 1
        return super().__getitem__(index)


def test_cached_decoding_gives_the_same_batches_and_reads_each_example_once(tokenizer):
    plain, counted = fake_source(), CountingSource(fake_source())
    a = loader(tokenizer, plain, num_threads=2)
    b = loader(tokenizer, counted, num_threads=2, cache_decoded=True)
    for _ in range(15):  # three epochs of 40
        want, got = next(a), next(b)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert counted.reads.min() >= 1 and counted.reads.max() <= 2  # two threads may race once
    assert counted.reads.sum() <= 42
    cache = DecodedCache(counted)
    assert len(cache) == 40 and cache[7] is cache[7]


def test_state_restores_the_exact_next_batches(tokenizer):
    source = fake_source()
    it = loader(tokenizer, source)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    resumed = loader(tokenizer, source)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_processes_split_the_global_batches_of_a_single_process_run(tokenizer):
    """Two processes see, between them, exactly the global batches one process sees (so a run's
    data order does not depend on how many hosts run it), each reading only its own rows."""
    source = fake_source()
    one = loader(tokenizer, source, batch_size=8)
    two = [loader(tokenizer, source, batch_size=4, process_index=p, process_count=2) for p in range(2)]
    for _ in range(12):  # past an epoch boundary (40 examples)
        whole, parts = next(one), [next(it) for it in two]
        np.testing.assert_array_equal(whole["index"], np.concatenate([p["index"] for p in parts]))
        np.testing.assert_array_equal(whole["token_ids"], np.concatenate([p["token_ids"] for p in parts]))
        assert not set(parts[0]["index"]) & set(parts[1]["index"])


def test_flip_mirrors_the_caption_with_the_image(tokenizer):
    example = {"image": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
               "captions": [b"a red circle at the top left"]}
    flip = ContrastivePreprocess(tokenizer, 12, flip_probability=1.0, mirror_text=mirror_text)
    out = flip(example, np.random.default_rng(0))
    np.testing.assert_array_equal(out["images"], example["image"][:, ::-1])
    assert tokenizer.decode(out["token_ids"]) == "a red circle at the top right"
    keep = ContrastivePreprocess(tokenizer, 12)(example, np.random.default_rng(0))
    np.testing.assert_array_equal(keep["images"], example["image"])
    with pytest.raises(ValueError, match="cannot mirror its captions.*set --config.data.flip_probability=0"):
        ContrastivePreprocess(tokenizer, 12, flip_probability=0.5)


def test_too_small_split_is_named(tokenizer):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        loader(tokenizer, fake_source(5))


def test_iterate_in_order_sees_every_example_once():
    source = fake_source(19)
    batches = list(iterate_in_order(source, lambda ex: {"index": np.int64(ex["index"])}, batch_size=8))
    assert [len(b["index"]) for b in batches] == [8, 8, 3]
    assert list(np.concatenate([b["index"] for b in batches])) == list(range(19))


def shapes_examples(n=30):
    config = shapes.ShapesConfig(image_size=32)
    return [shapes.generate_example(config, "train", i) for i in range(n)]


def test_masked_language_fields_agree_with_the_caption(tokenizer):
    pre = MaskedLanguagePreprocess(tokenizer, 12)
    chosen = 0
    for seed, example in enumerate(fake_source(20)):
        out = pre(example, np.random.default_rng(seed))
        np.testing.assert_array_equal(out["mlm_targets"], out["token_ids"])
        unchanged = ~out["mlm_mask"]
        np.testing.assert_array_equal(out["mlm_input_ids"][unchanged], out["token_ids"][unchanged])
        special = np.isin(out["token_ids"], [PAD_ID, EOS_ID])
        assert not (out["mlm_mask"] & special).any() and out["mlm_mask"].any()
        chosen += out["mlm_mask"].sum()
        assert out["mlm_input_ids"].max() <= tokenizer.vocab_size  # the mask id is vocab_size
    assert chosen >= 20


def test_answer_vocabulary_round_trip_and_unknown_first(tmp_path):
    vocabulary = build_answer_vocabulary([b"yes", "no", "yes", "red", "no", "yes", "blue"], min_count=2)
    assert vocabulary == ["<unk>", "yes", "no"]
    path = tmp_path / "answers.json"
    save_answer_vocabulary(vocabulary, path)
    assert load_answer_vocabulary(path) == vocabulary
    (tmp_path / "bad.json").write_text('["yes"]')
    with pytest.raises(ValueError, match="first entry must be '<unk>'"):
        load_answer_vocabulary(tmp_path / "bad.json")


def test_vqa_preprocess_picks_a_question_with_its_answer_and_flips_both():
    examples = shapes_examples()
    texts = [q for e in examples for q in e["questions"] + e["answers"]]
    tokenizer = train_tokenizer(texts + [mirror_text(t) for t in texts], vocab_size=200)
    vocabulary = build_answer_vocabulary([a for e in examples for a in e["answers"]])
    plain = VqaPreprocess(tokenizer, 24, vocabulary, shapes.QUESTION_TYPES)
    flip = VqaPreprocess(tokenizer, 24, vocabulary, shapes.QUESTION_TYPES, 1.0, mirror_text)
    flipped_some = False
    for seed, example in enumerate(examples):
        out = plain(example, np.random.default_rng(seed))
        question = tokenizer.decode(out["question_ids"])
        pick = example["questions"].index(question)
        assert vocabulary[out["answer"]] == example["answers"][pick]
        assert shapes.QUESTION_TYPES[out["question_type"]] == example["question_types"][pick]
        # The same rng draws the same question; the flip mirrors question, answer and image.
        out_flip = flip(example, np.random.default_rng(seed))
        assert tokenizer.decode(out_flip["question_ids"]) == mirror_text(question)
        mirrored_answer = mirror_text(example["answers"][pick])
        assert vocabulary[out_flip["answer"]] == (mirrored_answer if mirrored_answer in vocabulary else "<unk>")
        np.testing.assert_array_equal(out_flip["images"], example["image"][:, ::-1])
        flipped_some |= mirrored_answer != example["answers"][pick]
    assert flipped_some
    unknown = dict(examples[0], answers=["a purple elephant"] * len(examples[0]["answers"]))
    assert plain(unknown, np.random.default_rng(0))["answer"] == 0


def qa_tokenizer(examples):
    texts = [t for e in examples for t in e["questions"] + e["answers"] + e["captions"]]
    return train_tokenizer(texts + [mirror_text(t) for t in texts], vocab_size=200)


def test_multitask_fields_describe_the_same_flipped_image():
    """With a caption, MLM and a QA sequence: one flip applies to all of them, as to the image."""
    from mmjax.data.pipeline import scene_id

    examples = shapes_examples(12)
    tokenizer = qa_tokenizer(examples)
    vocabulary = build_answer_vocabulary([a for e in examples for a in e["answers"]])
    kwargs = dict(text_len=48, with_caption=True, with_mlm=True, qa_len=24)
    plain = VqaPreprocess(tokenizer, 24, vocabulary, shapes.QUESTION_TYPES, **kwargs)
    flip = VqaPreprocess(tokenizer, 24, vocabulary, shapes.QUESTION_TYPES, 1.0, mirror_text, **kwargs)
    for seed, example in enumerate(examples):
        out, out_flip = plain(example, np.random.default_rng(seed)), flip(example, np.random.default_rng(seed))
        caption = tokenizer.decode(out["token_ids"])
        assert caption in example["captions"]
        assert tokenizer.decode(out_flip["token_ids"]) == mirror_text(caption)
        assert tokenizer.decode(out_flip["question_ids"]) == mirror_text(tokenizer.decode(out["question_ids"]))
        assert out["scene_id"] == out_flip["scene_id"] == scene_id(example["scene_key"])
        np.testing.assert_array_equal(out["mlm_targets"], out["token_ids"])
        # The QA sequence is the question then the answer; only the answer (and EOS) is scored.
        assert out_flip["qa_ids"].shape == out_flip["qa_weights"].shape == (1, 24)
        qa_ids, qa_weights = out_flip["qa_ids"][0], out_flip["qa_weights"][0]
        qa = qa_ids[qa_ids != PAD_ID]
        scored = qa_weights == 1
        assert tokenizer.decode(qa_ids[scored]) == vocabulary[out_flip["answer"]] or out_flip["answer"] == 0
        assert qa_ids[scored][-1] == EOS_ID and len(qa) == scored.sum() + (out_flip["question_ids"] > 0).sum() - 1


def test_several_questions_per_image_are_distinct_and_flipped_with_it():
    examples = shapes_examples(8)
    tokenizer = qa_tokenizer(examples)
    vocabulary = build_answer_vocabulary([a for e in examples for a in e["answers"]])
    kwargs = dict(qa_len=24, qa_per_image=4)
    plain = VqaPreprocess(tokenizer, 24, vocabulary, shapes.QUESTION_TYPES, **kwargs)
    flip = VqaPreprocess(tokenizer, 24, vocabulary, shapes.QUESTION_TYPES, 1.0, mirror_text, **kwargs)
    for seed, example in enumerate(examples):
        out, out_flip = plain(example, np.random.default_rng(seed)), flip(example, np.random.default_rng(seed))
        assert out["qa_ids"].shape == (4, 24)
        texts = [tokenizer.decode(row[row != PAD_ID]) for row in out["qa_ids"]]
        pairs = {q + " " + a for q, a in zip(example["questions"], example["answers"])}
        assert len(set(texts)) == 4 and set(texts) <= pairs
        flipped = [tokenizer.decode(row[row != PAD_ID]) for row in out_flip["qa_ids"]]
        assert flipped == [mirror_text(t) for t in texts]
    with pytest.raises(ValueError, match="lower config.data.qa_per_image"):
        VqaPreprocess(tokenizer, 24, vocabulary, shapes.QUESTION_TYPES, qa_len=24, qa_per_image=8)(
            examples[0], np.random.default_rng(0))


def test_qa_sequence_layout_and_length_error():
    from mmjax.data.pipeline import qa_sequence

    examples = shapes_examples(4)
    tokenizer = qa_tokenizer(examples)
    question, answer = examples[0]["questions"][0], examples[0]["answers"][0]
    ids, weights, prompt_len = qa_sequence(tokenizer, question, answer, 30)
    question_ids, answer_ids = tokenizer.encode(question)[:-1], tokenizer.encode(answer)
    assert prompt_len == len(question_ids)
    assert ids[: prompt_len + len(answer_ids)].tolist() == question_ids + answer_ids
    assert weights.tolist() == [0.0] * prompt_len + [1.0] * len(answer_ids) + [0.0] * (30 - prompt_len - len(answer_ids))
    with pytest.raises(ValueError, match="raise qa_len"):
        qa_sequence(tokenizer, question, answer, prompt_len)
