"""The in-cluster router process (v1's azureml-fe): the same ``Router`` as the local cluster,
fed by watching the Kubernetes API instead of by a local target.

    modelfleet router --kubernetes [--namespace NS] [--host ADDR] [--port 8080]
                      [--kubeconfig FILE [--context NAME]] [--tls-cert FILE --tls-key FILE]
                      [--peer-port 8081] [--grpc-port 8001]

In a pod it authenticates as its ServiceAccount (the token the kubelet mounts); elsewhere
(tests, or a router run beside a cluster) with ``--kubeconfig``. What it may read is what
the router's Role grants (``manifests.router_rules``): pods and ConfigMaps to list and
watch, each service's Secret by name; ``deployments/scale`` to patch. Discovery is
``targets/kubernetes/discovery.py``, the router pods' split of the replicas' slots
``peers.py``; autoscaling (by the pod holding the Lease) is ``targets/kubernetes/scaler.py``.
With ``--tls-cert``/``--tls-key`` (the router's ``kubernetes.io/tls`` Secret, mounted) it
serves HTTPS only; a new certificate reaches the pods by a rollout (the Deployment's template
carries its digest), not by re-reading the mounted files. With ``--peer-port`` (the router's
pods: 8081) it also takes requests forwarded by a peer router pod there
(``targets/kubernetes/forward.py``), and forwards those of a service it owns no slot of.
With ``--grpc-port`` it also serves the Open Inference Protocol's gRPC API there
(``router/grpc_front.py``: TLS with the same pair when HTTPS is on), reaching its own router
through a private Unix socket. SIGTERM or SIGINT stops it: the listeners close, then the watches.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kubernetes import client, config

from modelfleet import __version__
from modelfleet.control.tls import server_context
from modelfleet.errors import ConfigError
from modelfleet.router.grpc_front import GrpcFront
from modelfleet.router.proxy import Router
from modelfleet.targets.kubernetes.discovery import Discovery
from modelfleet.targets.kubernetes.forward import PEER_PORT, PeerConnection
from modelfleet.targets.kubernetes.manifests import ROUTER_PORT
from modelfleet.targets.kubernetes.scaler import Scaler

log = logging.getLogger("modelfleet.router")


def api_client(kubeconfig: str | None, context: str | None = None) -> client.ApiClient:
    """A client from a kubeconfig file, or the pod's own ServiceAccount when there is none."""
    if kubeconfig:
        path = os.path.expanduser(kubeconfig)
        if not os.path.isfile(path):
            raise ConfigError(f"kubeconfig {kubeconfig!r} is not a file")
        return config.new_client_from_config(config_file=path, context=context)
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise ConfigError(f"not in a pod ({exc}); pass --kubeconfig FILE") from exc
    return client.ApiClient(configuration)


async def serve(
    api: client.ApiClient,
    namespace: str,
    host: str,
    port: int,
    tls: ssl.SSLContext | None = None,
    peer_port: int | None = None,
    grpc_port: int | None = None,
    tls_pair: tuple[bytes, bytes] | None = None,
) -> None:
    # a peer's forwarding port that refuses is skipped for a while (discovery.replica_failed)
    router = Router(on_replica_failed=lambda service, rid: discovery.replica_failed(service, rid))
    bound = await router.start(host=host, port=port, ssl=tls)
    grpc = None
    if grpc_port is not None:
        socket_path = os.path.join(tempfile.mkdtemp(prefix="modelfleet-router-"), "router.sock")
        await router.start_unix(socket_path)
        grpc = GrpcFront((socket_path, -1), __version__)
        bound_grpc = await grpc.start(host, grpc_port, tls=tls_pair)
        log.info("router serves the gRPC API on %s:%d%s", host, bound_grpc, " (TLS)" if tls_pair else "")
    # HOSTNAME is the pod's name in a pod: the router pods split the replicas' slots by it
    # (peers.py), and one of them, the Lease holder, scales.
    identity = os.environ.get("HOSTNAME") or f"{socket.gethostname()}-{os.getpid()}"
    discovery = Discovery(api, namespace, router, identity, peer_port or PEER_PORT)
    peers = None
    if peer_port is not None:
        peers = await asyncio.get_running_loop().create_server(
            lambda: PeerConnection(router, discovery), host, peer_port, backlog=2048
        )
        log.info("router takes forwarded requests on %s:%d", host, peer_port)
    discovery.start()
    scaler = Scaler(api, namespace, router, identity)
    scaler.start(discovery.serving)
    log.info("router for namespace %s listening on %s://%s:%d", namespace, "https" if tls else "http", host, bound)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        log.info("router stopping")
        if peers is not None:
            peers.close()
        if grpc is not None:
            await grpc.stop(grace_s=0)
        await scaler.stop()
        await router.stop()
        await discovery.stop()
        api.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelfleet router", description="the router of a Kubernetes cluster")
    parser.add_argument("--kubernetes", action="store_true", required=True, help="discover services through the API")
    parser.add_argument("--namespace", default=os.environ.get("MODELFLEET_NAMESPACE") or "default")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=ROUTER_PORT)
    parser.add_argument("--kubeconfig", help="authenticate as this kubeconfig says (default: the pod's account)")
    parser.add_argument("--context", help="the kubeconfig's context (default: its current one)")
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (chain)")
    parser.add_argument("--tls-key", help="... and this unencrypted PEM private key")
    parser.add_argument(
        "--peer-port", type=int, default=None, help="take requests forwarded by peer router pods on this port"
    )
    parser.add_argument("--grpc-port", type=int, default=None, help="serve the V2 gRPC API on this port too")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    tls = server_context(Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # $KUBECONFIG before the pod's own account, as config.load_config() does (a node that
    # cannot mount the account at its fixed path hands it over that way)
    api = api_client(args.kubeconfig or os.environ.get("KUBECONFIG"), args.context)
    pair = (Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes()) if args.tls_cert else None
    asyncio.run(serve(api, args.namespace, args.host, args.port, tls, args.peer_port, args.grpc_port, pair))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
