"""Alembic's entry point: the migrations run on the connection the store hands over, in its transaction."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("modelfleet's migrations run when a workspace is opened (Store.open), not from the alembic CLI")
# render_as_batch: SQLite alters a table by copying it; Alembic's batch mode does that on both.
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
