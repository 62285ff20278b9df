"""Finding the workspace of a folder as v1 found its ``config.json``: looking upward, the first
folder that is a modelfleet workspace, or that holds a v1 config, decides. Reads no store, so
that a command needing only the folder (``cluster status``) can use it cheaply."""

from __future__ import annotations

import json
from pathlib import Path

from modelfleet.store.folder import is_workspace

__all__ = ["Found", "find_upward", "looks_like_v1_config"]

_V1_CONFIG_KEYS = ("subscription_id", "resource_group", "workspace_name")

Found = tuple[Path | None, Path | None]
"""(workspace folder, None), (None, v1 config file), or (None, None) when there is neither."""


def find_upward(start: Path, file_name: str = "config.json") -> Found:
    if start.is_file():
        return None, start
    for folder in (start, *start.parents):
        if is_workspace(folder):
            return folder, None
        for candidate in (folder / file_name, folder / ".azureml" / file_name, folder / "aml_config" / file_name):
            if candidate.is_file() and looks_like_v1_config(candidate):
                return None, candidate
    return None, None


def looks_like_v1_config(path: Path) -> bool:
    """A config.json found while looking upward is v1's when it holds any of v1's keys (or
    cannot be read as JSON, which is said); another tool's config.json is passed over."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True
    return not isinstance(data, dict) or any(key in data for key in _V1_CONFIG_KEYS)
