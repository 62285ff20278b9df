"""The v1 HTTP adapter: asyncio + httptools (uvloop when importable), the way uvicorn's
httptools protocol is written.

Routes, as azmlinfsrv answers them:

- ``GET /`` liveness ("Healthy"), ``GET /swagger.json[?version=2|3|3.1]``, ``OPTIONS`` on both.
- ``POST /score`` and ``GET /score`` (query string to run()), ``OPTIONS /score``; ``HEAD``
  wherever GET is allowed. Other methods: 405; other paths: 404 (both without request ids, as v1).
- modelfleet's own: 503 "busy" with ``x-modelfleet-busy: 1`` when ``--max-concurrent`` requests
  are running, and 413 for bodies over the limit, counted while reading.

``App`` holds what lives as long as the process: config, the loaded entry, swagger bytes,
canned replies, the worker pool and the in-flight count; its handlers run on the loop, except
``_run_job`` which runs on a worker thread (and writes its answer from there, see
``protocol.py``). Connections and requests are in ``protocol.py``. run() executes on worker
threads; liveness and swagger are answered on the loop, so ``GET /`` answers while run() is busy.

Shutdown (SIGTERM/SIGINT): stop accepting, close idle connections, let in-flight requests finish
(answering them with ``Connection: close``), stop the workers, return 0. A second signal stops
waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import hmac
import io
import itertools
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from email.utils import formatdate
from urllib.parse import parse_qsl

from modelfleet.errors import Overloaded, PayloadTooLarge
from modelfleet.replica import compat
from modelfleet.replica.config import ReplicaConfig
from modelfleet.replica.entry import (
    STYLE_RAWHTTP,
    BadInput,
    Entry,
    InitFailed,
    RunFailed,
    ScriptError,
    UnsupportedInput,
    UnsupportedMethod,
    load_entry,
)
from modelfleet.replica.limits import Limits
from modelfleet.replica.listen import ListenError, listen_unix
from modelfleet.replica.protocol import HttpProtocol, Request
from modelfleet.replica.responses import (
    HTML,
    MSG_INTERNAL,
    MSG_NOT_ALLOWED,
    MSG_NOT_FOUND,
    MSG_RUN_FAILED,
    Cors,
    Reply,
    StreamedReply,
    encode_result,
    header_line,
    json_message,
    json_reply,
)
from modelfleet.replica.stream import ChunkSender
from modelfleet.replica.swagger import SwaggerDocs
from modelfleet.replica.workers import QUEUED, RUNNING, Job, ScoringInterrupted, WorkerPool
from modelfleet.telemetry import collect
from modelfleet.telemetry.logfiles import RotatingFile

logger = logging.getLogger("modelfleet.replica")

EXIT_OK = 0
EXIT_BAD_SETTINGS = 2  # as for bad flags: the address cannot be listened on
EXIT_INIT_FAILED = 3  # gunicorn's boot-error status, which azmlinfsrv also uses
HEADER_LIMIT = 100  # longest request id the reference accepts
SECRET_HEADER = b"x-modelfleet-replica-secret"  # the router's proof (MODELFLEET_REPLICA_SECRET)

_INTERESTING = {
    b"x-request-id": 0,
    b"x-ms-request-id": 1,
    b"x-ms-client-request-id": 2,
    b"traceid": 3,
    b"origin": 4,
    b"access-control-request-method": 5,
    b"access-control-request-headers": 6,
}


# One JSON object per answer (App.write_access); method is a token httptools has checked.
_ACCESS_LINE = (
    '{"time": "%s.%03dZ", "level": "INFO", "logger": "modelfleet.replica.access", "request_id": %s, '
    '"method": "%s", "route": %s, "status": %d, "duration_ms": %.3f}'
)
_JSON_OK_HEADERS = b"Content-Type: application/json\r\nx-ms-run-function-failed: False\r\n"


class RequestIds:
    """Request ids for requests that bring none: UUID-shaped, a random per-process prefix and a
    counter (a tenth of uuid4's cost; unique within the process, random across processes)."""

    def __init__(self) -> None:
        h = uuid.uuid4().hex
        self.prefix = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-"
        self.counter = itertools.count(int(h[20:], 16) & 0xFFFFFFFF)

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFF:012x}"


class App:
    """Process-wide state and the request handlers (all on the loop thread, except _run_job)."""

    def __init__(self, config: ReplicaConfig, entry: Entry, swagger: SwaggerDocs) -> None:
        self.config = config
        self.entry = entry
        self.swagger = swagger
        self.rawhttp = entry.plan.style == STYLE_RAWHTTP
        self.cors = Cors(config.cors_origins) if config.cors_origins else None
        self.pool: WorkerPool | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # /score requests admitted and whose run() has not returned. Workers release their slot
        # before writing the answer, so a client that sends its next request as soon as it has
        # the answer never finds the slot still taken; hence the lock.
        self.in_flight = 0
        self.slots = threading.Lock()
        self.connections: set[HttpProtocol] = set()
        self.stopping = False
        self.access_log = config.access_log
        # Access lines: a tuple per answer on the loop, formatted and written once a second
        # by the tick (STYLE item 6: nothing formatted per request).
        self.access: list[tuple[float, str, str, int, float, bytes]] = []
        self.sink: collect.DataSink | None = None  # model data collection (ReplicaServer.load)
        self.timeout_s = config.scoring_timeout_ms / 1000
        self.date = b""
        self.refresh_date()
        self.new_request_id = RequestIds()
        # Workers write their answers themselves where the platform allows (protocol.py).
        self.direct_write = sys.platform != "win32"

        version = config.server_version
        self.server_header = header_line("x-ms-server-version", version) if version else b""
        # Canned replies, built once (STYLE item 6).
        self.not_found = json_reply(404, MSG_NOT_FOUND)
        self.not_allowed = json_reply(405, MSG_NOT_ALLOWED)
        self.method_not_allowed = json_reply(405, "Method not allowed")
        self.run_failed = json_reply(500, MSG_RUN_FAILED, run_failed=True)
        self.internal = json_reply(500, MSG_INTERNAL)
        self.timeout = json_reply(500, f"Scoring timeout after {config.scoring_timeout_ms} ms", run_failed=True)
        limit_mb = config.max_body_bytes / (1024 * 1024)
        self.too_large = Reply(
            413,
            b"Content-Type: application/json\r\n",
            PayloadTooLarge(
                f"request body is larger than the replica's limit of {limit_mb:g} MB "
                f"({config.max_body_bytes} bytes); send a smaller payload"
            ).to_body(),
        )
        self.busy = Reply(
            503,
            b"Content-Type: application/json\r\nx-modelfleet-busy: 1\r\n",
            Overloaded(
                f"replica busy: {config.max_concurrent} of {config.max_concurrent} requests running "
                "(--max-concurrent); retry or send to another replica"
            ).to_body(),
        )
        self.limits = Limits(config)
        # Where TCP is needed (Kubernetes pods), only the router, which adds this secret, may call.
        self.secret = config.secret.encode() if config.secret is not None else None
        self.forbidden = Reply(
            403,
            b"Content-Type: application/json\r\n",
            json_message(
                "this replica answers only its router: the x-modelfleet-replica-secret header is missing or wrong"
            ),
        )
        self.healthy = Reply(200, b"Content-Type: text/html; charset=utf-8\r\n", b"Healthy")
        self.options_reply = Reply(200, b"Content-Type: " + HTML + b"\r\nAllow: GET, HEAD, OPTIONS\r\n", b"")
        self.score_options = Reply(200, b"Content-Type: " + HTML + b"\r\nx-ms-run-function-failed: False\r\n", b"")

    def refresh_date(self) -> None:
        self.date = b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"

    def log_access(self, req: Request, reply: Reply) -> None:
        self.access.append((time.time(), req.method, req.path, reply.status, time.perf_counter() - req.t0, req.ids))

    def write_access(self) -> None:
        """One JSON line per answer since the last call: request id, route (the path: no query
        string, no body, no header), status, duration. Never a key: the router strips those."""
        lines, self.access = self.access, []
        if not lines:
            return
        out = []
        dumps = json.dumps
        second, stamp = -1, ""
        for when, method, path, status, seconds, ids in lines:
            if int(when) != second:
                second = int(when)
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            out.append(
                _ACCESS_LINE
                % (stamp, int(when % 1 * 1000), dumps(collect._rid(ids)), method, dumps(path), status, seconds * 1000)
            )
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write("\n".join(out) + "\n")
            sys.stderr.flush()

    # ---- per request, on the loop -------------------------------------------------------

    def handle(self, conn: HttpProtocol, req: Request) -> None:
        path = req.path
        if "//" in path:
            path = "/" + "/".join(p for p in path.split("/") if p) + ("/" if path.endswith("/") else "")
        method = req.method
        if self.secret is not None and not (path == "/" and method == "GET") and not self._has_secret(req):
            return conn.respond(req, self.forbidden, ids=False)
        if path == "/score":
            if method not in ("POST", "GET", "OPTIONS", "HEAD"):
                return conn.respond(req, self.not_allowed, ids=False)
        elif path == "/" or path == "/swagger.json":
            if method not in ("GET", "HEAD", "OPTIONS"):
                return conn.respond(req, self.not_allowed, ids=False)
        else:
            return conn.respond(req, self.not_found, ids=False)

        error = self._request_ids(req)
        if error is not None:
            return conn.respond(req, error)
        if path == "/score":
            return self._score(conn, req)
        if method == "OPTIONS":
            return conn.respond(req, self.options_reply)
        if path == "/":
            return conn.respond(req, self.healthy)
        version = "2"
        if req.query:
            for key, value in parse_qsl(req.query.decode("utf-8", "replace"), keep_blank_values=True):
                if key == "version":
                    version = value
                    break
        status, body = self.swagger.answer(version)
        return conn.respond(req, Reply(status, _JSON_OK_HEADERS, body))

    def _has_secret(self, req: Request) -> bool:
        """Whether the request carries the router's secret; the header is removed either way,
        so that run() never sees it."""
        assert self.secret is not None
        found = False
        kept = []
        for name, value in req.headers:
            if len(name) == len(SECRET_HEADER) and name.lower() == SECRET_HEADER:
                found = hmac.compare_digest(value, self.secret)  # constant time
            else:
                kept.append((name, value))
        req.headers = kept
        return found

    def _request_ids(self, req: Request) -> Reply | None:
        """Compute the request-id response headers as v1 does; a too-long id is a 431."""
        found: list[str | None] = [None] * 7
        for name, value in req.headers:
            slot = _INTERESTING.get(name.lower())
            if slot is not None and found[slot] is None:
                found[slot] = value.decode("latin-1")
        request_id, legacy, client, trace_id = found[0], found[1] or "", found[2] or "", found[3]
        if request_id is None:
            request_id = self.new_request_id()
        if self.cors is not None:
            req.cors = self.cors.headers(found[4], req.method, found[5], found[6])
        if len(request_id) > HEADER_LIMIT:
            return json_reply(431, f"x-request-id must not exceed {HEADER_LIMIT} characters")
        ids = [header_line("x-request-id", request_id)] if request_id else []
        if legacy:
            # x-ms-request-id is both the old request id and the client's id (v1 compatibility).
            if not client:
                client = legacy
        else:
            legacy = client or request_id
        if len(legacy) > HEADER_LIMIT or len(client) > HEADER_LIMIT:
            req.ids = b"".join(ids)
            return json_reply(
                431, f"x-ms-request-id and x-ms-client-request-id must not exceed {HEADER_LIMIT} characters"
            )
        if legacy:
            ids.append(header_line("x-ms-request-id", legacy))
        if client:
            ids.append(header_line("x-ms-client-request-id", client))
        if trace_id is not None:
            ids.append(header_line("TraceId", trace_id))
        req.ids = b"".join(ids)
        return None

    def _score(self, conn: HttpProtocol, req: Request) -> None:
        if not self.rawhttp:
            # Only run() decorated with @rawhttp sees these methods; v1 answers them itself.
            if req.method == "OPTIONS":
                return conn.respond(req, self.score_options)
            if req.method == "HEAD":
                return conn.respond(req, self.method_not_allowed)
        limit = self.config.max_concurrent
        if limit and self.in_flight >= limit:
            return conn.respond(req, self.busy)
        assert self.pool is not None and self.loop is not None
        with self.slots:
            self.in_flight += 1
        req.job = self.pool.submit(self._run_job, req, self._job_done)
        req.timer = self.loop.call_later(self.timeout_s, self._check_timeout, req)

    def _release(self, req: Request) -> None:
        with self.slots:
            if not req.released:
                req.released = True
                self.in_flight -= 1

    def _job_done(self, job: Job) -> None:
        req: Request = job.arg
        if not req.released:  # a job skipped at its timeout never ran _run_job
            self._release(req)
        conn = req.conn
        if req.timer is not None:
            req.timer.cancel()
        if req.job is None:  # answered at the timeout
            return
        req.job = None
        if req.sent is not None:
            conn.finish_sent(req, job.result)
        elif job.error is None:
            conn.respond(req, job.result)
        else:
            logger.error("request %s failed in the server:\n%s", _rid(req), _format(job.error))
            conn.respond(req, self.internal)
        conn.next()

    def _check_timeout(self, req: Request) -> None:
        job = req.job
        if job is None:
            return
        assert self.loop is not None and self.pool is not None
        if job.state == QUEUED:  # as in v1, waiting for a worker is not scoring time
            req.timer = self.loop.call_later(self.timeout_s, self._check_timeout, req)
            return
        if job.state != RUNNING:
            return  # finished; _job_done is on its way
        remaining = job.started + self.timeout_s - time.monotonic()
        if remaining > 0.001:
            req.timer = self.loop.call_later(remaining, self._check_timeout, req)
            return
        if not req.conn.claim(req):
            return  # the worker is writing its answer right now
        req.job = None
        self.pool.interrupt(job)
        logger.error(
            "request %s: run() did not finish within SCORING_TIMEOUT_MS=%d; answered 500 and interrupted it",
            _rid(req),
            self.config.scoring_timeout_ms,
        )
        req.conn.respond(req, self.timeout)
        req.conn.next()

    # ---- per request, on a worker thread --------------------------------------------------

    def _run_job(self, req: Request) -> Reply:
        sink = self.sink
        if sink is None:
            reply = self._reply_for(req)
            if type(reply) is StreamedReply:
                return self._stream(req, reply)
            self._release(req)
            req.conn.send_from_worker(req, reply)
            return reply
        collect.set_request_ids(req.ids)  # ModelDataCollector.collect() inside run() reads it
        reply = self._reply_for(req)
        if type(reply) is StreamedReply:
            return self._stream(req, reply)
        self._release(req)
        req.conn.send_from_worker(req, reply)
        # After the answer is out: two appends to the sink's buffer, nothing else.
        answer = reply.body if sink.auto_predictions and reply.status < 400 else None
        request = (req.body or req.query) if sink.auto_inputs else None
        if request is not None or answer is not None:
            sink.exchange(req.ids, time.time(), request, answer)
        return reply

    def _stream(self, req: Request, reply: StreamedReply) -> Reply:
        """Send a streamed answer from this worker thread (see stream.py). The scoring timeout
        covers run() and the first chunk; the slot is held until the stream ends."""
        conn = req.conn
        try:
            try:
                first = None if req.head else next(reply.chunks, None)
            except ScoringInterrupted:
                return self.timeout  # the loop has answered already
            except Exception as ex:  # noqa: BLE001 - the script's generator raised before any byte was sent
                logger.error("the streamed answer of run() for request %s raised:\n%s", _rid(req), _format(ex))
                return self.run_failed
            if not conn.claim(req):
                return self.timeout  # the scoring timeout answered first
            assert self.loop is not None
            if not req.chunked:
                req.keep_alive = False  # HTTP/1.0: the close ends the body
            sender = ChunkSender(conn, self.loop, req.chunked, self.config.send_timeout_s)
            conn.stream = sender
            if conn.closed:
                sender.lost()
            req.sent = b""  # _job_done: the answer is written (by the stream), only bookkeeping left
            if not sender.start(conn.render_stream_head(req, reply), first) or req.head:
                return reply  # gone already, or HEAD: the head is the whole answer
            try:
                for chunk in reply.chunks:
                    if not sender.send(chunk):  # close() below ends the generator
                        if sender.timed_out:
                            logger.warning(
                                "request %s: the client took none of the streamed answer for %g s "
                                "(--send-timeout); connection closed",
                                _rid(req),
                                sender.send_timeout_s,
                            )
                        return reply
            except Exception as ex:  # noqa: BLE001 - the status is sent; all we can do is cut the body short
                logger.error(
                    "the streamed answer of run() for request %s raised mid-stream:\n%s", _rid(req), _format(ex)
                )
                sender.abort()
                return reply
            sender.end()
            return reply
        finally:
            try:
                reply.close()
            except Exception as ex:  # noqa: BLE001 - the script's cleanup raised
                logger.error("closing the streamed answer of request %s raised:\n%s", _rid(req), _format(ex))
            self._release(req)

    def _reply_for(self, req: Request) -> Reply:
        try:
            result, elapsed_ms = self.entry.invoke(req)
        except BadInput as ex:
            return json_reply(400, ex.message)
        except UnsupportedInput as ex:
            return json_reply(415, ex.message)
        except UnsupportedMethod:
            return self.method_not_allowed
        except RunFailed as ex:
            if isinstance(ex.cause, ScoringInterrupted):
                return self.timeout
            logger.error("run() raised for request %s:\n%s", _rid(req), _format(ex.cause))
            return self.run_failed
        try:
            return encode_result(result, elapsed_ms)
        except Exception as ex:  # noqa: BLE001 - not JSON-serialisable, or a malformed response object
            logger.error("the result of run() for request %s could not be sent:\n%s", _rid(req), _format(ex))
            return self.internal


def _rid(req: Request) -> str:
    for name, value in req.headers:
        if name.lower() == b"x-request-id":
            return value.decode("latin-1")
    marker = b"x-request-id: "
    start = req.ids.find(marker)
    if start >= 0:
        return req.ids[start + len(marker) : req.ids.find(b"\r\n", start)].decode("latin-1")
    return "-"


def _format(ex: BaseException) -> str:
    return "".join(traceback.format_exception(type(ex), ex, ex.__traceback__)).rstrip()


class ReplicaServer:
    """One replica: ``load()`` the script and run init(), then ``run()`` the HTTP server.

    Built by ``create_server(config)``; the constructor has no side effects.
    """

    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config
        self.app: App | None = None
        self.sink: collect.DataSink | None = None
        self.port: int | None = None
        self._stop: asyncio.Event | None = None
        self._signals = 0

    def __repr__(self) -> str:
        in_flight = self.app.in_flight if self.app else 0
        return f"<ReplicaServer {self.config.entry_script} port={self.port} in_flight={in_flight}>"

    def load(self) -> App:
        """Install the v1 imports, import the script, call init(), build swagger.

        Raises ScriptError (script cannot be used) or InitFailed (init() raised).
        """
        config = self.config
        if config.data_dir and self.sink is None:
            # Installed before the script is imported: collectors made at import or in init() see it.
            self.sink = collect.DataSink(
                config.data_dir,
                config.replica_id,
                dict(config.models),
                flush_interval_s=config.collect_flush_s,
                max_pending=config.collect_max_pending,
                stats_file=config.stats_file,
            )
            collect.install_sink(self.sink)
            self.sink.start()
            logger.info("Model data collection on: %s", config.data_dir)
        compat.install()
        # v1 appends the app root and source folder; the script's own folder is added too so
        # that `modelfleet serve --entry_script some/dir/score.py` finds its sibling modules.
        for folder in (config.app_root, config.source_dir, os.path.dirname(config.entry_script)):
            if folder and folder not in sys.path:
                sys.path.append(folder)
        entry = load_entry(config.entry_script, compat.AMLRequest)
        logger.info("Loaded %s: run() style is %s", config.entry_script, entry.plan.style)
        entry.init()
        logger.info("init() completed")
        swagger = SwaggerDocs(
            entry.run_function, config.app_root, config.service_name, config.service_version, config.service_path_prefix
        )
        self.app = App(config, entry, swagger)
        self.app.sink = self.sink
        return self.app

    async def serve(self) -> None:
        """Bind, write the port file, serve until stop() or a signal, then drain."""
        assert self.app is not None, "call load() first"
        app = self.app
        loop = asyncio.get_running_loop()
        app.loop = loop
        self._stop = asyncio.Event()
        config = self.config
        try:
            if config.unix_socket:
                server = await listen_unix(loop, lambda: HttpProtocol(app), config.unix_socket)
            else:
                server = await loop.create_server(lambda: HttpProtocol(app), config.host, config.port, backlog=2048)
        except OSError as ex:  # the port is taken, the path too long or not writable, ...
            raise ListenError(str(ex)) from ex
        app.pool = WorkerPool(config.worker_count, loop)
        if config.unix_socket:
            logger.info("Listening on unix:%s (workers=%d)", config.unix_socket, config.worker_count)
        else:
            self.port = server.sockets[0].getsockname()[1]
            if config.port_file:
                _write_port_file(config.port_file, self.port)
            logger.info("Listening on http://%s:%d (workers=%d)", config.host, self.port, config.worker_count)
        if config.secret is not None:
            logger.info("Requests other than GET / must carry the router's secret")
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not the main thread, or no signal support: stop() still works.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal)
        ticker = loop.create_task(self._tick())
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()
            server.close()
            if config.unix_socket:
                with contextlib.suppress(OSError):
                    os.unlink(config.unix_socket)
            await self._drain()
            app.pool.stop()
            app.pool.join(timeout=1.0)
            app.write_access()
            self.close_sink()

    def close_sink(self) -> None:
        """Write every collected record still buffered (graceful stop; see telemetry/collect.py)."""
        if self.sink is not None:
            self.sink.close()
            collect.install_sink(None)
            s = self.sink.stats
            logger.info("Model data collection: %d records written, %d dropped", s.written, s.dropped)
            self.sink = None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("Stopping: finishing %d in-flight request(s)", self.app.in_flight if self.app else 0)
            self.stop()

    async def _tick(self) -> None:
        # Once a second: the Date header, the access log, and each connection's timeouts.
        assert self.app is not None
        while True:
            await asyncio.sleep(1.0)
            self.app.refresh_date()
            self.app.write_access()
            now = time.monotonic()
            for conn in list(self.app.connections):
                conn.expire(now)

    async def _drain(self) -> None:
        assert self.app is not None
        app = self.app
        app.stopping = True
        deadline = time.monotonic() + app.timeout_s + 1.0
        while time.monotonic() < deadline and self._signals < 2:
            for conn in list(app.connections):
                conn.close_if_idle(time.monotonic(), 0.0)
            if app.in_flight == 0 and not any(c.busy or c.pending for c in app.connections):
                break
            await asyncio.sleep(0.02)
        for conn in list(app.connections):
            conn.close()
        logger.info("Stopped")


def create_server(config: ReplicaConfig) -> ReplicaServer:
    """A fresh, unloaded server for ``config``."""
    return ReplicaServer(config)


def _write_port_file(path: str, port: int) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".port-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _tree(root: str, limit: int = 200) -> str:
    lines: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        depth = os.path.relpath(folder, root).count(os.sep) + (folder != root)
        lines.append("    " * depth + os.path.basename(folder.rstrip(os.sep)) + os.sep)
        lines += ["    " * (depth + 1) + f for f in sorted(files)]
        if len(lines) >= limit:
            return "\n".join(lines[:limit] + [f"(first {limit} lines shown)"])
    return "\n".join(lines)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _rotate_output(config: ReplicaConfig) -> None:
    """Send this process's stdout and stderr to ``config.log_file``, rotated by size.

    Python-level writes (print, logging, tracebacks) go through a ``RotatingFile`` and so rotate
    exactly at the limit; fds 1 and 2 are pointed at the current file after each rotation, so
    output written below Python (faulthandler, C libraries) lands there too."""
    assert config.log_file is not None

    def point_fds(fd: int) -> None:
        for target in (1, 2):
            with contextlib.suppress(OSError):
                os.dup2(fd, target)

    raw = RotatingFile(config.log_file, config.log_max_bytes, config.log_backups, on_rotate=point_fds)
    point_fds(raw.fileno())
    stream = io.TextIOWrapper(
        io.BufferedWriter(raw),  # type: ignore[type-var]  # a RawIOBase, which typeshed's protocol misses
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )
    sys.stdout = sys.stderr = stream


def _setup_logging() -> None:
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s [%(process)d] %(name)s - %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve(config: ReplicaConfig) -> int:
    """Run a replica in the foreground: load, init, serve until a signal. Returns the exit status
    (3 when the script cannot be loaded or init() raised, with the traceback on stderr)."""
    if config.log_file:
        _rotate_output(config)
    _setup_logging()
    # With a rotated log, fd 2 always points at the current file (sys.stderr's own fd changes).
    faulthandler.enable(file=2) if config.log_file else faulthandler.enable()
    for flag in config.ignored:
        logger.warning("%s is accepted for compatibility with azmlinfsrv and has no effect here", flag)
    server = create_server(config)
    try:
        server.load()
    except (ScriptError, InitFailed) as ex:
        server.close_sink()
        cause = ex.__cause__
        detail = _format(cause) if cause is not None else ""
        logger.error("%s\n%s", ex.message, detail)
        if isinstance(ex, InitFailed) and config.model_dir and os.path.isdir(config.model_dir):
            # Most init() failures are a model file not where the script looks: show what is there.
            logger.info("Model directory %s contains:\n%s", config.model_dir, _tree(config.model_dir))
        return EXIT_INIT_FAILED
    loop = _new_loop()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve())
    except ListenError as ex:
        server.close_sink()
        where = f"unix:{config.unix_socket}" if config.unix_socket else f"{config.host}:{config.port}"
        logger.error("cannot listen on %s: %s", where, ex)
        return EXIT_BAD_SETTINGS
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    return EXIT_OK
