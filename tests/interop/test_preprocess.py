"""Image preprocessing equals open_clip's (torchvision) and transformers' (PIL) on real photographs."""

import numpy as np
import pytest
from PIL import Image

from mmjax.interop.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImagePreprocessing,
    crop_offset,
    load_image,
    resized_size,
)

skimage_data = pytest.importorskip("skimage.data")

# Photographs that ship inside scikit-image: portrait and landscape, RGB and grayscale; the rocket
# (427 x 640 -> 224 x 335) is where the two crop conventions differ by one column.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)())


def test_resized_size_truncates_the_long_side():
    assert resized_size(427, 640, 224) == (224, 335)  # 224 * 640 / 427 = 335.7
    assert resized_size(640, 427, 224) == (335, 224)
    assert resized_size(300, 300, 224) == (224, 224)


def test_crop_offsets_of_both_conventions():
    # (335 - 224) / 2 = 55.5: Python's round gives 56, floor division 55.
    assert crop_offset(335, 224, "torchvision") == 56 and crop_offset(335, 224, "hf") == 55
    # Round half to even: 0.5 -> 0 and 2.5 -> 2, like torchvision.
    assert crop_offset(225, 224, "torchvision") == 0 and crop_offset(229, 224, "torchvision") == 2


@pytest.mark.parametrize("size", [224, 96])
def test_torchvision_convention_equals_open_clip_transform(size):
    open_clip_transform = pytest.importorskip("open_clip.transform")
    reference = open_clip_transform.image_transform(size, is_train=False)
    ours = ImagePreprocessing(image_size=size, convention="torchvision")
    for name in PHOTOS:
        expected = reference(photo(name)).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours(photo(name)), expected, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("size", [224, 96])
def test_hf_convention_equals_transformers_image_processor(size):
    transformers = pytest.importorskip("transformers")
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": size},
                                                   crop_size={"height": size, "width": size})
    ours = ImagePreprocessing(image_size=size, convention="hf")
    for name in PHOTOS:
        expected = processor(images=photo(name), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        np.testing.assert_allclose(ours(photo(name)), expected, rtol=0, atol=1e-6, err_msg=name)


def test_conventions_differ_where_the_crop_rounds_differently():
    rocket = photo("rocket")
    torchvision = ImagePreprocessing(image_size=224, convention="torchvision").resize_and_crop(rocket)
    hf = ImagePreprocessing(image_size=224, convention="hf").resize_and_crop(rocket)
    np.testing.assert_array_equal(torchvision[:, :-1], hf[:, 1:])  # shifted by exactly one column
    assert not np.array_equal(torchvision, hf)


def test_output_is_rgb_normalised_channels_last():
    out = ImagePreprocessing(image_size=64)(photo("camera"))  # grayscale in
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0] * OPENAI_CLIP_STD[0] + OPENAI_CLIP_MEAN[0],
                               out[..., 2] * OPENAI_CLIP_STD[2] + OPENAI_CLIP_MEAN[2], atol=1e-6)


def test_bad_settings_and_broken_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="convention must be one of"):
        ImagePreprocessing(image_size=224, convention="timm")
    with pytest.raises(ValueError, match="smaller than the crop"):
        ImagePreprocessing(image_size=224, resize_size=200)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        load_image(str(broken))
