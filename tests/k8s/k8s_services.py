"""What the Kubernetes target's tests share: a blob store the pods reach over HTTP, a
service source built from the workspace, and a dedicated event loop."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from k8s_control_plane import free_port, wait_for

from modelfleet.spec import aks_deploy_configuration
from modelfleet.store.registry import Store
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.target import KubernetesPlan

SCRIPTS = Path(__file__).resolve().parent.parent / "e2e_scripts"


@contextmanager
def serve_blobs(store: Store) -> Iterator[str]:
    """The workspace's blob folder over HTTP on 127.0.0.1: a blob store the pods can reach."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(store.blobs.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for("the blob server", lambda: _answers(url), timeout=30)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
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
