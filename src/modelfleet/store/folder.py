"""The names inside a workspace folder, importable without the store's database layer, so that
commands which need only the folder (``cluster status``) start without loading SQLAlchemy."""

from __future__ import annotations

from pathlib import Path

META_DIR = ".modelfleet"  # the workspace's own folder (laid out in registry.py): never model content
MARKER = "workspace.json"  # written last when a workspace is made: its presence means "complete"


def is_workspace(folder: Path) -> bool:
    return (folder / META_DIR / MARKER).is_file()


def runtime_dir(root: Path) -> Path:
    """Where the local cluster keeps its runtime files (``control/paths.py``)."""
    return root / META_DIR / "runtime"
