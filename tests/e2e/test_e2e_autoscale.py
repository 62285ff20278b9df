"""End to end: the autoscaler adds replicas under load and removes them with no failed request.

Real daemon, router and replica processes on 127.0.0.1 and a real SQLite workspace; one
cluster for the module. Services use the ``slow`` script with ``{"sleep": 0.2}`` (run()
sleeps 200 ms) and autoscale_down_delay_seconds=2 instead of 60.

Why every request may fairly be asked to return 200: while the first replica is alone, eight
clients at 200 ms each queue up to 1.4 s in the router, and the replicas asked for take about
a second more to be Ready. The default max_request_wait_time (500 ms) would answer some of
those with 503 by design, which is the queue doing its job, not scaling failing. So these
services wait up to 10 s in the queue; a 503, 502 or 504 here would then mean a request was
lost while replicas came or went.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from e2e_support import deploy, stop_cluster, wait_until
from modelfleet import Workspace

AUTOSCALE = {
    "num_replicas": None,
    "autoscale_enabled": True,
    "autoscale_min_replicas": 1,
    "autoscale_max_replicas": 4,
    "autoscale_down_delay_seconds": 2,
    "max_request_wait_time": 10000,
    "auth_enabled": False,
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("autoscale", tmp_path_factory.mktemp("ws"))
    yield workspace
    stop_cluster(workspace)


def replicas(ws: Workspace, name: str) -> list[dict]:
    return ws.cluster().status()["services"][name]["replicas"]


def ready(ws: Workspace, name: str) -> int:
    return sum(r["state"] == "Ready" for r in replicas(ws, name))


@dataclass
class Load:
    """``clients`` threads posting ``{"sleep": seconds}`` back to back until stopped."""

    uri: str
    clients: int
    seconds: float = 0.2
    statuses: list[int] = field(default_factory=list)
    started: float = 0.0  # time.monotonic() when every client was about to send
    stopped_at: float = 0.0  # time.time() when the last client finished
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        barrier = threading.Barrier(self.clients + 1)
        for _ in range(self.clients):
            thread = threading.Thread(target=self._client, args=(barrier,))
            thread.start()
            self._threads.append(thread)
        barrier.wait()
        self.started = time.monotonic()
        return self

    def _client(self, barrier: threading.Barrier) -> None:
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            while not self._stop.is_set():
                body = json.dumps({"sleep": self.seconds})
                self.statuses.append(client.post(self.uri, content=body).status_code)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.stopped_at = time.time()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cli(ws: Workspace, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(ws.path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def test_load_scales_up_within_2_s_and_back_down_after_the_delay(ws: Workspace) -> None:
    service = deploy(ws, "scaler", "slow", **AUTOSCALE)
    assert ready(ws, "scaler") == 1
    with Load(service.scoring_uri, clients=8) as load:
        wait_until(lambda: len(replicas(ws, "scaler")) >= 3, timeout=10, interval=0.02)
        asked = time.monotonic() - load.started
        wait_until(lambda: ready(ws, "scaler") >= 3, timeout=10, interval=0.02)
        serving = time.monotonic() - load.started
        wait_until(lambda: len(load.statuses) >= 40, timeout=10)  # a few seconds of load in all
    # The decision comes after one refresh period above target (about 1.1 s). Ready follows
    # once the new processes have started: about 0.35 s on an idle machine (Ready at 1.4-1.7 s),
    # but up to a second when other test runs load both cores, which this test cannot control.
    assert asked <= 2.0, f"3 replicas asked for {asked:.2f} s after the load started"
    assert serving <= 3.5, f"3 replicas Ready {serving:.2f} s after the load started"
    assert len(replicas(ws, "scaler")) <= 4

    wait_until(lambda: len(replicas(ws, "scaler")) == 1, timeout=15)
    assert set(load.statuses) == {200}, sorted(set(load.statuses))

    events = service.get_scale_events()
    up, *downs = events
    assert (up["from"], up["to"]) == (1, 4)  # 8 busy need ceil(8 / 0.7) = 12: all four at once
    assert up["utilization"] > 0.7 and "above target" in up["reason"]
    assert [(e["from"], e["to"]) for e in downs] == [(4, 3), (3, 2), (2, 1)]  # one step at a time
    assert downs[0]["time"] - load.stopped_at >= 2.0 - 0.05, "scaled down before the down-delay"
    assert all("under target" in e["reason"] for e in downs)
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    assert set(up) == {"time", "from", "to", "reason", "utilization"}

    # the same events through the CLI
    assert json.loads(cli(ws, "service", "scale-events", "-n", "scaler", "-o", "json")) == events
    table = cli(ws, "service", "scale-events", "-n", "scaler")
    assert [line.split("  ")[1] for line in table.splitlines()] == ["1 -> 4", "4 -> 3", "3 -> 2", "2 -> 1"]
    assert service.state == "Healthy"


def test_scale_down_with_requests_in_flight_fails_none(ws: Workspace) -> None:
    # four requests at a time per replica, so that 8 slow requests spread over every replica
    service = deploy(ws, "drainer", "slow", replica_max_concurrent_requests=4, **AUTOSCALE)
    with Load(service.scoring_uri, clients=16, seconds=0.3) as burst:
        # 16 busy on 4 slots at 70 %: ceil(16 / 2.8) = 6 replicas wanted, 4 allowed
        wait_until(lambda: ready(ws, "drainer") == 4, timeout=10)
    with Load(service.scoring_uri, clients=8, seconds=1.0) as slow:
        # 8 busy need ceil(8 / 2.8) = 3: after the down-delay one replica goes, while each
        # replica holds about two 1-second requests
        wait_until(lambda: len(service.get_scale_events()) >= 2, timeout=15)
        wait_until(lambda: len(replicas(ws, "drainer")) == 3, timeout=10)
        count = len(slow.statuses)
        wait_until(lambda: len(slow.statuses) >= count + 8, timeout=10)  # the three left serve on
    wait_until(lambda: len(replicas(ws, "drainer")) == 1, timeout=15)

    statuses = burst.statuses + slow.statuses
    assert set(statuses) == {200}, sorted(set(statuses))
    steps = [(e["from"], e["to"]) for e in service.get_scale_events()]
    assert steps == [(1, 4), (4, 3), (3, 2), (2, 1)]
    # the daemon's log shows the replica removed under load was drained with requests in flight
    log_text = (ws.store.runtime_dir / "daemon.log").read_text()
    in_flight = [int(n) for n in re.findall(r"service drainer: draining \['drainer-1-\d'\], (\d+) in flight", log_text)]
    assert in_flight and max(in_flight) >= 1, in_flight
    assert "drain of" not in log_text  # no drain timed out


def test_autoscale_off_holds_num_replicas(ws: Workspace) -> None:
    service = deploy(ws, "fixed", "slow", num_replicas=2, max_request_wait_time=10000, auth_enabled=False)
    with Load(service.scoring_uri, clients=8) as load:
        wait_until(lambda: len(load.statuses) >= 16, timeout=10)  # 800 % for about 2 s
    assert set(load.statuses) == {200}
    assert len(replicas(ws, "fixed")) == 2
    assert service.get_scale_events() == []
    service.delete()


def test_a_machine_that_cannot_fit_another_replica_says_so(ws: Workspace) -> None:
    # each replica reserves 60% of the machine's CPUs: the first fits beside this module's other
    # small services (every deploy is checked against the room they hold), a second never does
    cpus = round(float(os.cpu_count() or 1) * 0.6, 2)
    service = deploy(ws, "hog", "slow", cpu_cores=cpus, **AUTOSCALE)
    try:
        with Load(service.scoring_uri, clients=4):
            wait_until(lambda: service.get_scale_events(), timeout=10)
            # read while the load lasts: once it stops, the autoscaler no longer wants more and clears the note
            wait_until(lambda: "this machine fits only 1" in (service.error or ""), timeout=5)
            state, error = service.state, service.error or ""
        [event] = service.get_scale_events()
        assert (event["from"], event["to"]) == (1, 1)
        assert "this machine fits only 1" in event["reason"] and f"cpu_cores={cpus:g}" in event["reason"]
        assert state == "Healthy" and "autoscaler" in error
        assert len(replicas(ws, "hog")) == 1
    finally:
        service.delete()  # its reservation would starve the other services of this cluster


def test_replica_calculator_in_sdk_and_cli(ws: Workspace) -> None:
    from modelfleet import AksWebservice
    from modelfleet.errors import ConfigError

    assert AksWebservice.plan_replicas(20, 10) == 286  # v1's documented example
    assert AksWebservice.plan_replicas(100, 0.2, target_utilization=50, max_concurrent=4) == 10
    with pytest.raises(ConfigError, match="target_utilization"):
        AksWebservice.plan_replicas(1, 1, target_utilization=150)
    assert cli(ws, "service", "plan", "--rps", "20", "--request-seconds", "10").strip() == "286"
    out = json.loads(
        cli(ws, "service", "plan", "--rps", "100", "--request-seconds", "0.2", "--max-concurrent", "4", "-o", "json")
    )
    assert out["replicas"] == 8  # ceil(100 × 0.2 ÷ 0.7 ÷ 4) = ceil(7.1)


def test_scale_events_of_an_unknown_service_is_a_clear_error(ws: Workspace) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(ws.path), "service", "scale-events", "-n", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "nope" in result.stderr
