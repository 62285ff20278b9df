"""Compute targets attached to the workspace (store/computes.py).

Workspaces that attached one before this revision made the table on first use: kept as is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("compute_targets"):
        return
    op.create_table(
        "compute_targets",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("created_time", sa.Float, nullable=False),
    )
