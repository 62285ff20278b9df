"""``modelfleet cluster start|stop|status``: the local cluster daemon."""

from __future__ import annotations

import argparse
from typing import Any

from modelfleet.cli.common import add_output, cluster_client, print_output, shown, workspace
from modelfleet.errors import Conflict


def register(groups: Any) -> None:
    cluster = groups.add_parser("cluster", help="the local cluster daemon").add_subparsers(
        metavar="COMMAND", dest="subcommand", required=True
    )
    start = cluster.add_parser("start", help="start the local cluster (deploy does this on demand)")
    start.add_argument("--port", type=int, help="router port (default: the last one used, else a free one)")
    start.add_argument("--host", default="127.0.0.1", help="router address to bind (default 127.0.0.1)")
    start.add_argument(
        "--grpc-port", type=int, help="the Open Inference Protocol's gRPC port (default: the last one, else a free one)"
    )
    tls = start.add_argument_group("TLS (remembered across restarts; default: as last started, else off)")
    tls.add_argument("--tls-self-signed", action="store_true", help="https with a generated localhost certificate")
    tls.add_argument("--tls-cert", metavar="FILE", help="https with this certificate (chain) PEM file")
    tls.add_argument("--tls-key", metavar="FILE", help="the certificate's private key PEM file")
    tls.add_argument("--no-tls", action="store_true", help="plain http")
    tls.add_argument("--http-port", type=int, metavar="N", help="with TLS, also serve plain http on port N")
    limits = start.add_argument_group("router limits (remembered across restarts; defaults as documented)")
    limits.add_argument("--router-max-header-bytes", type=int, metavar="N",
                        help="request line and headers together (default 65536); past it: 431")  # fmt: skip
    limits.add_argument("--router-max-header-fields", type=int, metavar="N",
                        help="header fields (default 100); past it: 431")  # fmt: skip
    limits.add_argument("--router-header-timeout-s", type=float, metavar="S",
                        help="a request head must arrive within this (default 20); past it: 408")  # fmt: skip
    limits.add_argument("--router-keep-alive-timeout-s", type=float, metavar="S",
                        help="an idle keep-alive connection is closed after this (default 75)")  # fmt: skip
    limits.add_argument("--router-send-timeout-s", type=float, metavar="S",
                        help="a client reading none of its answer this long is cut off (default 60)")  # fmt: skip
    workers = start.add_argument_group("router processes (remembered across restarts)")
    workers.add_argument("--router-workers", metavar="N|LOW-HIGH",
                         help="router processes sharing the port (default 1: the daemon's own only); "
                              "a range: their count follows the routing time")  # fmt: skip
    workers.add_argument("--router-slots", choices=("partitioned", "shared"),
                         help="how the processes share each replica's slots (default partitioned)")  # fmt: skip
    start.add_argument("--replica-start", metavar="fork|exec",
                       help="how replicas start (remembered across restarts; default fork): forked from one server "
                            "per interpreter that has the runtime loaded (about 6.5 MiB each), or exec'd, an "
                            "interpreter each (about 16 MiB); exec'd anyway where a fork cannot keep a guarantee "
                            "(`cluster status` says which and why)")  # fmt: skip
    start.set_defaults(handler=cluster_start)
    cluster.add_parser("stop", help="stop it; services come back on the next start").set_defaults(handler=cluster_stop)
    status = cluster.add_parser("status", help="daemon, router and replicas")
    add_output(status)
    status.set_defaults(handler=cluster_status)


def cluster_start(args: argparse.Namespace) -> int:
    from modelfleet.control import router_limits, router_workers, tls

    ws = workspace(args)
    cluster = ws.cluster()
    flags = {"cert": args.tls_cert, "key": args.tls_key, "off": args.no_tls, "http_port": args.http_port}
    wanted = tls.requested(self_signed=args.tls_self_signed, **flags)
    if wanted is not None and wanted != tls.load(ws.store):
        if cluster.info() is not None:
            raise Conflict(
                "the cluster is running with other TLS settings; stop it with `modelfleet cluster stop`, "
                "then start it again with these flags"
            )
        tls.save(ws.store, wanted)
    changes = {
        field: getattr(args, flag) for flag, field in router_limits.FLAGS.items() if getattr(args, flag) is not None
    }
    if changes:
        if cluster.info() is not None:
            raise Conflict(
                "the cluster is running with other router limits; stop it with `modelfleet cluster stop`, "
                "then start it again with these flags"
            )
        router_limits.save(ws.store, changes)
    if args.router_workers is not None or args.router_slots is not None:
        stored = router_workers.load(ws.store)
        workers, most = (
            router_workers.parse_workers(args.router_workers)
            if args.router_workers is not None
            else (stored.workers, stored.most)
        )
        wanted_workers = router_workers.WorkerSettings(workers, most, args.router_slots or stored.slots)  # checked
        if wanted_workers != stored:
            if cluster.info() is not None:
                raise Conflict(
                    "the cluster is running with other router workers; stop it with `modelfleet cluster stop`, "
                    "then start it again with these flags"
                )
            router_workers.save(ws.store, wanted_workers)
    if args.replica_start is not None:  # targets/forkserver.py; MODELFLEET_FORK_SERVER overrides it
        from modelfleet.targets import forkserver

        mode, stored = forkserver.parse_mode(args.replica_start), ws.store.get_setting(forkserver.SETTING)
        if mode != (stored or forkserver.DEFAULT) and cluster.info() is not None:
            raise Conflict(
                f"the cluster is running with replicas started by {stored or forkserver.DEFAULT}; stop it with "
                "`modelfleet cluster stop`, then start it again with this flag"
            )
        if mode != stored:
            ws.store.set_setting(forkserver.SETTING, mode)
    info = cluster.ensure_running(port=args.port, host=args.host, grpc_port=args.grpc_port)
    print(f"cluster running: router {_router_uri(info)} (pid {info['pid']})")
    if info.get("tls_cert_file"):
        print(f"certificate: {info['tls_cert_file']} (clients other than modelfleet pass it as their CA bundle)")
    if info.get("http_port"):
        print(f"plain http also on port {info['http_port']}")
    if info.get("grpc_port"):
        print(_grpc_line(info))
    return 0


def _router_uri(info: dict[str, Any]) -> str:
    return f"{info.get('scheme', 'http')}://{info.get('uri_host') or info['router_host']}:{info['router_port']}"


def _grpc_address(info: dict[str, Any]) -> str:
    return f"{info.get('uri_host') or info['router_host']}:{info['grpc_port']}"


def _grpc_line(info: dict[str, Any]) -> str:
    """The gRPC API for people: TLS when the router serves TLS (the same certificate)."""
    return f"gRPC (Open Inference Protocol): {_grpc_address(info)}{' (TLS)' if info.get('scheme') == 'https' else ''}"


def _metrics_uri(info: dict[str, Any]) -> str | None:
    """The Prometheus endpoint (plain http, no credentials; control/telemetry.py)."""
    if not info.get("metrics_port"):
        return None
    return f"http://{info.get('metrics_host') or '127.0.0.1'}:{info['metrics_port']}/metrics"


def _start_line(start: dict[str, Any]) -> str:
    """``replicas start by fork (default): 12 forked, 1 exec'd (1 where it runs as user nobody ...)``"""
    line = f"  replicas start by {start['mode']} ({start['source']}): {start['forked']} forked, {start['exec']} exec'd"
    reasons = "; ".join(f"{e['replicas']} where {e['reason']}" for e in start["exec_reasons"])
    return f"{line} ({reasons})" if reasons else line


def cluster_stop(args: argparse.Namespace) -> int:
    stopped = workspace(args).cluster().stop()
    print("cluster stopped" if stopped else "cluster was not running")
    return 0


def cluster_status(args: argparse.Namespace) -> int:
    cluster = cluster_client(args)
    info = cluster.info()
    if info is None:
        print_output(args, {"running": False}, "cluster: not running")
        return 0
    status = cluster.status()
    data = {
        "running": True,
        "pid": info["pid"],
        "router_uri": _router_uri(info),
        "tls_cert_file": info.get("tls_cert_file"),
        "http_port": info.get("http_port"),
        "grpc_address": _grpc_address(info) if info.get("grpc_port") else None,
        "metrics_uri": _metrics_uri(info),
        **status,
    }
    lines = [f"cluster: running (pid {info['pid']}), router {data['router_uri']}"]
    if status.get("cluster"):  # its id: the owner recorded with the services it runs (store/clusters.py)
        lines.append(f"  id: {status['cluster']}")
    if info.get("tls_cert_file"):
        lines.append(f"  certificate: {info['tls_cert_file']} (pass it to other clients as their CA bundle)")
    if info.get("http_port"):
        lines.append(f"  plain http: port {info['http_port']}")
    if data["grpc_address"]:
        lines.append(f"  {_grpc_line(info)}")
    if data["metrics_uri"]:
        lines.append(f"  metrics: {data['metrics_uri']}")
    if status.get("router_workers"):  # cluster start --router-workers N (control/router_workers.py)
        procs = ", ".join(f"pid {w['pid']} ({w['answered']} answered)" for w in status["router_workers"])
        lines.append(f"  router processes: {procs}")
    if status.get("replica_start"):  # forked or exec'd (targets/forkserver.py)
        lines.append(_start_line(status["replica_start"]))
    if status.get("dashboard_uri"):
        lines.append(f"  dashboard: {status['dashboard_uri']} (log in with `modelfleet dashboard`)")
    for name, svc in status["services"].items():
        routed = status["router"].get(name)
        load = (
            f", {routed['in_flight']} in flight, {routed['queued']} queued, at most {routed['limit']} per replica"
            if routed
            else ", not routed"
        )
        lines.append(f"  {name}: generation {shown(svc['serving_generation'])}{load}")
        for replica in svc["replicas"]:
            lines.append(
                f"    {replica['id']}: {replica['state']} pid={shown(replica['pid'])} "
                f"address={shown(replica['address'])} restarts={replica['restarts']}"
            )
    print_output(args, data, "\n".join(lines))
    return 0
