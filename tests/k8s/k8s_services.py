"""What the Kubernetes target's tests share: a blob store the pods reach over HTTP, a
service source built from the workspace, a dedicated event loop, and the in-cluster router run
as a process with its own ServiceAccount."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k8s_control_plane import free_port, wait_for
from kubernetes import client
from kubernetes.utils.create_from_yaml import create_from_yaml_single_item

from modelfleet.spec import aks_deploy_configuration
from modelfleet.store.registry import Store
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.target import KubernetesPlan

SCRIPTS = Path(__file__).resolve().parent.parent / "e2e_scripts"


# A private blob server: http.server that answers 403 unless the request carries the query
# ``sig=<sig>`` (an Azure SAS token's signature field) and/or ``Authorization: Bearer <token>``;
# it logs each request's path without its query, and every refusal. A PUT (an upload, as Azure's
# Put Blob) needs ``sig=<write_sig>`` and stores the body under that path, inside the root only.
_PRIVATE = """
import http.server, os, sys, tempfile, urllib.parse
port, root, sig, token, write_sig = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        bearer = self.headers.get("Authorization")
        ok = (not sig or q.get("sig") == [sig]) and (not token or bearer == "Bearer " + token)
        print(("GET " if ok else "403 ") + url.path, flush=True)
        if not ok:
            self.send_error(403, "no valid credential")
            return
        super().do_GET()
    def do_PUT(self):
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        parts = [p for p in urllib.parse.unquote(url.path).split("/") if p]
        ok = bool(write_sig) and q.get("sig") == [write_sig] and ".." not in parts and parts
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        print(("PUT " if ok else "403 PUT ") + url.path, flush=True)
        if not ok:
            self.send_error(403, "no valid write credential")
            return
        path = os.path.join(root, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@contextmanager
def serve_blobs(
    store: Store,
    sig: str | None = None,
    token: str | None = None,
    log: Path | None = None,
    write_sig: str | None = None,
) -> Iterator[str]:
    """The workspace's blob folder over HTTP on 127.0.0.1: a blob store the pods can reach.
    With ``sig`` and/or ``token``, a private one (``_PRIVATE``); with ``write_sig``, one that
    takes uploads (PUT with that SAS signature); ``log`` gets its request lines."""
    port = free_port()
    if sig or token or write_sig:
        argv = [sys.executable, "-c", _PRIVATE, str(port), str(store.blobs.root), sig or "", token or ""]
        argv.append(write_sig or "")
    else:
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        argv += ["--directory", str(store.blobs.root)]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for("the blob server", lambda: _answers(url), timeout=30)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if log:
            out.close()  # type: ignore[union-attr]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True  # a private server refusing: it is up
    except OSError:
        return False


def source(
    store: Store, tmp_path: Path, namespace: str, blob_store: str, name: str = "scorer", **deploy: Any
) -> m.ServiceSource:
    """A service reading a registered model (``e2e_scripts/read_model``), one replica by default."""
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"w": [1, 2, 3]}))
    record = store.register_model("weights", weights)
    snapshot = store.put_snapshot(SCRIPTS / "read_model")
    settings = {"autoscale_enabled": False, "num_replicas": 1, "period_seconds": 1, **deploy}
    return m.ServiceSource(
        name=name,
        deploy=aks_deploy_configuration(**settings),
        image="modelfleet-replica:test",
        entry_script="score.py",
        blob_store=blob_store,
        models=(
            m.ModelLayout(record.name, record.version, tuple(m.ModelFile(f.relpath, f.digest) for f in record.files)),
        ),
        snapshot=snapshot,
        source_name="read_model",
        namespace=namespace,
    )


def plan(src: m.ServiceSource, generation: int) -> KubernetesPlan:
    return KubernetesPlan(
        service=src.name,
        generation=generation,
        python="python",
        app_root=Path(m.APP_ROOT),
        entry_script=Path(m.APP_ROOT) / src.source_name / src.entry_script,
        environment=m.replica_environment(src),
        max_concurrent=src.deploy.replica_max_concurrent_requests,
        source=src,
    )


@dataclass
class RouterProcess:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@contextmanager
def router_process(
    admin: client.ApiClient,
    namespace: str,
    service_account_kubeconfig: Callable[..., Path],
    log: Path,
    secret_names: Sequence[str] = (),
    entry: Sequence[str] = ("modelfleet", "router"),
) -> Iterator[RouterProcess]:
    """The router as its generated ServiceAccount, Role (``secret_names``) and RoleBinding
    allow, run as ``python -m <entry> --kubernetes`` on a free loopback port with its output in
    ``log``; at the end SIGTERM (``proc.returncode`` then says how it ended), killed after 30 s."""
    source = m.RouterSource(image="modelfleet-router:test", namespace=namespace, secret_names=list(secret_names))
    for obj in m.router_objects(source)[:3]:
        create_from_yaml_single_item(admin, obj)
    kubeconfig = service_account_kubeconfig(namespace, m.ROUTER_NAME, create=False)
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *entry, "--kubernetes", "--namespace", namespace]
            + ["--kubeconfig", str(kubeconfig), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield RouterProcess(port, proc, log)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


@contextmanager
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def score(address: str, body: bytes = b"{}", headers: dict[str, str] | None = None, path: str = "/score") -> Any:
    req = urllib.request.Request(
        f"http://{address}{path}",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def post_json(uri: str, key: str, body: dict[str, Any]) -> int:
    """POST ``body`` as JSON with ``Authorization: Bearer <key>``: the answer's status (an error
    status too; a refused connection raises)."""
    req = urllib.request.Request(
        uri, data=json.dumps(body).encode(), headers={"Authorization": f"Bearer {key}"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


@contextmanager
def attached_target(
    ws: Any,
    admin: client.ApiClient,
    namespace: str,
    admin_kubeconfig: Path,
    service_account_kubeconfig: Path,
    tmp_path: Path,
    write_sig: str,
    blob_log: Path,
) -> Iterator[tuple[Any, str]]:
    """Compute target "prod" attached to ``ws``: the workspace's blobs served to the pods
    (uploads need ``write_sig``), the in-cluster router run as a process. Yields the target and
    the blob store's URL."""
    from modelfleet import KubernetesCompute

    with (
        serve_blobs(ws.store, write_sig=write_sig, log=blob_log) as blobs,
        router_process(admin, namespace, service_account_kubeconfig, tmp_path / "router.log") as router,
    ):
        target = KubernetesCompute.attach(
            ws,
            "prod",
            kubeconfig=str(admin_kubeconfig),
            namespace=namespace,
            blob_store=blobs,
            router_uri=f"http://127.0.0.1:{router.port}",
        )
        yield target, blobs
