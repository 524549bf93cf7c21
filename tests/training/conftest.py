"""Fixtures shared by the training tests."""

import pytest

from mmjax.data.prepare import prepare_shapes
from tests.training.test_loop import tiny_config


@pytest.fixture(scope="module")
def prepared_data_dir(tmp_path_factory):
    """The tiny dataset of `test_loop.tiny_config`, built up front, so that training processes
    started by a test never build it at the same time."""
    data_dir = tmp_path_factory.mktemp("data")
    prepare_shapes(tiny_config(data_dir).data)
    return data_dir
