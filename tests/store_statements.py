"""Counting the SQL statements a workspace store runs (tests that bound reads per service)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from modelfleet.store.registry import Store


@contextmanager
def counted_statements(store: Store) -> Iterator[list[str]]:
    """Every statement ``store`` sends to its database while the block runs, in order."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = store._db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
