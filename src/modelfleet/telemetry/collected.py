"""Reading collected model data (``read_records``, ``partitions``) and exporting it
(``export``: JSON Lines, CSV or Parquet). Works on the files alone (layout:
``telemetry/data_layout.py``), so it works while the cluster is stopped."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from modelfleet.telemetry.data_layout import FIELDS

__all__ = ["export", "partitions", "read_records"]


def _files(root: Path, designation: str | None, since: datetime | None) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """(file, (model, version, designation, YYYY, MM, DD)) under a service's data folder."""
    if not root.is_dir():
        return
    first_day = since.astimezone(timezone.utc).strftime("%Y%m%d") if since else ""
    for path in sorted(root.glob("*/*/*/*/*/*/*.jsonl")):
        parts = path.relative_to(root).parts[:6]
        if designation is not None and parts[2] != designation:
            continue
        if first_day and "".join(parts[3:6]) < first_day:
            continue
        yield path, parts


def read_records(root: Path, designation: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every record under ``root`` (a service's data folder), oldest first; a line that does not
    parse (the cut last line of a killed writer) is skipped."""
    cutoff = since.astimezone(timezone.utc).timestamp() if since else None
    out: list[tuple[float, int, dict[str, Any]]] = []
    for path, _ in _files(root, designation, since):
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    continue  # still being written, or cut by a kill
                try:
                    rec = _parse_line(line)
                    t = datetime.fromisoformat(rec["time"].replace("Z", "+00:00")).timestamp()
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
                if cutoff is not None and t < cutoff:
                    continue
                out.append((t, len(out), rec))
    out.sort(key=lambda x: (x[0], x[1]))
    return [{k: rec.get(k) for k in FIELDS} for _, _, rec in out]


_DATA_KEY = b', "data": '


def _parse_line(line: bytes) -> dict[str, Any]:
    """One stored record. A line whose data was written verbatim but is not JSON (see
    ``_json_bytes``) is split at its ``data`` key (the last one, after the fixed-format time)
    and the data read back as text."""
    try:
        rec: dict[str, Any] = json.loads(line)
        return rec
    except ValueError:
        pass
    cut = line.find(_DATA_KEY, line.find(b'"time": "'))
    if cut < 0 or not line.endswith(b"}\n"):
        raise ValueError("not a record")
    rec = json.loads(line[:cut] + b"}")
    rec["data"] = line[cut + len(_DATA_KEY) : -2].decode("utf-8", "replace")
    return rec


def partitions(root: Path, designation: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
    """One entry per model/version/designation/day: file count, whole records and bytes."""
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for path, parts in _files(root, designation, since):
        entry = out.setdefault(
            parts,
            {"model": parts[0], "version": parts[1], "designation": parts[2], "date": "-".join(parts[3:6]),
             "files": 0, "records": 0, "bytes": 0},
        )  # fmt: skip
        data = path.read_bytes()
        entry["files"] += 1
        entry["records"] += data.count(b"\n")
        entry["bytes"] += len(data)
    return list(out.values())


def export(records: list[dict[str, Any]], fmt: str, out: IO[bytes] | str | os.PathLike[str]) -> None:
    """Write ``records`` as ``jsonl``, ``csv`` (data as JSON text) or ``parquet`` (pyarrow;
    needs a file path)."""
    if fmt == "parquet":
        try:
            import pyarrow as pa  # type: ignore[import-not-found,unused-ignore]
            import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            from modelfleet.errors import ConfigError

            raise ConfigError(
                "--format parquet needs pyarrow: pip install 'modelfleet[parquet]' (or use --format jsonl|csv)"
            ) from None
        columns: dict[str, list[Any]] = {k: [] for k in FIELDS}
        for rec in records:
            for k in FIELDS:
                columns[k].append(json.dumps(rec[k]) if k == "data" else rec[k])
        table = pa.table({k: pa.array(v, type=pa.string()) for k, v in columns.items()})
        pq.write_table(table, out)
        return
    if isinstance(out, str | os.PathLike):
        with open(out, "wb") as f:
            export(records, fmt, f)
        return
    if fmt == "jsonl":
        for rec in records:
            out.write(json.dumps(rec).encode() + b"\n")
    elif fmt == "csv":
        text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        writer = csv.writer(text)
        writer.writerow(FIELDS)
        for rec in records:
            writer.writerow([json.dumps(rec[k]) if k == "data" else rec[k] for k in FIELDS])
        text.flush()
        text.detach()
    else:
        from modelfleet.errors import ConfigError

        raise ConfigError(f"format must be jsonl, csv or parquet (got {fmt!r})")
