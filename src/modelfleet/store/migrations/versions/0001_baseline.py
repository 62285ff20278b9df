"""The tables of a format-1 workspace: models and their files, services, events, settings.

Workspaces made before Alembic already hold these and are stamped here, not re-created.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("description", sa.Text),
        sa.Column("created_time", sa.Float, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("root_name", sa.String, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("properties", sa.Text, nullable=False),
    )
    op.create_table(
        "model_files",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("relpath", sa.String, primary_key=True),
        sa.Column("digest", sa.String, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(["name", "version"], ["models.name", "models.version"], ondelete="CASCADE"),
    )
    op.create_table(
        "services",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("primary_key", sa.Text),
        sa.Column("secondary_key", sa.Text),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("serving_generation", sa.Integer),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("created_time", sa.Float, nullable=False),
        sa.Column("updated_time", sa.Float, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service", sa.String, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("events_by_service_time", "events", ["service", "time"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.execute(sa.text("INSERT INTO meta (key, value) VALUES ('schema_version', '1')"))
