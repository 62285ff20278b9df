"""A registered model version: ``Model`` without ``deploy`` (v1: ``azureml.core.Model``).

``Webservice`` and the service config need this half (what a model version is, where its
files are); ``Model`` (``model.py``) adds ``deploy``, which needs ``Webservice``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modelfleet.errors import ConfigError
from modelfleet.store.registry import ModelRecord

if TYPE_CHECKING:
    from modelfleet.sdk.workspace_base import WorkspaceBase


_M = TypeVar("_M", bound="RegisteredModel")


class RegisteredModel:
    """A registered model version. ``Model(ws, name)`` is the latest; versions never change."""

    def __init__(
        self,
        workspace: WorkspaceBase,
        name: str | None = None,
        id: str | None = None,  # noqa: A002 - v1's parameter name
        tags: Any = None,
        properties: Any = None,
        version: int | None = None,
        _record: ModelRecord | None = None,
    ) -> None:
        self.workspace = workspace
        if _record is None:
            if id is not None:
                name, _, version_text = id.partition(":")
                version = int(version_text) if version_text else None
            if not name:
                raise ConfigError("Model needs a name or an id ('name:version')")
            if tags or properties:
                matches = workspace.store.list_models(name=name, tags=tags, properties=properties)
                if version is not None:
                    matches = [m for m in matches if m.version == version]
                if not matches:
                    from modelfleet.errors import NotFound

                    raise NotFound(f"no model {name!r} with tags {tags!r} and properties {properties!r}")
                _record = max(matches, key=lambda m: m.version)
            else:
                _record = workspace.store.get_model(name, version)
        self._record = _record

    def __repr__(self) -> str:
        return f"Model(workspace={self.workspace!r}, name={self.name!r}, version={self.version})"

    # v1 attributes
    name = property(lambda self: self._record.name)
    version = property(lambda self: self._record.version)
    id = property(lambda self: f"{self._record.name}:{self._record.version}")  # noqa: A003
    tags = property(lambda self: dict(self._record.tags))
    properties = property(lambda self: dict(self._record.properties))
    description = property(lambda self: self._record.description)
    created_time = property(lambda self: self._record.created_time)

    @classmethod
    def register(
        cls: type[_M],
        workspace: WorkspaceBase,
        model_path: str | os.PathLike[str],
        model_name: str,
        tags: dict[str, str] | None = None,
        properties: dict[str, str] | None = None,
        description: str | None = None,
        **_v1_only: Any,
    ) -> _M:
        """Copy a file or folder into the workspace as the next version of ``model_name``."""
        record = workspace.store.register_model(
            model_name,
            Path(model_path).expanduser(),
            tags=tags,
            properties=properties,
            description=description,
        )
        return cls(workspace, _record=record)

    @classmethod
    def list(
        cls: type[_M],
        workspace: WorkspaceBase,
        name: str | None = None,
        tags: Any = None,
        properties: Any = None,
        latest: bool = False,
        **_v1_only: Any,
    ) -> list[_M]:
        records = workspace.store.list_models(name=name, tags=tags, properties=properties, latest=latest)
        return [cls(workspace, _record=r) for r in records]

    def download(self, target_dir: str | os.PathLike[str] = ".", exist_ok: bool = False, **_v1_only: Any) -> str:
        path = self.workspace.store.download_model(self.name, self.version, Path(target_dir), exist_ok=exist_ok)
        return str(path)

    def add_tags(self, tags: dict[str, str]) -> None:
        self.workspace.store.add_model_tags(self.name, self.version, tags)
        self._record = self.workspace.store.get_model(self.name, self.version)

    def remove_tags(self, tags: Iterable[str]) -> None:
        self.workspace.store.remove_model_tags(self.name, self.version, tags)
        self._record = self.workspace.store.get_model(self.name, self.version)

    def add_properties(self, properties: dict[str, str]) -> None:
        self.workspace.store.add_model_properties(self.name, self.version, properties)
        self._record = self.workspace.store.get_model(self.name, self.version)

    def serialize(self) -> dict[str, Any]:
        record = self._record
        return {
            "id": self.id,
            "name": record.name,
            "version": record.version,
            "tags": dict(record.tags),
            "properties": dict(record.properties),
            "description": record.description,
            "createdTime": record.created_time,
            "kind": record.kind,
            "files": [f.relpath for f in record.files],
        }

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None, _workspace: WorkspaceBase | None = None) -> str:
        """Inside a replica: the model's path as v1 resolves it from AZUREML_MODEL_DIR.

        Outside one, with ``_workspace``: the model is downloaded to ``./azureml-models``
        first, as v1 did, and that path is returned.
        """
        from modelfleet.replica.compat import Model as ReplicaModel

        if _workspace is not None and not os.environ.get("AZUREML_MODEL_DIR"):
            record = _workspace.store.get_model(model_name, version)
            dest = Path("azureml-models") / record.name / str(record.version)
            if not dest.exists():
                dest.mkdir(parents=True)
                _workspace.store.materialize_model(record, dest)
            entries = list(dest.iterdir())
            return str(entries[0] if len(entries) == 1 else dest)
        return ReplicaModel.get_model_path(model_name, version)
