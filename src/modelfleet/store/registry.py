"""The workspace: models, source snapshots, services and their keys, events, settings.

A workspace is a folder ``<root>`` holding ``<root>/.modelfleet/``::

    workspace.json   {"name": ..., "format": 1}; written last, so its presence means "complete"
    metadata.db      SQLite in WAL mode, owner-only (0600): it holds service keys
    blobs/           content-addressed files (model files, snapshot zips), see blobs.py
    runtime/         left to the control plane (sockets, pid files, replica folders)

Rules kept here, as v1 kept them: model versions count 1, 2, 3... per name and never
change once registered (the files are copied into the blob store at registration); tags
can be added, changed and removed; properties can be added but an existing one never
changes. A service's ``config`` is opaque to the store; each change of it bumps
``generation``, and the control plane records the generation it serves in
``serving_generation``, so "is the latest config live?" is one comparison.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from sqlalchemy import Connection, Row, delete, func, select, update

from modelfleet.errors import ConfigError, Conflict, NotFound
from modelfleet.spec.names import validate_model_name
from modelfleet.store import snapshot as _snapshot
from modelfleet.store.blobs import BlobStore
from modelfleet.store.db import Database, events, model_files, models, services, settings

FORMAT = 1
META_DIR = ".modelfleet"
SERVICE_STATES = ("Transitioning", "Healthy", "Unhealthy", "Failed")

# v1: workspace names are 2-32 characters, alphanumeric first, then also '-' and '_'.
_WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,31}$")


@dataclass(frozen=True)
class ModelFile:
    relpath: str  # posix path starting with the model's root_name: "model.pkl" or "outputs/a/b.bin"
    digest: str
    size: int


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: int
    tags: dict[str, str]
    properties: dict[str, str]
    description: str | None
    created_time: float
    kind: Literal["file", "folder"]
    root_name: str
    files: tuple[ModelFile, ...]

    @property
    def id(self) -> str:
        return f"{self.name}:{self.version}"


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


class Store:
    """One open workspace. Make it with :meth:`create` or :meth:`open`; close it with :meth:`close`."""

    def __init__(self, root: Path, name: str, db: Database) -> None:
        self.root = root
        self.name = name
        self._db = db
        self.blobs = BlobStore(root / META_DIR / "blobs")
        self.runtime_dir = root / META_DIR / "runtime"

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, name: str, exist_ok: bool = False) -> Store:
        root = Path(root).expanduser().resolve()
        meta_dir = root / META_DIR
        if (meta_dir / "workspace.json").exists():
            if not exist_ok:
                raise Conflict(
                    f"a modelfleet workspace already exists at {root}; open it with Workspace.get(path), "
                    "pass exist_ok=True, or choose another folder"
                )
            store = cls.open(root)
            if store.name != name:
                store.close()
                raise Conflict(
                    f'the workspace at {root} is named "{store.name}", not "{name}"; '
                    f'use name="{store.name}" or choose another folder'
                )
            return store
        if not isinstance(name, str) or not _WORKSPACE_NAME.match(name):
            raise ConfigError(
                "workspace name must be 2-32 characters: a letter or digit, then letters, digits, "
                f"'-' or '_' (got {name!r})"
            )
        root.mkdir(parents=True, exist_ok=True)
        meta_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(meta_dir, 0o700)  # mkdir's mode is filtered by the umask
        (meta_dir / "runtime").mkdir(exist_ok=True)
        BlobStore(meta_dir / "blobs").ensure()
        db = Database.create(meta_dir / "metadata.db")
        tmp = meta_dir / "workspace.json.tmp"
        tmp.write_text(json.dumps({"name": name, "format": FORMAT}) + "\n")
        os.replace(tmp, meta_dir / "workspace.json")
        return cls(root, name, db)

    @classmethod
    def open(cls, root: Path) -> Store:
        root = Path(root).expanduser().resolve()
        meta_dir = root / META_DIR
        marker = meta_dir / "workspace.json"
        if not marker.is_file():
            raise NotFound(f"no modelfleet workspace at {root}; create one with Workspace.create(...)")
        try:
            info = json.loads(marker.read_text())
            name, fmt = info["name"], info["format"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{marker} is not a valid workspace file ({exc}); it should read "
                '{"name": ..., "format": 1}: restore it or create the workspace again'
            ) from exc
        if fmt != FORMAT:
            raise ConfigError(
                f"workspace {root} has format {fmt!r}, and this modelfleet reads format {FORMAT}; "
                "use the modelfleet version that created it"
            )
        db_path = meta_dir / "metadata.db"
        if not db_path.is_file():
            raise NotFound(f"workspace {root} has no metadata.db; it is incomplete: create it again")
        return cls(root, name, Database(db_path))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self.name!r} at {self.root}>"

    # -- models --------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        path: Path,
        *,
        tags: Mapping[str, str] | None = None,
        properties: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> ModelRecord:
        validate_model_name(name, "model_name")  # the one rule, from spec/names.py
        clean_tags = _string_map(tags, "tags")
        clean_props = _string_map(properties, "properties")
        path = Path(path).expanduser()
        if path.is_file():
            kind: Literal["file", "folder"] = "file"
            root_name = path.name
            sources = [(root_name, path)]
        elif path.is_dir():
            kind = "folder"
            # "..", "." or "/" name no folder: the stored root is the folder's own name
            root_name = path.name if path.name not in ("", ".", "..") else path.resolve().name
            if not root_name:
                raise ConfigError(f"model_path {path} is the file system's root; register a folder below it")
            sources = [(f"{root_name}/{rel}", p) for rel, p in _model_files(path)]
            if not sources:
                raise ConfigError(f"model_path {path} is an empty folder; register a file or a folder with files")
        else:
            raise ConfigError(f"model_path {path} does not exist; pass the path of a model file or folder")
        # Copy into the blob store before the transaction, which then stays short.
        files = tuple(self._put_model_file(rel, src) for rel, src in sorted(sources))
        now = time.time()

        def tx(conn: Connection) -> int:
            latest = conn.execute(select(func.max(models.c.version)).where(models.c.name == name)).scalar()
            version = (latest or 0) + 1
            conn.execute(
                models.insert().values(
                    name=name,
                    version=version,
                    description=description,
                    created_time=now,
                    kind=kind,
                    root_name=root_name,
                    tags=json.dumps(clean_tags),
                    properties=json.dumps(clean_props),
                )
            )
            conn.execute(
                model_files.insert(),
                [dict(name=name, version=version, relpath=f.relpath, digest=f.digest, size=f.size) for f in files],
            )
            return version

        version = self._db.write(tx)
        return ModelRecord(name, version, clean_tags, clean_props, description, now, kind, root_name, files)

    def get_model(self, name: str, version: int | None = None) -> ModelRecord:
        return self._db.read(lambda conn: self._model(conn, name, version))

    def list_models(
        self,
        name: str | None = None,
        tags: Sequence[str | Sequence[str]] | None = None,
        properties: Sequence[str | Sequence[str]] | None = None,
        latest: bool = False,
    ) -> list[ModelRecord]:
        """Models by name, newest version first. As in v1, ``tags`` and ``properties`` list
        conditions that all must hold: ``"key"`` (present) or ``["key", "value"]``; ``latest``
        keeps only the newest version of each name (before the filters apply)."""
        tag_conds = _conditions(tags, "tags")
        prop_conds = _conditions(properties, "properties")

        def tx(conn: Connection) -> list[ModelRecord]:
            query = select(models)
            if name is not None:
                query = query.where(models.c.name == name)
            return _records(conn, conn.execute(query).all())

        records = sorted(self._db.read(tx), key=lambda r: (r.name, -r.version))
        if latest:
            newest: dict[str, ModelRecord] = {}
            for r in records:
                newest.setdefault(r.name, r)  # sorted newest first
            records = list(newest.values())
        return [r for r in records if _matches(r.tags, tag_conds) and _matches(r.properties, prop_conds)]

    def add_model_tags(self, name: str, version: int, tags: Mapping[str, str]) -> ModelRecord:
        new = _string_map(tags, "tags")
        return self._update_model_map(name, version, "tags", lambda old: {**old, **new})

    def remove_model_tags(self, name: str, version: int, keys: Iterable[str]) -> ModelRecord:
        # Removing a tag that is not there is not an error: the outcome is the one asked for.
        drop = set(keys)
        return self._update_model_map(
            name, version, "tags", lambda old: {k: v for k, v in old.items() if k not in drop}
        )

    def add_model_properties(self, name: str, version: int, props: Mapping[str, str]) -> ModelRecord:
        new = _string_map(props, "properties")

        def merge(old: dict[str, str]) -> dict[str, str]:
            for key, value in new.items():
                if key in old and old[key] != value:
                    raise Conflict(
                        f'property "{key}" of model {name}:{version} is already "{old[key]}" and '
                        f'properties never change (got "{value}"); use a tag for a value that changes'
                    )
            return {**old, **new}

        return self._update_model_map(name, version, "properties", merge)

    def download_model(self, name: str, version: int | None, target_dir: Path, exist_ok: bool = False) -> Path:
        """Copy the model into ``target_dir`` as ordinary writable files; return what was written."""
        record = self.get_model(name, version)
        target_dir = Path(target_dir).expanduser()
        dest = target_dir / record.root_name
        if dest.exists() or dest.is_symlink():
            if not exist_ok:
                raise Conflict(
                    f"{dest} already exists; pass exist_ok=True to overwrite it or choose another target_dir"
                )
            if (record.kind == "folder") != dest.is_dir():
                raise Conflict(
                    f"{dest} exists and is a {'folder' if dest.is_dir() else 'file'}, but model "
                    f"{record.id} is a {record.kind}; remove it or choose another target_dir"
                )
        for f in record.files:
            target = _safe_join(target_dir, f.relpath)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            shutil.copyfile(self.blobs.path(f.digest), target)
            os.chmod(target, 0o644)
        return dest

    def materialize_model(self, record: ModelRecord, dest_dir: Path) -> None:
        """Lay the model out in ``dest_dir`` as v1 does in ``azureml-models/<name>/<version>/``.

        Files are read-only copies of the blobs (reflinks where the file system has them), never
        hard links: a replica that writes to its model file changes its own copy, not the blob
        that every other service and version shares.
        """
        for f in record.files:
            target = _safe_join(dest_dir, f.relpath)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            self.blobs.copy_out(f.digest, target)

    # -- snapshots -------------------------------------------------------------------------

    def put_snapshot(self, source_dir: Path) -> str:
        tmp = self.blobs.new_temp_path(".zip")
        try:
            _snapshot.make_snapshot(Path(source_dir).expanduser(), tmp)
            return self.blobs.put_file(tmp, move=True)
        finally:
            tmp.unlink(missing_ok=True)

    def extract_snapshot(self, digest: str, dest_dir: Path) -> None:
        if not self.blobs.has(digest):
            raise NotFound(
                f'snapshot {digest} not found in workspace "{self.name}"; deploy from the source folder again'
            )
        _snapshot.extract_snapshot(self.blobs.path(digest), Path(dest_dir))

    # -- services --------------------------------------------------------------------------

    def create_service(
        self,
        name: str,
        config: dict[str, Any],
        *,
        primary_key: str | None,
        secondary_key: str | None,
        overwrite: bool = False,
    ) -> ServiceRecord:
        """Add the service's desired state (state Transitioning, generation 1). With ``overwrite``,
        an existing one gets the new config and keys and its next generation."""
        config_json = _config_json(config)
        now = time.time()

        def tx(conn: Connection) -> ServiceRecord:
            row = conn.execute(select(services).where(services.c.name == name)).first()
            if row is None:
                conn.execute(
                    services.insert().values(
                        name=name,
                        config=config_json,
                        primary_key=primary_key,
                        secondary_key=secondary_key,
                        generation=1,
                        serving_generation=None,
                        state="Transitioning",
                        detail=None,
                        created_time=now,
                        updated_time=now,
                    )
                )
            elif not overwrite:
                raise Conflict(
                    f'service "{name}" already exists in workspace "{self.name}"; pass overwrite=True '
                    f"to replace it, or delete it first (`modelfleet service delete -n {name}`)"
                )
            else:
                conn.execute(
                    update(services)
                    .where(services.c.name == name)
                    .values(
                        config=config_json,
                        primary_key=primary_key,
                        secondary_key=secondary_key,
                        generation=services.c.generation + 1,
                        state="Transitioning",
                        detail=None,
                        updated_time=now,
                    )
                )
            return self._service(conn, name)

        return self._db.write(tx)

    def get_service(self, name: str) -> ServiceRecord:
        return self._db.read(lambda conn: self._service(conn, name))

    def list_services(self) -> list[ServiceRecord]:
        rows = self._db.read(lambda conn: conn.execute(select(services).order_by(services.c.name)).all())
        return [_service_record(r) for r in rows]

    def update_service_config(self, name: str, config: dict[str, Any]) -> ServiceRecord:
        """Replace the config and bump the generation; the state goes back to Transitioning
        until the control plane serves the new generation."""
        config_json = _config_json(config)
        return self._update_service(
            name,
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
            values["primary_key"] = primary_key
        if secondary_key is not None:
            values["secondary_key"] = secondary_key
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
            gone = conn.execute(delete(services).where(services.c.name == name)).rowcount
            if not gone:
                raise self._service_not_found(name)
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

    # -- settings --------------------------------------------------------------------------

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        value = self._db.read(lambda conn: conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar())
        return default if value is None else value

    def set_setting(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise ConfigError(f"setting {key!r} must be a string (got {type(value).__name__})")

        def tx(conn: Connection) -> None:
            done = conn.execute(update(settings).where(settings.c.key == key).values(value=value)).rowcount
            if not done:
                conn.execute(settings.insert().values(key=key, value=value))

        self._db.write(tx)

    # -- internals -------------------------------------------------------------------------

    def _model(self, conn: Connection, name: str, version: int | None) -> ModelRecord:
        query = select(models).where(models.c.name == name)
        if version is None:
            query = query.order_by(models.c.version.desc()).limit(1)
        else:
            query = query.where(models.c.version == version)
        row = conn.execute(query).first()
        if row is None:
            latest = conn.execute(select(func.max(models.c.version)).where(models.c.name == name)).scalar()
            if latest is None:
                raise NotFound(
                    f'model "{name}" not found in workspace "{self.name}"; register it with '
                    "Model.register(...) or list models with `modelfleet model list`"
                )
            raise NotFound(
                f'model "{name}" has no version {version} in workspace "{self.name}" (versions 1 to '
                f"{latest} exist); pass one of those, or version=None for the latest"
            )
        return _records(conn, [row])[0]

    def _put_model_file(self, relpath: str, src: Path) -> ModelFile:
        digest = self.blobs.put_file(src)
        # The size of what was stored, even if the source changed meanwhile.
        return ModelFile(relpath, digest, self.blobs.path(digest).stat().st_size)

    def _update_model_map(self, name: str, version: int, column: str, change: Any) -> ModelRecord:
        def tx(conn: Connection) -> ModelRecord:
            record = self._model(conn, name, version)
            new = change(dict(getattr(record, column)))
            conn.execute(
                update(models)
                .where(models.c.name == name, models.c.version == record.version)
                .values({column: json.dumps(new)})
            )
            return self._model(conn, name, record.version)

        return self._db.write(tx)

    def _service(self, conn: Connection, name: str) -> ServiceRecord:
        row = conn.execute(select(services).where(services.c.name == name)).first()
        if row is None:
            raise self._service_not_found(name)
        return _service_record(row)

    def _service_not_found(self, name: str) -> NotFound:
        return NotFound(
            f'service "{name}" not found in workspace "{self.name}"; list services with `modelfleet service list`'
        )

    def _update_service(self, name: str, **values: Any) -> ServiceRecord:
        def tx(conn: Connection) -> ServiceRecord:
            done = conn.execute(
                update(services).where(services.c.name == name).values(updated_time=_now(), **values)
            ).rowcount
            if not done:
                raise self._service_not_found(name)
            return self._service(conn, name)

        return self._db.write(tx)


# -- helpers -----------------------------------------------------------------------------


def _now() -> float:
    return time.time()


def _records(conn: Connection, rows: Sequence[Row[Any]]) -> list[ModelRecord]:
    """Rows of ``models`` → records, with their files fetched in one query."""
    if not rows:
        return []
    keys = {(r.name, r.version) for r in rows}
    names = {r.name for r in rows}
    files: dict[tuple[str, int], list[ModelFile]] = {k: [] for k in keys}
    for f in conn.execute(select(model_files).where(model_files.c.name.in_(names)).order_by(model_files.c.relpath)):
        if (f.name, f.version) in files:
            files[(f.name, f.version)].append(ModelFile(f.relpath, f.digest, f.size))
    return [
        ModelRecord(
            name=r.name,
            version=r.version,
            tags=json.loads(r.tags),
            properties=json.loads(r.properties),
            description=r.description,
            created_time=r.created_time,
            kind=r.kind,
            root_name=r.root_name,
            files=tuple(files[(r.name, r.version)]),
        )
        for r in rows
    ]


def _service_record(row: Row[Any]) -> ServiceRecord:
    return ServiceRecord(
        name=row.name,
        config=json.loads(row.config),
        primary_key=row.primary_key,
        secondary_key=row.secondary_key,
        generation=row.generation,
        serving_generation=row.serving_generation,
        state=row.state,
        detail=row.detail,
        created_time=row.created_time,
        updated_time=row.updated_time,
    )


def _config_json(config: Mapping[str, Any]) -> str:
    if not isinstance(config, Mapping):
        raise ConfigError(f"service config must be a dict (got {type(config).__name__})")
    try:
        return json.dumps(dict(config), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"service config must be JSON-serialisable ({exc})") from exc


def _string_map(values: Mapping[str, Any] | None, what: str) -> dict[str, str]:
    """v1 stores tags and properties as strings; numbers and booleans are turned into strings."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{what} must be a dict of str to str (got {type(values).__name__})")
    out: dict[str, str] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{what} keys must be non-empty strings (got {key!r})")
        if isinstance(value, bool | int | float):
            value = str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{what}[{key!r}] must be a string (got {type(value).__name__})")
        out[key] = value
    return out


def _conditions(items: Sequence[Any] | None, what: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for item in items or ():
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
            out.append((item[0], item[1]))
        else:
            raise ConfigError(
                f'each {what} filter must be "key" or ["key", "value"] (got {item!r}); '
                f'for example {what}=["stage", ["team", "vision"]]'
            )
    return out


def _matches(values: Mapping[str, str], conds: list[tuple[str, str | None]]) -> bool:
    return all(key in values and (want is None or values[key] == want) for key, want in conds)


def _model_files(folder: Path) -> list[tuple[str, Path]]:
    """Files under ``folder`` as (posix relpath, the file to read), in walk order.

    A symlink is followed only when it leads to a file or folder inside ``folder``; one that
    leads out is refused, naming it. Refused, not skipped: a skipped link would silently drop
    weights the user meant to register (a Hugging Face cache's snapshot folder is links into
    ``../../blobs``), while following it could copy in files nobody meant to publish, such as a
    workspace's keys; the message says how to register such a folder (copy it with ``cp -rL``).
    A workspace's ``.modelfleet`` folder (keys, metadata) is never model content: left out.
    """
    out: list[tuple[str, Path]] = []
    root = os.path.realpath(folder)

    def walk(current: Path, prefix: str, ancestors: frozenset[str]) -> None:
        for child in sorted(current.iterdir(), key=lambda p: p.name):
            if child.name == META_DIR:
                continue
            rel = prefix + child.name
            real = os.path.realpath(child)
            if child.is_symlink() and os.path.commonpath([root, real]) != root:
                raise ConfigError(
                    f"{child} in model_path {folder} is a symlink to {os.readlink(child)} ({real}), outside "
                    "the model folder, and registration does not follow links out of it (they can pull in "
                    "files nobody meant to publish); copy the folder with its links resolved (`cp -rL`) and "
                    "register the copy, or register the folder the link points into"
                )
            if not os.path.exists(real):
                raise ConfigError(
                    f"{child} in model_path {folder} is a symlink to {os.readlink(child)}, which does "
                    "not exist; fix or remove the link"
                )
            if os.path.isdir(real):
                if real in ancestors:
                    raise ConfigError(
                        f"{child} in model_path {folder} links to a folder that holds it; remove the link"
                    )
                walk(Path(real), rel + "/", ancestors | {real})
            elif stat.S_ISREG(os.stat(real).st_mode):
                out.append((rel, Path(real)))  # read what was checked, not the link again
            # sockets, pipes and devices are no model file: skipped

    walk(Path(root), "", frozenset({root}))
    return out


def _safe_join(base: Path, relpath: str) -> Path:
    parts = PurePosixPath(relpath).parts
    if not parts or relpath.startswith("/") or ".." in parts:
        raise ConfigError(f"stored model file path {relpath!r} is not a relative path; the workspace is corrupt")
    return Path(base).joinpath(*parts)
