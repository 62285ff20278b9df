"""The CLI speaks one language: help on everything, one-line errors in flags' words, camelCase
JSON, no ``None`` for people, ``-o json|table|tsv`` on every read command, shell completion."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_support import SCRIPTS, cli, deploy, stop_cluster
from modelfleet import Model, Webservice, Workspace
from modelfleet.cli import build_parser
from modelfleet.errors import ConfigError

# every command that only reads, and so must offer -o json|table|tsv (as az does)
READ_COMMANDS = [
    "cluster status",
    "model list",
    "model show",
    "service list",
    "service show",
    "service logs",
    "service get-keys",
    "service get-access-token",
    "service scale-events",
    "service plan",
    "env list",
    "env show",
    "env config",
    "env audit",
    "data show",
]


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                listed = {choice.dest for choice in action._choices_actions if choice.help}
                missing += [f"command {' '.join((*path, n))}" for n in action.choices if n not in listed]
            elif not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_every_read_command_offers_json_table_and_tsv() -> None:
    commands = {" ".join(path): parser for path, parser in _commands(build_parser())}
    for name in READ_COMMANDS:
        (output,) = [a for a in commands[name]._actions if "--output" in a.option_strings]
        assert output.option_strings == ["-o", "--output"] and output.choices == ["table", "json", "tsv"], name
    export = commands["data export"]
    assert not any("-o" in a.option_strings for a in export._actions)  # -o is a format everywhere
    assert any(a.option_strings == ["--file"] for a in export._actions)


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.create("lang", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def test_usage_and_failure_errors_are_one_line_with_documented_codes(ws: Workspace, tmp_path: Path) -> None:
    assert "unknown-cmd" in _one_line_error(cli(ws, "unknown-cmd", check=False), 2)
    assert "service -h" in _one_line_error(cli(ws, "service", check=False), 2)
    assert "--name" in _one_line_error(cli(ws, "service", "show", check=False), 2)
    missing = _one_line_error(cli(ws, "service", "run", "-n", "x", "-f", str(tmp_path / "nope.json"), check=False), 1)
    assert "not found" in missing or "No such file" in missing
    again = _one_line_error(cli(ws, "workspace", "create", "-n", "lang", "-p", str(ws.path), check=False), 1)
    assert "modelfleet -w PATH" in again and "exist_ok" not in again
    (tmp_path / "w.json").write_text("{}")
    cli(ws, "model", "register", "-n", "w", "-p", str(tmp_path / "w.json"))
    cli(ws, "model", "download", "-n", "w", "-t", str(tmp_path / "dl"))
    twice = _one_line_error(cli(ws, "model", "download", "-n", "w", "-t", str(tmp_path / "dl"), check=False), 1)
    assert "--overwrite" in twice and "--target-dir" in twice and "exist_ok" not in twice


def _deploy_args(tmp_path: Path) -> list[str]:
    (tmp_path / "ic.json").write_text(
        json.dumps({"entryScript": "score.py", "sourceDirectory": str(SCRIPTS / "sum"), "environment": {"name": "e"}})
    )
    (tmp_path / "w.json").write_text("{}")
    return ["-m", "w:1", "--ic", str(tmp_path / "ic.json")]


def test_a_deploy_that_can_never_fit_is_refused_at_once_in_flags_words(ws: Workspace, tmp_path: Path) -> None:
    args = _deploy_args(tmp_path)
    cli(ws, "model", "register", "-n", "w", "-p", str(tmp_path / "w.json"))
    cores = os.cpu_count() or 1
    too_big = cli(ws, "model", "deploy", "-n", "big", *args, "--cpu-cores", str(cores + 1), check=False)
    assert f"--cpu-cores {cores + 1} can never fit" in _one_line_error(too_big, 1)
    too_many = cli(ws, "model", "deploy", "-n", "many", *args, "--num-replicas", str(cores * 10 + 1),
                   "--cpu-cores", "0.1", check=False)  # fmt: skip
    assert "--num-replicas" in _one_line_error(too_many, 1) and "can never fit" in too_many.stderr
    memory = cli(ws, "model", "deploy", "-n", "mem", *args, "--memory-gb", "100000", check=False)
    assert "--memory-gb 100000 can never fit" in _one_line_error(memory, 1)
    assert ws.store.list_services() == [] and ws.cluster().info() is None  # nothing stored or started

    model = Model(ws, "w")
    from modelfleet import AksWebservice, Environment, InferenceConfig

    ic = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "sum", environment=Environment("e"))
    dc = AksWebservice.deploy_configuration(autoscale_min_replicas=cores * 10 + 1, autoscale_max_replicas=cores * 20)
    with pytest.raises(ConfigError, match="autoscale_min_replicas .* can never fit"):
        Model.deploy(ws, "sdk-many", [model], ic, dc)


_NAMED = {"services", "router", "autoscaler", "replicas", "byClient"}
_OPAQUE = {"tags", "properties", "deploymentConfig", "spec", "canonical"}


def _keys(value: Any, opaque: bool = False) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            if not opaque:
                yield key
            # user data (tags, variables), v1 JSON, and maps keyed by service, replica or client
            named = key in _NAMED and isinstance(inner, dict)
            yield from _keys(inner, opaque=named or key in _OPAQUE)
            if named:
                for item in inner.values():  # keyed by service, replica or client names
                    yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item, opaque)


def test_read_commands_json_is_camel_case_tsv_is_values_and_people_never_see_none(
    ws: Workspace, tmp_path: Path
) -> None:
    model = tmp_path / "w.json"
    model.write_text("{}")
    cli(ws, "model", "register", "-n", "w", "-p", str(model), "-t", "snake_case_tag=x")
    before = cli(ws, "service", "list", "-o", "json")
    assert json.loads(before.stdout) == []
    service = deploy(ws, "svc", "sum", tags={"my_tag": "v"})
    reads = [
        ["cluster", "status"],
        ["model", "list"],
        ["model", "show", "-n", "w"],
        ["service", "list"],
        ["service", "show", "-n", "svc"],
        ["service", "get-keys", "-n", "svc"],
        ["service", "scale-events", "-n", "svc"],
        ["service", "plan", "--rps", "10", "--request-seconds", "0.5"],
        ["env", "list"],
        ["env", "config"],
    ]
    for command in reads:
        data = json.loads(cli(ws, *command, "-o", "json").stdout)
        snake = [k for k in _keys(data) if not re.fullmatch(r"[a-z][a-zA-Z0-9]*", k)]
        assert snake == [], (command, snake)
        human = cli(ws, *command).stdout
        assert "None" not in human, (command, human)
        assert cli(ws, *command, "-o", "tsv").stdout.strip() or data in ([], {}), command
    shown = json.loads(cli(ws, "service", "show", "-n", "svc", "-o", "json").stdout)
    assert shown["scoringUri"] == service.scoring_uri and shown["tags"] == {"my_tag": "v"}  # user keys kept
    assert json.loads(cli(ws, "model", "show", "-n", "w", "-o", "json").stdout)["tags"] == {"snake_case_tag": "x"}
    assert cli(ws, "service", "get-keys", "-n", "svc", "-o", "tsv").stdout.strip() == "\t".join(service.get_keys())
    logs = json.loads(cli(ws, "service", "logs", "-n", "svc", "-o", "json").stdout)
    assert logs["name"] == "svc" and any("replica-0.log" in line for line in logs["lines"])
    listed = cli(ws, "service", "list", "-o", "tsv").stdout.splitlines()

    assert len(listed) == 1 and listed[0].split("\t")[:2] == ["svc", "Healthy"]

    # metadata through the CLI: no new generation, the same replicas
    replicas = ws.cluster().status()["services"]["svc"]["replicas"]
    cli(ws, "service", "update", "-n", "svc", "--add-tag", "team=vision", "--description", "scores sums")
    assert Webservice(ws, "svc").tags == {"my_tag": "v", "team": "vision"}
    assert ws.store.get_service("svc").generation == 1
    assert ws.cluster().status()["services"]["svc"]["replicas"] == replicas
    refused = cli(ws, "service", "update", "-n", "svc", "--cpu-cores", "1000", check=False)
    assert "--cpu-cores 1000 can never fit" in _one_line_error(refused, 1)
    assert ws.store.get_service("svc").generation == 1


def test_completion_scripts_and_names_from_the_workspace(ws: Workspace, tmp_path: Path) -> None:
    bash = cli(ws, "completion", "bash").stdout
    assert "complete" in bash and "modelfleet" in bash
    assert "compdef" in cli(ws, "completion", "zsh").stdout or "#compdef" in cli(ws, "completion", "zsh").stdout
    if shutil.which("bash"):
        loaded = subprocess.run(["bash", "-c", f"{bash}\ncomplete -p modelfleet"], capture_output=True, text=True,
                                timeout=30, check=False)  # fmt: skip
        assert loaded.returncode == 0 and "modelfleet" in loaded.stdout, loaded.stderr

    ws.store.create_service("alpha-svc", _config(), primary_key=None, secondary_key=None)
    ws.store.create_service("beta-svc", _config(), primary_key=None, secondary_key=None)
    model = tmp_path / "w.json"
    model.write_text("{}")
    Model.register(ws, model_path=model, model_name="weights")

    def complete(line: str) -> list[str]:
        out = tmp_path / "completions.txt"
        env = {**os.environ, "_ARGCOMPLETE": "3", "COMP_LINE": line, "COMP_POINT": str(len(line)),
               "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"}  # fmt: skip
        subprocess.run([sys.executable, "-m", "modelfleet", *line.split()[3:]], env=env, cwd=tmp_path,
                       capture_output=True, timeout=60, check=False)  # fmt: skip
        return sorted(c.strip() for c in out.read_text().split("\n") if c.strip())

    prefix = f"python -m modelfleet -w {ws.path}"
    assert complete(f"{prefix} service show -n ") == ["alpha-svc", "beta-svc"]
    assert complete(f"{prefix} service logs -n al") == ["alpha-svc"]
    assert complete(f"{prefix} model show -n ") == ["weights"]
    assert complete(f"{prefix} model deploy -n x -m ") == ["weights:1"]
    assert "service" in complete(f"{prefix} ser")


def _config() -> dict[str, Any]:
    from modelfleet import AksWebservice

    return {
        "deploy": AksWebservice.deploy_configuration().to_dict(),
        "inference": {"entry_script": "score.py", "source_name": "s", "snapshot": None},
        "environment": {"name": "completion-env"},
        "models": [],
    }
