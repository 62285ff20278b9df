"""The router's choice of an endpoint's version (router/versions.py): pure, no sockets."""

from __future__ import annotations

import pytest

from modelfleet.errors import ConfigError
from modelfleet.router.routes import ServiceRoute, ServiceState
from modelfleet.router.versions import EndpointState, VersionShare, choose, session_draw, split


def shares(cumulative: tuple[float, ...]) -> list[float]:
    out, before = [], 0.0
    for c in cumulative:
        out.append(round(100 * (c - before) / cumulative[-1], 9))
        before = c
    return out


def test_default_takes_what_the_others_leave() -> None:
    assert shares(split([(0, True, True), (10, False, True)])) == [90, 10]
    assert shares(split([(50, True, True), (10, False, True), (30, False, True)])) == [
        60,
        10,
        30,
    ]  # a default's own value means nothing
    assert shares(split([(0, True, True), (100, False, True)])) == [0, 100]


def test_an_unhealthy_version_gets_nothing_and_its_share_goes_to_the_default() -> None:
    assert shares(split([(0, True, True), (10, False, False), (30, False, True)])) == [70, 0, 30]


def test_an_unhealthy_default_leaves_the_healthy_others_sharing_everything() -> None:
    assert shares(split([(0, True, False), (10, False, True), (30, False, True)])) == [0, 25, 75]


def test_nothing_healthy_sends_everything_to_the_default() -> None:
    assert shares(split([(0, True, False), (10, False, False)])) == [100, 0]
    assert shares(split([(0, True, False), (0, False, True)])) == [100, 0]  # a healthy one with no share takes none


def test_choose_maps_the_draw_onto_the_slices() -> None:
    cumulative = split([(0, True, True), (10, False, True)])
    assert choose(cumulative, 0.0) == 0
    assert choose(cumulative, 0.8999) == 0
    assert choose(cumulative, 0.9) == 1
    assert choose(cumulative, 0.99999) == 1
    counts = [0, 0]
    for i in range(10_000):
        counts[choose(cumulative, i / 10_000)] += 1
    assert counts == [9000, 1000]


def test_a_session_key_draws_the_same_everywhere() -> None:
    assert session_draw(b"user-42") == session_draw(b"user-42")
    assert 0 <= session_draw(b"user-42") < 1
    draws = {round(session_draw(f"user-{i}".encode()), 1) for i in range(200)}
    assert len(draws) >= 9  # spread over [0, 1)


def _service(name: str, ready: bool) -> ServiceState:
    svc = ServiceState(ServiceRoute(name))
    if ready:
        svc.dispatch.set_replicas([f"{name}-1-0"], 0.0)
    return svc


def _endpoint(green_ready: bool = True) -> tuple[EndpointState, dict[bytes, ServiceState]]:
    services = {
        b"fraud": _service("fraud", False),
        b"fraud:blue": _service("fraud:blue", True),
        b"fraud:green": _service("fraud:green", green_ready),
    }
    state = EndpointState(
        "fraud",
        [VersionShare("blue", "fraud:blue", 0, True), VersionShare("green", "fraud:green", 10, False)],
    )
    state.refresh(services)
    return state, services


def test_pick_pins_with_the_v2_header_and_names_the_version_in_the_answer() -> None:
    state, services = _endpoint()
    for _ in range(50):
        svc, canned, line = state.pick(b"green", None)
        assert svc is services[b"fraud:green"] and canned is None
        assert line == b"azureml-model-deployment: green\r\n"


def test_pick_pins_a_version_even_when_it_is_not_healthy() -> None:
    state, services = _endpoint(green_ready=False)
    assert state.weights() == {"blue": 100.0, "green": 0.0}
    svc, canned, _ = state.pick(b"green", None)
    assert svc is services[b"fraud:green"] and canned is None  # it waits in green's queue, then 503


def test_pick_answers_404_naming_an_unknown_version() -> None:
    state, _ = _endpoint()
    svc, canned, _ = state.pick(b"purple", None)
    assert svc is None and canned is not None and canned.status == 404
    assert b"no version 'purple'" in canned.body and b"blue, green" in canned.body
    assert b"azureml-model-deployment" in canned.body
    _, odd, _ = state.pick(b'x"\xff' * 40, None)  # quoted as text, cut short, still JSON
    assert odd is not None and odd.status == 404 and len(odd.body) < 400


def test_pick_is_sticky_by_session_key() -> None:
    state, _ = _endpoint()
    for key in (b"a", b"b", b"customer-17", b"x" * 40):
        first = state.pick(None, key)[2]
        assert all(state.pick(None, key)[2] == first for _ in range(20))


def test_pick_agrees_with_the_pure_choice() -> None:
    state, _ = _endpoint()
    for i in range(300):
        key = f"k{i}".encode()
        expected = choose(state.cumulative, session_draw(key))
        assert state.pick(None, key)[2] == state.lines[expected]


def test_refresh_follows_the_versions_health() -> None:
    state, services = _endpoint()
    assert state.weights() == {"blue": 90.0, "green": 10.0}
    services[b"fraud:green"].set_failed("init() raised")
    state.refresh(services)
    assert state.weights() == {"blue": 100.0, "green": 0.0}
    del services[b"fraud:green"]  # not in the router (yet, or any more)
    state.refresh(services)
    assert state.weights() == {"blue": 100.0, "green": 0.0}
    svc, canned, _ = state.pick(b"green", None)
    assert svc is None and canned is not None and canned.status == 503


def test_an_endpoint_needs_exactly_one_default() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        EndpointState("fraud", [VersionShare("a", "fraud:a", 0, True), VersionShare("b", "fraud:b", 0, True)])
    with pytest.raises(ConfigError, match="exactly one"):
        EndpointState("fraud", [])


def test_a_version_service_is_reached_only_through_its_endpoint() -> None:
    from modelfleet.router.routes import route

    services = {b"fraud:blue": _service("fraud:blue", True)}
    assert route(b"POST", b"/api/v1/service/fraud:blue/score", 2, services).answer.status == 404  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="service name"):
        ServiceRoute("fraud:Blue!")


def test_a_version_scaled_to_zero_keeps_its_share() -> None:
    state, services = _endpoint(green_ready=False)
    assert state.weights()["green"] == 0.0
    services[b"fraud:green"].dispatch.cold_wait_s = 30.0  # scale to zero: the router holds its requests
    state.refresh(services)
    assert state.weights() == {"blue": 90.0, "green": 10.0}
