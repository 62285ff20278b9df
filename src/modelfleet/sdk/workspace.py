"""``Workspace``: the folder that holds a team's models, snapshots, services and logs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError, NotFound
from modelfleet.sdk.locate import find_upward
from modelfleet.sdk.model import Model
from modelfleet.sdk.webservice import Webservice
from modelfleet.sdk.workspace_base import WorkspaceBase
from modelfleet.store.folder import is_workspace
from modelfleet.store.registry import Store


class Workspace(WorkspaceBase):
    """A modelfleet workspace (v1: ``azureml.core.Workspace``), kept in a folder on disk.

    ``Workspace.create(name, path)`` makes one, ``Workspace.get(path)`` opens one, and
    ``Workspace.from_config()`` finds the one that holds the current folder, as v1 found
    its ``config.json`` by looking upward. What the rest of the SDK uses of it (``store``,
    ``cluster()``) is ``WorkspaceBase``'s.
    """

    @classmethod
    def create(
        cls,
        name: str,
        path: str | os.PathLike[str] | None = None,
        exist_ok: bool = False,
        *,
        database: str | None = None,
        blob_store: str | None = None,
    ) -> Workspace:
        """``database`` (``postgresql+psycopg://USER@HOST/DB``) and ``blob_store`` (``az://``,
        ``s3://``, ``file://``) make a workspace a team shares; by default both stay in the folder."""
        root = Path(path).expanduser() if path is not None else Path.cwd() / name
        return cls(Store.create(root.resolve(), name, exist_ok=exist_ok, database=database, blob_store=blob_store))

    @classmethod
    def get(cls, path: str | os.PathLike[str]) -> Workspace:
        return cls(Store.open(Path(path).expanduser().resolve()))

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        auth: Any = None,
        _logger: Any = None,
        _file_name: str | None = None,
    ) -> Workspace:
        """The workspace of the current folder (or ``path``), found as v1 found its config.

        Looking upward from ``path`` (default: the current folder), the first folder that is a
        modelfleet workspace, or that holds a v1 ``config.json`` (also in ``.azureml/`` or
        ``aml_config/``; ``path`` may also be the file itself), decides. A v1 config names
        its workspace (``workspace_name``); the local workspace of that name is the one in
        the config's folder, or in the folder of that name beside it, or the one the config's
        ``workspace_path`` (modelfleet's own key) points at. ``auth`` is v1's and not used:
        a local workspace needs no sign-in.
        """
        start = Path(path).expanduser().resolve() if path is not None else Path.cwd()
        file_name = _file_name or "config.json"
        folder, v1_config = find_upward(start, file_name)
        if folder is not None:
            return cls.get(folder)
        if v1_config is not None:
            return cls._from_v1_config(v1_config)
        raise NotFound(
            f"no modelfleet workspace and no {file_name} in {start} or any folder above it; "
            "create one with Workspace.create(name, path) or `modelfleet workspace create -n NAME`"
        )

    @classmethod
    def _from_v1_config(cls, config_file: Path) -> Workspace:
        try:
            data = json.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read workspace config {config_file}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"workspace config {config_file} is not valid JSON ({exc})") from None
        name = data.get("workspace_name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f'workspace config {config_file} names no workspace: it needs "workspace_name" '
                '(v1\'s config.json: {"subscription_id": ..., "resource_group": ..., "workspace_name": ...})'
            )
        base = (
            config_file.parent.parent if config_file.parent.name in (".azureml", "aml_config") else config_file.parent
        )
        candidates = [base, base / name]
        attached = data.get("workspace_path")
        if attached is not None:
            if not isinstance(attached, str):
                raise ConfigError(f'"workspace_path" in {config_file} must be a folder path (got {attached!r})')
            candidates.insert(0, (config_file.parent / Path(attached).expanduser()).resolve())
        for folder in candidates:
            if is_workspace(folder):
                ws = cls.get(folder)
                if ws.name == name:
                    return ws
        where = f"subscription {data.get('subscription_id')!r}, resource group {data.get('resource_group')!r}"
        raise NotFound(
            f"{config_file} names workspace {name!r} ({where}), and no local modelfleet workspace of that "
            f"name is known here: create it with `modelfleet workspace create -n {name} -p {base / name}` "
            f'(or Workspace.create("{name}", path)), or attach an existing one by adding '
            '"workspace_path": "<its folder>" to that config.json'
        )

    @property
    def models(self) -> dict[str, Model]:
        """v1: ``ws.models`` maps each model name to its latest version."""
        return {m.name: m for m in Model.list(self, latest=True)}

    @property
    def webservices(self) -> dict[str, Webservice]:
        return {s.name: s for s in Webservice.list(self)}
