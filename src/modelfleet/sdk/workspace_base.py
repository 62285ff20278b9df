"""What models and services hold of their workspace: its name, folder, store and cluster.

``Workspace`` (``workspace.py``) adds v1's ways of creating and finding one and its
``models``/``webservices`` listings, which need ``Model`` and ``Webservice``; those two hold a
``WorkspaceBase`` and so never import ``workspace.py`` back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfleet.store.registry import Store

if TYPE_CHECKING:  # imported when used: it loads urllib.request, which `service list` needs not
    from modelfleet.control.client import ClusterClient


class WorkspaceBase:
    def __init__(self, store: Store) -> None:
        self._store = store
        self.name = store.name
        self.path = store.root

    def __repr__(self) -> str:
        return f"Workspace(name={self.name!r}, path={str(self.path)!r})"

    @property
    def store(self) -> Store:
        return self._store

    def cluster(self) -> ClusterClient:
        from modelfleet.control.client import ClusterClient

        return ClusterClient(self._store.root, self._store.runtime_dir)
