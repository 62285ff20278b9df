"""``modelfleet workspace create``."""

from __future__ import annotations

import argparse
from typing import Any


def register(groups: Any) -> None:
    workspace = groups.add_parser("workspace", help="create a workspace").add_subparsers(
        metavar="COMMAND", dest="subcommand", required=True
    )
    create = workspace.add_parser("create", help="create a workspace folder")
    create.add_argument("-n", "--name", required=True, help="workspace name (v1 config.json's workspace_name)")
    create.add_argument("-p", "--path", help="folder (default: ./NAME)")
    create.set_defaults(handler=workspace_create)


def workspace_create(args: argparse.Namespace) -> int:
    from modelfleet.sdk.workspace import Workspace

    ws = Workspace.create(args.name, args.path)
    print(f"workspace {ws.name} created at {ws.path}")
    return 0
