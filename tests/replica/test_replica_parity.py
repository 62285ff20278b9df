"""Parity with the v1 reference server: the same scripts and requests against azmlinfsrv and
against the replica must give the same status, content type, body and v1 headers.

The reference is found through MODELFLEET_REFERENCE_SERVER (the path of ``azmlinfsrv``), else
/tmp/azref/bin/azmlinfsrv; the test is skipped only when neither exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from replica_scripts.harness import Answer, Server, reference_server, request, start_reference, start_replica

pytestmark = pytest.mark.skipif(reference_server() is None, reason="azmlinfsrv (the v1 reference server) not found")

JSON = {"Content-Type": "application/json"}

# Servers: name -> (script, environment).
SERVERS: dict[str, tuple[str, dict[str, str]]] = {
    "plain_kinds.py": ("plain_kinds.py", {}),
    "schema_sum.py": ("schema_sum.py", {}),
    "rawhttp_status.py": ("rawhttp_status.py", {}),
    "headers_param.py": ("headers_param.py", {}),
    "cors-list": ("plain_sum.py", {"AML_CORS_ORIGINS": "http://a.com, http://b.com"}),
    "cors-any": ("plain_sum.py", {"AML_CORS_ORIGINS": "*"}),
    "timeout": ("slow.py", {"SCORING_TIMEOUT_MS": "300"}),
}
SUM = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
ORIGIN_A = {"Origin": "http://a.com"}
PREFLIGHT = {"Origin": "http://b.com", "Access-Control-Request-Method": "POST"}

# server name -> [(method, path, body, headers)]
CASES: dict[str, list[tuple[str, str, bytes | None, dict[str, str]]]] = {
    "plain_kinds.py": [
        ("POST", "/score", b"hello", {}),
        ("POST", "/score", "h\u00e9llo".encode(), {}),
        ("POST", "/score", b"\xff", {}),
        ("POST", "/score", b"", {}),
        ("POST", "/score", b"boom", {}),
        ("POST", "/score", b"dumps", {}),
        ("POST", "/score", b"set", {}),
        ("POST", "/score", b"none", {}),
        ("POST", "/score", b"text", {}),
        ("POST", "/score?x=1", b"with query", {}),
        ("GET", "/score?a=1&b=[1,2]&c=x&a=2&d=null&e=%22q%22&f=", None, {}),
        ("GET", "/score", None, {}),
        ("GET", "/", None, {}),
        ("HEAD", "/", None, {}),
        ("OPTIONS", "/", None, {}),
        ("OPTIONS", "/swagger.json", None, {}),
        ("OPTIONS", "/score", None, {}),
        ("HEAD", "/score", None, {}),
        ("PUT", "/score", b"x", {}),
        ("DELETE", "/", None, {}),
        ("PATCH", "/swagger.json", None, {}),
        ("GET", "/nope", None, {}),
        ("GET", "/score/", None, {}),
        ("GET", "/swagger.json", None, {}),
        ("GET", "/swagger.json?version=2.0", None, {}),
        ("GET", "/swagger.json?version=3", None, {}),
        ("GET", "/swagger.json?version=3.0", None, {}),
        ("GET", "/swagger.json?version=3.1", None, {}),
        ("GET", "/swagger.json?version=4", None, {}),
        ("GET", "/swagger.json?version=", None, {}),
        ("POST", "/score", b"ids", {"x-request-id": "rid-1", "x-ms-request-id": "legacy-1"}),
        ("POST", "/score", b"ids", {"x-ms-client-request-id": "client-1"}),
        ("POST", "/score", b"ids", {"x-request-id": "r" * 101}),
        ("POST", "/score", b"ids", {"x-ms-request-id": "m" * 101}),
        ("POST", "/score", b"ids", {"TraceId": "trace-1"}),
    ],
    "schema_sum.py": [
        ("POST", "/score", b'{"data": [[1,2,3]]}', JSON),
        ("POST", "/score", b'{"data": [[1,2,3]], "scale": 2}', {"Content-Type": "application/json; charset=utf-8"}),
        ("POST", "/score", b'{"data": [[1,2,3]]}', {"Content-Type": "application/vnd.api+json"}),
        ("POST", "/score", b'{"data": [[1,2,3]]}', {}),
        ("POST", "/score", b'{"data": [[1,2,3]]}', {"Content-Type": "text/plain"}),
        ("POST", "/score", b'{"scale": 2}', JSON),
        ("POST", "/score", b"[1]", JSON),
        ("POST", "/score", b"", JSON),
        ("POST", "/score", b"{bad", JSON),
        ("GET", "/score?data=[[1,2]]&scale=3", None, {}),
        ("GET", "/score?scale=3", None, {}),
        ("GET", "/swagger.json", None, {}),
        ("GET", "/swagger.json?version=3", None, {}),
        ("GET", "/swagger.json?version=3.1", None, {}),
    ],
    "rawhttp_status.py": [
        ("POST", "/score", b"teapot", {}),
        ("POST", "/score", b"json", {}),
        ("POST", "/score", b"none", {}),
        ("POST", "/score", b"fail", {}),
        ("POST", "/score", b'{"a": 1}', JSON),
        ("POST", "/score", b"plain", {}),
        ("GET", "/score?x=1&y=2&x=3", None, {}),
        ("GET", "/score", None, {}),
        ("OPTIONS", "/score", None, {}),
        ("HEAD", "/score", None, {}),
    ],
    "headers_param.py": [
        ("POST", "/score", b"x", {"X-Custom": "hi"}),
        ("POST", "/score", b"y", {}),
    ],
    "cors-list": [
        ("POST", "/score", SUM, ORIGIN_A),
        ("POST", "/score", SUM, {"Origin": "http://evil.com"}),
        ("POST", "/score", SUM, {}),
        ("GET", "/", None, ORIGIN_A),
        ("OPTIONS", "/score", None, PREFLIGHT),
        ("OPTIONS", "/", None, PREFLIGHT),
        ("GET", "/nope", None, ORIGIN_A),
    ],
    "cors-any": [
        ("POST", "/score", SUM, ORIGIN_A),
        ("POST", "/score", SUM, {}),
        ("OPTIONS", "/score", None, PREFLIGHT),
    ],
    "timeout": [
        ("POST", "/score", b"sleep:0", {}),
        ("POST", "/score", b"sleep:1.5", {}),
    ],
}

# Headers whose values must match when present on either side (ids only when the client sent one).
COMPARED_HEADERS = (
    "x-ms-run-function-failed",
    "x-custom",
    "allow",
    "traceid",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "vary",
)
ID_HEADERS = ("x-request-id", "x-ms-request-id", "x-ms-client-request-id")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Server, Server]]]:
    tmp = tmp_path_factory.mktemp("parity")
    started: dict[str, tuple[Server, Server]] = {}
    try:
        # Boot the references together: each takes a second or two (gunicorn + Flask).
        references = {name: start_reference(script, tmp, env) for name, (script, env) in SERVERS.items()}
        for name, (script, env) in SERVERS.items():
            started[name] = (references[name], start_replica(script, tmp, env=env))
        for reference, _ in started.values():
            reference.wait_ready(timeout=60)
        yield started
    finally:
        for reference, ours in started.values():
            reference.stop()
            ours.stop()


def _case_ids() -> list[str]:
    return [f"{script}:{m} {p} {(b or b'')[:12]!r}" for script, cases in CASES.items() for m, p, b, _ in cases]


def _all_cases() -> list[tuple[str, str, str, bytes | None, dict[str, str]]]:
    return [(script, *case) for script, cases in CASES.items() for case in cases]


def _comparable(answer: Answer, sent: dict[str, str]) -> dict[str, object]:
    headers: dict[str, object] = {k: answer.headers.get(k) for k in COMPARED_HEADERS}
    # Flask builds Allow from a set: compare it as one.
    headers["allow"] = set(headers["allow"].split(", ")) if headers["allow"] else None
    sent_values = set(sent.values())
    for name in ID_HEADERS:
        value = answer.headers.get(name)
        headers[name] = value if value is None or value in sent_values else "<generated>"
    return {
        "status": answer.status,
        "content-type": answer.content_type,
        "content-length": answer.headers.get("content-length"),
        "body": answer.body,
        "headers": headers,
    }


@pytest.mark.parametrize(("script", "method", "path", "body", "headers"), _all_cases(), ids=_case_ids())
def test_same_answer_as_the_reference(
    servers: dict[str, tuple[Server, Server]],
    script: str,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
) -> None:
    reference, ours = servers[script]
    expected = _comparable(request(reference.port, method, path, body, headers), headers)
    actual = _comparable(request(ours.port, method, path, body, headers), headers)
    assert actual == expected


def test_generated_request_ids_have_the_same_shape(servers: dict[str, tuple[Server, Server]]) -> None:
    reference, ours = servers["plain_kinds.py"]
    for server in (reference, ours):
        answer = request(server.port, "POST", "/score", b"x")
        assert answer.headers["x-request-id"] == answer.headers["x-ms-request-id"]
        assert len(answer.headers["x-request-id"]) == 36
        assert "x-ms-client-request-id" not in answer.headers


def test_swagger_documents_are_identical(servers: dict[str, tuple[Server, Server]]) -> None:
    for script in ("plain_kinds.py", "schema_sum.py"):
        reference, ours = servers[script]
        for version in ("2", "3", "3.1"):
            path = f"/swagger.json?version={version}"
            expected = request(reference.port, "GET", path).body
            assert request(ours.port, "GET", path).body == expected
            assert json.loads(expected)  # a real document, not an error


def test_reference_path_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "azmlinfsrv"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MODELFLEET_REFERENCE_SERVER", str(fake))
    assert reference_server() == str(fake)


def test_input_that_does_not_fit_the_schema_is_400_where_the_reference_says_500(
    servers: dict[str, tuple[Server, Server]],
) -> None:
    """A documented difference (README): the caller's input, refused by @input_schema before
    run() begins, is the caller's fault; an error raised inside run() stays a 500 on both."""
    reference, ours = servers["schema_sum.py"]
    wrong_type = b'{"data": "not a list"}'
    assert request(reference.port, "POST", "/score", wrong_type, JSON).status == 500
    answer = request(ours.port, "POST", "/score", wrong_type, JSON)
    assert answer.status == 400
    message = json.loads(answer.body)["message"]
    assert message.startswith("Input does not fit run()'s input_schema: ValueError: Invalid input data type")
    raised_in_run = b'{"data": [["a"]]}'  # fits the schema's shape; sum() raises inside run()
    assert request(reference.port, "POST", "/score", raised_in_run, JSON).status == 500
    assert request(ours.port, "POST", "/score", raised_in_run, JSON).status == 500
