"""The threads that run run(), off the event loop, and the scoring timeout's interrupt.

``WorkerPool(n)`` starts n daemon threads reading one queue. ``submit(fn, arg, on_done)``
returns a ``Job``; when ``fn(arg)`` has returned or raised (or the job was skipped),
``on_done(job)`` is called on the event loop's thread. Each job goes QUEUED -> RUNNING -> DONE;
the transitions happen under one lock so that the loop and the worker agree on them.

The scoring timeout. azmlinfsrv arms SIGALRM around run(), so a TimeoutError is raised inside
run() at the deadline and the worker is free again. Signals reach only the main thread, so here
the loop answers the client at the deadline and ``interrupt(job)`` raises ``ScoringInterrupted``
(a TimeoutError) inside the worker thread with ``PyThreadState_SetAsyncExc``. As with SIGALRM,
it lands at the next Python bytecode: code blocked inside C (time.sleep, a long numpy call)
finishes that call first. An interrupt that lands after fn() returned is absorbed by the worker
(``_settle``), never by the next job.
"""

from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

QUEUED, RUNNING, DONE = 0, 1, 2


class ScoringInterrupted(TimeoutError):
    """Raised inside run() when the scoring timeout has passed; the client has its answer."""


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    # With exc=None (passed as NULL) a pending asynchronous exception is cleared.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


class Job:
    """One call of fn on a worker. ``result``/``error`` are set by the worker before on_done."""

    __slots__ = (
        "fn",
        "arg",
        "on_done",
        "state",
        "thread_id",
        "started",
        "interrupted",
        "skip",
        "result",
        "error",
    )

    def __init__(self, fn: Callable[[Any], Any], arg: Any, on_done: Callable[[Job], None]) -> None:
        self.fn = fn
        self.arg = arg
        self.on_done = on_done
        self.state = QUEUED
        self.thread_id = 0
        self.started = 0.0  # time.monotonic() when fn started
        self.interrupted = False
        self.skip = False
        self.result: Any = None
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<Job state={('queued', 'running', 'done')[self.state]} interrupted={self.interrupted}>"


class WorkerPool:
    def __init__(self, count: int, loop: asyncio.AbstractEventLoop, name: str = "run") -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(count)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[Any], Any], arg: Any, on_done: Callable[[Job], None]) -> Job:
        job = Job(fn, arg, on_done)
        self._queue.put(job)
        return job

    def interrupt(self, job: Job) -> None:
        """Stop the job: a queued one is skipped, a running one gets ScoringInterrupted."""
        with self._lock:
            if job.state == QUEUED:
                job.skip = True
            elif job.state == RUNNING and not job.interrupted:
                job.interrupted = True
                _set_async_exc(job.thread_id, ScoringInterrupted)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        thread_id = threading.get_ident()
        while True:
            try:
                job = self._queue.get()
                if job is None:
                    return
                with self._lock:
                    run = not job.skip
                    if run:
                        job.state, job.thread_id, job.started = RUNNING, thread_id, time.monotonic()
                if run:
                    try:
                        job.result = job.fn(job.arg)
                    except BaseException as ex:  # noqa: BLE001 - reported to the loop, never fatal here
                        job.error = ex
                self._settle(job, thread_id)
                self._loop.call_soon_threadsafe(job.on_done, job)
            except ScoringInterrupted:  # pragma: no cover - defensive; _settle clears these
                continue
            except RuntimeError:  # the loop is closed: the server is gone
                return

    def _settle(self, job: Job, thread_id: int) -> None:
        # Mark DONE so no new interrupt is sent, then clear one that was sent but has not
        # landed yet. If it lands inside this loop, the loop runs again.
        while True:
            try:
                with self._lock:
                    job.state = DONE
                    pending = job.interrupted
                if pending:
                    _set_async_exc(thread_id, None)
                return
            except ScoringInterrupted:
                continue
