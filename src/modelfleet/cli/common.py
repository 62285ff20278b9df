"""Helpers every command module shares: finding the workspace, printing, reading v1 files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError


def workspace(args: argparse.Namespace) -> Any:
    from modelfleet.sdk.workspace import Workspace

    return Workspace.get(args.workspace) if args.workspace else Workspace.from_config()


def print_output(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    if getattr(args, "output", "table") == "json" or text is None:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


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


def add_output(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("-o", "--output", choices=["table", "json"], default="table")
