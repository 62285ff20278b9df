"""The services of a workspace, their keys and state, and each one's event log.

A service's ``config`` is opaque to the store; each change of it bumps ``generation``, and
the control plane records the generation it serves in ``serving_generation``, so "is the
latest config live?" is one comparison. Events (deployments, scaling, builds) are kept per
service, oldest first, and go with it when it is deleted.

A local service records the local cluster that owns it (``cluster``, see ``clusters.py``).
In a workspace a team shares, a service owned by another folder's cluster is refused here,
inside the same transaction as the change, when it would be deployed over, updated or
deleted: only its owner runs it, so only its owner may replace or remove what it runs. Keys,
tags and states stay writable by anyone (a regenerated key reaches the owner's router within
its next pass). A service with no recorded owner (another compute target's, or one deployed
before owners were recorded) is refused to no one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, delete, func, select, update

from modelfleet.errors import ConfigError, Conflict, NotFound
from modelfleet.store.db import Database, events, services
from modelfleet.store.secrets import SecretBox

SERVICE_STATES = ("Transitioning", "Healthy", "Unhealthy", "Failed")


@dataclass(frozen=True)
class ServiceRecord:
    name: str
    config: dict[str, Any]
    # Keys are left out of repr (and so of every log line and traceback that shows a record).
    primary_key: str | None = field(repr=False)
    secondary_key: str | None = field(repr=False)
    generation: int
    serving_generation: int | None
    state: str
    detail: str | None
    created_time: float
    updated_time: float
    cluster: str | None = None  # the local cluster that owns it (clusters.py); None: none recorded


class Services:
    """The services and events of one workspace (its database)."""

    def __init__(
        self,
        db: Database,
        workspace_name: str,
        box: SecretBox | None = None,
        local_cluster: Callable[[], str] | None = None,
    ) -> None:
        self._db = db
        self.name = workspace_name
        # Keys are sealed with the member's key in a shared database (secrets.py), plain in SQLite.
        self._box = box or SecretBox(None)
        # This folder's cluster id, in a shared workspace: other clusters' services are refused
        # (see the module's docstring). None: a folder workspace, whose one cluster runs them all.
        self._local_cluster = local_cluster

    def create_service(
        self,
        name: str,
        config: dict[str, Any],
        *,
        primary_key: str | None,
        secondary_key: str | None,
        overwrite: bool = False,
        cluster: str | None = None,
    ) -> ServiceRecord:
        """Add the service's desired state (state Transitioning, generation 1), owned by the local
        cluster ``cluster`` (None: another compute target's). With ``overwrite``, an existing one
        gets the new config, keys and owner, and its next generation; another cluster's is refused."""
        config_json = _config_json(config)
        now = time.time()
        sealed_primary, sealed_secondary = self._box.seal(primary_key), self._box.seal(secondary_key)

        def tx(conn: Connection) -> ServiceRecord:
            row = conn.execute(select(services).where(services.c.name == name)).first()
            if row is None:
                conn.execute(
                    services.insert().values(
                        name=name,
                        config=config_json,
                        primary_key=sealed_primary,
                        secondary_key=sealed_secondary,
                        generation=1,
                        serving_generation=None,
                        state="Transitioning",
                        detail=None,
                        created_time=now,
                        updated_time=now,
                        cluster=cluster,
                    )
                )
            elif not overwrite:
                where = f" (on the local cluster {row.cluster})" if self._foreign(row.cluster) else ""
                raise Conflict(
                    f'service "{name}" already exists in workspace "{self.name}"{where}; pass overwrite=True '
                    f"to replace it, or delete it first (`modelfleet service delete -n {name}`)"
                )
            else:
                self._refuse_foreign(name, row.cluster, "deployed over")
                conn.execute(
                    update(services)
                    .where(services.c.name == name)
                    .values(
                        config=config_json,
                        primary_key=sealed_primary,
                        secondary_key=sealed_secondary,
                        generation=services.c.generation + 1,
                        state="Transitioning",
                        detail=None,
                        updated_time=now,
                        cluster=cluster,
                    )
                )
            return self._service(conn, name)

        return self._db.write(tx)

    def get_service(self, name: str) -> ServiceRecord:
        return self._db.read(lambda conn: self._service(conn, name))

    def list_services(self) -> list[ServiceRecord]:
        rows = self._db.read(lambda conn: conn.execute(select(services).order_by(services.c.name)).all())
        return [self._record(r) for r in rows]

    def service_stamps(self) -> dict[str, float]:
        """Every service's ``updated_time``, which every change to its record moves: one small
        query tells a daemon which of its services changed, where reading each record would
        cost a query per service."""
        rows = self._db.read(lambda conn: conn.execute(select(services.c.name, services.c.updated_time)).all())
        return {row.name: row.updated_time for row in rows}

    def service_stamps_summary(self) -> tuple[int, float | None]:
        """(how many services, the sum of their ``updated_time``): one row that moves whenever
        any service is created, changed or deleted (a sum, not the latest time: a teammate's
        machine whose clock is behind still moves it)."""
        query = select(func.count(), func.sum(services.c.updated_time)).select_from(services)
        row = self._db.read(lambda conn: conn.execute(query).one())
        return int(row[0]), row[1]

    def update_service_config(self, name: str, config: dict[str, Any]) -> ServiceRecord:
        """Replace the config and bump the generation; the state goes back to Transitioning
        until the control plane serves the new generation."""
        config_json = _config_json(config)
        return self._update_service(
            name,
            guard="updated",
            config=config_json,
            generation=services.c.generation + 1,
            state="Transitioning",
            detail=None,
        )

    def set_service_keys(
        self, name: str, primary_key: str | None = None, secondary_key: str | None = None
    ) -> ServiceRecord:
        values: dict[str, Any] = {}
        if primary_key is not None:
            values["primary_key"] = self._box.seal(primary_key)
        if secondary_key is not None:
            values["secondary_key"] = self._box.seal(secondary_key)
        return self._update_service(name, **values)

    def set_service_state(
        self, name: str, state: str, detail: str | None = None, *, serving_generation: int | None = None
    ) -> None:
        if state not in SERVICE_STATES:
            raise ConfigError(f"service state must be one of {', '.join(SERVICE_STATES)} (got {state!r})")
        values: dict[str, Any] = {"state": state, "detail": detail}
        if serving_generation is not None:
            values["serving_generation"] = serving_generation
        self._update_service(name, **values)

    def delete_service(self, name: str) -> None:
        """Remove the service and its event log (a later service of the same name starts afresh)."""

        def tx(conn: Connection) -> None:
            owner = conn.execute(select(services.c.cluster).where(services.c.name == name)).first()
            if owner is None:
                raise self._service_not_found(name)
            self._refuse_foreign(name, owner.cluster, "deleted")
            conn.execute(delete(services).where(services.c.name == name))
            conn.execute(delete(events).where(events.c.service == name))

        self._db.write(tx)

    # -- events ----------------------------------------------------------------------------

    def add_event(self, service: str, kind: str, data: Mapping[str, Any], time: float | None = None) -> None:
        clash = {"time", "kind"} & set(data)
        if clash:
            raise ConfigError(
                f"event data may not hold the keys {sorted(clash)}: they are the event's own; "
                "pass the time as the time argument"
            )
        try:
            data_json = json.dumps(dict(data))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"event data must be JSON-serialisable ({exc})") from exc
        when = _now() if time is None else float(time)
        row = {"service": service, "time": when, "kind": kind, "data": data_json}
        self._db.write(lambda conn: conn.execute(events.insert().values(row)))

    def list_events(self, service: str, kind: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Events of ``service`` (of ``kind`` if given, at or after ``since`` if given), oldest first."""
        query = select(events).where(events.c.service == service)
        if kind is not None:
            query = query.where(events.c.kind == kind)
        if since is not None:
            query = query.where(events.c.time >= since)
        query = query.order_by(events.c.time, events.c.id)
        rows = self._db.read(lambda conn: conn.execute(query).all())
        return [{"time": r.time, "kind": r.kind, **json.loads(r.data)} for r in rows]

    def latest_events(self, kind: str) -> dict[str, dict[str, Any]]:
        """Each service's newest event of ``kind`` (services with none are absent): one query,
        for listings of many services."""
        query = select(events).where(events.c.kind == kind).order_by(events.c.time, events.c.id)
        rows = self._db.read(lambda conn: conn.execute(query).all())
        return {r.service: {"time": r.time, "kind": r.kind, **json.loads(r.data)} for r in rows}

    def _service(self, conn: Connection, name: str) -> ServiceRecord:
        row = conn.execute(select(services).where(services.c.name == name)).first()
        if row is None:
            raise self._service_not_found(name)
        return self._record(row)

    def _record(self, row: Row[Any]) -> ServiceRecord:
        return _service_record(row, self._box)

    def _service_not_found(self, name: str) -> NotFound:
        return NotFound(
            f'service "{name}" not found in workspace "{self.name}"; list services with `modelfleet service list`'
        )

    # -- owners --------------------------------------------------------------------------

    def claim_service(self, name: str, cluster: str) -> str | None:
        """Record ``cluster`` as the owner of ``name`` if it has none yet (one writer wins);
        the owner it has afterwards."""

        def tx(conn: Connection) -> str | None:
            conn.execute(
                update(services)
                .where(services.c.name == name, services.c.cluster.is_(None))
                .values(cluster=cluster, updated_time=_now())
            )
            owner = conn.execute(select(services.c.cluster).where(services.c.name == name)).first()
            if owner is None:
                raise self._service_not_found(name)
            return owner.cluster  # type: ignore[no-any-return]

        return self._db.write(tx)

    def foreign_refusal(self, record: ServiceRecord, action: str) -> Conflict | None:
        """The refusal to give when this folder asks for ``record`` to be ``action`` (e.g.
        "deleted") and another local cluster owns it; None when it may."""
        if not self._foreign(record.cluster):
            return None
        assert self._local_cluster is not None and record.cluster is not None
        return _foreign_service(record.name, record.cluster, self._local_cluster(), action)

    def _foreign(self, owner: str | None) -> bool:
        return owner is not None and self._local_cluster is not None and owner != self._local_cluster()

    def _refuse_foreign(self, name: str, owner: str | None, action: str) -> None:
        if self._foreign(owner):
            assert self._local_cluster is not None and owner is not None
            raise _foreign_service(name, owner, self._local_cluster(), action)

    def _update_service(self, name: str, guard: str | None = None, **values: Any) -> ServiceRecord:
        def tx(conn: Connection) -> ServiceRecord:
            if guard is not None:
                owner = conn.execute(select(services.c.cluster).where(services.c.name == name)).first()
                if owner is not None:
                    self._refuse_foreign(name, owner.cluster, guard)
            done = conn.execute(
                update(services).where(services.c.name == name).values(updated_time=_now(), **values)
            ).rowcount
            if not done:
                raise self._service_not_found(name)
            return self._service(conn, name)

        return self._db.write(tx)


def _now() -> float:
    return time.time()


def _foreign_service(name: str, owner: str, mine: str, action: str) -> Conflict:
    return Conflict(
        f'service "{name}" runs on another local cluster, {owner}, and can be {action} only from there '
        f"(this folder's cluster is {mine}): run the command on that machine, in that folder, or ask its "
        "owner; a new service of your own needs another name"
    )


def _service_record(row: Row[Any], box: SecretBox) -> ServiceRecord:
    return ServiceRecord(
        name=row.name,
        config=json.loads(row.config),
        primary_key=box.open(row.primary_key),
        secondary_key=box.open(row.secondary_key),
        generation=row.generation,
        serving_generation=row.serving_generation,
        state=row.state,
        detail=row.detail,
        created_time=row.created_time,
        updated_time=row.updated_time,
        cluster=row.cluster,
    )


def _config_json(config: Mapping[str, Any]) -> str:
    if not isinstance(config, Mapping):
        raise ConfigError(f"service config must be a dict (got {type(config).__name__})")
    try:
        return json.dumps(dict(config), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"service config must be JSON-serialisable ({exc})") from exc
