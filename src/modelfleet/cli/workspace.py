"""``modelfleet workspace create``, ``show`` and ``migrate``."""

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
    migrate = workspace.add_parser(
        "migrate", help="copy this folder workspace onto a shared database and/or blob store, then switch to them"
    )
    migrate.add_argument("--to-database", metavar="URL", help="an empty PostgreSQL database: postgresql+psycopg://...")
    migrate.add_argument(
        "--to-blob-store", metavar="URL", help="az://CONTAINER/PREFIX, s3://BUCKET/PREFIX or file:///PATH"
    )
    migrate.set_defaults(handler=workspace_migrate)


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


def workspace_migrate(args: argparse.Namespace) -> int:
    from modelfleet.store.migrate import migrate_workspace

    ws = common.workspace(args)
    copied = migrate_workspace(ws.store, to_database=args.to_database, to_blob_store=args.to_blob_store)
    ws.store.close()
    done = ", ".join(f"{n} {what}" for what, n in copied.items())
    print(f"workspace {ws.name} copied and checked ({done}); it now uses the new backends")
    return 0
