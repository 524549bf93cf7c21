"""The sentencepiece tokenizer: ids layout, padding, truncation, errors, atomic save."""

import os

import numpy as np
import pytest

from mmjax.data.tokenizer import EOS_ID, PAD_ID, Tokenizer, train_tokenizer

CORPUS = [
    f"a {size} {colour} {shape} at the {pos}"
    for size in ("small", "large", "big")
    for colour in ("red", "green", "blue", "white")
    for shape in ("circle", "square", "triangle")
    for pos in ("top left", "center", "bottom right")
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    return train_tokenizer(CORPUS, vocab_size=100, path=path), path


def test_round_trip_and_eos(tokenizer):
    tok, _ = tokenizer
    for text in CORPUS[::7]:
        ids = tok.encode(text)
        assert ids[-1] == EOS_ID and PAD_ID not in ids
        assert tok.decode(ids) == text


def test_batch_is_padded_and_truncated_keeping_eos(tokenizer):
    tok, _ = tokenizer
    texts = [CORPUS[0], CORPUS[0] + " and " + CORPUS[1] + " and " + CORPUS[2]]
    n = len(tok.encode(texts[0]))
    max_len = n + 3
    ids = tok.encode_batch(texts, max_len=max_len)
    assert ids.shape == (2, max_len) and ids.dtype == np.int32
    assert (ids[0, n:] == PAD_ID).all() and ids[0, n - 1] == EOS_ID
    assert len(tok.encode(texts[1])) > max_len and ids[1, -1] == EOS_ID and PAD_ID not in ids[1]
    np.testing.assert_array_equal(ids[1, :-1], tok.encode(texts[1])[: max_len - 1])


def test_saved_model_loads_identically_and_training_is_deterministic(tokenizer, tmp_path):
    tok, path = tokenizer
    loaded = Tokenizer.load(path)
    again = train_tokenizer(CORPUS, vocab_size=100)
    for text in CORPUS[:10]:
        assert loaded.encode(text) == tok.encode(text) == again.encode(text)
    assert not [f for f in os.listdir(os.path.dirname(path)) if f != "tok.model"]  # no temp files


def test_bad_input_is_named(tokenizer, tmp_path):
    tok, _ = tokenizer
    with pytest.raises(ValueError, match="empty caption"):
        tok.encode("   ")
    with pytest.raises(ValueError, match="token id 999 is outside the vocabulary"):
        tok.decode([5, 999])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.load(tmp_path / "missing.model")
    assert tok.unknown_pieces("a red circle") == []
    assert tok.unknown_pieces("a red zebra ü") != []


def test_tokenizer_survives_pickling(tokenizer):
    import pickle

    tok, _ = tokenizer
    assert pickle.loads(pickle.dumps(tok)).encode(CORPUS[3]) == tok.encode(CORPUS[3])


def test_the_command_line_trains_a_tokenizer_on_any_corpus_that_a_config_then_names(tmp_path, capsys):
    import json

    from mmjax.data.prepare import prepare_data
    from mmjax.data.tokenizer import main
    from tests.training.test_loop import tiny_config

    words = ["kayak", "harbour", "lighthouse", "seagull", "anchor", "sail", "rope", "tide"]
    rng = np.random.default_rng(0)
    captions = [" ".join(rng.choice(words, size=5)) for _ in range(200)]
    (tmp_path / "corpus.txt").write_text("\n".join(captions[:100]) + "\n\n")
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps({"image": f"{i}.jpg", "caption": [c, "a boat"]}) + "\n"
                                                     for i, c in enumerate(captions[100:])))
    for corpus in ("corpus.txt", "captions.jsonl"):
        output = tmp_path / f"{corpus}.model"
        assert main(["--captions", str(tmp_path / corpus), "--vocab-size", "60", "--output", str(output)]) == 0
        tokenizer = Tokenizer.load(str(output))
        assert tokenizer.vocab_size == 60 and tokenizer.decode(tokenizer.encode("lighthouse tide")) == "lighthouse tide"
    assert "Wrote " in capsys.readouterr().out
    (tmp_path / "blank.txt").write_text("\n  \n")
    assert main(["--captions", str(tmp_path / "blank.txt"), "--vocab-size", "60", "--output", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'blank.txt'} holds no non-empty caption"

    # config.data.tokenizer names it: the run uses that model, not one trained on the data's captions.
    config = tiny_config(tmp_path / "data")
    config.data.tokenizer = str(tmp_path / "corpus.txt.model")
    assert prepare_data(config.data).tokenizer.vocab_size == 60
