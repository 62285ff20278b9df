"""The compute targets attached to a workspace (v1's ``ComputeTarget.attach``): name, kind and
the kind's settings (for Kubernetes: kubeconfig, context, namespace, where pods fetch blobs
from, where the router is reached).

Settings are JSON, opaque to the store. The table is created with the others in a new
workspace, and on first use in a workspace made before it existed.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, Float, Row, String, Table, Text, delete, select

from modelfleet.errors import ConfigError, Conflict, NotFound
from modelfleet.store.db import Database, metadata

KINDS = ("kubernetes",)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,15}$")  # v1: 2-16 characters, a letter first

compute_targets = Table(
    "compute_targets",
    metadata,
    Column("name", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("settings", Text, nullable=False),  # JSON object
    Column("created_time", Float, nullable=False),
)


@dataclass(frozen=True)
class ComputeRecord:
    name: str
    kind: str
    settings: dict[str, Any]
    created_time: float


def validate_compute_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"compute target name must be 2-16 characters: a letter, then letters, digits or '-' (got {name!r})"
        )
    return name


class ComputeTargets:
    """The compute targets of one workspace (its database)."""

    def __init__(self, db: Database, workspace_name: str) -> None:
        self._db = db
        self.workspace_name = workspace_name

    def attach(self, name: str, kind: str, settings: dict[str, Any], *, overwrite: bool = False) -> ComputeRecord:
        validate_compute_name(name)
        if kind not in KINDS:
            raise ConfigError(f"compute target kind must be one of {', '.join(KINDS)} (got {kind!r})")
        record = ComputeRecord(name, kind, dict(settings), time.time())
        settings_json = json.dumps(record.settings, sort_keys=True)

        def tx(conn: Connection) -> None:
            compute_targets.create(conn, checkfirst=True)
            exists = conn.execute(select(compute_targets.c.name).where(compute_targets.c.name == name)).first()
            if exists is not None and not overwrite:
                raise Conflict(
                    f'compute target "{name}" is already attached to workspace "{self.workspace_name}"; '
                    "detach it first or choose another name"
                )
            conn.execute(delete(compute_targets).where(compute_targets.c.name == name))
            conn.execute(
                compute_targets.insert().values(
                    name=name, kind=kind, settings=settings_json, created_time=record.created_time
                )
            )

        self._db.write(tx)
        return record

    def get(self, name: str) -> ComputeRecord:
        def tx(conn: Connection) -> Row[Any] | None:
            if not _exists(conn):
                return None
            return conn.execute(select(compute_targets).where(compute_targets.c.name == name)).first()

        row = self._db.read(tx)
        if row is None:
            raise NotFound(
                f'no compute target "{name}" in workspace "{self.workspace_name}"; attach one with '
                "KubernetesCompute.attach(ws, name, ...) or `modelfleet compute attach`"
            )
        return _record(row)

    def list(self) -> list[ComputeRecord]:
        def tx(conn: Connection) -> list[Row[Any]]:
            if not _exists(conn):
                return []
            return list(conn.execute(select(compute_targets).order_by(compute_targets.c.name)))

        return [_record(r) for r in self._db.read(tx)]

    def detach(self, name: str) -> None:
        self.get(name)

        def tx(conn: Connection) -> None:
            conn.execute(delete(compute_targets).where(compute_targets.c.name == name))

        self._db.write(tx)


def _exists(conn: Connection) -> bool:
    return bool(conn.dialect.has_table(conn, compute_targets.name))


def _record(row: Row[Any]) -> ComputeRecord:
    return ComputeRecord(row.name, row.kind, json.loads(row.settings), row.created_time)
