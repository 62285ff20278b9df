"""Kubernetes from the command line.

``modelfleet compute attach|list|show|detach``: the clusters a workspace deploys to.
``modelfleet k8s manifests -n NAME``: a deployed service's objects as YAML, for GitOps.
``modelfleet k8s router install|status|uninstall --compute-target NAME``: the cluster's router.
``modelfleet router --kubernetes``: the in-cluster router (what the router's pods run).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from modelfleet.cli.common import add_output, print_output, workspace
from modelfleet.errors import ConfigError


def register(groups: Any) -> None:
    _register_compute(groups)
    _register_k8s(groups)
    _register_router(groups)


# --------------------------------------------------------------------------- compute


def _register_compute(groups: Any) -> None:
    compute = groups.add_parser("compute", help="Kubernetes clusters attached to the workspace").add_subparsers(
        metavar="COMMAND", dest="subcommand", required=True
    )
    attach = compute.add_parser("attach", help="attach a cluster as a compute target")
    attach.add_argument("-n", "--name", required=True, help="the compute target's name (2-16 characters)")
    attach.add_argument("--kubeconfig", default="~/.kube/config", help="kubeconfig file (default ~/.kube/config)")
    attach.add_argument("--context", help="the kubeconfig's context (default: its current one)")
    attach.add_argument("--namespace", default="default", help="where services go (default: default)")
    attach.add_argument("--blob-store", help="http(s) URL the pods fetch models and source from")
    attach.add_argument(
        "--blob-store-sas-env",
        metavar="VAR",
        help="environment variable holding a SAS token (query string) for a private blob store",
    )
    attach.add_argument(
        "--blob-store-token-env",
        metavar="VAR",
        help="environment variable holding a bearer token for a blob store behind an auth proxy",
    )
    attach.add_argument("--router-uri", help="where clients reach the router (the Service's address)")
    attach.add_argument("--image", help="replica image for every service (default: repository:<environment hash>)")
    attach.add_argument("--image-repository", help="repository of the replica images (default modelfleet-replica)")
    attach.add_argument(
        "--image-registry",
        help="registry of the environments' hash-tagged images (repository default modelfleet-env); "
        "a deploy looks the tag up there and refuses on a miss, naming `env build-image`",
    )
    attach.add_argument("--image-build", choices=["kaniko"], help="on a miss, build the image in the cluster")
    attach.add_argument("--overwrite", action="store_true", help="replace a compute target of that name")
    attach.set_defaults(handler=compute_attach)
    listing = compute.add_parser("list", help="the attached compute targets")
    add_output(listing)
    listing.set_defaults(handler=compute_list)
    show = compute.add_parser("show", help="one compute target's settings")
    show.add_argument("-n", "--name", required=True, help="the compute target")
    add_output(show)
    show.set_defaults(handler=compute_show)
    detach = compute.add_parser("detach", help="forget a cluster (its services' objects stay in it)")
    detach.add_argument("-n", "--name", required=True, help="the compute target")
    detach.set_defaults(handler=compute_detach)


def compute_attach(args: argparse.Namespace) -> int:
    from modelfleet.sdk.compute import KubernetesCompute

    # The credential is read from the environment, never from the command line (ps shows argv);
    # it goes into a Secret in the cluster, not the workspace.
    credentials = {}
    for flag, var, key in (
        ("--blob-store-sas-env", args.blob_store_sas_env, "blob_store_sas"),
        ("--blob-store-token-env", args.blob_store_token_env, "blob_store_token"),
    ):
        if var is not None:
            if not os.environ.get(var):
                raise ConfigError(f"{flag}: environment variable {var} is not set or empty")
            credentials[key] = os.environ[var]
    target = KubernetesCompute.attach(
        workspace(args),
        args.name,
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        blob_store=args.blob_store,
        router_uri=args.router_uri,
        image=args.image,
        image_repository=args.image_repository,
        image_registry=args.image_registry,
        image_build=args.image_build,
        overwrite=args.overwrite,
        **credentials,
    )
    print(f"attached compute target {target.name} (namespace {target.namespace})")
    return 0


def compute_list(args: argparse.Namespace) -> int:
    from modelfleet.sdk.compute import ComputeTarget

    data = [t.serialize() for t in ComputeTarget.list(workspace(args))]
    lines = [
        f"{d['name']}\t{d['computeType']}\t{d.get('namespace', 'default')}\t{d.get('kubeconfig', '-')}" for d in data
    ]
    print_output(args, data, "\n".join(["NAME\tTYPE\tNAMESPACE\tKUBECONFIG", *lines]))
    return 0


def compute_show(args: argparse.Namespace) -> int:
    from modelfleet.sdk.compute import ComputeTarget

    data = ComputeTarget(workspace(args), args.name).serialize()
    print_output(args, data, "\n".join(f"{k}: {v}" for k, v in data.items()))
    return 0


def compute_detach(args: argparse.Namespace) -> int:
    from modelfleet.sdk.compute import ComputeTarget

    ComputeTarget(workspace(args), args.name).detach()
    print(f"detached compute target {args.name}")
    return 0


# --------------------------------------------------------------------------- k8s manifests


def _register_k8s(groups: Any) -> None:
    k8s = groups.add_parser("k8s", help="Kubernetes objects of the workspace's services").add_subparsers(
        metavar="COMMAND", dest="subcommand", required=True
    )
    manifests = k8s.add_parser("manifests", help="print a service's objects (and the router's) as YAML")
    manifests.add_argument("-n", "--name", required=True, help="the deployed service")
    manifests.add_argument("--compute-target", help="take namespace, blob store and image from this target")
    manifests.add_argument("--namespace", help="namespace (default: the target's, else default)")
    manifests.add_argument("--blob-store", help="blob store URL the pods fetch from (default: the target's)")
    manifests.add_argument("--image", help="replica image (default: the target's, else modelfleet-replica:<hash>)")
    manifests.add_argument("--router-image", default="modelfleet-router:latest", help="the router's image")
    manifests.add_argument(
        "--load-balancer-type",
        default="LoadBalancer",
        choices=["LoadBalancer", "InternalLoadBalancer", "ClusterIP"],
        help="how the router's Service is reached (v1's load_balancer_type)",
    )
    manifests.add_argument("--replicas", type=int, default=2, help="router pods (default 2)")
    manifests.add_argument("--port", type=int, default=None, help="the router Service's port (443 with TLS, else 80)")
    manifests.add_argument("--ssl-enabled", action="store_true", help="the router serves HTTPS (v1's ssl_enabled)")
    manifests.add_argument("--ssl-cert-pem-file", help="the router's certificate (chain), PEM")
    manifests.add_argument("--ssl-key-pem-file", help="its private key, PEM: checked against it, never printed")
    manifests.add_argument("--ssl-cname", help="the name clients use (the certificate's); the Ingress's host")
    manifests.add_argument(
        "--ingress-class", help="an Ingress of this class for --ssl-cname (with --load-balancer-type ClusterIP)"
    )
    manifests.add_argument("--no-router", action="store_true", help="the service's objects only")
    manifests.add_argument("--with-keys", action="store_true", help="put the service's keys in its Secret")
    manifests.set_defaults(handler=k8s_manifests)
    upload = k8s.add_parser(
        "upload-credential",
        help="the pods' write credential for the blob store (collected model data); neither flag removes it",
    )
    upload.add_argument("--compute-target", required=True, help="the attached cluster")
    upload.add_argument(
        "--sas-env", metavar="VAR", help="environment variable holding a SAS token with write permission"
    )
    upload.add_argument("--token-env", metavar="VAR", help="environment variable holding a bearer token")
    upload.set_defaults(handler=k8s_upload_credential)
    router = k8s.add_parser("router", help="the cluster's router").add_subparsers(
        metavar="COMMAND", dest="router_command", required=True
    )
    install = router.add_parser("install", help="create or update the router's objects in the target's namespace")
    install.add_argument("--compute-target", required=True, help="the attached cluster")
    install.add_argument("--image", required=True, help="the router's image")
    install.add_argument("--replicas", type=int, default=2, help="router pods (default 2)")
    install.add_argument(
        "--load-balancer-type",
        default="LoadBalancer",
        choices=["LoadBalancer", "InternalLoadBalancer", "ClusterIP"],
        help="how the router's Service is reached (v1's load_balancer_type)",
    )
    install.add_argument("--port", type=int, default=None, help="the Service's port (default 443 with TLS, else 80)")
    install.add_argument("--ssl-enabled", action="store_true", help="serve HTTPS (v1's ssl_enabled)")
    install.add_argument("--ssl-cert-pem-file", help="the router's certificate (chain), PEM")
    install.add_argument("--ssl-key-pem-file", help="its unencrypted private key, PEM")
    install.add_argument("--ssl-cname", help="the name clients use (the certificate's); the Ingress's host")
    install.add_argument(
        "--ingress-class", help="also create an Ingress of this class (with --load-balancer-type ClusterIP)"
    )
    install.set_defaults(handler=k8s_router_install)
    status = router.add_parser("status", help="the router's pods and the address its Service got")
    status.add_argument("--compute-target", required=True, help="the attached cluster")
    add_output(status)
    status.set_defaults(handler=k8s_router_status)
    uninstall = router.add_parser("uninstall", help="delete the router's objects")
    uninstall.add_argument("--compute-target", required=True, help="the attached cluster")
    uninstall.set_defaults(handler=k8s_router_uninstall)


def k8s_upload_credential(args: argparse.Namespace) -> int:
    from modelfleet.sdk.compute import ComputeTarget
    from modelfleet.sdk.k8s_uploads import set_upload_credential

    # read from the environment, never from the command line (ps shows argv)
    values: dict[str, str | None] = {"sas": None, "token": None}
    for flag, var, key in (("--sas-env", args.sas_env, "sas"), ("--token-env", args.token_env, "token")):
        if var is not None:
            if not os.environ.get(var):
                raise ConfigError(f"{flag}: environment variable {var} is not set or empty")
            values[key] = os.environ[var]
    name = set_upload_credential(ComputeTarget(workspace(args), args.compute_target), **values)
    done = "written" if values["sas"] or values["token"] else "removed"
    print(f"upload credential {done}: Secret {name} (services already deployed roll to it)")
    return 0


def k8s_router_install(args: argparse.Namespace) -> int:
    from modelfleet.sdk.compute import ComputeTarget

    target = ComputeTarget(workspace(args), args.compute_target)
    applied = target.install_router(
        args.image,
        args.replicas,
        args.load_balancer_type,
        args.port,
        ssl_enabled=args.ssl_enabled,
        ssl_cert_pem_file=args.ssl_cert_pem_file,
        ssl_key_pem_file=args.ssl_key_pem_file,
        ssl_cname=args.ssl_cname,
        ingress_class=args.ingress_class,
    )
    for name in applied:
        print(f"applied {name}")
    if target.router_uri:
        print(f"scoring URIs start with {target.router_uri}")
    return 0


def k8s_router_status(args: argparse.Namespace) -> int:
    from modelfleet.sdk.compute import ComputeTarget

    data = ComputeTarget(workspace(args), args.compute_target).router_status()
    if not data["installed"]:
        text = f"no router in namespace {data['namespace']}; install one with `modelfleet k8s router install`"
    else:
        address = ", ".join(data["loadBalancer"]) or "none assigned (yet)"
        text = (
            f"router: {data['readyReplicas']}/{data['replicas']} pods ready; Service {data['serviceType']} "
            f"{data['clusterIP']} ports {data['ports']}; load balancer address: {address}"
        )
    print_output(args, data, text)
    return 0


def k8s_router_uninstall(args: argparse.Namespace) -> int:
    from modelfleet.sdk.compute import ComputeTarget

    for name in ComputeTarget(workspace(args), args.compute_target).uninstall_router():
        print(f"deleted {name}")
    return 0


def k8s_manifests(args: argparse.Namespace) -> int:
    try:
        import yaml
    except ImportError as exc:  # PyYAML comes with the kubernetes extra
        raise ConfigError("printing YAML needs PyYAML: pip install 'modelfleet[kubernetes]'") from exc
    from modelfleet.control.k8s_controller import service_source
    from modelfleet.spec import DeploySpec
    from modelfleet.store.computes import ComputeRecord
    from modelfleet.targets.kubernetes import manifests as m

    ws = workspace(args)
    store = ws.store
    record = store.get_service(args.name)
    spec = DeploySpec.from_dict(record.config["deploy"])
    base = store.computes.get(args.compute_target) if args.compute_target else None
    settings = dict(base.settings) if base else {}
    for key in ("namespace", "blob_store", "image"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    if not settings.get("blob_store"):
        raise ConfigError("pass --compute-target NAME or --blob-store URL: the pods fetch models and source from it")
    compute = ComputeRecord(args.compute_target or "manifests", "kubernetes", settings, 0.0)
    src = service_source(store, record, spec, compute)
    if args.with_keys:
        from dataclasses import replace

        src = replace(src, primary_key=record.primary_key, secondary_key=record.secondary_key)
    notes: list[str] = []
    objects = _build_objects(record, spec, settings, src, notes) + m.service_objects(src)
    if not args.no_router:
        objects += _router_objects(args, src.effective_namespace, [m.secret_name(src.name)], notes)
    elif args.ssl_enabled or args.ingress_class or args.ssl_cname:
        raise ConfigError("--ssl-enabled, --ssl-cname and --ingress-class are the router's: drop --no-router")
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    for note in notes:
        print(note, file=sys.stderr)
    if settings.get("blob_store_auth"):
        # never printed: the credential is in the cluster only (and not in the workspace at all)
        key = m.BLOB_SAS_KEY if "sas" in settings["blob_store_auth"] else m.BLOB_TOKEN_KEY
        print(
            f"note: the init container reads the blob store's credential from Secret "
            f"{m.blob_secret_name(src.blob_store)} (left out here); create it with: "
            f"{m.blob_secret_command(src.blob_store, src.effective_namespace, key)}",
            file=sys.stderr,
        )
    if src.ships:  # collected data, or log files, go up through the ship sidecar
        # the pods' write credential, never printed either (and not in the workspace at all)
        key = m.BLOB_SAS_KEY if "sas" in str(settings.get("blob_store_upload_auth") or "sas") else m.BLOB_TOKEN_KEY
        command = m.upload_secret_command(src.blob_store, src.effective_namespace, key)
        print(
            f"note: the ship sidecar uploads collected data and log files with the credential in Secret "
            f"{m.upload_secret_name(src.blob_store)} (left out here; none needed by a store that takes the pods' "
            f"uploads as they are); create it with: {command}",
            file=sys.stderr,
        )
    if not args.with_keys and spec.auth_enabled:
        print(
            f"note: Secret {m.secret_name(src.name)} has no keys; fill it (or pass --with-keys)",
            file=sys.stderr,
        )
    return 0


def _build_objects(
    record: Any, spec: Any, settings: dict[str, Any], src: Any, notes: list[str]
) -> list[dict[str, Any]]:
    """The Kaniko Job (and the ConfigMap with its context) that builds the service's image,
    when the target says ``image_build="kaniko"``: applied first, it pushes the tag the
    Deployment pulls (one Job per tag; an existing one is left as it is)."""
    if settings.get("image_build") != "kaniko" or settings.get("image"):
        return []
    from modelfleet.control.k8s_controller import kaniko_build
    from modelfleet.spec import EnvironmentSpec
    from modelfleet.targets.kubernetes import kaniko

    env = EnvironmentSpec.from_dict(record.config.get("environment") or {"name": "default"})
    build = kaniko_build(env, src.image, spec.gpu_cores > 0, src.effective_namespace)
    notes.append(
        f"note: Job {kaniko.build_name(src.image)} builds and pushes {src.image} in the cluster (it pushes with "
        f"Secret {kaniko.PUSH_SECRET} when there is one: kubectl -n {src.effective_namespace} create secret "
        f"docker-registry {kaniko.PUSH_SECRET} ...); a deploy from the SDK skips it when the tag is in the registry"
    )
    return kaniko.build_objects(build)


def _router_objects(
    args: argparse.Namespace, namespace: str, secret_names: list[str], notes: list[str]
) -> list[dict[str, Any]]:
    """The router's objects as ``k8s router install`` makes them from the same settings; its
    TLS Secret is left out (it holds the key) and the command that makes it goes to ``notes``."""
    import shlex

    from modelfleet.targets.kubernetes import manifests as m
    from modelfleet.targets.kubernetes.router_install import tls_material

    pair = tls_material(args.ssl_enabled, args.ssl_cert_pem_file, args.ssl_key_pem_file)
    router = m.RouterSource(
        image=args.router_image,
        namespace=namespace,
        replicas=args.replicas,
        load_balancer_type=args.load_balancer_type,
        secret_names=secret_names,
        port=args.port if args.port is not None else (443 if pair else 80),
        tls_digest=m.tls_digest(pair[0]) if pair else None,
        ingress_class=args.ingress_class,
        ingress_host=args.ssl_cname,
    )
    if pair:
        cert, key = (
            shlex.quote(os.path.abspath(os.path.expanduser(p))) for p in (args.ssl_cert_pem_file, args.ssl_key_pem_file)
        )
        notes.append(
            f"note: the router serves HTTPS with Secret {m.ROUTER_TLS_SECRET} (left out here: it holds the key); "
            f"create it with: {m.router_tls_secret_command(namespace, cert, key)}"
        )
    return m.router_objects(router)


# --------------------------------------------------------------------------- the router


def _register_router(groups: Any) -> None:
    router = groups.add_parser("router", help="run the in-cluster router (what the router's pods run)")
    router.add_argument("--kubernetes", action="store_true", required=True, help="discover services through the API")
    router.add_argument("--namespace", default=None, help="namespace to serve (default $MODELFLEET_NAMESPACE)")
    router.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0: the pod's)")
    router.add_argument("--port", type=int, default=None, help="port to listen on (default 8080)")
    router.add_argument("--kubeconfig", help="authenticate as this kubeconfig says (default: the pod's account)")
    router.add_argument("--context", help="the kubeconfig's context")
    router.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (the router's TLS Secret)")
    router.add_argument("--tls-key", help="... and this PEM private key")
    router.add_argument("--peer-port", type=int, help="take requests forwarded by peer router pods on this port")
    router.add_argument("--grpc-port", type=int, help="serve the Open Inference Protocol's gRPC API on this port too")
    router.set_defaults(handler=router_run)


def router_run(args: argparse.Namespace) -> int:
    from modelfleet.control import k8s_router

    argv = ["--kubernetes", "--host", args.host]
    for flag, value in (
        ("--namespace", args.namespace),
        ("--port", args.port),
        ("--kubeconfig", args.kubeconfig),
        ("--context", args.context),
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--peer-port", args.peer_port),
        ("--grpc-port", args.grpc_port),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return k8s_router.main(argv)
