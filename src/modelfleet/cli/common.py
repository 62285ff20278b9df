"""Helpers every command module shares: finding the workspace, printing, reading v1 files."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.spec.deploy import SETTINGS
from modelfleet.spec.fields import Setting


def workspace(args: argparse.Namespace) -> Any:
    from modelfleet.sdk.workspace import Workspace

    return Workspace.get(args.workspace) if args.workspace else Workspace.from_config()


def cluster_client(args: argparse.Namespace) -> Any:
    """The local cluster's client. A workspace folder is found without opening its store, so
    that ``cluster status`` loads neither the SDK nor SQLAlchemy (measured here: 0.14 s of
    imports against 0.7-1.0 s); a v1 config.json, or no workspace at all, goes the full way."""
    from modelfleet.control.client import ClusterClient
    from modelfleet.sdk.locate import find_upward
    from modelfleet.store.folder import is_workspace, runtime_dir

    if args.workspace:
        root = Path(args.workspace).expanduser().resolve()
        folder = root if is_workspace(root) else None
    else:
        folder, _ = find_upward(Path.cwd())
    if folder is None:
        return workspace(args).cluster()
    return ClusterClient(folder, runtime_dir(folder))


def print_output(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    """``data`` as ``-o`` asks: JSON (keys in v1's camelCase, as ``az ml`` printed them),
    TSV (one line per item, values only, as ``az -o tsv``), or the human ``text``."""
    output = getattr(args, "output", "table")
    if output == "tsv":
        print(tsv(camel(data)))
    elif output == "json" or text is None:
        print(json.dumps(camel(data), indent=2, default=str))
    else:
        print(text)  # the data is not converted for nothing (a list of 1,000 services)


# Values under these keys are the user's own (tag names, variable names), or v1 JSON already.
_OPAQUE = frozenset({"tags", "properties", "environment_variables", "deploymentConfig", "spec", "canonical"})
# Dicts under these keys are keyed by names (services, replicas, clients): their values are
# converted, the names not.
_BY_NAME = frozenset({"services", "router", "autoscaler", "replicas", "by_client"})


def camel(value: Any, parent: str | None = None) -> Any:
    """``snake_case`` keys to ``camelCase``, leaving user data (tags, names) as it is."""
    if isinstance(value, dict):
        if parent in _OPAQUE:
            return value
        if parent in _BY_NAME:
            return {k: camel(v) for k, v in value.items()}
        return {_camel_key(k) if isinstance(k, str) else k: camel(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [camel(v, parent if parent in _OPAQUE else None) for v in value]
    return value


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def tsv(data: Any) -> str:
    """``az -o tsv``: a list is one line per item; a dict is one line of its values; nested
    values as compact JSON, None as an empty field."""
    rows = data if isinstance(data, list) else [data]
    return "\n".join("\t".join(_field(v) for v in (row.values() if isinstance(row, dict) else [row])) for row in rows)


def _field(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value).replace("\t", " ").replace("\n", " ")


def shown(value: Any) -> str:
    """A value in human output: ``-`` for nothing, never ``None``."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def key_values(data: dict[str, Any]) -> str:
    """A dict as ``key: value`` lines for people (nested dicts indented)."""
    lines = []
    for key, value in data.items():
        if isinstance(value, dict) and value and key not in ("tags", "properties"):
            lines.append(f"{key}:")
            lines.extend(f"  {line}" for line in key_values(value).splitlines())
        elif key.endswith("Time") and isinstance(value, int | float) and not isinstance(value, bool):
            lines.append(f"{key}: {_when(value)}")
        else:
            lines.append(f"{key}: {shown(value)}")
    return "\n".join(lines)


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(timespec="seconds")


def pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    result = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE (got {item!r})")
        result[key] = value
    return result


def read_json(path: str, flag: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{flag}: file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag}: {path} must hold a JSON object")
    return data


def models_from_refs(ws: Any, refs: list[str]) -> list[Any]:
    from modelfleet.sdk.model import Model
    from modelfleet.spec import parse_model_ref

    models = []
    for ref in refs:
        name, version = parse_model_ref(ref)
        models.append(Model(ws, name, version=version))
    return models


def inference_config_from_file(path: str) -> Any:
    from modelfleet.sdk.environment import InferenceConfig
    from modelfleet.spec import InferenceSpec

    spec = InferenceSpec.from_v1_json(read_json(path, "--ic"), Path(path).resolve().parent)
    return SpecInferenceConfig(spec) if spec else InferenceConfig(entry_script="score.py")


class SpecInferenceConfig:
    """An InferenceConfig read from a v1 inferenceconfig.json (already a spec)."""

    def __init__(self, spec: Any) -> None:
        self._spec = spec

    def to_spec(self) -> Any:
        return self._spec


def deploy_config_from_file(path: str) -> Any:
    from modelfleet.spec import DeploySpec

    return DeploySpec.from_v1_json(read_json(path, "--dc"))


def deploy_config_from_args(args: argparse.Namespace) -> Any:
    """``--dc``'s file with the setting flags applied over it (as ``service.update`` applies
    settings), or the flags alone as ``deploy_configuration()`` keywords; None when neither."""
    from modelfleet.spec import aks_deploy_configuration

    settings = deploy_settings(args)
    if args.dc:
        spec = deploy_config_from_file(args.dc)
        return spec.replace(**settings) if settings else spec
    return aks_deploy_configuration(**settings) if settings else None


_PARSE_BOOL = {"true": True, "false": False}
_WORDS = {"bool": "true or false", "int": "an integer", "number": "a number"}


def _parse_value(s: Setting) -> Any:
    """argparse ``type=`` for one setting: the text becomes the setting's kind of value; the
    setting's own check (bounds, rules) runs later, where the spec is built."""

    def parse(text: str) -> Any:
        try:
            if s.kind == "bool":
                return _PARSE_BOOL[text.lower()]
            if s.kind == "int":
                return int(text)
            if s.kind == "number":
                return float(text)
        except (KeyError, ValueError):
            # argparse says which flag: "argument --auth-enabled: must be true or false (got 'maybe')"
            raise argparse.ArgumentTypeError(f"must be {_WORDS[s.kind]} (got {text!r})") from None
        return text

    return parse


def add_deploy_settings(sub: argparse.ArgumentParser, keys: bool = True) -> None:
    """One flag per deployment setting, from the spec's table (``spec/deploy.py``); without
    the key flags where ``keys`` is false (a service's keys change with ``regen-key``)."""
    group = sub.add_argument_group(
        "deployment settings", "v1 deploy_configuration's settings; each flag given overrides --dc's value"
    )
    for s in SETTINGS:
        if s.secret and not keys:
            continue
        notes = [s.bounds()] if s.kind in ("int", "number") else []
        if s.default not in (None, {}):
            notes.append(f"default {str(s.default).lower()}")
        help_text = f"{s.help} ({'; '.join(notes)})" if notes else s.help
        if s.kind == "map":
            group.add_argument(s.flag, dest=f"setting_{s.flat}", action="append", metavar="KEY=VALUE", help=help_text)
        else:
            metavar = {"int": "N", "number": "X", "bool": "true|false", "text": "TEXT"}[s.kind]
            group.add_argument(s.flag, dest=f"setting_{s.flat}", type=_parse_value(s), metavar=metavar, help=help_text)


def deploy_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The deployment settings given as flags, under their v1 keywords."""
    given: dict[str, Any] = {}
    for s in SETTINGS:
        value = getattr(args, f"setting_{s.flat}", None)
        if value is not None:
            given[s.flat] = pairs(value, s.flag) if s.kind == "map" else value
    return given


def add_output(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "-o",
        "--output",
        choices=["table", "json", "tsv"],
        default="table",
        help="table (for people, default), json (camelCase keys, for scripts) or tsv (values only)",
    )
