"""``Workspace``: the folder that holds a team's models, snapshots, services and logs."""

from __future__ import annotations

import os
from pathlib import Path

from modelfleet.errors import NotFound
from modelfleet.sdk.model import Model
from modelfleet.sdk.webservice import Webservice
from modelfleet.sdk.workspace_base import WorkspaceBase
from modelfleet.store.registry import Store

WORKSPACE_MARKER = Path(".modelfleet") / "workspace.json"


class Workspace(WorkspaceBase):
    """A modelfleet workspace (v1: ``azureml.core.Workspace``), kept in a folder on disk.

    ``Workspace.create(name, path)`` makes one, ``Workspace.get(path)`` opens one, and
    ``Workspace.from_config()`` finds the one that holds the current folder, as v1 found
    its ``config.json`` by looking upward. What the rest of the SDK uses of it (``store``,
    ``cluster()``) is ``WorkspaceBase``'s.
    """

    @classmethod
    def create(cls, name: str, path: str | os.PathLike[str] | None = None, exist_ok: bool = False) -> Workspace:
        root = Path(path).expanduser() if path is not None else Path.cwd() / name
        return cls(Store.create(root.resolve(), name, exist_ok=exist_ok))

    @classmethod
    def get(cls, path: str | os.PathLike[str]) -> Workspace:
        return cls(Store.open(Path(path).expanduser().resolve()))

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None) -> Workspace:
        start = Path(path).expanduser().resolve() if path is not None else Path.cwd()
        for folder in (start, *start.parents):
            if (folder / WORKSPACE_MARKER).is_file():
                return cls.get(folder)
        raise NotFound(
            f"no modelfleet workspace in {start} or any folder above it; "
            "create one with Workspace.create(name, path) or `modelfleet workspace create`"
        )

    @property
    def models(self) -> dict[str, Model]:
        """v1: ``ws.models`` maps each model name to its latest version."""
        return {m.name: m for m in Model.list(self, latest=True)}

    @property
    def webservices(self) -> dict[str, Webservice]:
        return {s.name: s for s in Webservice.list(self)}
