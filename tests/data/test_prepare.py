"""prepare_shapes: builds once, fits the tokenizer and answer vocabulary, honours a run's tokenizer."""

import os

import ml_collections
import pytest

from mmjax.data import shapes
from mmjax.data.prepare import prepare_shapes
from mmjax.data.tokenizer import train_tokenizer


def data_config(data_dir):
    return ml_collections.ConfigDict(dict(
        data_dir=str(data_dir), image_size=32, num_train=48, num_validation=4, num_test=8,
        num_compositional_test=4, vocab_size=128,
    ))


def test_prepare_builds_fits_and_reuses(tmp_path):
    config = data_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m mmjax.data.build_shapes"):
        prepare_shapes(config, build_if_missing=False)
    data = prepare_shapes(config)
    assert len(data.split("train")) == 48 and len(data.split("test")) == 8
    assert data.class_names == shapes.class_names() and data.question_types == shapes.QUESTION_TYPES
    # Every training caption tokenizes without unknown pieces.
    train = data.split("train")
    for i in range(len(train)):
        for caption in train[i]["captions"]:
            assert data.tokenizer.unknown_pieces(caption.decode()) == []
    vocabulary = data.answer_vocabulary()
    assert vocabulary[0] == "<unk>" and os.path.exists(os.path.join(os.path.dirname(data.tokenizer_path), "answers.json"))
    assert {a.decode() for i in range(len(train)) for a in train[i]["answers"]} <= set(vocabulary)
    again = prepare_shapes(config)  # reuses the dataset, tokenizer and answers on disk
    assert again.tokenizer.model_proto == data.tokenizer.model_proto
    assert again.answer_vocabulary() == vocabulary


def test_a_runs_own_tokenizer_wins(tmp_path):
    config = data_config(tmp_path / "data")
    own = tmp_path / "run" / "tokenizer.model"
    train_tokenizer(["a red circle", "a blue square at the top"] * 10, 40, own)
    data = prepare_shapes(config, tokenizer_path=str(own))
    assert data.tokenizer_path == str(own) and data.tokenizer.vocab_size <= 40
