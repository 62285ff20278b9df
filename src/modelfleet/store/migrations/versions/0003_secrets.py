"""Secrets a team shares through the workspace database (store/secrets.py): the token-signing key."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),  # encrypted when the database is shared
        sa.Column("created_time", sa.Float, nullable=False),
    )
