"""Fixtures shared across test files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.store.registry import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh workspace store on a real SQLite file."""
    s = Store.create(tmp_path / "ws", "ws")
    try:
        yield s
    finally:
        s.close()
