"""The daemon's rollout task (control/rollouts.py) over a real workspace store, without sockets:
the version's counters are plain ``Counts`` the test hands out per interval, and the interval's
sleep is where the test acts (adds answers, changes a share by hand). Covers what the end-to-end
test cannot make happen on cue: holds, giving up without evidence, cancelling by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelfleet import Workspace
from modelfleet.control.rollout import MAX_HOLDS, Counts
from modelfleet.control.rollouts import ROLLOUT_EVENT, Rollouts
from modelfleet.store.endpoints import ENDPOINT_KEY, weights
from modelfleet.telemetry.counters import LATENCY_BUCKETS

SLOTS = len(LATENCY_BUCKETS) + 1
VERSIONS = {
    "blue": {"traffic_percentile": 0.0, "is_default": True, "mirror_percentile": 0.0},
    "green": {"traffic_percentile": 0.0, "is_default": False, "mirror_percentile": 0.0},
}


def answers(ok: int, failed: int = 0) -> Counts:
    slots = [0] * SLOTS
    slots[2] = ok + failed  # 2.5-5 ms
    return Counts({200: ok, 500: failed} if failed else {200: ok}, tuple(slots))


class Harness:
    """A workspace holding endpoint "shop" with a requested rollout of green, and a Rollouts
    whose sleep runs ``during[i]`` (the i-th interval's action) and then adds ``adds[i]`` to green's counters."""

    def __init__(self, root: Path, steps: list[float]) -> None:
        self.ws = Workspace.create("rollout-task", root)
        self.store = self.ws.store
        rollout = {
            "id": "r1",
            "version": "green",
            "spec": {"steps": steps, "interval_s": 0.01, "max_error_rate": 0.1},
            "before": VERSIONS,
            "status": "requested",
        }
        config = {ENDPOINT_KEY: {"versions": VERSIONS, "rollout": rollout}}
        self.store.create_service("shop", config, primary_key=None, secondary_key=None)
        self.total = Counts({}, (0,) * SLOTS)
        self.adds: list[Counts] = []
        self.during: dict[int, Callable[[], None]] = {}
        self.intervals = 0
        self.synced: list[str] = []
        self.rollouts = Rollouts(self.store, self.synced.append, self._counts, self._sleep)

    def _counts(self, service: str) -> Counts | None:
        assert service == "shop:green"
        return self.total

    async def _sleep(self, seconds: float) -> None:
        i = self.intervals
        self.intervals += 1
        if i in self.during:
            await asyncio.to_thread(self.during[i])
        add = self.adds[i] if i < len(self.adds) else Counts({}, (0,) * SLOTS)
        codes = dict(self.total.codes)
        for c, n in add.codes.items():
            codes[c] = codes.get(c, 0) + n
        self.total = Counts(codes, tuple(a + b for a, b in zip(self.total.buckets, add.buckets, strict=True)))

    def run(self) -> None:
        async def go() -> None:
            await self.rollouts.on_sync("shop")
            assert self.rollouts.status() == {"shop": "r1"}
            await self.rollouts.on_sync("shop")  # the same request again starts nothing new
            await asyncio.wait_for(self.rollouts._tasks["shop"], timeout=30)

        asyncio.run(go())

    def versions(self) -> dict[str, Any]:
        return dict(self.store.get_service("shop").config[ENDPOINT_KEY]["versions"])

    def rollout(self) -> dict[str, Any]:
        return dict(self.store.get_service("shop").config[ENDPOINT_KEY]["rollout"])

    def events(self) -> list[tuple[str, Any]]:
        return [(e["event"], e.get("step")) for e in self.store.list_events("shop", kind=ROLLOUT_EVENT)]


def test_holds_while_no_request_reaches_the_version_then_goes_on(tmp_path: Path) -> None:
    h = Harness(tmp_path / "ws", [20, 100])
    h.adds = [Counts({}, (0,) * SLOTS), answers(50), answers(100, 1)]
    h.run()
    assert h.events() == [
        ("started", None), ("step", 20), ("hold", 20), ("passed", 20), ("step", 100), ("passed", 100),
        ("completed", 100),
    ]  # fmt: skip
    assert weights(h.versions()) == {"blue": 0.0, "green": 100.0} and h.versions()["green"]["is_default"]
    assert h.rollout()["status"] == "completed"
    assert h.synced and set(h.synced) == {"shop"}  # every share written was published


def test_no_evidence_in_max_holds_intervals_rolls_back(tmp_path: Path) -> None:
    h = Harness(tmp_path / "ws", [50, 100])
    h.run()
    assert h.events() == [("started", None), ("step", 50)] + [("hold", 50)] * (MAX_HOLDS - 1) + [("rolled_back", 50)]
    assert weights(h.versions()) == {"blue": 100.0, "green": 0.0}
    assert h.rollout()["status"] == "rolled_back" and "no request" in h.rollout()["reason"]


def test_errors_past_the_bound_at_a_later_step_roll_back_to_before(tmp_path: Path) -> None:
    h = Harness(tmp_path / "ws", [10, 50, 100])
    h.adds = [answers(100, 2), answers(80, 20)]  # 2 % then 20 % errors; the bound is 10 %
    h.run()
    assert h.events() == [("started", None), ("step", 10), ("passed", 10), ("step", 50), ("rolled_back", 50)]
    assert h.versions()["blue"]["is_default"] and weights(h.versions()) == {"blue": 100.0, "green": 0.0}
    assert "error rate 0.2 (20 of 100 answers 5xx)" in h.rollout()["reason"]


def test_a_share_changed_by_hand_cancels_the_rollout_and_stays(tmp_path: Path) -> None:
    h = Harness(tmp_path / "ws", [10, 50, 100])
    h.adds = [answers(100)]

    def by_hand() -> None:
        record = h.store.get_service("shop")
        versions = {n: dict(v) for n, v in record.config[ENDPOINT_KEY]["versions"].items()}
        versions["green"]["traffic_percentile"] = 5.0
        h.store.update_service_config(
            "shop", {**record.config, ENDPOINT_KEY: {**record.config[ENDPOINT_KEY], "versions": versions}}
        )

    h.during[0] = by_hand
    h.run()
    assert h.events() == [("started", None), ("step", 10), ("cancelled", None)]
    assert weights(h.versions()) == {"blue": 95.0, "green": 5.0}  # as set by hand
    assert h.rollout()["status"] == "cancelled" and "traffic_percentile was changed by hand" in h.rollout()["reason"]


def _left_running_at(h: Harness, index: int, green_share: float) -> None:
    """The store as a daemon stopped mid-rollout leaves it: running, at step ``index``."""
    record = h.store.get_service("shop")
    versions = {n: dict(v) for n, v in record.config[ENDPOINT_KEY]["versions"].items()}
    versions["green"]["traffic_percentile"] = green_share
    rollout = {**record.config[ENDPOINT_KEY]["rollout"], "status": "running", "step_index": index}
    h.store.update_service_config("shop", {ENDPOINT_KEY: {"versions": versions, "rollout": rollout}})


def _resume(h: Harness) -> None:
    async def go() -> None:
        await h.rollouts.resume(lambda record: True)
        assert h.rollouts.status() == {"shop": "r1"}
        await asyncio.wait_for(h.rollouts._tasks["shop"], timeout=30)

    asyncio.run(go())


def test_a_rollout_left_running_by_a_stopped_daemon_resumes_at_its_step(tmp_path: Path) -> None:
    h = Harness(tmp_path / "ws", [10, 50, 100])
    _left_running_at(h, 1, 50.0)
    h.adds = [answers(100), answers(100)]
    _resume(h)
    # step 50 is checked again (its counters did not outlive the old daemon), then 100
    assert h.events() == [("resumed", 50), ("passed", 50), ("step", 100), ("passed", 100), ("completed", 100)]
    assert h.intervals == 2
    assert weights(h.versions()) == {"blue": 0.0, "green": 100.0} and h.rollout()["status"] == "completed"
    assert h.rollout()["step_index"] == 2


def test_a_resumed_rollout_still_rolls_back_to_before(tmp_path: Path) -> None:
    h = Harness(tmp_path / "ws", [10, 50, 100])
    _left_running_at(h, 1, 50.0)
    h.adds = [answers(50, 50)]
    _resume(h)
    assert h.events() == [("resumed", 50), ("rolled_back", 50)]
    assert weights(h.versions()) == {"blue": 100.0, "green": 0.0} and h.rollout()["status"] == "rolled_back"


def test_shares_changed_while_no_daemon_ran_cancel_the_rollout(tmp_path: Path) -> None:
    h = Harness(tmp_path / "ws", [10, 50, 100])
    _left_running_at(h, 1, 30.0)  # step 50 had been set; someone changed green to 30 since
    _resume(h)
    assert h.events() == [("cancelled", None)] and h.intervals == 0
    assert weights(h.versions()) == {"blue": 70.0, "green": 30.0}
    assert "changed by hand" in h.rollout()["reason"] and h.rollout()["status"] == "cancelled"


def test_a_requested_rollout_starts_when_the_daemon_does(tmp_path: Path) -> None:
    h = Harness(tmp_path / "ws", [100])
    h.adds = [answers(10)]
    _resume(h)
    assert h.events() == [("started", None), ("step", 100), ("passed", 100), ("completed", 100)]
    asyncio.run(h.rollouts.resume(lambda record: True))  # a finished rollout is not started again
    assert h.rollouts.status() == {} and h.intervals == 1
