"""Shared test fixture: the optional sample data."""

import pytest

from unetq.paths import shared_data_dir


@pytest.fixture
def shared_data():
    """The real sample data folder (../shared/data); the test is skipped when it is absent."""
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip(f"sample data absent ({folder}); it exists only beside the developers' checkout")
    return folder
