"""``modelfleet env list|show|prune|image-context|build-image|config|audit``: the environment caches.

Environments are built by deploys (``Environment.from_pip_requirements`` and friends) into
the machine-wide cache and linked into the workspace's; these commands look at them, remove
the ones no service uses, write and build hash-tagged images for Kubernetes (``env_image``),
and set where builds find packages (``config``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from modelfleet.cli.common import add_output, print_output, shown, workspace
from modelfleet.cli.completion import attach, environment_names
from modelfleet.cli.env_audit import add_audit_command
from modelfleet.cli.env_image import add_image_commands
from modelfleet.errors import ConfigError, NotFound


def register(groups: Any) -> None:
    env = groups.add_parser("env", help="cached environments").add_subparsers(
        metavar="COMMAND", dest="subcommand", required=True
    )
    listing = env.add_parser("list", help="the workspace's environments (--machine: the machine-wide cache's)")
    listing.add_argument("--machine", action="store_true", help="list the machine-wide cache instead")
    add_output(listing)
    listing.set_defaults(handler=env_list)
    show = env.add_parser("show", help="one environment: its specification, packages and users")
    name = show.add_argument("name", metavar="NAME_OR_HASH", help="environment name, or a hash prefix (6+ characters)")
    attach(name, environment_names)
    add_output(show)
    show.set_defaults(handler=env_show)
    prune = env.add_parser("prune", help="remove the environments no service uses")
    prune.add_argument("--machine", action="store_true", help="then the machine-wide ones no workspace links to")
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    prune.set_defaults(handler=env_prune)
    add_image_commands(env)
    config = env.add_parser("config", help="show or set where environments are cached and built from")
    config.add_argument("--machine-cache", help="machine-wide cache folder, or 'none' to keep builds in the workspace")
    config.add_argument("--find-links", action="append", help="a folder of wheels offered to every build; repeatable")
    config.add_argument("--no-find-links", action="store_true", help="forget the --find-links folders")
    config.add_argument("--offline", action=argparse.BooleanOptionalAction, help="builds use no index (no network)")
    config.add_argument("--uv-cache", help="uv's download cache folder")
    add_output(config)
    config.set_defaults(handler=env_config)
    add_audit_command(env)


def _context(args: argparse.Namespace) -> tuple[Any, Any]:
    from modelfleet.control.environments import settings_for

    ws = workspace(args)
    return ws, settings_for(ws.store)


def _row(env: Any, users: list[str]) -> dict[str, Any]:
    meta = env.metadata
    return {
        "hash": env.hash,
        "name": env.name,
        "python": meta.get("python"),
        "packages": len(meta.get("installed", [])),
        "requirements": meta.get("canonical", {}).get("requirements", []),
        "where": env.where,
        "path": str(env.path),
        "created": meta.get("created"),
        "build_seconds": meta.get("build_seconds"),
        "used_by": users,
    }


def env_list(args: argparse.Namespace) -> int:
    from modelfleet import envs
    from modelfleet.control.environments import usage

    ws, settings = _context(args)
    if args.machine:
        if settings.machine_cache is None:
            raise ConfigError("this workspace keeps no machine-wide cache (env config --machine-cache none)")
        cached = envs.list_cached(settings.machine_cache, "machine")
        rows = [_row(e, envs.machine_users(settings.machine_cache, e.hash)) for e in cached]
    else:
        used = usage(ws.store)
        rows = [_row(e, sorted(used.get(e.hash, []))) for e in envs.list_cached(settings.workspace_cache, "workspace")]
    lines = [
        f"{r['hash'][:12]}  {r['name']:<20} python {shown(r['python']):<8} {r['packages']:>3} packages  "
        f"used by: {shown(r['used_by'])}"
        for r in rows
    ]
    print_output(args, rows, "\n".join(lines) or "no environments")
    return 0


def env_show(args: argparse.Namespace) -> int:
    from modelfleet import envs
    from modelfleet.control.environments import usage

    ws, settings = _context(args)
    caches = [(settings.workspace_cache, "workspace")]
    if settings.machine_cache is not None:
        caches.append((settings.machine_cache, "machine"))
    matches: dict[str, Any] = {}
    for folder, where in caches:
        for env in envs.list_cached(folder, where):
            if env.name == args.name or (len(args.name) >= 6 and env.hash.startswith(args.name)):
                matches.setdefault(env.hash, env)
    if not matches:
        raise NotFound(
            f"no cached environment named {args.name!r} or with a hash starting so; see `modelfleet env list`"
        )
    used = usage(ws.store)
    data = [
        {**_row(e, sorted(used.get(e.hash, []))), "installed": e.metadata.get("installed", [])}
        for e in matches.values()
    ]
    text = "\n\n".join(
        f"{d['hash']}\n  name: {d['name']}\n  python: {shown(d['python'])}\n  where: {d['where']} ({d['path']})\n"
        f"  requirements: {', '.join(d['requirements']) or '-'}\n  installed: {', '.join(d['installed'])}\n"
        f"  used by: {', '.join(d['used_by']) or '-'}"
        for d in data
    )
    print_output(args, data if len(data) > 1 else data[0], text)
    return 0


def env_prune(args: argparse.Namespace) -> int:
    from modelfleet import envs
    from modelfleet.control.environments import usage

    ws, settings = _context(args)
    if args.machine and settings.machine_cache is None:
        raise ConfigError(
            "this workspace keeps no machine-wide cache (env config --machine-cache none); drop --machine"
        )
    in_use = set(usage(ws.store))
    if args.dry_run:
        going = _would_prune(settings, in_use, args.machine)
        for env in going:
            print(f"would remove {env.hash[:12]} {env.name} ({env.where})")
        if not going:
            print("nothing to remove")
        return 0
    removed = envs.prune_workspace(settings, in_use)
    if args.machine and settings.machine_cache is not None:
        removed += envs.prune_machine(settings.machine_cache)
    for env in removed:
        print(f"removed {env.hash[:12]} {env.name} ({env.where})")
    if not removed:
        print("nothing to remove")
    return 0


def _would_prune(settings: Any, in_use: set[str], machine: bool) -> list[Any]:
    """What ``env prune`` would remove: the workspace's unused environments, then (with
    ``--machine``) the machine-wide ones that no workspace would link to once this
    workspace's unused links are gone, as ``prune`` removes them in that order."""
    from modelfleet import envs

    unused = [e for e in envs.list_cached(settings.workspace_cache, "workspace") if e.hash not in in_use]
    if not machine or settings.machine_cache is None:
        return unused
    unlinked = {e.hash for e in unused}
    own = Path(settings.workspace_cache).resolve()
    going = list(unused)
    for env in envs.list_cached(settings.machine_cache, "machine"):
        users = [u for u in envs.machine_users(settings.machine_cache, env.hash)
                 if not (Path(u).resolve() == own and env.hash in unlinked)]  # fmt: skip
        if not users:
            going.append(env)
    return going


def env_config(args: argparse.Namespace) -> int:
    from modelfleet import envs

    ws, _ = _context(args)
    store = ws.store
    if args.machine_cache is not None:
        value = args.machine_cache
        store.set_setting(envs.SETTING_MACHINE_CACHE, value if value.lower() == "none" else str(Path(value).resolve()))
    if args.no_find_links or args.find_links:
        folders = [str(Path(f).resolve()) for f in args.find_links or []]
        store.set_setting(envs.SETTING_FIND_LINKS, os.pathsep.join(folders))
    if args.offline is not None:
        store.set_setting(envs.SETTING_OFFLINE, "true" if args.offline else "false")
    if args.uv_cache is not None:
        store.set_setting(envs.SETTING_UV_CACHE, str(Path(args.uv_cache).resolve()))
    _, settings = _context(args)
    data = {
        "workspace_cache": str(settings.workspace_cache),
        "machine_cache": str(settings.machine_cache) if settings.machine_cache else None,
        "find_links": list(settings.find_links),
        "offline": settings.offline,
        "uv_cache": str(settings.uv_cache) if settings.uv_cache else None,
    }
    print_output(args, data, "\n".join(f"{k}: {shown(v)}" for k, v in data.items()))
    return 0
