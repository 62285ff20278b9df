"""The model registry of a workspace: register, find, tag and lay out model versions.

Rules kept here, as v1 kept them: model versions count 1, 2, 3... per name and never change
once registered (the files are copied into the blob store at registration); tags can be
added, changed and removed; properties can be added but an existing one never changes.
What a model path may hold (symlinks that stay inside it, no workspace metadata) is decided
by ``_model_files``; laying a version out for a replica copies it (``materialize_model``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from sqlalchemy import Connection, Row, func, select, update

from modelfleet.errors import ConfigError, Conflict, NotFound
from modelfleet.spec.names import validate_model_name
from modelfleet.store.blobs import BlobStore
from modelfleet.store.db import Database, model_files, models
from modelfleet.store.folder import META_DIR
from modelfleet.store.shared_blobs import SharedBlobStore


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


class Models:
    """The models of one workspace (its database and blob store)."""

    def __init__(self, db: Database, blobs: BlobStore | SharedBlobStore, workspace_name: str) -> None:
        self._db = db
        self.blobs = blobs
        self.name = workspace_name

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
        clean_tags = string_map(tags, "tags") if tags is not None else {}
        clean_props = string_map(properties, "properties") if properties is not None else {}
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
        new = string_map(tags, "tags") if tags is not None else {}
        return self._update_model_map(name, version, "tags", lambda old: {**old, **new})

    def remove_model_tags(self, name: str, version: int, keys: Iterable[str]) -> ModelRecord:
        # Removing a tag that is not there is not an error: the outcome is the one asked for.
        drop = set(keys)
        return self._update_model_map(
            name, version, "tags", lambda old: {k: v for k, v in old.items() if k not in drop}
        )

    def add_model_properties(self, name: str, version: int, props: Mapping[str, str]) -> ModelRecord:
        new = string_map(props, "properties") if props is not None else {}

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


def string_map(values: Any, what: str) -> dict[str, str]:
    """v1 keeps tags and properties as strings; numbers and booleans become strings (the one
    rule for models' and services' tags and properties)."""
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
