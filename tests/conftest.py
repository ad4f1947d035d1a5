"""Fixtures shared by all tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real labelled datasets in ``../shared/data`` beside the repository (never copied into it)."""
    data = REPO.parent / "shared" / "data"
    if not data.is_dir():
        pytest.skip(f"../shared/data not found: {data} is absent")
    return data
