"""``modelfleet cluster start|stop|status``: the local cluster daemon."""

from __future__ import annotations

import argparse
from typing import Any

from modelfleet.cli.common import add_output, print_output, workspace


def register(groups: Any) -> None:
    cluster = groups.add_parser("cluster", help="the local cluster daemon").add_subparsers()
    start = cluster.add_parser("start", help="start the local cluster (deploy does this on demand)")
    start.add_argument("--port", type=int, help="router port (default: the last one used, else a free one)")
    start.add_argument("--host", default="127.0.0.1", help="router address to bind (default 127.0.0.1)")
    start.set_defaults(handler=cluster_start)
    cluster.add_parser("stop", help="stop it; services come back on the next start").set_defaults(handler=cluster_stop)
    status = cluster.add_parser("status", help="daemon, router and replicas")
    add_output(status)
    status.set_defaults(handler=cluster_status)


def cluster_start(args: argparse.Namespace) -> int:
    ws = workspace(args)
    info = ws.cluster().ensure_running(port=args.port, host=args.host)
    print(f"cluster running: router http://{info['router_host']}:{info['router_port']} (pid {info['pid']})")
    return 0


def cluster_stop(args: argparse.Namespace) -> int:
    stopped = workspace(args).cluster().stop()
    print("cluster stopped" if stopped else "cluster was not running")
    return 0


def cluster_status(args: argparse.Namespace) -> int:
    ws = workspace(args)
    cluster = ws.cluster()
    info = cluster.info()
    if info is None:
        print_output(args, {"running": False}, "cluster: not running")
        return 0
    status = cluster.status()
    data = {
        "running": True,
        "pid": info["pid"],
        "router_uri": f"http://{info['router_host']}:{info['router_port']}",
        **status,
    }
    lines = [f"cluster: running (pid {info['pid']}), router {data['router_uri']}"]
    for name, svc in status["services"].items():
        lines.append(f"  {name}: generation {svc['serving_generation']}, {status['router'].get(name, {})}")
        for replica in svc["replicas"]:
            lines.append(
                f"    {replica['id']}: {replica['state']} pid={replica['pid']} port={replica['port']} "
                f"restarts={replica['restarts']}"
            )
    print_output(args, data, "\n".join(lines))
    return 0
