"""Running a replica: load the script and call init(), listen (TCP or a Unix socket), serve
until a signal, drain. asyncio + httptools, on uvloop when importable.

The pieces: ``protocol`` (one HTTP/1.1 connection), ``shared`` (what every connection reads),
``limits`` (header limits and timeouts), ``app`` (the v1 routes and /score's admission),
``scoring`` (run() on a worker thread, plain or streamed answers), ``ids`` (request ids),
``access`` (the access log), ``listen`` (the Unix socket).

Shutdown (SIGTERM/SIGINT): stop accepting, close idle connections, let in-flight requests finish
(answering them with ``Connection: close``), stop the workers, return 0. A second signal stops
waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import logging
import os
import signal
import sys
import tempfile
import time

from modelfleet.replica import compat, logtee
from modelfleet.replica.app import App
from modelfleet.replica.config import ReplicaConfig
from modelfleet.replica.entry import InitFailed, ScriptError, load_entry
from modelfleet.replica.listen import ListenError, listen_unix
from modelfleet.replica.scoring import format_exception
from modelfleet.replica.shared import Shared
from modelfleet.replica.swagger import SwaggerDocs
from modelfleet.replica.workers import WorkerPool
from modelfleet.telemetry import collect
from modelfleet.telemetry.logfiles import RotatingFile
from modelfleet.telemetry.replica_stats import StatsFile

logger = logging.getLogger("modelfleet.replica")

EXIT_OK = 0
EXIT_BAD_SETTINGS = 2  # as for bad flags: the address cannot be listened on
EXIT_INIT_FAILED = 3  # gunicorn's boot-error status, which azmlinfsrv also uses


class ReplicaServer:
    """One replica: ``load()`` the script and run init(), then ``run()`` the HTTP server.

    Built by ``create_server(config)``; the constructor has no side effects.
    """

    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config
        self.app: App | None = None
        self.sink: collect.DataSink | None = None
        # counters the daemon reads (collection, dropped log lines): started by serve()
        self.stats = StatsFile(config.stats_file) if config.stats_file else None
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
                stats_file=self.stats,
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
        if config.max_batch_size > 1:  # before init(): a script that cannot batch fails fast
            entry.check_batching()
            logger.info(
                "Dynamic batching: run_batch() with up to %d requests, gathered for up to %d ms",
                config.max_batch_size,
                config.max_batch_delay_ms,
            )
        entry.init()
        logger.info("init() completed")
        swagger = SwaggerDocs(
            entry.run_function, config.app_root, config.service_name, config.service_version, config.service_path_prefix
        )
        self.app = App(Shared(config), entry, swagger)
        self.app.scorer.sink = self.sink
        if self.app.batcher is not None and self.stats is not None:
            self.stats.add(self.app.batcher.stats)  # batch sizes and busy calls (/metrics, autoscaler)
        return self.app

    async def serve(self) -> None:
        """Bind, write the port file, serve until stop() or a signal, then drain."""
        assert self.app is not None, "call load() first"
        app = self.app
        shared = app.shared
        loop = asyncio.get_running_loop()
        shared.loop = loop
        self._stop = asyncio.Event()
        config = self.config
        try:
            if config.unix_socket:
                server = await listen_unix(loop, app.connection, config.unix_socket)
            else:
                server = await loop.create_server(app.connection, config.host, config.port, backlog=2048)
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
            if shared.access is not None:
                shared.access.write()
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
        shared = self.app.shared
        while True:
            await asyncio.sleep(1.0)
            shared.refresh_date()
            if shared.access is not None:
                shared.access.write()
            now = time.monotonic()
            for conn in list(shared.connections):
                conn.expire(now)

    async def _drain(self) -> None:
        assert self.app is not None
        app = self.app
        shared = app.shared
        shared.stopping = True
        deadline = time.monotonic() + app.timeout_s + 1.0
        while time.monotonic() < deadline and self._signals < 2:
            for conn in list(shared.connections):
                conn.close_if_idle(time.monotonic(), 0.0)
            if app.in_flight == 0 and not any(c.busy or c.pending for c in shared.connections):
                break
            await asyncio.sleep(0.02)
        for conn in list(shared.connections):
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


def _rotate_output(config: ReplicaConfig) -> RotatingFile:
    """Send this process's stdout and stderr to ``config.log_file``, rotated by size.

    Python-level writes (print, logging, tracebacks) go through a ``RotatingFile`` and so rotate
    exactly at the limit; fds 1 and 2 are pointed at the current file after each rotation, so
    output written below Python (faulthandler, C libraries) lands there too."""
    assert config.log_file is not None

    def point_fds(fd: int) -> None:
        for target in (1, 2):
            with contextlib.suppress(OSError):
                os.dup2(fd, target)

    # a full disk drops and counts lines rather than failing the script's print() or a request
    raw = RotatingFile(
        config.log_file, config.log_max_bytes, config.log_backups, on_rotate=point_fds, count_failures=True
    )
    point_fds(raw.fileno())
    stream = io.TextIOWrapper(
        io.BufferedWriter(raw),  # type: ignore[type-var]  # a RawIOBase, which typeshed's protocol misses
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )
    sys.stdout = sys.stderr = stream
    return raw


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
    log = _rotate_output(config) if config.log_file else None
    if log is None:  # Kubernetes (MODELFLEET_LOG_TEE): stdout stays the container log, a copy goes to files
        logtee.start_from_env(config.replica_id, config.log_max_bytes, config.log_backups)
    _setup_logging()
    # With a rotated log, fd 2 always points at the current file (sys.stderr's own fd changes).
    faulthandler.enable(file=2) if config.log_file else faulthandler.enable()
    for flag in config.ignored:
        logger.warning("%s is accepted for compatibility with azmlinfsrv and has no effect here", flag)
    server = create_server(config)
    if server.stats is not None:
        if log is not None:
            server.stats.add(log.counts)
        server.stats.start()
    try:
        return _load_and_serve(server, config)
    finally:
        if server.stats is not None:
            server.stats.close()


def _load_and_serve(server: ReplicaServer, config: ReplicaConfig) -> int:
    try:
        server.load()
    except (ScriptError, InitFailed) as ex:
        server.close_sink()
        cause = ex.__cause__
        detail = format_exception(cause) if cause is not None else ""
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
