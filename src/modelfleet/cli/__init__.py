"""The ``modelfleet`` command, shaped like the v1 ``az ml`` CLI.

Each command group lives in its own module with a ``register(groups)`` function; each
command parses its arguments, calls the SDK and prints, and decides nothing itself.
Exit status 0 on success; otherwise 1 with one line on stderr (2 for usage errors).
``-o json`` on the read commands prints JSON for scripts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelfleet.cli import cluster, dashboard, data, envs, models, services, workspace
from modelfleet.errors import ModelfleetError

COMMAND_GROUPS = (workspace, cluster, models, services, envs, data, dashboard)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve"]:
        # the replica's own parser owns these flags, so that they stay azmlinfsrv's
        from modelfleet.replica import main as serve_main

        return serve_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except ModelfleetError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelfleet", description="Deploy models as authenticated web services.")
    parser.add_argument("-w", "--workspace", help="workspace folder (default: found upward from the current folder)")
    groups = parser.add_subparsers(title="commands")
    groups.add_parser("serve", help="run one replica in the foreground (flags as azmlinfsrv)")
    for group in COMMAND_GROUPS:
        group.register(groups)
    return parser


if __name__ == "__main__":
    sys.exit(main())
