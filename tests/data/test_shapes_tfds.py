"""Tests of the `shapes` TFDS dataset: build a tiny one, read it back without TensorFlow."""

import os
import sys

import numpy as np
import pytest

from mmjax.data import build_shapes, shapes, shapes_tfds

SIZES = {"num_train": 40, "num_validation": 12, "num_test": 12, "num_compositional_test": 12}
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    shapes_tfds.build_shapes(data_dir, IMAGE_SIZE, **SIZES)
    return data_dir


@pytest.mark.parametrize("split", shapes.SPLITS)
def test_each_split_reads_back_as_generated(data_dir, split):
    source = shapes_tfds.load_split(data_dir, IMAGE_SIZE, split, **SIZES)
    num = SIZES[f"num_{split}"]
    assert len(source) == num
    world = shapes.ShapesConfig(image_size=IMAGE_SIZE)
    indices = []
    for i in range(len(source)):
        record = source[i]
        indices.append(record["index"])
        expected = shapes.generate_example(world, split, record["index"])
        assert record["image"].dtype == np.uint8 and record["image"].shape == (32, 32, 3)
        np.testing.assert_array_equal(record["image"], expected["image"])
        assert record["scene_key"] == expected["scene_key"].encode()
        for key in ("captions", "questions", "answers", "question_types"):
            assert [t.decode() for t in record[key]] == expected[key]
        assert record["label"] == expected["label"]
        np.testing.assert_array_equal(record["boxes"], expected["boxes"])
        np.testing.assert_array_equal(record["box_labels"], expected["box_labels"])
        assert record["boxes"].dtype == np.float32 and record["box_labels"].dtype == np.int64
        scene = shapes_tfds.scene_from_example(record)
        assert scene.key() == expected["scene_key"]
        assert scene.background == expected["scene"].background
    # every generated example is there once (TFDS stores them shuffled by key)
    assert sorted(indices) == list(range(num))


def test_reading_needs_no_tensorflow(data_dir):
    source = shapes_tfds.load_split(data_dir, IMAGE_SIZE, "test", **SIZES)
    assert source[0]["image"].shape == (32, 32, 3)
    assert "tensorflow" not in sys.modules


def test_build_is_idempotent(data_dir):
    builder = shapes_tfds.make_builder(data_dir, IMAGE_SIZE, **SIZES)
    info_file = os.path.join(builder.data_dir, "dataset_info.json")
    before = os.stat(info_file).st_mtime_ns
    again = shapes_tfds.build_shapes(data_dir, IMAGE_SIZE, **SIZES)
    assert again.data_dir == builder.data_dir
    assert os.stat(info_file).st_mtime_ns == before


def test_missing_dataset_error_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        shapes_tfds.load_split(tmp_path, 64, "train")
    message = str(error.value)
    assert str(tmp_path) in message and "'64'" in message
    assert f"python -m mmjax.data.build_shapes --data_dir {tmp_path} --config 64" in message
    with pytest.raises(FileNotFoundError, match="--config 32 --num_train 40 --seed 3"):
        shapes_tfds.load_split(tmp_path, 32, "train", num_train=40, seed=3)


def test_unknown_split_is_rejected(data_dir):
    with pytest.raises(ValueError, match="split must be one of"):
        shapes_tfds.load_split(data_dir, IMAGE_SIZE, "eval", **SIZES)


def test_config_names_encode_what_differs(tmp_path):
    name = lambda **kw: shapes_tfds.make_builder(tmp_path, **kw).builder_config.name  # noqa: E731
    assert name() == "64"
    assert name(image_size=224) == "224"
    assert name(num_train=40) == "64-train40"
    assert name(image_size=32, seed=3, max_objects=2) == "32-max_objects2-seed3"
    assert name(heldout_pairs=(("red", "circle"),)).startswith("64-heldout_pairs")


def test_failed_build_leaves_no_dataset(tmp_path, monkeypatch):
    real = shapes.generate_example

    def failing(config, split, index):
        if index == 5:
            raise RuntimeError("simulated crash")
        return real(config, split, index)

    monkeypatch.setattr(shapes, "generate_example", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        shapes_tfds.build_shapes(tmp_path, IMAGE_SIZE, **SIZES)
    builder = shapes_tfds.make_builder(tmp_path, IMAGE_SIZE, **SIZES)
    assert not builder.is_prepared()
    assert not os.path.exists(builder.data_dir)
    # the temporary directory was removed too
    assert not [p for p in os.listdir(os.path.dirname(builder.data_dir)) if "incomplete" in p]
    monkeypatch.setattr(shapes, "generate_example", real)
    assert shapes_tfds.build_shapes(tmp_path, IMAGE_SIZE, **SIZES).is_prepared()


def test_command_line_builds_and_prints_the_location(tmp_path, capsys):
    build_shapes.main(
        ["--data_dir", str(tmp_path), "--config", "32", "--num_train", "8", "--num_validation", "4"]
        + ["--num_test", "4", "--num_compositional_test", "4"]
    )
    output = capsys.readouterr().out
    builder = shapes_tfds.make_builder(
        tmp_path, 32, num_train=8, num_validation=4, num_test=4, num_compositional_test=4
    )
    assert builder.is_prepared()
    assert builder.data_dir in output
