"""``modelfleet data show|export``: model data a service collected (``collect_model_data``).

Both read the workspace's files directly (``telemetry/collect.py``), so they work while the
cluster is stopped, and for a service deleted since (its data stays).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from typing import Any

from modelfleet.cli.common import add_output, print_output, workspace
from modelfleet.cli.completion import attach, service_names
from modelfleet.errors import ConfigError, NotFound


def register(groups: Any) -> None:
    data = groups.add_parser("data", help="model data collected by services (collect_model_data)").add_subparsers(
        metavar="COMMAND", dest="subcommand", required=True
    )
    show = data.add_parser("show", help="what was collected: records per model, version, designation and day")
    export = data.add_parser("export", help="the records themselves, oldest first")
    for sub in (show, export):
        attach(sub.add_argument("-n", "--name", required=True, help="service name"), service_names)
        sub.add_argument("--designation", help="only this designation (e.g. inputs, predictions)")
        sub.add_argument("--since", metavar="ISO", help="only records at or after this time (ISO 8601; UTC if no zone)")
    add_output(show)
    show.set_defaults(handler=data_show)
    export.add_argument("--format", choices=["jsonl", "csv", "parquet"], default="jsonl",
                        help="JSON lines (default), CSV, or Parquet (needs --file)")  # fmt: skip
    # --file, not -o: -o is the output format on every other command
    export.add_argument("--file", dest="output_file", default="-", metavar="FILE",
                        help="file to write; '-' (default): stdout")  # fmt: skip
    export.set_defaults(handler=data_export)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since must be an ISO 8601 time such as 2024-05-01T12:00:00Z (got {value!r})") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _root(args: argparse.Namespace) -> Any:
    from modelfleet.store.registry import META_DIR
    from modelfleet.telemetry.data_layout import service_data_dir

    root = service_data_dir(workspace(args).store.root / META_DIR, args.name)
    if not root.is_dir():
        raise NotFound(
            f"no collected data for service {args.name!r}; deploy it with --collect-model-data true "
            "(or dataCollection.storageEnabled in its deploymentconfig.json) and score it"
        )
    return root


def data_show(args: argparse.Namespace) -> int:
    from modelfleet.telemetry.collected import partitions

    parts = partitions(_root(args), args.designation, _since(args.since))
    rows = [
        f"{p['model']}  v{p['version']}  {p['designation']:<12} {p['date']}  {p['records']:>8} records  "
        f"{p['files']} file(s)  {p['bytes']} bytes"
        for p in parts
    ]
    print_output(args, parts, "\n".join(rows) or f"no records for {args.name}")
    return 0


def data_export(args: argparse.Namespace) -> int:
    from modelfleet.telemetry.collected import export, read_records

    records = read_records(_root(args), args.designation, _since(args.since))
    if args.output_file == "-":
        if args.format == "parquet":
            raise ConfigError("--format parquet needs --file FILE (Parquet is a binary file format)")
        export(records, args.format, sys.stdout.buffer)
        sys.stdout.flush()
    else:
        export(records, args.format, args.output_file)
        print(f"{len(records)} records written to {args.output_file}", file=sys.stderr)
    return 0
