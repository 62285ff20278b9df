"""The workspace: one folder, its metadata database and blob store, and the parts kept there.

A workspace is a folder ``<root>`` holding ``<root>/.modelfleet/``::

    workspace.json   {"name": ..., "format": 1}; written last, so its presence means "complete"
                     (format 2 adds "database": the URL of a shared PostgreSQL database, with
                     no password: libpq takes it from PGPASSWORD or ~/.pgpass; and/or
                     "blob_store": az://, s3:// or file:// URL, credentials from the environment)
    metadata.db      SQLite in WAL mode, owner-only (0600): it holds service keys (no shared database)
    blobs/           content-addressed files (model files, snapshot zips), see blobs.py; with a
                     shared blob store, its local read cache (shared_blobs.py)
    runtime/         left to the control plane (sockets, pid files, replica folders), but for
                     ``cluster-id``: this folder's local cluster (clusters.py)

``Store`` opens and creates it, keeps its settings and source snapshots, and hands the rest
to one module per concern, with the same method names it always had: models (``models.py``:
register, tag, download, lay out), services with their keys, state and events
(``services.py``), snapshots (``snapshot.py``) and blobs (``blobs.py``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, update

from modelfleet.errors import ConfigError, Conflict, NotFound
from modelfleet.store import snapshot as _snapshot
from modelfleet.store.blobs import BlobStore
from modelfleet.store.clusters import CLUSTER_SETTINGS, local_cluster_id, scoped_setting
from modelfleet.store.computes import ComputeTargets
from modelfleet.store.db import Database, database_url, settings
from modelfleet.store.folder import META_DIR, runtime_dir
from modelfleet.store.models import ModelFile, ModelRecord, Models
from modelfleet.store.secrets import SecretBox, Secrets, load_box, new_key_file
from modelfleet.store.services import SERVICE_STATES, ServiceRecord, Services
from modelfleet.store.shared_blobs import SharedBlobStore, parse_blob_store_url

__all__ = ["FORMAT", "META_DIR", "SERVICE_STATES", "ModelFile", "ModelRecord", "ServiceRecord", "Store"]

FORMAT = 1
SHARED_FORMAT = 2  # the workspace names a shared database: older modelfleets must not open it

# v1: workspace names are 2-32 characters, alphanumeric first, then also '-' and '_'.
_WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,31}$")


class Store:
    """One open workspace. Make it with :meth:`create` or :meth:`open`; close it with :meth:`close`."""

    def __init__(
        self,
        root: Path,
        name: str,
        db: Database,
        blob_store: str | None = None,
        box: SecretBox | None = None,
        *,
        shared: bool | None = None,
    ) -> None:
        self.root = root
        self.name = name
        self._db = db
        # A workspace a team shares: its database is not a file in this folder (workspace.json
        # names one). Then several local clusters use it, one per folder (clusters.py).
        self.shared = db.is_postgres if shared is None else shared
        self.blob_store_url = blob_store
        local = BlobStore(root / META_DIR / "blobs")
        # A shared store keeps the local folder as its read cache (shared_blobs.py).
        self.blobs: BlobStore | SharedBlobStore = local if blob_store is None else SharedBlobStore(blob_store, local)
        self.runtime_dir = runtime_dir(root)
        self._cluster_id: str | None = None
        self._models = Models(db, self.blobs, name)
        self._services = Services(db, name, box, (lambda: self.cluster_id) if self.shared else None)
        self.secrets = Secrets(db, box or SecretBox(None))  # shared secrets (secrets.py)
        self.computes = ComputeTargets(db, name)  # attached compute targets (computes.py)

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        name: str,
        exist_ok: bool = False,
        *,
        database: str | None = None,
        blob_store: str | None = None,
    ) -> Store:
        """Make a workspace in ``root``; its metadata in ``<root>/.modelfleet/metadata.db``, or in
        ``database`` (``postgresql+psycopg://USER@HOST/DB``, no password in it) that a team shares;
        its blobs in ``<root>/.modelfleet/blobs``, or in ``blob_store`` (``az://CONTAINER/PREFIX``,
        ``s3://BUCKET/PREFIX``, ``file:///PATH``), with that folder as the local read cache."""
        root = Path(root).expanduser().resolve()
        url = database_url(database) if database is not None else None
        if blob_store is not None:
            parse_blob_store_url(blob_store)
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
        local_blobs = BlobStore(meta_dir / "blobs")
        if blob_store is None:
            local_blobs.ensure()
        else:
            SharedBlobStore(blob_store, local_blobs).ensure()  # refuse a store we cannot reach now, not later
        box = SecretBox(None)
        if url is not None:  # a shared database: its secrets are sealed with a key kept outside it
            box = SecretBox(new_key_file(meta_dir), "the workspace's key")
        db = Database.create(meta_dir / "metadata.db" if url is None else url)
        if url is not None:
            try:
                Secrets(db, box).write_keycheck()  # a teammate's later create checks their key here
            except BaseException:
                db.close()
                raise
        info: dict[str, Any] = {"name": name, "format": FORMAT}
        if url is not None:
            info.update(format=SHARED_FORMAT, database=url.render_as_string(hide_password=False))
        if blob_store is not None:
            info.update(format=SHARED_FORMAT, blob_store=blob_store)
        tmp = meta_dir / "workspace.json.tmp"
        tmp.write_text(json.dumps(info) + "\n")
        os.replace(tmp, meta_dir / "workspace.json")
        return cls(root, name, db, blob_store, box, shared=url is not None)

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
        if fmt not in (FORMAT, SHARED_FORMAT):
            raise ConfigError(
                f"workspace {root} has format {fmt!r}, and this modelfleet reads formats {FORMAT} and "
                f"{SHARED_FORMAT}; use the modelfleet version that created it"
            )
        if info.get("database"):
            db = Database(database_url(str(info["database"])))
        else:
            db_path = meta_dir / "metadata.db"
            if not db_path.is_file():
                raise NotFound(f"workspace {root} has no metadata.db; it is incomplete: create it again")
            db = Database(db_path)
        box = SecretBox(None)
        try:
            db.migrate()  # a workspace made by an older modelfleet is brought up to date here
            if db.is_postgres:
                box = _shared_box(meta_dir)
                Secrets(db, box).verify_key()
        except BaseException:
            db.close()
            raise
        return cls(root, name, db, info.get("blob_store") or None, box, shared=bool(info.get("database")))

    def close(self) -> None:
        self._db.close()

    def backends(self) -> dict[str, str]:
        """Where this workspace keeps its metadata and blobs, for people (no credentials in it)."""
        return {
            "name": self.name,
            "path": str(self.root),
            "database": self._db.where if self._db.is_postgres else f"sqlite:///{self._db.where}",
            "blob_store": self.blob_store_url or f"file://{self.root / META_DIR / 'blobs'}",
            "read_cache": str(self.root / META_DIR / "blobs") if self.blob_store_url else "",
        }

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self.name!r} at {self.root}>"

    @property
    def cluster_id(self) -> str:
        """The id of this folder's local cluster, made on first use (clusters.py)."""
        if self._cluster_id is None:
            self._cluster_id = local_cluster_id(self.runtime_dir, self.root)
        return self._cluster_id

    # -- models (models.py) ------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        path: Path,
        *,
        tags: Mapping[str, str] | None = None,
        properties: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> ModelRecord:
        return self._models.register_model(name, path, tags=tags, properties=properties, description=description)

    def get_model(self, name: str, version: int | None = None) -> ModelRecord:
        return self._models.get_model(name, version)

    def list_models(
        self,
        name: str | None = None,
        tags: Sequence[str | Sequence[str]] | None = None,
        properties: Sequence[str | Sequence[str]] | None = None,
        latest: bool = False,
    ) -> list[ModelRecord]:
        return self._models.list_models(name, tags, properties, latest)

    def add_model_tags(self, name: str, version: int, tags: Mapping[str, str]) -> ModelRecord:
        return self._models.add_model_tags(name, version, tags)

    def remove_model_tags(self, name: str, version: int, keys: Iterable[str]) -> ModelRecord:
        return self._models.remove_model_tags(name, version, keys)

    def add_model_properties(self, name: str, version: int, props: Mapping[str, str]) -> ModelRecord:
        return self._models.add_model_properties(name, version, props)

    def download_model(self, name: str, version: int | None, target_dir: Path, exist_ok: bool = False) -> Path:
        return self._models.download_model(name, version, target_dir, exist_ok)

    def materialize_model(self, record: ModelRecord, dest_dir: Path) -> None:
        self._models.materialize_model(record, dest_dir)

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

    # -- services and their events (services.py) -------------------------------------------

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
        """``cluster``: the local cluster that will run it (``cluster_id``); None for another
        compute target. In a shared workspace, another cluster's service is not overwritten."""
        return self._services.create_service(
            name, config, primary_key=primary_key, secondary_key=secondary_key, overwrite=overwrite, cluster=cluster
        )

    def get_service(self, name: str) -> ServiceRecord:
        return self._services.get_service(name)

    def list_services(self) -> list[ServiceRecord]:
        return self._services.list_services()

    def service_stamps(self) -> dict[str, float]:
        return self._services.service_stamps()

    def service_stamps_summary(self) -> tuple[int, float | None]:
        return self._services.service_stamps_summary()

    def update_service_config(self, name: str, config: dict[str, Any]) -> ServiceRecord:
        return self._services.update_service_config(name, config)

    def set_service_keys(
        self, name: str, primary_key: str | None = None, secondary_key: str | None = None
    ) -> ServiceRecord:
        return self._services.set_service_keys(name, primary_key, secondary_key)

    def set_service_state(
        self, name: str, state: str, detail: str | None = None, *, serving_generation: int | None = None
    ) -> None:
        self._services.set_service_state(name, state, detail, serving_generation=serving_generation)

    def delete_service(self, name: str) -> None:
        self._services.delete_service(name)

    def claim_service(self, name: str, cluster: str) -> str | None:
        """Make ``cluster`` the owner of a service that has none (first claim wins); its owner after."""
        return self._services.claim_service(name, cluster)

    def foreign_refusal(self, record: ServiceRecord, action: str) -> Conflict | None:
        """In a shared workspace, the error for ``action`` ("deleted", "updated") on another
        local cluster's service; None when this folder may."""
        return self._services.foreign_refusal(record, action)

    def add_event(self, service: str, kind: str, data: Mapping[str, Any], time: float | None = None) -> None:
        self._services.add_event(service, kind, data, time)

    def list_events(self, service: str, kind: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        return self._services.list_events(service, kind, since)

    def latest_events(self, kind: str) -> dict[str, dict[str, Any]]:
        return self._services.latest_events(kind)

    # -- settings --------------------------------------------------------------------------

    def get_setting(self, key: str, default: str | None = None, *, cluster: str | None = None) -> str | None:
        """A setting; one that describes a local cluster (``clusters.CLUSTER_SETTINGS``: its ports,
        scheme, URI host) is this folder's cluster's, or ``cluster``'s, in a shared workspace."""
        key = self._setting_key(key, cluster)
        value = self._db.read(lambda conn: conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar())
        return default if value is None else value

    def _setting_key(self, key: str, cluster: str | None) -> str:
        if key in CLUSTER_SETTINGS and self.shared:
            return scoped_setting(key, cluster or self.cluster_id)
        return key

    def set_setting(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise ConfigError(f"setting {key!r} must be a string (got {type(value).__name__})")
        key = self._setting_key(key, None)

        def tx(conn: Connection) -> None:
            done = conn.execute(update(settings).where(settings.c.key == key).values(value=value)).rowcount
            if not done:
                conn.execute(settings.insert().values(key=key, value=value))

        self._db.write(tx)


def _shared_box(meta_dir: Path) -> SecretBox:
    box = load_box(meta_dir)
    if not box.encrypts:
        raise ConfigError(
            "this workspace keeps its metadata in a shared database, and its service keys and signing key "
            "are encrypted there with the team's key, which this machine lacks: set MODELFLEET_SECRET_KEY "
            f"or MODELFLEET_SECRET_KEY_FILE, or copy the key file to {meta_dir / 'secret.key'} (mode 0600)"
        )
    return box
