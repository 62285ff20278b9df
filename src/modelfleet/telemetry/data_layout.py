"""Where collected model data lives and what one record holds: the contract between the
replica's writer (``telemetry/collect.py``) and the readers (``telemetry/collected.py``, the
``modelfleet data`` commands).

Layout (v1's partitioning, under the workspace), one file per replica and partition::

    <workspace>/.modelfleet/data/<service>/<model>/<version>/<designation>/<YYYY>/<MM>/<DD>/<replica>.jsonl

Each line: ``{"model", "version", "designation", "request_id", "time", "data"}``, time in
ISO 8601 UTC, data the JSON value (the request body parsed when it is JSON, else its text).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA_FOLDER", "DESIGNATIONS", "FIELDS", "INPUTS", "PREDICTIONS", "UNKNOWN_VERSION", "safe_part",
           "service_data_dir"]  # fmt: skip

INPUTS, PREDICTIONS = "inputs", "predictions"
DESIGNATIONS = (INPUTS, PREDICTIONS)
FIELDS = ("model", "version", "designation", "request_id", "time", "data")
UNKNOWN_VERSION = "0"
DATA_FOLDER = "data"  # under the workspace's .modelfleet folder


def safe_part(part: str) -> str:
    """A path component from a name (models and designations are user-chosen)."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in part)
    return cleaned.strip(".") or "_"


def service_data_dir(meta_dir: Path, service: str) -> Path:
    """``<workspace>/.modelfleet/data/<service>``: where a service's collected records live."""
    return meta_dir / DATA_FOLDER / safe_part(service)
