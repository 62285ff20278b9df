"""One router worker process (``router_workers.py`` starts it; the protocol is told there).

    python -m modelfleet.control.router_worker --socket PATH --index N

It connects to the daemon at ``PATH``, builds its ``FleetRouter`` from the settings the daemon
sends, applies the table calls that follow, listens on the router port (SO_REUSEPORT) when told
to, reports its figures about every second, and exits when told to stop or when the daemon's
connection ends (a daemon that died leaves no worker behind).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from modelfleet.control.router_fleet import (
    REPORT_S,
    FleetRouter,
    TraceBuffer,
    metrics_delta,
    metrics_snapshot,
    take_auth_failures,
)
from modelfleet.router.auth import TokenAuth
from modelfleet.targets.kubernetes.router_scale import LoadProbe, RouterScaleState

log = logging.getLogger("modelfleet.router.worker")

LINE_LIMIT = 64 * 1024 * 1024
PROBE_S = 0.25  # how often the loop's lag is sampled (router_scale.LoadProbe)
RETIRE_S = 30.0  # a retiring worker waits this long at most for its requests in flight


class _Worker:
    def __init__(self, index: int, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.writer = writer
        self.router: FleetRouter | None = None
        self.traces = TraceBuffer()  # the router's tracer: each report takes it to the daemon
        self.tokens: dict[str, TokenAuth] = {}
        self._sent: dict[str, dict[str, Any]] = {}  # service -> counters as last reported
        self._tasks: set[asyncio.Task[None]] = set()
        self.load = RouterScaleState()  # loop lag and CPU since the last report

    def send(self, msg: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def on_replica_failed(self, service: str, replica_id: str) -> None:
        self.send({"op": "replica_failed", "service": service, "replica": replica_id})

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, msg: dict[str, Any]) -> bool:
        """Apply one message; False when told to stop."""
        op = msg["op"]
        if op == "config":
            self.router = FleetRouter(
                self.on_replica_failed, workers=msg["workers"], index=self.index, slots=msg["slots"], **msg["limits"]
            )
            self.router.loop = asyncio.get_running_loop()  # the table's clock, before it listens
            self.router.tracer = self.traces  # used for services with trace=True, as in the daemon
            return True
        router = self.router
        assert router is not None, "the daemon sends config first"
        if op == "listen":
            await self._listen(router, msg)
        elif op == "drain":
            self.spawn(self._drain(router, msg))
        elif op == "retire":
            self.spawn(self._retire(router))
        elif op == "stop":
            return False
        else:
            try:
                router.apply_plain(msg, self.tokens)
            except Exception:
                log.exception("router worker %d: table call %s not applied", self.index, op)
        return True

    async def _listen(self, router: FleetRouter, msg: dict[str, Any]) -> None:
        ssl = None
        if msg.get("cert_file") and msg.get("key_file"):
            from modelfleet.control.tls import server_context

            ssl = server_context(Path(msg["cert_file"]), Path(msg["key_file"]))
        await router.start(msg["host"], msg["port"], ssl=ssl, reuse_port=True)
        if msg.get("http_port"):
            await router.start(msg["host"], msg["http_port"], reuse_port=True)
        self.send({"op": "ready"})
        self.spawn(self._report(router))
        self.spawn(self._probe())

    async def _drain(self, router: FleetRouter, msg: dict[str, Any]) -> None:
        ok = await router.drain(msg["service"], msg["ids"], msg["timeout_s"])
        self.send({"op": "drained", "id": msg["id"], "ok": ok})

    async def _retire(self, router: FleetRouter) -> None:
        """The fleet shrinks: take no new connection, finish what is in flight (up to
        ``RETIRE_S``), then end (the daemon's connection closes; ``run`` stops the router)."""
        router.stop_listening()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETIRE_S
        while loop.time() < deadline and any(
            s.dispatch.in_flight or s.dispatch.queued for s in router.services.values()
        ):
            await asyncio.sleep(0.05)
        self.send(self.report(router))  # its last counts
        log.info("router worker %d retiring", self.index)
        self.writer.close()

    async def _probe(self) -> None:
        probe = LoadProbe()
        while True:
            probe.expect(PROBE_S)
            await asyncio.sleep(PROBE_S)
            probe.sample(self.load)

    async def _report(self, router: FleetRouter) -> None:
        while True:
            await asyncio.sleep(REPORT_S)
            self.send(self.report(router))

    def report(self, router: FleetRouter) -> dict[str, Any]:
        """Its stats now and its counters, 401s by address and request timings since the last
        report (``router_fleet``'s docstring says how the daemon adds them)."""
        deltas: dict[str, Any] = {}
        for svc in router.services.values():
            name = svc.route.name
            now = metrics_snapshot(svc.metrics)
            delta = metrics_delta(self._sent.get(name), now)
            self._sent[name] = now
            if delta is not None:
                deltas[name] = delta
        for gone in set(self._sent) - {s.route.name for s in router.services.values()} - {""}:
            del self._sent[gone]
        now = metrics_snapshot(router.unrouted)
        unrouted = metrics_delta(self._sent.get(""), now)
        self._sent[""] = now
        samples = list(self.load.samples)
        self.load.samples.clear()
        lag = sum(s[1] for s in samples) / len(samples) if samples else None
        cpu = sum(s[2] for s in samples) / len(samples) if samples else None
        traces, trace_dropped = self.traces.take()
        out: dict[str, Any] = {"op": "stats", "stats": router.own_stats(), "metrics": deltas, "unrouted": unrouted}
        out |= {"auth": take_auth_failures(router), "traces": traces, "trace_dropped": trace_dropped}
        return {**out, "lag_ms": lag, "cpu": cpu}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.router is not None and self.router.loop is not None and self.router._servers:
            await self.router.stop()


async def run(socket_path: str, index: int) -> None:
    try:
        reader, writer = await asyncio.open_unix_connection(socket_path, limit=LINE_LIMIT)
    except OSError as exc:  # the daemon is stopping, or gone
        log.warning("router worker %d: no daemon at %s (%s); exiting", index, socket_path, exc)
        return
    worker = _Worker(index, writer)
    worker.send({"op": "hello", "index": index, "pid": os.getpid()})
    try:
        while line := await reader.readline():
            if not await worker.handle(json.loads(line)):
                break
    except ConnectionError:
        pass
    finally:
        await worker.close()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    log.info("router worker %d stopped", index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelfleet-router-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="the daemon's Unix socket for its router workers")
    parser.add_argument("--index", required=True, type=int, help="this worker's number (1..N-1; the daemon is 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s[w{args.index}]: %(message)s")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(run(args.socket, args.index))
    return 0


if __name__ == "__main__":
    sys.exit(main())
