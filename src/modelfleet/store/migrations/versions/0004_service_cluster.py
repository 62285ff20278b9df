"""Each local service records the local cluster that owns it (store/clusters.py)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("services", sa.Column("cluster", sa.String, nullable=True))
