"""The scene parser reads rendered `shapes` scenes back to their keys, at several resolutions."""

import functools

import numpy as np
import pytest

from mmjax.data import shapes
from mmjax.evaluation.scene_parser import parse_scene


@functools.cache
def rendered(image_size: int, split: str, num: int):
    config = shapes.ShapesConfig(image_size=image_size)
    return [shapes.generate_example(config, split, i) for i in range(num)]


@pytest.mark.parametrize("image_size", [48, 64])
def test_rendered_scenes_of_every_split_parse_to_their_keys(image_size):
    examples = [ex for split in shapes.SPLITS for ex in rendered(image_size, split, 60)]
    wrong = [(ex["scene_key"], parse_scene(ex["image"])) for ex in examples
             if parse_scene(ex["image"]) != ex["scene_key"]]
    assert len(wrong) <= 0.01 * len(examples), wrong[:5]


def test_a_mirrored_picture_parses_to_the_mirrored_scene():
    for ex in rendered(48, "test", 30):
        mirrored = np.ascontiguousarray(ex["image"][:, ::-1])
        assert parse_scene(mirrored) == shapes.mirror_scene(ex["scene"]).key()


def test_an_empty_background_has_no_objects_and_a_wrong_shape_is_named():
    background = np.full((48, 48, 3), 30, np.uint8) + np.random.default_rng(0).integers(0, 4, (48, 48, 3)).astype(np.uint8)
    assert parse_scene(background) == ""
    with pytest.raises(ValueError, match=r"square RGB image \[S, S, 3\]; got shape \(48, 40, 3\)"):
        parse_scene(np.zeros((48, 40, 3), np.uint8))
