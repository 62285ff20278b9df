"""routes.route(): where a request goes, decided from plain data (no sockets, no loop)."""

from __future__ import annotations

import pytest

from modelfleet.router.auth import KeyAuth
from modelfleet.router.routes import ServiceRoute, ServiceState, route

TABLE = {
    b"keyed": ServiceState(ServiceRoute("keyed", auth=KeyAuth("k1", "k2"), max_body_bytes=100)),
    b"open": ServiceState(ServiceRoute("open", max_body_bytes=100)),
}


def decide(method: str, path: str, length: int = -1) -> tuple[str | None, int | None, bool, bytes]:
    d = route(method.encode(), path.encode(), length, TABLE)
    return (d.service.route.name if d.service else None, d.answer.status if d.answer else None, d.check_auth, d.path)


@pytest.mark.parametrize(
    ("method", "path", "length", "expected"),
    [
        ("POST", "/api/v1/service/keyed/score", 10, ("keyed", None, True, b"/score")),
        ("GET", "/api/v1/service/keyed/score", -1, ("keyed", None, True, b"/score")),
        ("POST", "/api/v1/service/open/score", 10, ("open", None, False, b"/score")),
        ("POST", "/api/v1/service/keyed/score", 101, ("keyed", 413, True, b"")),  # after the key check
        ("POST", "/api/v1/service/keyed/score", 100, ("keyed", None, True, b"/score")),
        ("PUT", "/api/v1/service/keyed/score", 10, ("keyed", 405, False, b"")),
        ("DELETE", "/api/v1/service/keyed/score", -1, ("keyed", 405, False, b"")),
        ("GET", "/api/v1/service/keyed/swagger.json", -1, ("keyed", None, False, b"/swagger.json")),
        ("POST", "/api/v1/service/keyed/swagger.json", -1, ("keyed", 405, False, b"")),
        ("GET", "/api/v1/service/keyed/swagger.json", 101, ("keyed", 413, False, b"")),
        ("GET", "/api/v1/service/keyed/other", -1, ("keyed", 404, False, b"")),  # counted as the service's answer
        ("GET", "/api/v1/service/keyed/score/", -1, ("keyed", 404, False, b"")),
        ("POST", "/api/v1/service/nope/score", -1, (None, 404, False, b"")),
        ("POST", "/api/v1/service//score", -1, (None, 404, False, b"")),
        ("POST", "/api/v1/service/keyed", -1, (None, 404, False, b"")),
        ("POST", "/api/v1/service/KEYED/score", -1, (None, 404, False, b"")),  # names are exact
        ("GET", "/", -1, (None, 200, False, b"")),
        ("POST", "/", -1, (None, 405, False, b"")),
        ("GET", "/score", -1, (None, 404, False, b"")),
        ("GET", "", -1, (None, 404, False, b"")),
    ],
)
def test_route(method: str, path: str, length: int, expected: tuple[str | None, int | None, bool, bytes]) -> None:
    assert decide(method, path, length) == expected


def test_decisions_are_built_once_per_service() -> None:
    a = route(b"POST", b"/api/v1/service/keyed/score", 1, TABLE)
    b = route(b"GET", b"/api/v1/service/keyed/score", 2, TABLE)
    assert a is b  # no allocation per request
    assert "keyed" in repr(a)
