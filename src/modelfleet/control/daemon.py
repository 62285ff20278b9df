"""The local cluster daemon: the composition root of the control plane.

One per workspace folder (an exclusive lock on ``runtime/daemon.lock`` makes a second one exit
at once). It builds the store, the router, the local target and the reconciler; serves the
admin API; restores every stored local service (in a workspace a team shares, every one this
folder's cluster owns: store/clusters.py); and on SIGTERM/SIGINT or an admin shutdown
stops in order: admin API, services (drain, then stop replicas), router.

The router's port is kept in the workspace so that scoring URIs survive a restart (in a shared
workspace, as this cluster's own setting: each teammate's cluster has its ports).

    python -m modelfleet.control.daemon --workspace PATH [--port N] [--host 127.0.0.1]
        [--log-file PATH [--log-max-bytes N] [--log-backups N]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import fcntl
import json
import logging
import logging.handlers
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import modelfleet
from modelfleet.control import router_limits, router_workers
from modelfleet.control.admin import AdminHandlers, AdminServer
from modelfleet.control.autoscaler import Autoscaler, machine_capacity
from modelfleet.control.credentials import signing_public_key
from modelfleet.control.dashboard.server import DASHBOARD_PORT_SETTING, DashboardServer
from modelfleet.control.paths import DAEMON_PROTOCOL, RuntimePaths
from modelfleet.control.reconcile import LOCAL_IDLE_RESYNC_S, Reconciler
from modelfleet.control.rollouts import Rollouts, router_counts
from modelfleet.control.router_fleet import FleetRouter
from modelfleet.control.telemetry import METRICS_PORT_SETTING, ClusterTelemetry
from modelfleet.control.tls import HTTP_PORT_SETTING, router_listeners
from modelfleet.router.grpc_front import GrpcFront
from modelfleet.router.proxy import Router
from modelfleet.store.registry import Store
from modelfleet.targets import forkserver
from modelfleet.targets.local import LocalTarget
from modelfleet.telemetry.tracing import traces_endpoint

log = logging.getLogger("modelfleet.daemon")

ROUTER_PORT_SETTING = "router_port"
GRPC_PORT_SETTING = "router_grpc_port"  # the Open Inference Protocol's gRPC API (router/grpc_front.py)
# daemon.log: a busy cluster (or a flood of refused admin calls) must not fill the disk;
# 10 MB x (1 + 5 backups) keeps days of ordinary lines and bounds the worst case at 60 MB.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
LOCK_WAIT_S = 15.0  # how long a start waits for a killed daemon's lock (take_lock)


@dataclass(frozen=True)
class DaemonConfig:
    workspace: Path
    host: str = "127.0.0.1"
    port: int | None = None  # None: the stored port, else a free one (then stored)
    grpc_port: int | None = None  # the same, for the gRPC API
    metrics_host: str = "127.0.0.1"  # Prometheus endpoint, no credentials: loopback by default
    metrics_port: int | None = None  # None: the stored port, else a free one (then stored)
    otlp_endpoint: str | None = None  # request timings of enable_app_insights services (else the logs)
    dashboard: bool = True  # the live dashboard on 127.0.0.1 (control/dashboard), behind the admin token


class Daemon:
    def __init__(self, config: DaemonConfig, on_ready: Callable[[], None] | None = None) -> None:
        self.on_ready = on_ready
        self.config = config
        self.store = Store.open(config.workspace)
        self.paths = RuntimePaths(self.store.runtime_dir)
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # limits as `cluster start --router-...` stored them (control/router_limits.py)
        limits = router_limits.load(self.store).router_kwargs()
        # `cluster start --router-workers N`: N > 1 router processes share the port (router_workers.py)
        fleet = router_workers.load(self.store)
        self.router: Router
        if fleet.high > 1:
            self.router = FleetRouter(self._on_replica_failed, workers=fleet.workers, slots=fleet.slots, **limits)
        else:
            self.router = Router(on_replica_failed=self._on_replica_failed, **limits)
        reuse = fleet.high > 1
        port = self._choose_port()
        # TLS as stored by `cluster start` (control/tls.py); the certificate's dates need the clock
        tls = router_listeners(self.store, self.config.workspace, datetime.datetime.now(datetime.timezone.utc))
        router_port = await self.router.start(host=self.config.host, port=port, ssl=tls.context, reuse_port=reuse)
        self.store.set_setting(ROUTER_PORT_SETTING, str(router_port))
        http_port = None
        if tls.http_port is not None:  # plain HTTP beside TLS only when asked for
            http_port = await self.router.start(host=self.config.host, port=tls.http_port, reuse_port=reuse)
            self.store.set_setting(HTTP_PORT_SETTING, str(http_port))
        root = self.store.root
        # replicas forked or exec'd: `cluster start --replica-start`, MODELFLEET_FORK_SERVER over it
        start_mode = forkserver.choose(self.store.get_setting(forkserver.SETTING), os.environ)
        target = LocalTarget(
            self.store.runtime_dir, self.router, token_key=lambda: signing_public_key(root), replica_start=start_mode
        )
        self.target = target
        log.info("replicas start by %s (%s)", start_mode.mode, start_mode.source)
        grpc_port = await self._start_grpc(target.private_socket("router"), tls.cert_file, tls.key_file)
        self.workers: router_workers.RouterWorkers | None = None
        if isinstance(self.router, FleetRouter):
            listen = {"host": self.config.host, "port": router_port, "http_port": http_port}
            listen.update(cert_file=str(tls.cert_file or ""), key_file=str(tls.key_file or ""))
            self.workers = router_workers.RouterWorkers(
                self.router,
                target.private_socket("router-workers"),
                listen,
                limits,
                self._on_replica_failed,
                scale=fleet.scale_settings(),  # `--router-workers LOW-HIGH`: the count follows the routing time
            )
            await self.workers.start()
        # this folder's cluster: in a shared workspace it runs only its own services (store/clusters.py)
        # a steady service looked at every 10 s unprompted: this target reports every change (reconcile.py)
        self.reconciler = Reconciler(
            self.store, target, cluster=self.store.cluster_id, idle_resync_s=LOCAL_IDLE_RESYNC_S
        )
        # safe rollouts of endpoint versions (control/rollouts.py): they run here, not in the SDK
        self.rollouts = Rollouts(self.store, self.reconciler.sync, lambda s: router_counts(self.router).get(s))
        self.telemetry = ClusterTelemetry(
            self.router, self.reconciler, self.store.runtime_dir, self.config.otlp_endpoint
        )
        self.autoscaler = Autoscaler(
            self.reconciler, self.router.stats, machine_capacity(), replica_reports=self.telemetry.replica_reports
        )
        stored_metrics = self.store.get_setting(METRICS_PORT_SETTING)
        metrics_port = await self.telemetry.start(
            self.config.metrics_host,
            self.config.metrics_port if self.config.metrics_port is not None else int(stored_metrics or 0),
        )
        self.store.set_setting(METRICS_PORT_SETTING, str(metrics_port))

        token = secrets.token_urlsafe(32)
        _write_private(self.paths.admin_token, token)
        admin = AdminServer(
            loop,
            token,
            AdminHandlers(self.status, self._sync, self.reconciler.delete, self._stopping.set),
        )
        admin.start()
        self.dashboard: DashboardServer | None = None
        dashboard_port = None
        if self.config.dashboard:
            self.dashboard = DashboardServer(self.router, self.reconciler, self.store, self.config.workspace, token)
            dashboard_port = await self.dashboard.start(int(self.store.get_setting(DASHBOARD_PORT_SETTING) or 0))
            self.store.set_setting(DASHBOARD_PORT_SETTING, str(dashboard_port))
        info = {
            "pid": os.getpid(),
            "cluster": self.store.cluster_id,
            "modelfleet": modelfleet.__version__,
            "protocol": DAEMON_PROTOCOL,
            "admin_port": admin.port,
            "router_port": router_port,
            "router_host": self.config.host,
            "scheme": tls.scheme,
            "uri_host": tls.uri_host,
            "tls_cert_file": str(tls.cert_file) if tls.cert_file else None,
            "http_port": http_port,
            "grpc_port": grpc_port,
            "metrics_host": self.config.metrics_host,
            "metrics_port": metrics_port,
            "dashboard_port": dashboard_port,
        }
        _write_private(self.paths.cluster_json, json.dumps(info))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        log.info("cluster up: router on %s:%d, admin on 127.0.0.1:%d", self.config.host, router_port, admin.port)
        if self.on_ready is not None:
            self.on_ready()

        await self.reconciler.restore()
        await self.rollouts.resume(self.reconciler.owns)  # rollouts the last daemon left running go on
        self.autoscaler.start()
        await self._stopping.wait()

        log.info("cluster stopping")
        with contextlib.suppress(FileNotFoundError):
            self.paths.cluster_json.unlink()
        admin.stop()
        if self.dashboard is not None:
            await self.dashboard.stop()
        await self.autoscaler.stop()
        await self.rollouts.stop()
        await self.reconciler.shutdown()
        await self.grpc.stop(grace_s=0)
        if self.workers is not None:
            await self.workers.stop()
        await self.router.stop()
        await self.telemetry.stop()
        self.store.close()
        log.info("cluster stopped")

    def _choose_port(self) -> int:
        if self.config.port is not None:
            return self.config.port
        stored = self.store.get_setting(ROUTER_PORT_SETTING)
        return int(stored) if stored else 0

    async def _start_grpc(self, socket_path: Path, cert_file: Path | None, key_file: Path | None) -> int:
        """The gRPC API on its port (the one asked for, else the stored one, else a free one),
        reaching the router through its private Unix listener at ``socket_path`` (in the
        replicas' 0700 socket folder); TLS with the router's pair when on."""
        socket_path.unlink(missing_ok=True)  # a killed daemon's
        await self.router.start_unix(str(socket_path))
        os.chmod(socket_path, 0o600)
        self.grpc = GrpcFront((str(socket_path), -1), modelfleet.__version__)
        port = self.config.grpc_port
        if port is None:
            port = int(self.store.get_setting(GRPC_PORT_SETTING) or 0)
        pair = (cert_file.read_bytes(), key_file.read_bytes()) if cert_file and key_file else None
        grpc_port = await self.grpc.start(self.config.host, port, tls=pair)
        self.store.set_setting(GRPC_PORT_SETTING, str(grpc_port))
        return grpc_port

    def _on_replica_failed(self, service: str, replica_id: str) -> None:
        self.reconciler.on_replica_failed(service, replica_id)

    async def _sync(self, name: str) -> None:
        """Reconcile a stored service now; a name the workspace does not hold is NotFound (404),
        never a controller of its own (the admin API must not grow state per name asked)."""
        await asyncio.to_thread(self.store.get_service, name)
        self.reconciler.sync(name)
        await self.rollouts.on_sync(name)  # an endpoint's requested rollout starts here

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "workspace": str(self.config.workspace),
            "cluster": self.store.cluster_id,
            "services": self.reconciler.status(),
            "router": self.router.stats(),
            "auth_failures": self.router.auth_failures.snapshot(),
            "autoscaler": self.autoscaler.status(),
            # each service's router counters since it was published (endpoint.compare reads them)
            "service_counts": {name: c.to_json() for name, c in router_counts(self.router).items()},
            "rollouts": self.rollouts.status(),
            "dashboard_uri": self.dashboard.uri if self.dashboard is not None else None,
            # each router process (router_workers.py); stats above combine them
            "router_workers": self.workers.status() if self.workers is not None else None,
            "replica_start": self.target.start_status(),  # forked or exec'd (targets/forkserver.py)
        }


def _write_private(path: Path, text: str) -> None:
    """Write a file only the owner can read, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class _RotatingStdio(logging.handlers.RotatingFileHandler):
    """A size-rotated log file that is also the process's stdout and stderr, so what does not
    go through logging (a traceback printed by a library, a fault handler) lands in the same,
    current file instead of in a rotated one or nowhere."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._adopt_stdio()

    def doRollover(self) -> None:  # noqa: N802 - stdlib name
        super().doRollover()
        self._adopt_stdio()

    def _adopt_stdio(self) -> None:
        if self.stream is None:
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in (1, 2):
            os.dup2(self.stream.fileno(), fd)


def _configure_logging(log_file: Path | None, max_bytes: int, backups: int) -> None:
    if max_bytes < 4096 or backups < 1:
        raise SystemExit(
            f"--log-max-bytes must be at least 4096 and --log-backups at least 1 (got {max_bytes}, {backups})"
        )
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = _RotatingStdio(log_file, max_bytes, backups)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def _install_fast_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelfleet-daemon", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--grpc-port", type=int, default=None, help="the gRPC API's port (default: as last time)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="Prometheus endpoint address (no credentials)")
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--no-dashboard", action="store_true", help="serve no dashboard (control/dashboard)")
    parser.add_argument("--detach", action="store_true", help="fork into the background once the lock is held")
    parser.add_argument("--log-file", type=Path, default=None, help="log here, rotated by size (else stderr)")
    parser.add_argument("--log-max-bytes", type=int, default=LOG_MAX_BYTES, help="rotate the log file at this size")
    parser.add_argument("--log-backups", type=int, default=LOG_BACKUPS, help="rotated log files kept")
    args = parser.parse_args(argv)
    _configure_logging(args.log_file, args.log_max_bytes, args.log_backups)
    config = DaemonConfig(
        workspace=args.workspace.resolve(),
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        otlp_endpoint=traces_endpoint(os.environ),
        dashboard=not args.no_dashboard,
    )
    paths = RuntimePaths(config.workspace / ".modelfleet" / "runtime")
    paths.root.mkdir(parents=True, exist_ok=True)
    lock_fd = take_lock(paths)
    if lock_fd is None:
        log.info("another daemon already runs for %s", config.workspace)
        return 0
    ready_pipe = _detach() if args.detach else None
    _install_fast_loop()

    def signal_ready() -> None:
        if ready_pipe is not None:
            os.write(ready_pipe, b"ok")
            os.close(ready_pipe)

    try:
        asyncio.run(Daemon(config, on_ready=signal_ready).run())
    except Exception:
        log.exception("the cluster daemon failed")
        return 1
    finally:
        os.close(lock_fd)
    return 0


def take_lock(paths: RuntimePaths, wait_s: float = LOCK_WAIT_S) -> int | None:
    """The workspace's daemon lock (an fd that holds it), or None when another daemon has it.

    A daemon that was just killed holds the lock until the kernel has torn it down, which takes
    seconds for one with a thousand replicas' worth of pipes and memory; a start meanwhile (a
    CLI command right after the crash) must not take that for a live daemon and give up, or the
    CLI waits for a daemon that never comes. So while the lock is held and no daemon answers on
    the admin port its cluster.json names (a live one answers; one starting at the same time
    answers once it serves), this waits for the lock, up to ``wait_s``."""
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline or _daemon_answers(paths):
            os.close(fd)
            return None
        time.sleep(0.05)


def _daemon_answers(paths: RuntimePaths) -> bool:
    """A daemon answers HTTP on the admin port that cluster.json names (any answer: a 401 is a
    live daemon too). Accepting the connection is not enough: the kernel completes handshakes
    on a killed daemon's listening socket until it is torn down, but nobody reads them."""
    try:
        port = int(json.loads(paths.cluster_json.read_text())["admin_port"])
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"GET /v1/lock-probe HTTP/1.0\r\n\r\n")  # no token: the admin thread's 401
            return sock.recv(1) != b""
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _detach() -> int:
    """Fork into the background. The parent (the process the starter waits for) exits only
    once the child says it is serving (status 0) or has failed (status 1), so a start that
    fails is reported at once instead of after the starter's timeout."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            os._exit(0 if pipe.read() == b"ok" else 1)
    os.close(read_end)
    os.setsid()
    return write_end


if __name__ == "__main__":
    sys.exit(main())
