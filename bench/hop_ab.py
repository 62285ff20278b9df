"""The router's hop, A against B in one run: a committed revision's code against the working tree's.

    python bench/hop_ab.py [--base-rev HEAD] [--seconds 4] [--rounds 4] [--connections 16] [--limit 1]

Each side is a bare router (``proxy.Router``, uvloop, one service with key auth on and
``replica_max_concurrent_requests`` = ``--limit``) in front of its own ``modelfleet serve``
replica on a Unix domain socket, as the local cluster places them (no daemon: only the hop is
measured). Side A runs the code of ``--base-rev`` (``git archive`` into a temporary folder,
replica included, so a change under ``wire/`` is compared whole), side B the working tree's.
With ``--a-tcp`` side A reaches its replica over TCP instead (with ``--base-rev`` naming the
working tree's commit: what the Unix socket saves). Where Debian's haproxy is installed, a
third row: HAProxy with ``maxconn 1`` and ``timeout queue 500ms`` in front of a third replica
(TCP), the issue's reference. ``--floor`` adds a row for the least a Python proxy on uvloop
and httptools does at limit 1 (``serve_floor``: frames, queues and relays bytes, nothing more),
in front of a replica of its own on a Unix socket. ``--least-router`` adds a row for the floor
plus what the contract needs of each request on the common path (``serve_least_router``: headers
into Python, routing, the key check, request ids, the rewritten head, a FIFO queue, the answer's
head rebuilt, counters), the least any router in Python on this loop could cost.

Placement: every router, replica and HAProxy on CPU 1 (``taskset -c 1``), all started
together and idle while another is measured; ``wrk -t1`` on CPU 0. ``--replicas-cpu 0`` moves
every side's replica to CPU 0 (beside wrk) once started, so that no proxy takes turns with its
replica on one CPU: what that alternation costs each proxy. Rounds alternate the
order (A B H, then H B A, ...); each row reports its median round (and all of them), the
router's (or HAProxy's) CPU per request and the whole side's (proxy and replica), from
/proc over wrk's run (the proxy's split into user and system time). Prints B ÷ A and
B ÷ HAProxy. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from _common import cpu_user_system, free_port, loadavg, machine
from peers import (
    APPS,
    Running,
    measure_once,
    start,
    stop_tree,
    system_haproxy,
    wait_answer,
    wrk,
    wrk_script,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEY = "bench-primary-key"


def serve_router(sock: str, limit: int) -> None:
    """Child mode: a bare router (whichever ``modelfleet`` PYTHONPATH names) in front of the
    replica listening on ``sock`` (``tcp:PORT``: on 127.0.0.1); prints its port."""
    import uvloop

    uvloop.install()
    from modelfleet.router.auth import KeyAuth
    from modelfleet.router.proxy import Router, ServiceRoute, Upstream

    async def main() -> None:
        router = Router()
        port = await router.start("127.0.0.1", 0)
        router.set_service(ServiceRoute("bench", auth=KeyAuth(KEY), max_concurrent=limit, max_wait_s=5))
        if sock.startswith("tcp:"):
            upstream = Upstream("bench-0", "127.0.0.1", int(sock[4:]))
        else:
            upstream = Upstream("bench-0", "127.0.0.1", 0, unix_path=sock)
        router.set_replicas("bench", [upstream])
        print("PORT", port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _open_replica(sock: str, protocol: Callable[[], asyncio.Protocol]) -> Any:
    """A connection to the replica on ``sock`` (``tcp:PORT``: on 127.0.0.1); its protocol object."""
    loop = asyncio.get_running_loop()
    if sock.startswith("tcp:"):
        _, up = await loop.create_connection(protocol, "127.0.0.1", int(sock[4:]))
    else:
        _, up = await loop.create_unix_connection(protocol, sock)
    return up


def _serve_clients(client: Callable[[], asyncio.Protocol], connect: Callable[[], Awaitable[None]]) -> None:
    """Child modes' main: connect to the replica, listen on a free port, print it, serve."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await connect()
        server = await loop.create_server(client, "127.0.0.1", 0)
        print("PORT", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class _OneSlot:
    """The child modes' replica: one keep-alive connection, one request on it at a time, the
    rest waiting in a FIFO. An entry is (client protocol, request bytes, anything else)."""

    def __init__(self, sock: str, protocol: Callable[[], asyncio.Protocol]) -> None:
        self.sock, self.protocol = sock, protocol
        self.queue: deque[tuple[Any, ...]] = deque()
        self.up: Any = None
        self.busy: tuple[Any, ...] | None = None  # the entry being served

    def push(self, entry: tuple[Any, ...]) -> None:
        self.queue.append(entry)
        if self.busy is None:
            self.next()

    def next(self) -> None:
        """The replica answered (or is connected): send the next request, if any."""
        if not self.queue or self.up is None:
            self.busy = None
            return
        self.busy = self.queue.popleft()
        self.up.transport.write(self.busy[1])

    async def connect(self) -> None:
        self.up = await _open_replica(self.sock, self.protocol)
        self.up.slot = self
        if self.busy is None:
            self.next()

    def lost(self) -> None:
        """The replica closed the connection (a "Connection: close" request): open a new one."""
        self.up = None
        asyncio.ensure_future(self.connect())


class _Upstream(asyncio.Protocol):
    """The child modes' connection to the replica (its ``_OneSlot`` sets ``slot``)."""

    slot: _OneSlot

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.lost()


class _Downstream(asyncio.Protocol):
    """A client's connection in the child modes: its transport and request parser."""

    def connection_made(self, transport: Any) -> None:
        import httptools

        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.began()

    def began(self) -> None:
        """Per-connection state of the mode (nothing here)."""


def serve_floor(sock: str) -> None:
    """Child mode (``--floor``): the least a Python proxy on uvloop and httptools does for a
    request at limit 1, for reference: requests are framed with httptools and queued, one at
    a time goes to the replica byte for byte, the answer is framed with httptools and goes
    back byte for byte. No auth, request ids, header rewriting, timeouts or metrics."""
    import httptools
    import uvloop

    uvloop.install()

    class Up(_Upstream):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.buf: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.buf.append(data)
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            answer, self.buf = b"".join(self.buf), []
            client = slot.busy[0].transport  # type: ignore[index]
            if not client.is_closing():  # (a client that left gets nothing)
                client.write(answer)
            slot.next()

    class Client(_Downstream):
        def began(self) -> None:
            self.buf: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.buf.append(data)
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            request, self.buf = b"".join(self.buf), []
            slot.push((self, request))

    slot = _OneSlot(sock, Up)
    _serve_clients(Client, slot.connect)


def serve_least_router(sock: str) -> None:
    """Child mode (``--least-router``): the floor plus what the contract needs of every request
    on the common path at limit 1 with key auth, done the cheapest way: each header into Python
    (httptools callbacks), the path routed, the key checked (a 401 answered), request ids made
    (``ids.RequestIds``), the head rewritten for the replica (ids added, hop-by-hop and id headers
    dropped), a FIFO queue in front of the replica's one slot, the answer's head rebuilt without
    hop-by-hop headers and written with the body in one call, and the answer counted (status
    and latency bucket). Left out, as the floor does: timeouts, retries, busy replay, streaming
    flow control, pipelining, limits on heads, metrics export. A bound from below for any
    router in Python on this loop, not a router."""
    from bisect import bisect_left
    from time import perf_counter

    import httptools
    import uvloop

    from modelfleet.router.ids import RequestIds
    from modelfleet.telemetry.counters import LATENCY_BUCKETS

    uvloop.install()
    keys = {b"Bearer " + KEY.encode()}
    route = {b"/api/v1/service/bench/score": b"/score"}
    dropped = {b"host", b"connection", b"keep-alive", b"authorization", b"content-length", b"x-ms-request-id",
               b"x-request-id", b"x-ms-client-request-id", b"transfer-encoding", b"te", b"upgrade"}  # fmt: skip
    hop = {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"x-ms-request-id",
        b"x-request-id",
        b"x-ms-client-request-id",
    }  # fmt: skip (the ids go back as the router made them)
    ids = RequestIds()
    codes: dict[int, int] = {}
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    canned_401 = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"
    canned_404 = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"

    class Up(_Upstream):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.lines: list[bytes] = []
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_status(self, status: bytes) -> None:
            self.lines = [b"HTTP/1.1 %d %s\r\n" % (self.parser.get_status_code(), status)]

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() not in hop:
                self.lines.append(name + b": " + value + b"\r\n")

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            client, _, rids, started = slot.busy  # type: ignore[misc]
            self.lines.append(rids + b"\r\n")
            self.lines.extend(self.body)
            self.body = []
            if not client.transport.is_closing():
                client.transport.writelines(self.lines)
            status = self.parser.get_status_code()
            codes[status] = codes.get(status, 0) + 1
            buckets[bisect_left(LATENCY_BUCKETS, perf_counter() - started)] += 1
            slot.next()

    class Client(_Downstream):
        def began(self) -> None:
            self.url = b""
            self.fields: list[bytes] = []
            self.auth: bytes | None = None
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_header(self, name: bytes, value: bytes) -> None:
            lower = name.lower()
            if lower == b"authorization":
                self.auth = value
            elif lower not in dropped:
                self.fields.append(name + b": " + value + b"\r\n")

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            started = perf_counter()
            target = route.get(self.url)
            fields, body, auth = self.fields, self.body, self.auth
            self.fields, self.body, self.auth = [], [], None
            if target is None:
                self.transport.write(canned_404)
                return
            if auth not in keys:
                self.transport.write(canned_401)
                return
            method = self.parser.get_method()
            rids = ids.fresh_lines()
            head = b"%s %s HTTP/1.1\r\n%s%scontent-length: %d\r\n\r\n" % (
                method,
                target,
                b"".join(fields),
                rids,
                sum(map(len, body)),
            )
            slot.push((self, head + b"".join(body), rids, started))

    slot = _OneSlot(sock, Up)
    _serve_clients(Client, slot.connect)


@contextlib.contextmanager
def side(tmp: Path, name: str, src: Path, limit: int, tcp: bool = False, mode: str = "router") -> Iterator[Running]:
    """A replica on a Unix socket (on 127.0.0.1 with ``tcp``) and a router in front of it,
    both running ``src``'s code."""
    env = {"PYTHONPATH": str(src)}
    app = tmp / f"app-{name}"
    app.mkdir()
    shutil.copy(APPS / "score.py", app / "score.py")
    sock = str(tmp / f"{name}.sock")
    port = free_port()
    listen = ["--port", str(port)] if tcp else ["--unix-socket", sock]
    replica = start(
        [sys.executable, "-m", "modelfleet", "serve", "--entry_script", "score.py", *listen],
        tmp / f"replica-{name}.log",
        cwd=app,
        env=env,
    )
    router: subprocess.Popen[Any] | None = None
    try:
        if tcp:
            wait_answer(f"http://127.0.0.1:{port}/score", {}, replica, 60)
            sock = f"tcp:{port}"
        deadline = time.monotonic() + 60
        while not tcp and not os.path.exists(sock):
            if replica.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"replica {name} did not listen on {sock}; see {tmp}/replica-{name}.log")
            time.sleep(0.05)
        with open(tmp / f"router-{name}.log", "ab") as log:
            router = subprocess.Popen(
                ["taskset", "-c", "1", sys.executable, __file__, f"--serve-{mode}", sock] + ["--limit", str(limit)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, **env},
                start_new_session=True,
            )
        assert router.stdout is not None
        line = router.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"router {name} did not start; see {tmp}/router-{name}.log")
        path = "/score" if mode == "floor" else "/api/v1/service/bench/score"  # the floor relays the path as it is
        url = f"http://127.0.0.1:{int(line.split()[1])}{path}"
        headers = {"Authorization": f"Bearer {KEY}"}
        wait_answer(url, headers, router, 30)
        rpid, ppid = router.pid, replica.pid
        yield Running(url, headers, cpu_pids=lambda: [rpid], cpu_label="router", sut_pids=lambda: [rpid, ppid])
    finally:
        if router is not None:
            stop_tree(router, grace=5)
            if router.stdout is not None:
                router.stdout.close()
        stop_tree(replica)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-rev", default="HEAD", help="side A's code (a git revision); side B is the working tree")
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--limit", type=int, default=1, help="replica_max_concurrent_requests of both routers")
    ap.add_argument("--no-haproxy", action="store_true")
    ap.add_argument("--a-tcp", action="store_true", help="side A's router reaches its replica over TCP (Unix vs TCP)")
    ap.add_argument("--floor", action="store_true", help="also a row for the least a Python proxy does (serve_floor)")
    ap.add_argument(
        "--least-router",
        action="store_true",
        help="also a row for the least a Python router does per request (serve_least_router)",
    )
    ap.add_argument("--replicas-cpu", help="move every replica (all its threads) to this CPU once started")
    ap.add_argument("--serve-router", metavar="SOCKET", help=argparse.SUPPRESS)
    ap.add_argument("--serve-floor", metavar="SOCKET", help=argparse.SUPPRESS)
    ap.add_argument("--serve-least-router", metavar="SOCKET", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_router:
        serve_router(args.serve_router, args.limit)
        return 0
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0
    if args.serve_least_router:
        serve_least_router(args.serve_least_router)
        return 0
    for tool in ("wrk", "taskset", "git"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is needed (bash bench/setup_peers.sh)", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="mf-hop-"))
    load_before = loadavg()
    try:
        base = tmp / "base"
        base.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.base_rev, "src"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        rows: dict[str, list[dict[str, Any]]] = {}
        with contextlib.ExitStack() as stack:
            running = {
                "A": stack.enter_context(side(tmp, "A", base / "src", args.limit, tcp=args.a_tcp)),
                "B": stack.enter_context(side(tmp, "B", ROOT / "src", args.limit)),
            }
            if args.floor:
                running["floor"] = stack.enter_context(side(tmp, "floor", ROOT / "src", 1, mode="floor"))
            if args.least_router:
                running["least"] = stack.enter_context(side(tmp, "least", ROOT / "src", 1, mode="least-router"))
            haproxy_note = ""
            if not args.no_haproxy:
                try:
                    running["HAProxy"] = stack.enter_context(system_haproxy(tmp, args))
                except FileNotFoundError as exc:
                    haproxy_note = f"HAProxy row skipped: {exc}"
            if args.replicas_cpu is not None:
                for run in running.values():
                    proxies = set(run.cpu_pids())
                    for pid in run.sut_pids() if run.sut_pids is not None else []:
                        if pid not in proxies:
                            subprocess.run(["taskset", "-a", "-p", "-c", args.replicas_cpu, str(pid)], check=True,
                                           stdout=subprocess.DEVNULL)  # fmt: skip
            scripts = {name: wrk_script(tmp, run.headers) for name, run in running.items()}
            for name, run in running.items():
                wrk(run.url, scripts[name], args.connections, 1)  # warm-up
            order = list(running)
            for k in range(args.rounds):
                print(f"bench: round {k + 1} of {args.rounds}", file=sys.stderr, flush=True)
                for name in order if k % 2 == 0 else order[::-1]:
                    proxy = running[name].cpu_pids()[0]
                    u0, s0 = cpu_user_system(proxy)
                    r = measure_once(running[name], scripts[name], args.connections, args.seconds)
                    u1, s1 = cpu_user_system(proxy)
                    n = r["requests"] or 1
                    r["user_us"], r["sys_us"] = (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6
                    rows.setdefault(name, []).append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    print(f"\n# router hop A/B, {time.strftime('%Y-%m-%d %H:%M')}; {machine()}")
    a_to = "TCP" if args.a_tcp else "a Unix socket"
    print(f"# A = {args.base_rev}, B = working tree; limit {args.limit}, key auth on")
    print(f"# A's replica on {a_to}, B's on a Unix socket, HAProxy's on TCP")
    where = "routers, replicas, HAProxy on CPU 1" if args.replicas_cpu is None else (
        f"routers, HAProxy on CPU 1, replicas on CPU {args.replicas_cpu}")  # fmt: skip
    print(f"# {where}; wrk -t1 on CPU 0, {args.connections} connections,")
    print(f"# {args.seconds} s × {args.rounds} alternated rounds, medians")
    print(f"# load average {load_before} before, {loadavg()} after")
    if haproxy_note:
        print(f"# {haproxy_note}")
    head = f"{'side':8} {'req/s':>8} {'proxy µs/req':>13} {'user':>6} {'system':>7} {'all µs/req':>11}"
    print(f"{head} {'errors':>7}  req/s per round")
    for name in rows:
        errors = sum(r["errors"] for r in rows[name])
        seen = "/".join(f"{r['rps']:.0f}" for r in rows[name])
        split = f"{med(name, 'user_us'):6.1f} {med(name, 'sys_us'):7.1f}"
        figures = f"{med(name, 'rps'):8.0f} {med(name, 'cpu_us'):13.1f} {split} {med(name, 'sut_us'):11.1f}"
        print(f"{name:8} {figures} {errors:7d}  {seen}")
    print("\nratios (medians)")
    pairs = [("B", "A")] + ([("B", "HAProxy"), ("A", "HAProxy")] if "HAProxy" in rows else [])
    pairs += [("B", "floor")] + ([("floor", "HAProxy")] if "HAProxy" in rows else []) if "floor" in rows else []
    pairs += [("B", "least")] + ([("least", "HAProxy")] if "HAProxy" in rows else []) if "least" in rows else []
    for x, y in pairs:
        print(
            f"  {x} ÷ {y}: req/s {med(x, 'rps') / med(y, 'rps'):.3f}, proxy CPU/req "
            f"{med(x, 'cpu_us') / med(y, 'cpu_us'):.3f}, all CPU/req {med(x, 'sut_us') / med(y, 'sut_us'):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
