"""The autoscale loop's cost with many services (control/autoscaler.py): which services
autoscale is looked up once a second, not at every tick, and samples fall on a grid so that
services share one read of the router's counters. Plain objects and injected time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelfleet.control.autoscaler import MEMBERSHIP_S, Autoscaler, Capacity
from modelfleet.spec import AutoscaleSpec, DeploySpec

AUTO = DeploySpec(autoscale=AutoscaleSpec(enabled=True, refresh_seconds=1))
FIXED = DeploySpec(num_replicas=1, autoscale=AutoscaleSpec(enabled=False))


class Service:
    """What the loop reads of a controller before it samples; counts the reads of ``spec``."""

    def __init__(self, name: str, spec: DeploySpec) -> None:
        self.name = name
        self._spec = spec
        self.spec_reads = 0
        self.serving_generation = 1
        self.start_failures = 0

    @property
    def spec(self) -> DeploySpec:
        self.spec_reads += 1
        return self._spec

    @spec.setter
    def spec(self, value: DeploySpec) -> None:
        self._spec = value


class Services:
    def __init__(self) -> None:
        self.controllers: dict[str, Any] = {}


class Stats:
    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> Mapping[str, Any]:
        self.reads += 1
        return {}  # no figures yet: nothing is sampled, only the reads count


def ticks(autoscaler: Autoscaler, start: float, end: float, step: float = 0.05) -> None:
    n = 0
    while start + n * step < end:
        autoscaler.tick(start + n * step)
        n += 1


def test_services_without_autoscaling_are_looked_at_once_a_second_not_every_tick() -> None:
    services = Services()
    fixed = [Service(f"fixed-{i}", FIXED) for i in range(100)]
    services.controllers = {s.name: s for s in fixed}
    autoscaler = Autoscaler(services, Stats(), Capacity(cpus=64, memory_gb=256))  # type: ignore[arg-type]
    ticks(autoscaler, 0.0, 2.0)  # 40 ticks
    assert MEMBERSHIP_S == 1.0
    assert all(s.spec_reads == 2 for s in fixed)  # at 0 s and at 1 s


def test_a_service_turned_on_is_found_within_a_second_and_one_turned_off_is_dropped_at_once() -> None:
    services = Services()
    svc = Service("svc", FIXED)
    services.controllers = {"svc": svc}
    stats = Stats()
    autoscaler = Autoscaler(services, stats, Capacity(cpus=64, memory_gb=256))  # type: ignore[arg-type]
    ticks(autoscaler, 0.0, 0.5)
    svc.spec = AUTO
    ticks(autoscaler, 0.5, 0.95)
    assert stats.reads == 0 and autoscaler.status() == {}  # not looked for again yet
    ticks(autoscaler, 1.0, 1.05)
    assert stats.reads == 1 and "svc" in autoscaler.status()
    svc.spec = FIXED
    ticks(autoscaler, 1.05, 1.1)
    assert autoscaler.status() == {}


def test_services_that_arrive_at_different_times_share_each_read_of_the_counters() -> None:
    services = Services()
    stats = Stats()
    autoscaler = Autoscaler(services, stats, Capacity(cpus=64, memory_gb=256))  # type: ignore[arg-type]
    for i in range(10):  # one new service every 0.05 s: each its own phase if samples were not on a grid
        services.controllers[f"s{i}"] = Service(f"s{i}", AUTO)
        autoscaler.tick(i * 0.05)
    before = stats.reads
    ticks(autoscaler, 0.5, 2.5)  # refresh 1 s: a sample every 0.1 s per service
    assert stats.reads - before == 20  # one read per 0.1 s grid step for all ten, not one per tick
