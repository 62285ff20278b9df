"""Safe rollouts, run by the daemon: the asyncio side of ``control/rollout.py``.

The SDK stores a rollout request in the endpoint's config (``config["endpoint"]["rollout"]``:
id, version, spec, the versions as they were, ``status: "requested"``) and asks the daemon to
sync the endpoint; ``Rollouts.on_sync`` starts a task for a request it has not seen. The task
sets a step's shares (writing the endpoint's config and syncing it, as ``set_traffic`` does),
sleeps ``interval_s``, reads the version's router counters before and after, and does what
``rollout.decide`` says. Every start, step, hold, rollback, cancel and completion is an event
of kind ``"rollout"`` on the endpoint (``endpoint.get_events()``), and the stored rollout's
``status`` follows: running, completed, rolled_back, cancelled or failed.

A rollout lives in the daemon, so it goes on when the SDK process that asked for it ends. The
stored rollout keeps the index of the step it is at (``step_index``), so a daemon that stops
(or is killed) mid-rollout leaves the shares at that step, and the next daemon resumes it at its
start (``resume``, event ``resumed``): the step's interval starts again with fresh counters,
since the router's counters did not outlive the old daemon. If the shares were changed while no
daemon ran, the rollout is cancelled instead, as a change by hand is while it runs. One rollout
per endpoint at a time.
A share changed by hand during a rollout (the version's share or default-ness differs from
what the rollout set), or the version deleted, cancels it with the shares as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from modelfleet.control.rollout import (
    Counts,
    Figures,
    decide,
    figures,
    parse_rollout,
    restored_versions,
    step_versions,
)
from modelfleet.errors import ModelfleetError, NotFound
from modelfleet.router.proxy import Router
from modelfleet.spec.names import version_service_name
from modelfleet.store.endpoints import ENDPOINT_KEY, Versions, is_endpoint_config
from modelfleet.store.registry import ServiceRecord, Store

__all__ = ["ROLLOUT_EVENT", "Rollouts", "router_counts"]

log = logging.getLogger("modelfleet.rollouts")

ROLLOUT_EVENT = "rollout"  # the events' kind


class _Cancelled(Exception):
    pass


class Rollouts:
    def __init__(
        self,
        store: Store,
        sync: Callable[[str], None],
        counts: Callable[[str], Counts | None],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self._sync = sync
        self._counts = counts
        self._sleep = sleep
        self._tasks: dict[str, asyncio.Task[None]] = {}  # endpoint -> its running rollout
        self._ids: dict[str, str] = {}  # endpoint -> the id of its running rollout

    def status(self) -> dict[str, Any]:
        """The rollouts running now: endpoint -> id."""
        return {e: self._ids[e] for e, t in self._tasks.items() if not t.done()}

    async def on_sync(self, endpoint: str) -> None:
        """Start the endpoint's requested rollout, if it has one this daemon has not started."""
        try:
            record = await asyncio.to_thread(self.store.get_service, endpoint)
        except NotFound:
            return
        if not is_endpoint_config(record.config):
            return
        rollout = record.config[ENDPOINT_KEY].get("rollout")
        if isinstance(rollout, dict) and rollout.get("status") == "requested":
            self._start(endpoint, rollout, resume=False)

    async def resume(self, owns: Callable[[ServiceRecord], bool]) -> None:
        """At daemon start: rollouts the last daemon left requested or running go on, a running
        one at the step it had reached."""
        for record in await asyncio.to_thread(self.store.list_services):
            if not is_endpoint_config(record.config) or not owns(record):
                continue
            rollout = record.config[ENDPOINT_KEY].get("rollout")
            if isinstance(rollout, dict) and rollout.get("status") in ("requested", "running"):
                self._start(record.name, rollout, resume=rollout["status"] == "running")

    def _start(self, endpoint: str, rollout: dict[str, Any], resume: bool) -> None:
        running = self._tasks.get(endpoint)
        if running is not None and not running.done():
            if self._ids.get(endpoint) == rollout.get("id"):
                return
            running.cancel()  # a newer request replaces it (the SDK refuses one while a rollout runs)
        self._ids[endpoint] = str(rollout.get("id"))
        self._tasks[endpoint] = asyncio.create_task(
            self._run(endpoint, dict(rollout), resume), name=f"rollout {endpoint}"
        )

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping: each ends as it may
                await task

    # -- one rollout ------------------------------------------------------------------------

    async def _run(self, endpoint: str, rollout: dict[str, Any], resume: bool = False) -> None:
        rid, version = str(rollout["id"]), str(rollout["version"])
        service = version_service_name(endpoint, version)
        try:
            spec = parse_rollout(rollout["spec"])
            before: Versions = rollout["before"]
            first = 0
            if resume:
                first = min(max(int(rollout.get("step_index") or 0), 0), len(spec.steps) - 1)
                current = await self._versions(endpoint)
                _check_unchanged(current, version, step_versions(current, version, spec.steps[first]))
                await self._event(endpoint, rid, "resumed", version, step=spec.steps[first], index=first)
            else:
                await self._status(endpoint, rid, "running")
                await self._event(endpoint, rid, "started", version, steps=list(spec.steps), interval_s=spec.interval_s)
            for index, step in enumerate(spec.steps):
                if index < first:
                    continue
                if resume and index == first:
                    expected = await self._versions(endpoint)  # the step's shares, as the last daemon set them
                else:
                    expected = await self._set(endpoint, rid, _at_step(version, step))
                    await self._status(endpoint, rid, "running", step_index=index)
                    await self._event(endpoint, rid, "step", version, step=step, index=index)
                holds = 0
                while True:
                    start = self._counts(service)
                    await self._sleep(spec.interval_s)
                    current = await self._versions(endpoint)
                    _check_unchanged(current, version, expected)
                    end = self._counts(service)
                    seen: Figures = figures(end.since(start)) if end is not None else figures(Counts({}, ()))
                    decision = decide(spec, seen, holds)
                    if decision.action == "rollback":
                        await self._set(endpoint, rid, lambda now: restored_versions(now, before))
                        await self._event(
                            endpoint, rid, "rolled_back", version, step=step, reason=decision.reason, **seen.to_json()
                        )
                        await self._status(endpoint, rid, "rolled_back", decision.reason)
                        return
                    if decision.action == "hold":
                        holds += 1
                        await self._event(endpoint, rid, "hold", version, step=step, reason=decision.reason)
                        continue
                    await self._event(
                        endpoint, rid, "passed", version, step=step, reason=decision.reason, **seen.to_json()
                    )
                    break
            await self._event(endpoint, rid, "completed", version, step=spec.steps[-1])
            await self._status(endpoint, rid, "completed")
        except _Cancelled as exc:
            await self._event(endpoint, rid, "cancelled", version, reason=str(exc))
            await self._status(endpoint, rid, "cancelled", str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a rollout must not take the daemon down; it says why it stopped
            log.exception("rollout of %s on %s failed", version, endpoint)
            reason = exc.message if isinstance(exc, ModelfleetError) else f"{type(exc).__name__}: {exc}"
            try:
                await self._event(endpoint, rid, "failed", version, reason=reason)
                await self._status(endpoint, rid, "failed", reason)
            except Exception:
                log.exception("could not record the failed rollout of %s on %s", version, endpoint)

    async def _versions(self, endpoint: str) -> Versions:
        try:
            record = await asyncio.to_thread(self.store.get_service, endpoint)
        except NotFound:
            raise _Cancelled("the endpoint was deleted") from None
        return dict(record.config[ENDPOINT_KEY]["versions"])

    async def _set(self, endpoint: str, rid: str, change: Callable[[Versions], Versions]) -> Versions:
        """Write the versions ``change`` makes of the stored ones and sync the endpoint; the
        versions as written."""

        def write() -> Versions:
            record = self.store.get_service(endpoint)
            ours = record.config[ENDPOINT_KEY].get("rollout") or {}
            if ours.get("id") != rid:
                raise _Cancelled("another rollout replaced this one")
            versions = change(dict(record.config[ENDPOINT_KEY]["versions"]))
            config = {**record.config, ENDPOINT_KEY: {**record.config[ENDPOINT_KEY], "versions": versions}}
            self.store.update_service_config(endpoint, config)
            return versions

        try:
            versions = await asyncio.to_thread(write)
        except NotFound:
            raise _Cancelled("the endpoint or the version was deleted") from None
        self._sync(endpoint)
        return versions

    async def _status(
        self, endpoint: str, rid: str, status: str, reason: str | None = None, step_index: int | None = None
    ) -> None:
        def write() -> None:
            try:
                record = self.store.get_service(endpoint)
            except NotFound:
                return
            rollout = record.config[ENDPOINT_KEY].get("rollout")
            if not isinstance(rollout, dict) or rollout.get("id") != rid:
                return
            rollout = {**rollout, "status": status, "reason": reason, "updated_at": time.time()}
            if step_index is not None:
                rollout["step_index"] = step_index
            self.store.update_service_config(
                endpoint, {**record.config, ENDPOINT_KEY: {**record.config[ENDPOINT_KEY], "rollout": rollout}}
            )

        await asyncio.to_thread(write)
        self._sync(endpoint)  # a config write makes the stored row Transitioning: the sync writes its state

    async def _event(self, endpoint: str, rid: str, event: str, version: str, **data: Any) -> None:
        log.info("rollout %s of %s on %s: %s %s", rid, version, endpoint, event, data)
        payload = {"event": event, "version": version, "rollout": rid, **data}
        with contextlib.suppress(NotFound):  # the endpoint was deleted meanwhile
            await asyncio.to_thread(self.store.add_event, endpoint, ROLLOUT_EVENT, payload)


def _check_unchanged(current: Mapping[str, Mapping[str, Any]], version: str, expected: Mapping[str, Any]) -> None:
    if version not in current:
        raise _Cancelled(f"version {version} was deleted")
    mine, wanted = current[version], expected[version]
    for key in ("traffic_percentile", "is_default"):
        if mine.get(key) != wanted.get(key):
            raise _Cancelled(
                f"version {version}'s {key} was changed by hand ({wanted.get(key)!r} -> {mine.get(key)!r}); "
                "the shares stay as they are"
            )


def router_counts(router: Router) -> dict[str, Counts]:
    """Every service's router counters now (answers by status, latency histogram slots)."""
    return {
        svc.route.name: Counts(dict(svc.metrics.codes), tuple(svc.metrics.buckets)) for svc in router.services.values()
    }


def _at_step(version: str, step: float) -> Callable[[Versions], Versions]:
    return lambda now: step_versions(now, version, step)
