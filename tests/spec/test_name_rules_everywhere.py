"""One name table, every layer: the SDK, the CLI, the store, the admin API and the router all
take their name rules from ``spec/names.py``, so each gives the same answer for each name."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from modelfleet import Model, Workspace
from modelfleet.cli import main as cli_main
from modelfleet.control.admin import AdminHandlers, AdminServer
from modelfleet.errors import ConfigError
from modelfleet.router.routes import ServiceRoute
from modelfleet.spec import parse_model_ref, validate_model_name, validate_service_name
from modelfleet.spec.names import MODEL_NAME_RULE, SERVICE_NAME_RULE

SERVICE_NAMES = [
    ("abc", True),
    ("a" * 32, True),
    ("my-service-2", True),
    ("a1b", True),
    ("x-y", True),
    ("ab", False),
    ("a" * 33, False),
    ("MyService", False),
    ("2service", False),
    ("my_service", False),
    ("service-", False),
    ("-service", False),
    ("my.service", False),
    ("a--", False),
]
# Names an HTTP path cannot carry as they are; every layer but the admin API's is asked.
SERVICE_NAMES_OFF_THE_WIRE = [("", False), ("abc\n", False), ("ab c", False)]

MODEL_NAMES = [
    ("regressor", True),
    ("my.model_v2-a", True),
    ("A", True),
    ("9lives", True),
    ("x" * 255, True),
    ("_x", False),
    (".hidden", False),
    ("-dash", False),
    ("", False),
    ("a b", False),
    ("x" * 256, False),
    ("a/b", False),
    ("abc\n", False),
]

TOKEN = "admin-test-token"


def refused(call: Callable[[], object], rule: str) -> bool:
    """True when ``call`` raises the ConfigError that states ``rule``; other errors mean the
    name got through (the call then fails further on, on purpose)."""
    try:
        call()
    except ConfigError as exc:
        return rule in exc.message
    return False


@pytest.fixture(scope="module")
def admin() -> Iterator[tuple[int, list[str]]]:
    """A real admin API on 127.0.0.1 whose sync handler records the names it was given."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    synced: list[str] = []

    async def no_delete(name: str) -> None:
        return None

    handlers = AdminHandlers(status=dict, sync=synced.append, delete=no_delete, shutdown=lambda: None)
    server = AdminServer(loop, TOKEN, handlers)
    server.start()
    try:
        yield server.port, synced
    finally:
        server.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def admin_accepts(port: int, synced: list[str], name: str) -> bool:
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/services/{name}/sync",
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    if r.status_code == 202:
        assert synced[-1] == name
        return True
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith(f"service name must be {SERVICE_NAME_RULE}"), r.text
    return False


def cli_accepts_service(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> bool:
    # the config file does not exist: a name that passes fails there instead
    code = cli_main(["model", "deploy", f"--name={name}", "-m", "m:1", "--ic", str(tmp_path / "missing.json")])
    err = capsys.readouterr().err
    assert code == 1, err
    return SERVICE_NAME_RULE not in err


def layers_for_service(name: str, ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, bool]:
    rule = SERVICE_NAME_RULE
    return {
        "spec": not refused(lambda: validate_service_name(name), rule),
        "sdk Model.deploy": not refused(lambda: Model.deploy(ws, name, []), rule),
        "cli model deploy": cli_accepts_service(tmp_path, capsys, name),
        "router ServiceRoute": not refused(lambda: ServiceRoute(name), rule),
    }


@pytest.mark.parametrize(("name", "valid"), SERVICE_NAMES)
def test_every_layer_gives_the_same_answer_for_a_service_name(
    name: str,
    valid: bool,
    admin: tuple[int, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ws = Workspace.create("names", tmp_path / "ws")
    answers = layers_for_service(name, ws, tmp_path, capsys)
    answers["admin API"] = admin_accepts(*admin, name)
    assert answers == dict.fromkeys(answers, valid)


@pytest.mark.parametrize(("name", "valid"), SERVICE_NAMES_OFF_THE_WIRE)
def test_names_no_url_carries_are_refused_by_every_other_layer(
    name: str, valid: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = Workspace.create("names", tmp_path / "ws")
    answers = layers_for_service(name, ws, tmp_path, capsys)
    assert answers == dict.fromkeys(answers, valid)


@pytest.mark.parametrize(("name", "valid"), MODEL_NAMES)
def test_every_layer_gives_the_same_answer_for_a_model_name(
    name: str, valid: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = Workspace.create("names", tmp_path / "ws")
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"w")
    rule = MODEL_NAME_RULE
    code = cli_main(["-w", str(ws.path), "model", "register", f"--name={name}", "-p", str(weights)])
    err = capsys.readouterr().err
    answers = {
        "spec": not refused(lambda: validate_model_name(name), rule),
        "cli -m NAME:VERSION": not refused(lambda: parse_model_ref(f"{name}:1"), rule),
        "sdk Model.register": not refused(lambda: Model.register(ws, weights, name), rule),
        "store": not refused(lambda: ws.store.register_model(name, weights), rule),
        "cli model register": code == 0 and rule not in err,
    }
    assert answers == dict.fromkeys(answers, valid)


def test_the_admin_api_names_the_rule_for_a_bad_name(admin: tuple[int, list[str]]) -> None:
    port, synced = admin
    r = httpx.delete(f"http://127.0.0.1:{port}/v1/services/Bad_Name", headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400
    assert r.json()["message"] == (
        "service name must be 3-32 characters of lowercase letters, digits and dashes, starting with a "
        "letter and ending with a letter or digit (got 'Bad_Name')"
    )
