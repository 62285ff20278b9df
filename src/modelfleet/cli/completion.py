"""Shell completion (bash, zsh) with argcomplete: commands, flags, and the workspace's names.

``modelfleet completion bash`` (or ``zsh``) prints the script to source, e.g. in ``~/.bashrc``:
``eval "$(modelfleet completion bash)"``. While completing, the shell runs ``modelfleet``
with argcomplete's variables set; the completers below then read the workspace (``-w``, or
found upward from the current folder) for service, model and environment names. A
completer that cannot read a workspace offers nothing rather than failing the shell.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

Completer = Callable[..., list[str]]


def _workspace(parsed_args: argparse.Namespace) -> Any:
    from modelfleet.sdk.workspace import Workspace

    path = getattr(parsed_args, "workspace", None)
    return Workspace.get(path) if path else Workspace.from_config()


def _quietly(names: Callable[[Any], list[str]]) -> Completer:
    def complete(prefix: str = "", parsed_args: argparse.Namespace | None = None, **_: Any) -> list[str]:
        try:
            found = names(_workspace(parsed_args or argparse.Namespace()))
        except Exception:  # noqa: BLE001 - a completion never breaks the user's shell
            return []
        return [n for n in found if n.startswith(prefix)]

    return complete


service_names = _quietly(lambda ws: [r.name for r in ws.store.list_services()])
model_names = _quietly(lambda ws: sorted({r.name for r in ws.store.list_models()}))
model_refs = _quietly(lambda ws: [f"{r.name}:{r.version}" for r in ws.store.list_models()])


def _environment_names(ws: Any) -> list[str]:
    from modelfleet import envs
    from modelfleet.control.environments import settings_for

    names = {str(r.config.get("environment", {}).get("name")) for r in ws.store.list_services()}
    names.update(e.name for e in envs.list_cached(settings_for(ws.store).workspace_cache, "workspace"))
    return sorted(n for n in names if n and n != "None")


environment_names = _quietly(_environment_names)


def attach(action: argparse.Action, completer: Completer) -> argparse.Action:
    action.completer = completer  # type: ignore[attr-defined]  # argcomplete reads this attribute
    return action


def register(groups: Any) -> None:
    sub = groups.add_parser(
        "completion",
        help="print the shell completion script (bash or zsh)",
        description='Print the completion script; load it with: eval "$(modelfleet completion bash)"',
    )
    sub.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    sub.set_defaults(handler=completion)


def completion(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    print(shellcode(["modelfleet"], shell=args.shell))
    return 0


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell and exit, when the shell is asking (argcomplete's variables set)."""
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)
