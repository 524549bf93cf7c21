"""TFDS datasets by name, on TFDS's mock data and on small files TFDS itself wrote (nothing can be
downloaded here)."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmjax.data.tfds_sources import (CLIP_TEMPLATES, ImageTextSource, classification_set, coco_example,
                                     image_text_split, prepare_tfds, readable)


def test_a_classification_set_has_its_class_names_and_clip_templates(tmp_path):
    with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
        source, names, templates = classification_set("cifar100", "test", data_dir=str(tmp_path))
        assert len(source) == 6 and np.asarray(source[0]["image"]).shape == (32, 32, 3)
        assert 0 <= int(source[0]["label"]) < 100
    assert len(names) == 100 and "aquarium fish" in names and "maple tree" in names  # TFDS's names, readable
    assert templates == CLIP_TEMPLATES["cifar100"] and len(templates) == 18
    assert readable("BACKGROUND_Google") == "BACKGROUND Google"


class coco_captions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A few examples with the features of TFDS's coco_captions (whose own builder needs TensorFlow
    to construct): what `prepare_tfds` finds in a data folder where the set was prepared."""

    VERSION = tfds.core.Version("1.1.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2014")]  # TFDS's default config of coco_captions

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "image/id": np.int64,
            "captions": tfds.features.Sequence({"id": np.int64, "text": tfds.features.Text()}),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for i in range(3):
            jpeg = io.BytesIO()  # encoded here: TFDS encodes arrays with TensorFlow
            Image.fromarray(rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
            yield i, {"image": jpeg.getvalue(), "image/id": 100 + i,
                      "captions": [{"id": 7 * i, "text": f"a photo number {i}"}, {"id": 7 * i + 1, "text": "  "}]}


def test_a_prepared_coco_captions_reads_as_the_pipeline_reads_examples(tmp_path):
    coco_captions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    source = image_text_split("coco_captions", "train", str(tmp_path), image_size=24)
    assert len(source) == 3
    example = source[1]
    assert example["image"].shape == (24, 24, 3) and example["image"].dtype == np.uint8
    assert example["captions"] == ["a photo number 1"]  # the blank caption dropped
    assert example["label"] == -1 and example["scene_key"] == "101"
    # An image whose every caption is blank is an error naming it, not a made-up caption.
    blank = ImageTextSource([{"image": np.zeros((4, 4, 3), np.uint8), "image/id": 7,
                              "captions": {"text": [b" ", b""]}}], coco_example, image_size=4)
    with pytest.raises(ValueError, match=r"example 0 \(image 7\) of this TFDS split has no non-empty caption"):
        blank[0]


def test_an_unprepared_set_says_what_to_do(tmp_path, monkeypatch):
    # coco_captions: TFDS's code that prepares it needs TensorFlow, which training never does.
    with pytest.raises(FileNotFoundError, match=r"coco_captions is not prepared in .*pip install tensorflow.*"
                                                r"train2014\.zip.* in \S+downloads/manual"):
        prepare_tfds("coco_captions", str(tmp_path))

    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to establish a new connection: network is unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(FileNotFoundError, match=r"could not prepare the TFDS dataset cifar10 .*network is "
                                                r"unreachable.*put cifar-10-binary\.tar\.gz in \S+downloads/manual"):
        prepare_tfds("cifar10", str(tmp_path))
    with pytest.raises(ValueError, match="TFDS has no dataset 'no_such_set'"):
        prepare_tfds("no_such_set", str(tmp_path))
