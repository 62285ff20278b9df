"""The ``modelfleet`` command, shaped like the v1 ``az ml`` CLI.

Each command group lives in its own module with a ``register(groups)`` function; each
command parses its arguments, calls the SDK and prints, and decides nothing itself.

Exit status: 0 on success; 1 when the command failed; 2 for a usage error (an unknown
command, a missing or malformed flag); 130 when interrupted. Every failure is one line on
stderr, ``error: ...``, in the CLI's words (``cli/words.py``: flags, not SDK keywords).
``-o json|table|tsv`` on the read commands; JSON keys are v1's camelCase.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from modelfleet.cli import cluster, completion, dashboard, data, endpoints, envs, k8s, models, services, workspace
from modelfleet.cli.words import in_cli_words
from modelfleet.errors import ModelfleetError

COMMAND_GROUPS = (workspace, cluster, models, services, endpoints, envs, data, completion, dashboard, k8s)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A usage error, raised by the parser instead of printing usage and exiting."""


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one ``error: ...`` line that says where help is."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} -h`)")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve"]:
        # the replica's own parser owns these flags, so that they stay azmlinfsrv's
        from modelfleet.replica import main as serve_main

        return serve_main(args_list[1:])
    parser = build_parser()
    completion.autocomplete(parser)
    try:
        args = parser.parse_args(args_list)
    except UsageError as exc:
        print(f"error: {in_cli_words(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except ModelfleetError as exc:
        return _fail(exc.message)
    except OSError as exc:  # a file named on the command line, a full disk, a closed pipe
        return _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line; MODELFLEET_DEBUG=1 shows the traceback
        if os.environ.get("MODELFLEET_DEBUG"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (run with MODELFLEET_DEBUG=1 for the traceback)")


def _fail(message: str) -> int:
    text = " ".join(in_cli_words(message).split())  # one line, whatever the message held
    print(f"error: {text}", file=sys.stderr)
    return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="modelfleet",
        description="Deploy models as authenticated web services.",
        epilog="exit status: 0 success, 1 failure, 2 usage error, 130 interrupted",
    )
    parser.add_argument(
        "-w", "--workspace", metavar="PATH", help="workspace folder (default: found upward from the current folder)"
    )
    groups = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    groups.add_parser("serve", help="run one replica in the foreground (flags as azmlinfsrv; see `serve -h`)")
    for group in COMMAND_GROUPS:
        group.register(groups)
    return parser


if __name__ == "__main__":
    sys.exit(main())
