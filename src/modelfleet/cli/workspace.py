"""``modelfleet workspace create`` and ``show``."""

from __future__ import annotations

import argparse
from typing import Any

from modelfleet.cli import common


def register(groups: Any) -> None:
    workspace = groups.add_parser("workspace", help="create a workspace").add_subparsers(
        metavar="COMMAND", dest="subcommand", required=True
    )
    create = workspace.add_parser("create", help="create a workspace folder")
    create.add_argument("-n", "--name", required=True, help="workspace name (v1 config.json's workspace_name)")
    create.add_argument("-p", "--path", help="folder (default: ./NAME)")
    create.add_argument(
        "--database",
        metavar="URL",
        help="metadata in a shared PostgreSQL database: postgresql+psycopg://USER@HOST/DB (password from "
        "PGPASSWORD or ~/.pgpass; default: SQLite in the folder)",
    )
    create.add_argument(
        "--blob-store",
        metavar="URL",
        help="models and snapshots in a shared store: az://CONTAINER/PREFIX, s3://BUCKET/PREFIX or "
        "file:///PATH (credentials from the environment; default: the folder)",
    )
    create.set_defaults(handler=workspace_create)
    show = workspace.add_parser("show", help="print the workspace's name, folder and backends")
    common.add_output(show)
    show.set_defaults(handler=workspace_show)


def workspace_create(args: argparse.Namespace) -> int:
    from modelfleet.sdk.workspace import Workspace

    ws = Workspace.create(args.name, args.path, database=args.database, blob_store=args.blob_store)
    print(f"workspace {ws.name} created at {ws.path}")
    return 0


def workspace_show(args: argparse.Namespace) -> int:
    ws = common.workspace(args)
    info = ws.store.backends()
    common.print_output(args, info, common.key_values(info))
    return 0
