"""What TFDS prints while it writes a dataset that mmjax generates itself (shapes, folder datasets).

TFDS announces every build as a download ("Downloading and preparing dataset Unknown size ...
to <folder>") and ends with "downloaded and prepared to <folder>": nothing is downloaded here,
and a folder build's <folder> is its staging folder, not where the dataset ends up. Builders
that mix this in print nothing of the sort; their callers say what is built and where.
"""

from __future__ import annotations


class GeneratedDatasetMessages:
    """A mixin for `tfds.core.GeneratorBasedBuilder` subclasses whose data is generated locally."""

    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass
