"""The workspace database's schema versions (Alembic), applied when a workspace is opened.

A workspace made before Alembic came (format 1, its schema noted in the ``meta`` table) is
stamped at the first revision, whose tables it already has, and upgraded from there. One made
by a newer modelfleet, whose revision this one does not know, is refused with what to do.
Every step runs inside the caller's write transaction (SQLite and PostgreSQL both have
transactional DDL), so two processes opening an old workspace at once upgrade it once.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from modelfleet.errors import ConfigError

FOLDER = Path(__file__).parent
BASELINE = "0001"  # the tables of a format-1 workspace made before Alembic


def config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(FOLDER))
    cfg.attributes["connection"] = conn  # env.py runs the migrations on it
    return cfg


def head() -> str:
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(conn: Connection, where: str) -> None:
    """Upgrade the schema on ``conn`` (in a transaction) to head; refuse one newer than this modelfleet."""
    cfg = config(conn)
    script = ScriptDirectory.from_config(cfg)
    revision = current(conn)
    if revision is None and inspect(conn).has_table("models"):
        command.stamp(cfg, BASELINE)
        revision = BASELINE
    if revision is not None and revision not in {s.revision for s in script.walk_revisions()}:
        raise ConfigError(
            f"the workspace database {where} has schema revision {revision}, made by a newer modelfleet "
            f"than this one (which knows up to {script.get_current_head()}); upgrade modelfleet "
            "(`pip install -U modelfleet`) on this machine"
        )
    if revision != script.get_current_head():
        command.upgrade(cfg, "head")
