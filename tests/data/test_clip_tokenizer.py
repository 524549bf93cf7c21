"""The CLIP BPE tokenizer gives open_clip's (OpenAI's) and transformers' token ids."""

import gzip
import json

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("ftfy")
open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")

from mmjax.data.clip_tokenizer import ClipTokenizer  # noqa: E402

TEXTS = [
    "A photo of a CAT!",
    "it's a dog's life, isn't it? we'll see; they're HERE, I'm sure you'd agree",
    "héllo wörld — ünïcode ✓ 日本語 テスト",
    "123,456.78 dollars & cents",
    "  many   spaces\tand\nnewlines ",
    "emoji 🐈‍⬛ cat 🎉🎉",
    "!!!??? ... ---",
    "'sam 'll 'S",
    "a photo of a {}.".format("pickup truck"),
]
# Text that only OpenAI's cleaning (ftfy, HTML entities) changes; transformers skips it.
DIRTY = ["fish &amp; chips", "It’s “curly”", "ﬁne ｆｕｌｌ width"]


@pytest.fixture(scope="module")
def bpe_path():
    return open_clip_tokenizer.default_bpe()


@pytest.fixture(scope="module")
def tokenizer(bpe_path):
    return ClipTokenizer.load(bpe_path)


def test_ids_equal_open_clip_simple_tokenizer(tokenizer):
    reference = open_clip_tokenizer.SimpleTokenizer()
    assert (tokenizer.vocab_size, tokenizer.sot_id, tokenizer.eot_id) == (49408, 49406, 49407)
    for text in TEXTS + DIRTY:
        expected = [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]
        assert tokenizer.encode(text) == expected, text


def test_batches_truncate_and_pad_like_open_clip(tokenizer):
    texts = TEXTS + [" ".join(["word"] * 100)]  # the last one is longer than 77 tokens
    expected = open_clip_tokenizer.SimpleTokenizer()(texts, context_length=77).numpy()
    got = tokenizer.encode_batch(texts, 77)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    assert got[-1, -1] == tokenizer.eot_id


def test_vocab_json_and_merges_txt_equal_transformers_tokenizer(tokenizer, bpe_path, tmp_path):
    transformers = pytest.importorskip("transformers")
    # Hugging Face's files, written from OpenAI's merges: vocab.json and merges.txt.
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (tmp_path / "vocab.json").write_text(json.dumps(tokenizer.vocab), encoding="utf-8")

    ours = ClipTokenizer.load(tmp_path)
    reference = transformers.CLIPTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    for text in TEXTS:
        assert ours.encode(text) == reference(text)["input_ids"], text
        assert ours.encode(text) == tokenizer.encode(text)


def test_decode_gives_the_cleaned_words_back(tokenizer):
    ids = tokenizer.encode_batch(["A photo of a CAT!"], 16)[0]
    assert tokenizer.decode(ids) == "a photo of a cat !"


def test_files_that_do_not_fit_are_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="tokenizer files have 49408 tokens but the model's token table has 49152"):
        tokenizer.check_vocab_size(49152)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "<|startoftext|>": 2, "<|endoftext|>": 3}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="merge results are not in the vocabulary .*'ab'"):
        ClipTokenizer.load(tmp_path / "vocab.json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match="not a merge of two symbols"):
        ClipTokenizer.load(tmp_path / "vocab.json")
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="no <\\|startoftext\\|> token"):
        ClipTokenizer.load(tmp_path / "vocab.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no CLIP tokenizer files in"):
        ClipTokenizer.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipTokenizer.load(tmp_path / "absent.txt.gz")
