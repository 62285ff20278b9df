"""The v1 routes, on the event loop: which answer a parsed request gets, and /score's admission,
hand-off to a worker and scoring timeout.

Routes, as azmlinfsrv answers them:

- ``GET /`` liveness ("Healthy"), ``GET /swagger.json[?version=2|3|3.1]``, ``OPTIONS`` on both.
- ``POST /score`` and ``GET /score`` (query string to run()), ``OPTIONS /score``; ``HEAD``
  wherever GET is allowed. Other methods: 405; other paths: 404 (both without request ids, as v1).
- modelfleet's own: 503 "busy" with ``x-modelfleet-busy: 1`` when ``--max-concurrent`` requests
  are running (``--max-concurrent`` × ``--max-batch-size`` admitted when batching: batching.py);
  403 for any request but ``GET /`` without the router's secret, when the replica
  has one (``MODELFLEET_REPLICA_SECRET``).

``App`` lives as long as the process: the loaded entry, swagger bytes, canned replies, the
worker pool and the in-flight count. run() executes on worker threads (``scoring.Scorer``);
liveness and swagger are answered on the loop, so ``GET /`` answers while run() is busy.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qsl

from modelfleet.errors import Overloaded
from modelfleet.replica import ids
from modelfleet.replica.batching import Batcher
from modelfleet.replica.entry import STYLE_RAWHTTP, Entry
from modelfleet.replica.protocol import HttpProtocol, Request
from modelfleet.replica.responses import HTML, MSG_NOT_ALLOWED, MSG_NOT_FOUND, Cors, Reply, json_message, json_reply
from modelfleet.replica.scoring import Scorer, format_exception
from modelfleet.replica.shared import Shared
from modelfleet.replica.swagger import SwaggerDocs
from modelfleet.replica.v2 import V2Model, error_reply, v2_model_refusal, v2_path
from modelfleet.replica.workers import QUEUED, RUNNING, Job, WorkerPool

logger = logging.getLogger("modelfleet.replica")

SECRET_HEADER = b"x-modelfleet-replica-secret"  # the router's proof (MODELFLEET_REPLICA_SECRET)
_JSON = b"Content-Type: application/json\r\n"
_JSON_OK_HEADERS = b"Content-Type: application/json\r\nx-ms-run-function-failed: False\r\n"


class App:
    """The request handlers, all on the loop thread (``Scorer.run`` is the worker's part)."""

    def __init__(self, shared: Shared, entry: Entry, swagger: SwaggerDocs) -> None:
        config = shared.config
        self.shared = shared
        self.config = config
        self.entry = entry
        self.swagger = swagger
        self.rawhttp = entry.plan.style == STYLE_RAWHTTP
        self.cors = Cors(config.cors_origins) if config.cors_origins else None
        self.pool: WorkerPool | None = None  # started by ReplicaServer.serve, with the loop
        self.scorer = Scorer(shared, entry, self._release)
        # Open Inference Protocol (V2) calls: /v2/models/<name>[/versions/<v>][/ready|/infer]
        self.v2 = V2Model(entry, format_exception)
        self.models = config.models  # (name, version) pairs; empty: any (modelfleet serve)
        # /score requests admitted and not yet finished. Workers release their slot before writing
        # a plain answer, so a client that sends its next request as soon as it has the answer
        # never finds the slot still taken; hence the lock.
        self.in_flight = 0
        self.slots = threading.Lock()
        self.timeout_s = config.scoring_timeout_ms / 1000
        # Dynamic batching: run_batch() calls at once stay --max-concurrent (and worker_count);
        # requests admitted are that many times max_batch_size. V2 calls are joined too when the
        # script sets V2_BATCHED (replica/v2.py).
        self.batcher: Batcher | None = None
        self.admit = config.max_concurrent
        if config.max_batch_size > 1 and (entry.batch_function is not None or self.v2.batched):
            self.batcher = Batcher(
                entry,
                self.scorer,
                lambda: self.shared.loop,
                lambda: self.pool,
                self._release,
                calls=config.worker_count,
                max_size=config.max_batch_size,
                delay_ms=config.max_batch_delay_ms,
                timeout_ms=config.scoring_timeout_ms,
                v2=self.v2 if self.v2.batched else None,
            )
            self.admit = config.max_concurrent * config.max_batch_size
        self.new_request_id = ids.RequestIds()
        # Where TCP is needed (Kubernetes pods), only the router, which adds this secret, may call.
        self.secret = config.secret.encode() if config.secret is not None else None

        # Canned replies, built once (STYLE item 6).
        self.not_found = json_reply(404, MSG_NOT_FOUND)
        self.not_allowed = json_reply(405, MSG_NOT_ALLOWED)
        self.busy = Reply(
            503,
            _JSON + b"x-modelfleet-busy: 1\r\n",
            Overloaded(
                f"replica busy: {self.admit} of {self.admit} requests admitted "
                f"(--max-concurrent{' x --max-batch-size' if self.batcher else ''}); retry or send to another replica"
            ).to_body(),
        )
        self.forbidden = Reply(
            403,
            _JSON,
            json_message(
                "this replica answers only its router: the x-modelfleet-replica-secret header is missing or wrong"
            ),
        )
        self.healthy = Reply(200, b"Content-Type: text/html; charset=utf-8\r\n", b"Healthy")
        self.options_reply = Reply(200, b"Content-Type: " + HTML + b"\r\nAllow: GET, HEAD, OPTIONS\r\n", b"")
        self.score_options = Reply(200, b"Content-Type: " + HTML + b"\r\nx-ms-run-function-failed: False\r\n", b"")

    def __repr__(self) -> str:
        return f"<App in_flight={self.in_flight} connections={len(self.shared.connections)}>"

    def connection(self) -> HttpProtocol:
        """A new connection (the server's protocol factory)."""
        return HttpProtocol(self.shared, self.handle)

    # ---- routing ----------------------------------------------------------------------------

    def handle(self, conn: HttpProtocol, req: Request) -> None:
        path = req.path
        if "//" in path:
            path = "/" + "/".join(p for p in path.split("/") if p) + ("/" if path.endswith("/") else "")
        method = req.method
        if self.secret is not None and not (path == "/" and method == "GET") and not self._has_secret(req):
            return conn.respond(req, self.forbidden, ids=False)
        v2 = None
        if path == "/score":
            if method not in ("POST", "GET", "OPTIONS", "HEAD"):
                return conn.respond(req, self.not_allowed, ids=False)
        elif path == "/" or path == "/swagger.json":
            if method not in ("GET", "HEAD", "OPTIONS"):
                return conn.respond(req, self.not_allowed, ids=False)
        elif (v2 := v2_path(path)) is not None:
            if method != ("POST" if v2[2] == "infer" else "GET"):
                return conn.respond(req, self.not_allowed, ids=False)
        else:
            return conn.respond(req, self.not_found, ids=False)

        found = ids.scan(req.headers)
        if self.cors is not None:
            req.cors = self.cors.headers(found[ids.ORIGIN], method, found[ids.ACR_METHOD], found[ids.ACR_HEADERS])
        req.ids, error = ids.answer_ids(found, self.new_request_id)
        if error is not None:
            return conn.respond(req, error)
        if path == "/score":
            return self._score(conn, req)
        if v2 is not None:
            return self._v2(conn, req, *v2)
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

    # ---- /score: admission, hand-off, timeout -------------------------------------------------

    def _score(self, conn: HttpProtocol, req: Request) -> None:
        if not self.rawhttp:
            # Only run() decorated with @rawhttp sees these methods; v1 answers them itself.
            if req.method == "OPTIONS":
                return conn.respond(req, self.score_options)
            if req.method == "HEAD":
                return conn.respond(req, self.scorer.method_not_allowed)
        batcher = self.batcher
        if batcher is not None and batcher.run_batch is not None:
            return self._admit(conn, req, lambda: batcher.add(req))
        self._admit(conn, req, lambda: self._submit(req, self.scorer.run))

    def _admit(self, conn: HttpProtocol, req: Request, start: Callable[[], None]) -> None:
        """Take one of the replica's slots for ``req`` and ``start`` it, or answer busy (503)."""
        limit = self.admit
        if limit and self.in_flight >= limit:
            return conn.respond(req, self.busy)
        with self.slots:
            self.in_flight += 1
        start()

    def _submit(self, req: Request, job: Callable[[Request], Reply]) -> None:
        """Run ``job`` on a worker under the scoring timeout."""
        loop = self.shared.loop
        assert self.pool is not None and loop is not None
        req.job = self.pool.submit(job, req, self._job_done)
        req.timer = loop.call_later(self.timeout_s, self._check_timeout, req)

    # ---- the Open Inference Protocol (V2) -------------------------------------------------

    def _v2(self, conn: HttpProtocol, req: Request, name: str, version: str | None, action: str) -> None:
        refused = v2_model_refusal(name, version, self.models)
        if refused is not None:
            return conn.respond(req, error_reply(404, refused))
        if action == "":
            return conn.respond(req, self.v2.metadata(name, version))
        if action == "ready":  # a replica that answers has loaded its script: ready
            return conn.respond(req, Reply(200, _JSON, json.dumps({"name": name, "ready": True}).encode()))
        batcher = self.batcher
        if batcher is not None and batcher.v2 is not None:
            return self._admit(conn, req, lambda: batcher.add(req, (name, version)))
        self._admit(conn, req, lambda: self._submit(req, lambda r: self._v2_infer(r, name, version)))

    def _v2_infer(self, req: Request, name: str, version: str | None) -> Reply:
        """The worker's part of a V2 infer call: answer, then give the slot back (as Scorer.run)."""
        reply = self.v2.infer(req, name, version)
        self._release(req)
        req.conn.send_from_worker(req, reply)
        return reply

    def _release(self, req: Request) -> None:
        with self.slots:
            if not req.released:
                req.released = True
                self.in_flight -= 1

    def _job_done(self, job: Job) -> None:
        req: Request = job.arg
        if not req.released:  # a job skipped at its timeout never ran Scorer.run
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
            rid = ids.request_id_of(req.headers, req.ids)
            logger.error("request %s failed in the server:\n%s", rid, format_exception(job.error))
            conn.respond(req, self.scorer.internal)
        conn.next()

    def _check_timeout(self, req: Request) -> None:
        job = req.job
        if job is None:
            return
        loop = self.shared.loop
        assert loop is not None and self.pool is not None
        if job.state == QUEUED:  # as in v1, waiting for a worker is not scoring time
            req.timer = loop.call_later(self.timeout_s, self._check_timeout, req)
            return
        if job.state != RUNNING:
            return  # finished; _job_done is on its way
        remaining = job.started + self.timeout_s - time.monotonic()
        if remaining > 0.001:
            req.timer = loop.call_later(remaining, self._check_timeout, req)
            return
        if not req.conn.claim(req):
            return  # the worker is writing its answer (or its stream) right now
        req.job = None
        self.pool.interrupt(job)
        logger.error(
            "request %s: run() did not finish within SCORING_TIMEOUT_MS=%d; answered 500 and interrupted it",
            ids.request_id_of(req.headers, req.ids),
            self.config.scoring_timeout_ms,
        )
        req.conn.respond(req, self.scorer.timeout)
        req.conn.next()
