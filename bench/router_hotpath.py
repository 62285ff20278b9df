"""The router's own Python cost per request, without sockets or other processes.

    python bench/router_hotpath.py [--requests 200000] [--clients 16 --limit 1]

Drives the real ``ClientConnection``/``Cycle``/``UpstreamConn`` objects with in-memory
transports: the benchmark request (key auth on) is fed to a client connection, the request
the router writes to its pooled upstream connection is checked, and the replica's answer (as
``modelfleet serve`` sends it, 9 headers) is fed back. It prints CPU µs per request for the
router's code alone (process time over many requests), which, unlike a wrk run on this
shared 2-core machine, does not move with the load of other processes or kernel costs. Use it
to compare hot-path changes; use bench/peers.py for end-to-end figures.

``--clients N --limit L``: N client connections (as wrk's) in front of L pooled upstream
connections, with ``replica_max_concurrent_requests`` = L, each answered client sending its next
request at once. With N > L most requests wait in the service's queue and are dispatched
when an answer frees the slot, as in bench/hop_ab.py's limit-1 run (the default, one client at
limit 64, never queues).

``--cold MIB``: before each read handed to the router, MIB of other memory (bytes and Python
objects) is touched, as the kernel, the replica and other processes do between two of the
router's callbacks in place; only the router's calls are timed (``perf_counter`` around each,
so use it on an otherwise quiet CPU). It shows how the router's cost grows with cold caches.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from modelfleet.router.auth import KeyAuth  # noqa: E402
from modelfleet.router.proxy import ClientConnection, Router, ServiceRoute, Upstream  # noqa: E402
from modelfleet.router.upstream import Pool, UpstreamConn  # noqa: E402

KEY = "bench-primary-key"
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
REQUEST = (
    b"POST /api/v1/service/bench/score HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Content-Type: application/json\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
)
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-ms-run-function-failed: False\r\n"
    b"x-ms-run-fn-exec-ms: 0.028\r\nx-ms-server-version: modelfleet/0.1.0\r\n"
    b"x-request-id: b1676917-35d3-49a2-840a-00007bb31736\r\n"
    b"x-ms-request-id: b1676917-35d3-49a2-840a-00007bb31736\r\nContent-Length: 4\r\n"
    b"Date: Wed, 25 Nov 2026 18:01:59 GMT\r\n\r\n[55]"
)


class MemoryTransport(asyncio.Transport):
    """Keeps what is written; reading and closing are no-ops."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.out.append(bytes(data))

    def writelines(self, parts: Any) -> None:
        self.out.append(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=1, help="client connections (> --limit: requests queue)")
    ap.add_argument("--limit", type=int, default=64, help="replica_max_concurrent_requests (and upstream connections)")
    ap.add_argument("--cold", type=float, default=0.0, metavar="MIB", help="touch this much memory before each read")
    args = ap.parse_args()
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    pool = Pool()
    router = Router(pool=pool)
    router.loop = loop  # the loop is never run: timers are only armed, and cancelled at the end
    router.date_line = b"date: Wed, 25 Nov 2026 18:01:59 GMT\r\n"
    router.set_service(ServiceRoute("bench", auth=KeyAuth(KEY), max_concurrent=args.limit, max_wait_s=5))
    router.set_replicas("bench", [Upstream("bench-0", "127.0.0.1", 5001)])
    ups: list[tuple[UpstreamConn, MemoryTransport]] = []
    for _ in range(min(args.limit, args.clients)):
        up = UpstreamConn(pool, ("127.0.0.1", 5001))
        up_t = MemoryTransport()
        up.connection_made(up_t)
        pool.put(up, loop.time())
        ups.append((up, up_t))
    clients: list[tuple[ClientConnection, MemoryTransport]] = []
    for _ in range(args.clients):
        client = ClientConnection(router)
        client_t = MemoryTransport()
        client.connection_made(client_t)
        clients.append((client, client_t))
    if args.clients == 1:

        def one() -> None:
            client.data_received(REQUEST)
            up.data_received(ANSWER)

    else:
        # Every client has one request in the router; an answer frees a slot, the next waiter
        # goes out on that connection, and the answered client sends its next request.
        for client, _ in clients:
            client.data_received(REQUEST)
        turn = [0]

        def one() -> None:
            up_conn = ups[turn[0] % len(ups)][0]
            turn[0] += 1
            done = up_conn.exchange.conn  # type: ignore[union-attr]
            up_conn.data_received(ANSWER)
            done.data_received(REQUEST)

    spent = [0.0]  # --cold: the router's own time
    if args.cold:
        other = bytearray(int(args.cold * 2**20))
        ones = b"\x01" * len(other[::64])
        objects = [object() for _ in range(int(args.cold * 20_000))]  # about as many bytes again
        clock = time.perf_counter

        def feed(target: Any, data: bytes) -> None:
            other[::64] = ones  # a write to every cache line
            for _ in objects:
                pass
            t = clock()
            target(data)
            spent[0] += clock() - t

        def one() -> None:
            up_conn = ups[turn[0] % len(ups)][0]
            turn[0] += 1
            done = up_conn.exchange.conn  # type: ignore[union-attr]
            feed(up_conn.data_received, ANSWER)
            feed(done.data_received, REQUEST)

        if args.clients == 1:
            client.data_received(REQUEST)  # one() answers first, then sends the next
            turn = [0]

    one()
    up_t, client_t = ups[0][1], clients[0][1]
    sent, answer = up_t.out[-1], client_t.out[-1]
    assert sent.startswith(b"POST /score HTTP/1.1\r\n") and sent.endswith(BODY), sent
    assert b"authorization" not in sent.lower(), sent
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\n[55]"), answer
    best = float("inf")
    for _ in range(args.rounds):
        for _, t in ups + clients:
            t.out.clear()
        gc.collect()
        spent[0] = 0.0
        t0 = time.process_time()
        for _ in range(args.requests):
            one()
        best = min(best, (spent[0] if args.cold else time.process_time() - t0) / args.requests)
        answered = sum(len(t.out) for _, t in clients)
        assert answered >= args.requests, f"{args.requests - answered} requests were not answered"
    shape = f"{args.clients} client{'s' if args.clients > 1 else ''}, limit {args.limit}"
    if args.cold:
        shape += f"; {args.cold:g} MiB touched before each read, router calls timed"
    print(f"router hot path: {best * 1e6:.2f} µs CPU per request (best of {args.rounds} × {args.requests}; {shape}), "
          f"Python {sys.version.split()[0]}, {type(loop).__module__}")  # fmt: skip
    for svc in router.services.values():
        for handle in (svc.timer, svc.deadline_timer):
            if handle is not None:
                handle.cancel()
    if router._tick_handle is not None:
        router._tick_handle.cancel()
    loop.close()


if __name__ == "__main__":
    main()
