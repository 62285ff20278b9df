"""Move a folder workspace onto shared backends (``modelfleet workspace migrate``).

Order, so that a failure at any step leaves the workspace working as it was:

1. every local blob is re-hashed and uploaded to the new blob store (each upload is itself
   read back and checked, see shared_blobs.py);
2. the rows are copied into the new database, which must be empty (its schema is made here),
   with service keys and the token-signing key sealed with the team's key;
   with this folder's local services recorded as its cluster's (clusters.py), its cluster's
   settings (ports, scheme) stored as that cluster's, and its TLS certificate and key (when
   the cluster serves TLS) sealed into the secrets, as the team's;
3. the copy is checked: the same rows, and every blob a model names present in the new store;
4. only then is workspace.json replaced (atomically) to name the new backends. The old
   ``metadata.db`` and ``blobs/`` stay in place (``blobs/`` goes on as the read cache).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, Select, Table, func, select

from modelfleet.errors import Conflict
from modelfleet.store.blobs import BlobStore, check_digest
from modelfleet.store.clusters import CLUSTER_SETTINGS, scoped_setting
from modelfleet.store.computes import compute_targets
from modelfleet.store.db import Database, database_url, events, model_files, models, services, settings
from modelfleet.store.registry import META_DIR, SHARED_FORMAT, Store
from modelfleet.store.secrets import SecretBox, Secrets, new_key_file
from modelfleet.store.shared_blobs import SharedBlobStore

_PLAIN_TABLES: tuple[Table, ...] = (models, model_files, events, settings)
SIGNING_KEY_FILE = Path("credentials") / "token-signing-key.pem"  # control/credentials.py's file


def migrate_workspace(store: Store, *, to_database: str | None, to_blob_store: str | None) -> dict[str, Any]:
    """Copy ``store`` (a folder workspace) onto the given backends; return what was copied."""
    if not to_database and not to_blob_store:
        raise Conflict("name a backend to move to: --to-database URL and/or --to-blob-store URL")
    if store._db.is_postgres or store.blob_store_url:
        raise Conflict(
            f"workspace {store.root} already uses shared backends ({store.backends()['database']}, "
            f"{store.backends()['blob_store']}); migrate moves a folder workspace onto them"
        )
    meta_dir = store.root / META_DIR
    local = BlobStore(meta_dir / "blobs")
    digests = _local_digests(local)
    if to_blob_store:
        remote = SharedBlobStore(to_blob_store, local)
        remote.ensure()
        for digest in digests:
            local.verify(digest)
            remote._upload(digest)
    copied: dict[str, int] = {}
    info: dict[str, Any] = {"name": store.name, "format": SHARED_FORMAT}
    if to_database:
        url = database_url(to_database)
        box = SecretBox(new_key_file(meta_dir), "the workspace's key")
        target = Database.create(url)
        try:
            cluster = store.cluster_id
            copied = target.write(lambda conn: _copy_rows(store._db, conn, box, cluster))
            secrets = Secrets(target, box)
            secrets.write_keycheck()
            key_file = meta_dir / SIGNING_KEY_FILE
            if key_file.is_file():  # tokens issued so far stay valid
                secrets.get_or_create("token-signing-key", lambda: key_file.read_text())
            tls_pair = _tls_pair(store, meta_dir)
            if tls_pair is not None:  # clients that trust the certificate go on trusting it
                secrets.get_or_create(*tls_pair)
            _check_rows(store._db, target)
        finally:
            target.close()
        info["database"] = url.render_as_string(hide_password=False)
    if to_blob_store:
        names = store._db.read(lambda conn: {r.digest for r in conn.execute(select(model_files.c.digest))})
        missing = [d for d in sorted(names) if not remote.has(d)]
        if missing:
            raise Conflict(
                f"the copy in {to_blob_store} lacks {len(missing)} blobs (first {missing[0]}); nothing changed"
            )
        info["blob_store"] = to_blob_store
    old = json.loads((meta_dir / "workspace.json").read_text())
    if not to_blob_store and old.get("blob_store"):
        info["blob_store"] = old["blob_store"]
    tmp = meta_dir / "workspace.json.tmp"
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, meta_dir / "workspace.json")
    return {"blobs": len(digests) if to_blob_store else 0, **copied}


def _local_digests(local: BlobStore) -> list[str]:
    out = []
    for folder in sorted(p for p in local.root.iterdir() if p.is_dir() and len(p.name) == 2):
        for f in sorted(folder.iterdir()):
            digest = check_digest(folder.name + f.name, strict=False)
            if digest is not None:
                out.append(digest)
    return out


def _tls_pair(store: Store, meta_dir: Path) -> tuple[str, Callable[[], str]] | None:
    """(secret name, its value) of the TLS certificate and key the folder's cluster serves, as
    control/tls.py keeps them in a shared workspace; None when it serves none."""
    mode = store.get_setting("tls_mode")
    if mode == "self-signed":
        cert, key = meta_dir / "credentials" / "tls-cert.pem", meta_dir / "credentials" / "tls-key.pem"
    elif mode == "files":
        cert, key = Path(store.get_setting("tls_cert_file") or ""), Path(store.get_setting("tls_key_file") or "")
    else:
        return None
    if not (cert.is_file() and key.is_file()):
        return None
    value = json.dumps({"cert": cert.read_text(), "key": key.read_text()})
    return f"tls-{mode}", lambda: value


def _copy_rows(source: Database, conn: Connection, box: SecretBox, cluster: str) -> dict[str, int]:
    for table in (*_PLAIN_TABLES, services):
        if conn.execute(select(func.count()).select_from(table)).scalar():
            raise Conflict(
                f"the database {conn.engine.url.render_as_string(hide_password=True)} already holds "
                f"{table.name}: migrate copies into an empty database only"
            )
    copied: dict[str, int] = {}
    for table in (*_PLAIN_TABLES, services):
        ordered = select(table).order_by(*table.primary_key.columns)  # events keep their order
        rows = [dict(r._mapping) for r in source.read(_all_rows(ordered))]
        if table is services:
            for row in rows:
                row["primary_key"] = box.seal(row["primary_key"])
                row["secondary_key"] = box.seal(row["secondary_key"])
                if row["cluster"] is None and not json.loads(row["config"]).get("compute_target"):
                    row["cluster"] = cluster  # this folder's daemon ran it, and goes on running it
        if table is settings:
            for row in rows:
                if row["key"] in CLUSTER_SETTINGS:  # its ports and scheme: this folder's cluster's
                    row["key"] = scoped_setting(row["key"], cluster)
        if table is events:
            for row in rows:
                row.pop("id")  # the new database numbers them
        if rows:
            conn.execute(table.insert(), rows)
        copied[table.name] = len(rows)
    attached = source.read(
        lambda c: [dict(r._mapping) for r in c.execute(select(compute_targets))] if _has(c, compute_targets) else []
    )
    if attached:
        conn.execute(compute_targets.insert(), attached)
    copied[compute_targets.name] = len(attached)
    return copied


def _has(conn: Connection, table: Table) -> bool:
    return bool(conn.dialect.has_table(conn, table.name))


def _all_rows(query: Select[Any]) -> Callable[[Connection], list[Row[Any]]]:
    return lambda conn: list(conn.execute(query))


def _scalar(query: Select[Any]) -> Callable[[Connection], Any]:
    return lambda conn: conn.execute(query).scalar()


def _check_rows(source: Database, target: Database) -> None:
    for table in (*_PLAIN_TABLES, services):
        count = select(func.count()).select_from(table)
        before = source.read(_scalar(count))
        after = target.read(_scalar(count))
        if before != after:
            raise Conflict(f"the copy of {table.name} has {after} rows, the source {before}; nothing changed")
