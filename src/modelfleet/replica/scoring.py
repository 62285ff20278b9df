"""Scoring one request, on a worker thread: run() through the entry core, its result encoded
as v1 does, and the answer written (directly, or streamed chunk by chunk).

``Scorer.run(req)`` is the worker pool's job function. It returns the ``Reply`` it answered
with, having given back the request's concurrency slot (``release``): before writing a plain
answer, so that a client sending its next request at once finds the slot free, and only after
the last chunk of a streamed one, so that a streaming replica counts as busy.

Streams (``@rawhttp`` run() returning ``AMLResponse(generator)``): the scoring timeout covers
run() and the first chunk; once that is claimed and sent, the timeout no longer applies, and
the generator runs to its end, or until the client goes away or takes nothing for
``--send-timeout`` (stream.py). A generator that raises before its first chunk is an ordinary
run() failure (500); after it, the body is cut short.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable

from modelfleet.replica.entry import BadInput, Entry, RunFailed, UnsupportedInput, UnsupportedMethod
from modelfleet.replica.ids import request_id_of
from modelfleet.replica.protocol import Request
from modelfleet.replica.responses import MSG_INTERNAL, MSG_RUN_FAILED, Reply, StreamedReply, encode_result, json_reply
from modelfleet.replica.shared import Shared
from modelfleet.replica.stream import ChunkSender
from modelfleet.replica.workers import ScoringInterrupted
from modelfleet.telemetry import collect

logger = logging.getLogger("modelfleet.replica")


class Scorer:
    """The worker-thread side of /score: what runs between admission and the answer."""

    def __init__(self, shared: Shared, entry: Entry, release: Callable[[Request], None]) -> None:
        config = shared.config
        self.shared = shared
        self.entry = entry
        self.release = release
        self.sink: collect.DataSink | None = None  # model data collection (ReplicaServer.load)
        self.send_timeout_s = config.send_timeout_s
        # Canned replies (STYLE item 6).
        self.method_not_allowed = json_reply(405, "Method not allowed")
        self.run_failed = json_reply(500, MSG_RUN_FAILED, run_failed=True)
        self.internal = json_reply(500, MSG_INTERNAL)
        self.timeout = json_reply(500, f"Scoring timeout after {config.scoring_timeout_ms} ms", run_failed=True)

    def __repr__(self) -> str:
        return f"<Scorer {self.entry!r}>"

    def run(self, req: Request) -> Reply:
        """Answer one /score request (the worker pool's job function)."""
        sink = self.sink
        if sink is None:
            reply = self.reply_for(req)
            if type(reply) is StreamedReply:
                return self.stream(req, reply)
            self.release(req)
            req.conn.send_from_worker(req, reply)
            return reply
        collect.set_request_ids(req.ids)  # ModelDataCollector.collect() inside run() reads it
        reply = self.reply_for(req)
        if type(reply) is StreamedReply:
            return self.stream(req, reply)
        self.release(req)
        req.conn.send_from_worker(req, reply)
        # After the answer is out: two appends to the sink's buffer, nothing else.
        answer = reply.body if sink.auto_predictions and reply.status < 400 else None
        request = (req.body or req.query) if sink.auto_inputs else None
        if request is not None or answer is not None:
            sink.exchange(req.ids, time.time(), request, answer)
        return reply

    def stream(self, req: Request, reply: StreamedReply) -> Reply:
        """Send a streamed answer from this worker thread (see stream.py). The scoring timeout
        covers run() and the first chunk; the slot is held until the stream ends."""
        conn = req.conn
        try:
            try:
                first = None if req.head else next(reply.chunks, None)
            except ScoringInterrupted:
                return self.timeout  # the loop has answered already
            except Exception as ex:  # noqa: BLE001 - the script's generator raised before any byte was sent
                logger.error("the streamed answer of run() for request %s raised:\n%s", _rid(req), format_exception(ex))
                return self.run_failed
            if not conn.claim(req):
                return self.timeout  # the scoring timeout answered first
            assert self.shared.loop is not None
            if not req.chunked:
                req.keep_alive = False  # HTTP/1.0: the close ends the body
            sender = ChunkSender(conn, self.shared.loop, req.chunked, self.send_timeout_s)
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
                    "the streamed answer of run() for request %s raised mid-stream:\n%s",
                    _rid(req),
                    format_exception(ex),
                )
                sender.abort()
                return reply
            sender.end()
            return reply
        finally:
            try:
                reply.close()
            except Exception as ex:  # noqa: BLE001 - the script's cleanup raised
                logger.error("closing the streamed answer of request %s raised:\n%s", _rid(req), format_exception(ex))
            self.release(req)

    def reply_for(self, req: Request) -> Reply:
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
            logger.error("run() raised for request %s:\n%s", _rid(req), format_exception(ex.cause))
            return self.run_failed
        try:
            return encode_result(result, elapsed_ms)
        except Exception as ex:  # noqa: BLE001 - not JSON-serialisable, or a malformed response object
            logger.error("the result of run() for request %s could not be sent:\n%s", _rid(req), format_exception(ex))
            return self.internal


def _rid(req: Request) -> str:
    return request_id_of(req.headers, req.ids)


def format_exception(ex: BaseException) -> str:
    return "".join(traceback.format_exception(type(ex), ex, ex.__traceback__)).rstrip()
