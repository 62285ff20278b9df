"""Issue 16: each local replica gets its own GPUs through ``CUDA_VISIBLE_DEVICES``.

This machine may have no GPU: the local target is told it has two (``gpus=2``), which is all it
uses the count for; real replica processes, their environment read from /proc.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from modelfleet.router.proxy import Router
from modelfleet.targets.base import GenerationSpec, Probe, ReplicaPlan, ReplicaState
from modelfleet.targets.forkserver import FORK_SERVER_ENV
from modelfleet.targets.gpus import GPUS_ENV, GpuPool
from modelfleet.targets.local import LocalTarget

SUM = Path(__file__).parent.parent / "e2e_scripts" / "sum"


def _plan(gpus: int, generation: int = 1) -> ReplicaPlan:
    return ReplicaPlan(
        service="svc",
        generation=generation,
        python=sys.executable,
        app_root=SUM,
        entry_script=SUM / "score.py",
        environment={GPUS_ENV: str(gpus)} if gpus else {},
        max_concurrent=1,
        probe=Probe(period_s=0.5, timeout_s=2.0, failure_threshold=2, startup_deadline_s=30.0),
    )


def _visible(pid: int | None) -> str | None:
    assert pid is not None
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        name, _, value = item.partition(b"=")
        if name == b"CUDA_VISIBLE_DEVICES":
            return value.decode()
    return None


async def _until(condition, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
    return value


def test_the_pool_hands_out_each_device_once() -> None:
    pool = GpuPool(3)
    assert pool.take(2) == (0, 1) and pool.take(2) is None and pool.take(1) == (2,)
    pool.give((0, 1))
    assert pool.free == 2 and pool.take(2) == (0, 1)


def test_replicas_get_their_own_gpus_and_give_them_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FORK_SERVER_ENV, raising=False)  # the default way (forked): its own environ in /proc too

    async def scenario() -> None:
        target = LocalTarget(tmp_path / "runtime", Router(), unix_sockets=False, gpus=2)
        try:
            await target.apply(GenerationSpec(_plan(1), 2))
            await _until(lambda: {r.state for r in target.replicas("svc")} == {ReplicaState.READY})
            assert sorted(_visible(r.pid) or "" for r in target.replicas("svc")) == ["0", "1"]

            await target.scale("svc", 1, 3)  # a third: no device is free
            third = await _until(
                lambda: next((r for r in target.replicas("svc") if r.state is ReplicaState.INIT_FAILED), None)
            )
            assert third.detail == "asks for 1 GPUs and 0 of this machine's 2 are free"

            await target.retire("svc", 1, 0.0)
            await _until(lambda: target.replicas("svc") == [])
            await target.apply(GenerationSpec(_plan(2, 2), 1))  # both came back
            await target.apply(GenerationSpec(_plan(0, 3), 1))  # none asked: none visible
            await _until(lambda: len([r for r in target.replicas("svc") if r.state is ReplicaState.READY]) == 2)
            seen = {r.generation: _visible(r.pid) for r in target.replicas("svc")}
            assert seen == {2: "0,1", 3: ""}
        finally:
            await target.close(0.0)

    asyncio.run(scenario())
