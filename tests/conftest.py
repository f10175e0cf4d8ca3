"""Shared test helpers: loading a BASE folder's modules by file path, and the optional sample data."""

import pytest

from unetq.paths import base_module, shared_data_dir


def load_base_module(base: str, name: str):
    """``<base>/<name>.py`` (e.g. ``EM_BASE/datasets.py``) loaded by file path as ``em_datasets``."""
    return base_module(base, name)


@pytest.fixture
def shared_data():
    """The real sample data folder (../shared/data); the test is skipped when it is absent."""
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip(f"sample data absent ({folder}); it exists only beside the developers' checkout")
    return folder
