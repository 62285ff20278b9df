"""Mirroring's decisions (router/mirror.py, versions.EndpointState.copies, Dispatch.take_free)
and the per-version figures' arithmetic: pure, no sockets, no sleeps."""

from __future__ import annotations

from modelfleet.router.dispatch import Dispatch, Send
from modelfleet.router.mirror import wants_copy
from modelfleet.router.routes import ServiceRoute, ServiceState
from modelfleet.router.versions import EndpointState, VersionShare, version_figures
from modelfleet.telemetry.counters import LATENCY_BUCKETS, MirrorCounters, quantile_ms


def test_a_copy_is_wanted_for_draws_below_the_percentile() -> None:
    assert wants_copy(100, 0.0) and wants_copy(100, 0.999999)
    assert not wants_copy(0, 0.0)
    assert wants_copy(25, 0.2499) and not wants_copy(25, 0.25)
    draws = [i / 1000 for i in range(1000)]
    assert sum(wants_copy(30, d) for d in draws) == 300


def test_take_free_gives_a_free_slot_now_or_nothing_and_never_queues() -> None:
    d = Dispatch("shop:shadow", limit=1, max_wait_s=5.0)
    d.set_replicas(["r0", "r1"], 0.0)
    a, b, c = object(), object(), object()
    assert d.take_free(a, 0.0) == Send(a, "r0")
    assert d.take_free(b, 0.0) == Send(b, "r1")
    assert d.take_free(c, 0.0) is None  # both busy: dropped, not queued
    assert d.queued == 0 and d.in_flight == 2
    d.finish("r0", 0.1)
    assert d.take_free(c, 0.1) == Send(c, "r0")


def test_take_free_never_goes_ahead_of_a_waiter() -> None:
    d = Dispatch("shop:shadow", limit=1, max_wait_s=5.0)
    d.set_replicas(["r0"], 0.0)
    first, waiter, copy = object(), object(), object()
    assert d.arrive(first, 0.0) == Send(first, "r0")
    assert d.arrive(waiter, 0.0) is None  # queued
    assert d.take_free(copy, 0.0) is None
    assert d.finish("r0", 0.1) == [Send(waiter, "r0")]  # the waiter, not the copy, got the slot
    assert d.take_free(copy, 0.1) is None


def test_take_free_skips_a_failed_or_unlisted_replica() -> None:
    d = Dispatch("shop:shadow", limit=2, max_wait_s=5.0)
    assert d.take_free(object(), 0.0) is None  # no replica at all (scale to zero: no cold start for a copy)
    d.set_replicas(["r0"], 0.0)
    d.fail("r0")
    assert d.take_free(object(), 0.0) is None


def _service(name: str) -> ServiceState:
    svc = ServiceState(ServiceRoute(name))
    svc.dispatch.set_replicas([f"{name}-1-0"], 0.0)
    return svc


def _shop(mirror: float) -> tuple[EndpointState, dict[bytes, ServiceState]]:
    services = {n.encode(): _service(n) for n in ("shop:main", "shop:green", "shop:shadow")}
    state = EndpointState(
        "shop",
        [
            VersionShare("main", "shop:main", 0, True),
            VersionShare("green", "shop:green", 20, False),
            VersionShare("shadow", "shop:shadow", 0, False, mirror_percentile=mirror),
        ],
    )
    state.refresh(services)
    return state, services


def test_copies_go_to_the_mirror_from_every_serving_version_never_from_the_mirror() -> None:
    state, services = _shop(100)
    shadow = services[b"shop:shadow"]
    assert state.weights() == {"main": 80.0, "green": 20.0, "shadow": 0.0}  # a mirror takes no share
    assert state.copies(services[b"shop:main"]) == (shadow,)
    assert state.copies(services[b"shop:green"]) == (shadow,)
    assert state.copies(shadow) == ()  # pinned to the mirror: a mirror is never mirrored
    assert shadow.metrics.mirror is not None and shadow.metrics.mirror.sent == 0  # counters exist from refresh


def test_copies_follow_the_percentile_and_an_endpoint_without_mirrors_has_none() -> None:
    state, services = _shop(30)
    main = services[b"shop:main"]
    n = sum(len(state.copies(main)) for _ in range(4000))
    assert 1000 <= n <= 1400  # 30 % of 4000 = 1200, sd 29
    plain, plain_services = _shop(0)
    assert plain.mirrors == () and plain.copies(plain_services[b"shop:main"]) == ()
    assert plain_services[b"shop:shadow"].metrics.mirror is None


def test_quantiles_are_bucket_upper_bounds() -> None:
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    assert quantile_ms(buckets, 0.5) is None
    buckets[2] = 98  # 5 ms
    buckets[8] = 2  # 500 ms
    assert quantile_ms(buckets, 0.5) == 5.0
    assert quantile_ms(buckets, 0.99) == 500.0
    buckets[-1] = 100  # past 60 s: the last bound (JSON has no infinity)
    assert quantile_ms(buckets, 0.99) == 60000.0


def test_version_figures_count_requests_errors_and_a_mirrors_copies() -> None:
    state, services = _shop(100)
    main = services[b"shop:main"].metrics
    for status, seconds in ((200, 0.004), (200, 0.004), (503, 0.2), (404, 0.001)):
        main.observe(status, seconds)
    mirror = services[b"shop:shadow"].metrics.mirror
    assert isinstance(mirror, MirrorCounters)
    mirror.sent, mirror.dropped = 3, 7
    mirror.record(200, True, 0.6)
    mirror.record(500, False, 0.002)
    mirror.record(0, False, 1.5)  # no answer
    figures = version_figures(state)["versions"]
    assert figures["main"]["requests"] == 4 and figures["main"]["errors"] == 1
    assert figures["main"]["error_rate"] == 0.25 and figures["main"]["codes"] == {"200": 2, "404": 1, "503": 1}
    assert figures["main"]["latency"]["p50_ms"] == 5.0 and figures["main"]["mirror"] is None
    assert figures["main"]["weight"] == 80.0 and figures["main"]["is_default"] is True
    m = figures["shadow"]["mirror"]
    assert (m["sent"], m["dropped"], m["agreed"], m["disagreed"], m["errors"]) == (3, 7, 1, 2, 2)
    assert m["latency"]["count"] == 3 and m["latency"]["p99_ms"] == 2500.0
    assert figures["shadow"]["mirror_percentile"] == 100.0
