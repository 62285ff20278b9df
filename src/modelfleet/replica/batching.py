"""Dynamic batching: concurrent /score requests gathered into one call of ``run_batch(items)``.

On when the replica runs with ``--max-batch-size`` above 1 (the deploy setting
``max_batch_size``); the script must then define ``run_batch(items) -> list`` (checked at load:
``Entry.check_batching``). What an item is: ``entry.py``'s docstring.

How a batch forms. Admitted requests wait in one queue (``Batcher.pending``). A batch is formed
when a call of the script is free (at most ``worker_count`` run at once: the v1 setting
``replica_max_concurrent_requests`` keeps meaning "calls of the script at once") and either
``max_batch_size`` requests wait or the oldest has waited ``max_batch_delay_ms``. While every
call is busy requests keep gathering (up to ``max_batch_size`` per batch): they would wait for a
worker anyway, so a loaded replica makes full batches and a lone request waits at most the delay.

Admission. A batching replica admits ``--max-concurrent × max_batch_size`` requests (503
``x-modelfleet-busy`` past that, as without batching); the router admits as many per replica.

Answers. ``run_batch`` returns one answer per item, in order; each is encoded as run()'s result
would be and sent to its own request (with ``x-modelfleet-batch-size``). An answer that is an
exception object fails only its request (500 naming the exception); a ``run_batch`` that raises
fails the whole batch (500, the traceback in the log) and the replica keeps serving; an answer
that is not a list of the items' length fails the batch with a 500 that says so. Streamed
answers are refused per item (500). The scoring timeout covers the call: at the timeout every
request of the batch is answered 500 and the call interrupted, as run()'s is.

Deadlines. A request may carry ``x-request-timeout-ms: N`` (the router forwards the time its
caller has left): when N ms have passed since the request reached the replica and its batch is
not formed yet, it is left out, answered 504 at that moment and counted (``deadline_expired``).

Counters (``stats()``, written to the replica's stats file and exported by the daemon's
``/metrics``): the histogram of batch sizes (``BUCKETS``), the calls busy now, their mean since
the last report and their limit, the requests waiting for a batch (the last two are what the
autoscaler counts for a batching service: ``router/autoscale.batch_counts``), and the requests
left out at their deadline.

The decisions (``due``, ``deadline_of``, ``split_expired``, ``answer_error``) are pure
functions; ``Batcher`` moves requests between the loop and the workers.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from modelfleet.replica.entry import BadInput, Entry, UnsupportedInput, UnsupportedMethod
from modelfleet.replica.ids import request_id_of
from modelfleet.replica.responses import MSG_INTERNAL, MSG_RUN_FAILED, Reply, StreamedReply, encode_result, json_reply
from modelfleet.replica.scoring import Scorer, format_exception
from modelfleet.replica.v2 import V2Model
from modelfleet.replica.workers import QUEUED, RUNNING, Job, ScoringInterrupted

if TYPE_CHECKING:
    import asyncio

    from modelfleet.replica.protocol import Request
    from modelfleet.replica.workers import WorkerPool

logger = logging.getLogger("modelfleet.replica")

DEADLINE_HEADER = b"x-request-timeout-ms"
BATCH_SIZE_HEADER = b"x-modelfleet-batch-size"
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # batch sizes; the histogram's upper bounds


# ---- decisions (pure) ------------------------------------------------------------------------


def deadline_of(headers: Sequence[tuple[bytes, bytes]], arrived: float) -> float | None:
    """When the request's caller stops waiting (``arrived`` + x-request-timeout-ms), or None
    when the header is absent or not a whole number of milliseconds >= 0."""
    for name, value in headers:
        if len(name) == len(DEADLINE_HEADER) and name.lower() == DEADLINE_HEADER:
            try:
                ms = int(value)
            except ValueError:
                return None
            return arrived + ms / 1000 if ms >= 0 else None
    return None


def due(waiting: int, oldest: float, now: float, max_size: int, delay_s: float) -> bool:
    """Whether a batch should be formed now (a call being free): full, or the oldest waited enough."""
    return waiting >= max_size or now - oldest >= delay_s


def split_expired(deadlines: Sequence[float | None], now: float) -> tuple[list[int], list[int]]:
    """Indexes of the items still wanted and of those whose deadline has passed."""
    live: list[int] = []
    expired: list[int] = []
    for i, deadline in enumerate(deadlines):
        (expired if deadline is not None and now >= deadline else live).append(i)
    return live, expired


def answer_error(answers: object, count: int) -> str | None:
    """Why run_batch's return value cannot be matched to ``count`` items, or None."""
    if not isinstance(answers, (list, tuple)):
        return (
            f"run_batch() returned {type(answers).__name__}, not a list; "
            f"it must return a list of {count} answers, one per item in order"
        )
    if len(answers) != count:
        return (
            f"run_batch() returned {len(answers)} answers for {count} items; "
            "it must return one answer per item, in order"
        )
    return None


def bucket_of(size: int) -> int:
    """The histogram bucket (index into ``BUCKETS``, or ``len(BUCKETS)`` for +Inf) of a size."""
    for i, bound in enumerate(BUCKETS):
        if size <= bound:
            return i
    return len(BUCKETS)


# ---- the loop and worker side ----------------------------------------------------------------


class _Item:
    __slots__ = ("req", "deadline", "timer", "v2")

    def __init__(self, req: Request, deadline: float | None, v2: tuple[str, str | None] | None = None) -> None:
        self.req = req
        self.deadline = deadline
        self.v2 = v2  # a V2 infer call: (model name, model version); None: a /score request
        self.timer: asyncio.TimerHandle | None = None  # answers it at its deadline while it waits


class _Batch:
    __slots__ = ("items", "timer")

    def __init__(self, items: list[_Item]) -> None:
        self.items = items
        self.timer: asyncio.TimerHandle | None = None


class Batcher:
    """Gathers admitted requests, runs ``run_batch`` on the worker pool, answers each request.

    Everything but ``_run`` (a worker's job) runs on the event loop thread."""

    def __init__(
        self,
        entry: Entry,
        scorer: Scorer,
        loop_of: Callable[[], asyncio.AbstractEventLoop | None],
        pool_of: Callable[[], WorkerPool | None],
        release: Callable[[Request], None],
        calls: int,
        max_size: int,
        delay_ms: int,
        timeout_ms: int,
        v2: V2Model | None = None,
    ) -> None:
        self.entry = entry
        self.run_batch = entry.batch_function  # None: only V2 calls are batched (V2_BATCHED)
        self.v2 = v2  # V2 infer calls joined along the first dimension (replica/v2.py), when the script says so
        self.scorer = scorer
        self._loop_of = loop_of
        self._pool_of = pool_of
        self.release = release
        self.calls = calls
        self.max_size = max_size
        self.delay_s = delay_ms / 1000
        self.timeout_s = timeout_ms / 1000
        self.pending: deque[_Item] = deque()
        self.timer: asyncio.TimerHandle | None = None
        # counters (stats())
        self.busy = 0  # calls of run_batch running now
        self.busy_time = 0.0  # call-seconds so far, up to busy_at (perf_counter)
        self.busy_at = time.perf_counter()
        self.reported = (self.busy_at, 0.0)  # (when, busy_time) at the last stats()
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.batches = 0
        self.items = 0
        self.expired = 0
        # canned replies
        self.deadline_passed = json_reply(
            504,
            "the request's deadline (x-request-timeout-ms) passed while it waited for its batch; "
            "run_batch() was not called for it",
        )
        self.run_failed = json_reply(500, MSG_RUN_FAILED, run_failed=True)
        self.internal = json_reply(500, MSG_INTERNAL)
        self.timed_out = json_reply(500, f"Scoring timeout after {timeout_ms} ms", run_failed=True)

    def __repr__(self) -> str:
        return f"<Batcher waiting={len(self.pending)} busy={self.busy}/{self.calls} max_size={self.max_size}>"

    def stats(self) -> dict[str, Any]:
        """The counters, for the replica's stats file (telemetry/replica_stats.py; its thread
        calls this about once a second). ``batch_calls_busy_mean`` is the mean number of calls
        running since the previous call of ``stats()``: what the autoscaler counts as busy."""
        now = time.perf_counter()
        total = self.busy_time + self.busy * (now - self.busy_at)
        then, before = self.reported
        self.reported = (now, total)
        mean = (total - before) / (now - then) if now > then else float(self.busy)
        return {
            "batch_calls_busy_mean": round(mean, 3),
            "batch_waiting": len(self.pending),
            "batch_size_bounds": list(BUCKETS),  # the upper bounds of the buckets but the last (+Inf)
            "batch_size_buckets": list(self.buckets),
            "batch_size_sum": self.items,
            "batch_count": self.batches,
            "batch_calls_busy": self.busy,
            "batch_calls_limit": self.calls,
            "batch_deadline_expired": self.expired,
        }

    # ---- on the loop

    def add(self, req: Request, v2: tuple[str, str | None] | None = None) -> None:
        """An admitted request (its slot taken) joins the queue; ``v2``: a V2 infer call's
        (model name, model version)."""
        item = _Item(req, deadline_of(req.headers, req.t0), v2)
        self.pending.append(item)
        if item.deadline is not None:
            loop = self._loop_of()
            assert loop is not None
            item.timer = loop.call_later(max(0.0, item.deadline - time.perf_counter()), self._expire, item)
        if self.timer is None or len(self.pending) >= self.max_size:
            self.pump()

    def _expire(self, item: _Item) -> None:
        """Its deadline passed while it waited (every call busy): answered now, not when a call frees."""
        item.timer = None
        try:
            self.pending.remove(item)
        except ValueError:
            return  # taken into a batch meanwhile
        self._answer_expired(item.req)
        if self.pending and self.timer is None:
            self.pump()

    def pump(self) -> None:
        """Form and start batches while a call is free and one is due; else wait for the delay."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pending = self.pending
        while pending and self.busy < self.calls:
            now = time.perf_counter()
            oldest = pending[0].req.t0
            if not due(len(pending), oldest, now, self.max_size, self.delay_s):
                loop = self._loop_of()
                assert loop is not None
                self.timer = loop.call_later(oldest + self.delay_s - now, self.pump)
                return
            taken = [pending.popleft() for _ in range(min(self.max_size, len(pending)))]
            for item in taken:
                if item.timer is not None:
                    item.timer.cancel()
                    item.timer = None
            live, expired = split_expired([item.deadline for item in taken], now)
            for i in expired:
                self._answer_expired(taken[i].req)
            if live:
                self._start(_Batch([taken[i] for i in live]))

    def _answer_expired(self, req: Request) -> None:
        self.expired += 1
        self.release(req)
        logger.warning(
            "request %s: its deadline (x-request-timeout-ms) passed before its batch was formed; answered 504",
            request_id_of(req.headers, req.ids),
        )
        req.conn.respond(req, self.deadline_passed)
        req.conn.next()

    def _start(self, batch: _Batch) -> None:
        pool, loop = self._pool_of(), self._loop_of()
        assert pool is not None and loop is not None
        size = len(batch.items)
        self._account()
        self.busy += 1
        self.batches += 1
        self.items += size
        self.buckets[bucket_of(size)] += 1
        job = pool.submit(self._run, batch, self._done)
        for item in batch.items:
            item.req.job = job
        batch.timer = loop.call_later(self.timeout_s, self._check_timeout, batch, job)

    def _account(self) -> None:
        """Add the call-seconds since the last change of ``busy`` (before it changes)."""
        now = time.perf_counter()
        self.busy_time += self.busy * (now - self.busy_at)
        self.busy_at = now

    def _done(self, job: Job) -> None:
        batch: _Batch = job.arg
        self._account()
        self.busy -= 1
        if batch.timer is not None:
            batch.timer.cancel()
        replies: list[Reply] = job.result if job.error is None and job.result is not None else []
        if job.error is not None:
            logger.error("a batch of %d failed in the server: %r", len(batch.items), job.error)
        for i, item in enumerate(batch.items):
            req = item.req
            if not req.released:
                self.release(req)
            if req.job is None:  # answered at the scoring timeout
                continue
            req.job = None
            reply = replies[i] if i < len(replies) else self.internal
            conn = req.conn
            if req.sent is not None:
                conn.finish_sent(req, reply)
            else:
                conn.respond(req, reply)
            conn.next()
        self.pump()

    def _check_timeout(self, batch: _Batch, job: Job) -> None:
        loop, pool = self._loop_of(), self._pool_of()
        assert loop is not None and pool is not None
        if job.state == QUEUED:  # waiting for a worker is not scoring time
            batch.timer = loop.call_later(self.timeout_s, self._check_timeout, batch, job)
            return
        if job.state != RUNNING:
            return
        remaining = job.started + self.timeout_s - time.monotonic()
        if remaining > 0.001:
            batch.timer = loop.call_later(remaining, self._check_timeout, batch, job)
            return
        answered = 0
        for item in batch.items:
            req = item.req
            if req.job is None or not req.conn.claim(req):
                continue  # its answer is being written by the worker
            req.job = None
            answered += 1
            req.conn.respond(req, self.timed_out)
            req.conn.next()
        pool.interrupt(job)
        logger.error(
            "a batch of %d: run_batch() did not finish within SCORING_TIMEOUT_MS=%d; %d request(s) answered 500, "
            "call interrupted",
            len(batch.items),
            int(self.timeout_s * 1000),
            answered,
        )

    # ---- on a worker

    def _run(self, batch: _Batch) -> list[Reply]:
        """Call run_batch once and send each request its answer; returns the replies in order."""
        items = batch.items
        replies: list[Reply | None] = [None] * len(items)
        inputs: list[Any] = []
        called: list[int] = []
        joined = [i for i, item in enumerate(items) if item.v2 is not None]
        if joined:
            assert self.v2 is not None
            calls = [(items[i].req, *items[i].v2) for i in joined]  # type: ignore[misc]
            for i, reply in zip(joined, self.v2.infer_batch(calls), strict=True):
                replies[i] = reply
        for i, item in enumerate(items):
            if item.v2 is not None:
                continue
            try:
                inputs.append(self.entry.item(item.req))
                called.append(i)
            except BadInput as ex:
                replies[i] = json_reply(400, ex.message)
            except UnsupportedInput as ex:
                replies[i] = json_reply(415, ex.message)
            except UnsupportedMethod:
                replies[i] = self.scorer.method_not_allowed
        if called:
            for i, reply in zip(called, self._call(inputs), strict=True):
                replies[i] = reply
        out: list[Reply] = []
        size_line = BATCH_SIZE_HEADER + b": %d\r\n" % (len(called) + len(joined))
        sink = self.scorer.sink
        for item, maybe in zip(items, replies, strict=True):
            assert maybe is not None
            reply = Reply(maybe.status, maybe.headers + size_line, maybe.body)
            out.append(reply)
            req = item.req
            self.release(req)
            req.conn.send_from_worker(req, reply)
            if sink is not None and item.v2 is None:  # V2's tensors are not collected (as unbatched)
                answer = reply.body if sink.auto_predictions and reply.status < 400 else None
                request = (req.body or req.query) if sink.auto_inputs else None
                if request is not None or answer is not None:
                    sink.exchange(req.ids, time.time(), request, answer)
        return out

    def _call(self, inputs: list[Any]) -> list[Reply]:
        count = len(inputs)
        start = time.perf_counter()
        assert self.run_batch is not None  # /score requests join a batch only when it exists (App._score)
        try:
            answers = self.run_batch(inputs)
        except ScoringInterrupted:
            return [self.timed_out] * count  # the loop has answered already
        except BaseException as ex:  # noqa: BLE001 - even SystemExit must not kill a worker thread
            logger.error("run_batch() raised for a batch of %d:\n%s", count, format_exception(ex))
            return [self.run_failed] * count
        elapsed_ms = (time.perf_counter() - start) * 1000
        problem = answer_error(answers, count)
        if problem is not None:
            logger.error("%s", problem)
            return [json_reply(500, problem, run_failed=True)] * count
        return [self._encode(answer, elapsed_ms) for answer in answers]

    def _encode(self, answer: Any, elapsed_ms: float) -> Reply:
        if isinstance(answer, BaseException):
            return json_reply(500, f"run_batch() failed for this item: {type(answer).__name__}: {answer}", True)
        try:
            reply = encode_result(answer, elapsed_ms)
        except Exception as ex:  # noqa: BLE001 - not JSON-serialisable, or a malformed response object
            logger.error("an answer of run_batch() could not be sent:\n%s", format_exception(ex))
            return self.internal
        if type(reply) is StreamedReply:
            reply.close()
            return json_reply(500, "run_batch() answers cannot be streamed; return each answer whole", True)
        return reply
