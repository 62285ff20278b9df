"""routes.route() for the Open Inference Protocol's paths (/v2): the server's health and
metadata answered by the router, a model's paths sent to its replicas as they came, after its
credentials, and each other case a 404, 405 or 413 (plain data, no sockets)."""

from __future__ import annotations

import json

import pytest

from modelfleet.router.auth import KeyAuth
from modelfleet.router.routes import ServiceRoute, ServiceState, route

TABLE = {
    b"keyed": ServiceState(ServiceRoute("keyed", auth=KeyAuth("k1", "k2"), max_body_bytes=100)),
    b"open": ServiceState(ServiceRoute("open", max_body_bytes=100)),
    b"fraud:blue": ServiceState(ServiceRoute("fraud:blue", max_body_bytes=100)),  # an endpoint's version
}


def decide(method: str, path: str, length: int = -1) -> tuple[str | None, int | None, bool, bytes]:
    d = route(method.encode(), path.encode(), length, TABLE)
    return (d.service.route.name if d.service else None, d.answer.status if d.answer else None, d.check_auth, d.path)


@pytest.mark.parametrize(
    ("method", "path", "length", "expected"),
    [
        ("POST", "/v2/models/keyed/infer", 10, ("keyed", None, True, b"/v2/models/keyed/infer")),
        ("POST", "/v2/models/open/infer", 10, ("open", None, False, b"/v2/models/open/infer")),
        ("POST", "/v2/models/keyed/versions/3/infer", 10, ("keyed", None, True, b"/v2/models/keyed/versions/3/infer")),
        ("POST", "/v2/models/keyed.reg/infer", 10, ("keyed", None, True, b"/v2/models/keyed.reg/infer")),
        ("POST", "/v2/models/keyed/infer", 101, ("keyed", 413, True, b"")),  # after the key check
        ("GET", "/v2/models/keyed/infer", -1, (None, 405, False, b"")),
        ("GET", "/v2/models/keyed", -1, ("keyed", None, True, b"/v2/models/keyed")),
        ("GET", "/v2/models/keyed/versions/3", -1, ("keyed", None, True, b"/v2/models/keyed/versions/3")),
        ("GET", "/v2/models/keyed/ready", -1, ("keyed", None, True, b"/v2/models/keyed/ready")),
        ("POST", "/v2/models/keyed/ready", -1, (None, 405, False, b"")),
        ("GET", "/v2/models/keyed/explain", -1, ("keyed", 404, False, b"")),
        ("POST", "/v2/models/nope/infer", 10, (None, 404, False, b"")),
        ("POST", "/v2/models/fraud:blue/infer", 10, (None, 404, False, b"")),  # versions: through their endpoint
        ("GET", "/v2/models/", -1, (None, 404, False, b"")),
        ("GET", "/v2/health/live", -1, (None, 200, False, b"")),
        ("GET", "/v2/health/ready", -1, (None, 200, False, b"")),
        ("GET", "/v2", -1, (None, 200, False, b"")),
        ("POST", "/v2", -1, (None, 405, False, b"")),
        ("GET", "/v2/repository/index", -1, (None, 404, False, b"")),
    ],
)
def test_v2_paths(method, path, length, expected):
    assert decide(method, path, length) == expected


def test_server_metadata_names_the_binary_extension():
    answer = route(b"GET", b"/v2", -1, TABLE).answer
    assert answer is not None
    doc = json.loads(answer.body)
    assert doc["name"] == "modelfleet" and doc["extensions"] == ["binary_tensor_data"] and doc["version"]


def test_a_model_of_a_multi_model_service_is_routed_by_its_name():
    d = route(b"POST", b"/v2/models/keyed.reg/versions/2/infer", 10, TABLE)
    assert d.service is TABLE[b"keyed"] and d.model == b"reg" and d.path == b"/v2/models/keyed.reg/versions/2/infer"
    assert route(b"POST", b"/v2/models/keyed/infer", 10, TABLE).model is None
    assert route(b"POST", b"/v2/models/keyed.Bad Name!/infer", 10, TABLE).answer.status == 404
