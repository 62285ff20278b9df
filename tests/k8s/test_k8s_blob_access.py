"""A private blob store for the pods: its credential (an Azure-style SAS query, or a bearer
token) is given at attach time, lives in a Secret in the cluster only, reaches the init
container through optional secretKeyRefs, goes with every blob request, and is never printed.
The end-to-end deploy through it is in ``test_target_deploy.py`` (the attached cluster's
service fetches from a private server); here: the fetcher against a private server, the pod
spec, and what attach refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from k8s_services import serve_blobs

from modelfleet import KubernetesCompute, Workspace
from modelfleet.errors import ConfigError
from modelfleet.spec import aks_deploy_configuration
from modelfleet.store.blobs import BlobStore
from modelfleet.targets.kubernetes import fetch
from modelfleet.targets.kubernetes import manifests as m

SIG = "c2lnbmF0dXJlLW9mLXRoZS10ZXN0"  # what the private server requires
SAS = f"sv=2022-11-02&sr=c&sp=r&se=2099-01-01T00%3A00%3A00Z&sig={SIG}"
TOKEN = "bearer-token-of-the-test-0123456789"


@pytest.fixture
def blobs(tmp_path: Path) -> tuple[SimpleNamespace, dict]:
    """A blob folder holding one model file, and the layout that names it."""
    store = BlobStore(tmp_path / "blobs")
    src = tmp_path / "model.bin"
    src.write_bytes(b"model bytes")
    digest = store.put_file(src)
    layout = {"files": [{"path": "azureml-models/m/1/model.bin", "digest": digest}], "snapshot": None}
    return SimpleNamespace(blobs=store), layout


def _main(tmp_path: Path, url: str, layout: dict, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    for var in (fetch.SAS_ENV, fetch.TOKEN_ENV):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(layout))
    return fetch.main(["--blob-store", url, "--layout", str(path), "--dest", str(tmp_path / "app")])


def test_the_fetcher_sends_the_credential_with_every_request_and_never_prints_it(
    tmp_path: Path, blobs: tuple, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    store, layout = blobs
    log = tmp_path / "server.log"
    with serve_blobs(store, sig=SIG, token=TOKEN, log=log) as url:
        # none: refused by the server, and the fetcher says why, naming the URL without a query
        assert _main(tmp_path, url, layout, {}, monkeypatch) == 1
        err = capsys.readouterr().err
        digest = layout["files"][0]["digest"]
        assert err.startswith(f"fetch: cannot fetch blob {digest} from {url}/{digest[:2]}/{digest[2:]}: HTTP Error 403")
        assert "no credential was given" in err and "?" not in err
        # a wrong one: refused, and neither value shows
        wrong = {fetch.SAS_ENV: "sv=1&sig=wrong-signature", fetch.TOKEN_ENV: "wrong-token-0123456789"}
        assert _main(tmp_path, url, layout, wrong, monkeypatch) == 1
        out, err = capsys.readouterr()
        assert "refused the credential" in err
        assert "wrong-signature" not in out + err and "wrong-token" not in out + err
        # the right ones (the SAS with its leading '?', as the Azure portal copies it): laid out
        right = {fetch.SAS_ENV: f"?{SAS}", fetch.TOKEN_ENV: TOKEN}
        assert _main(tmp_path, url, layout, right, monkeypatch) == 0
        out, err = capsys.readouterr()
        assert (tmp_path / "app" / "azureml-models" / "m" / "1" / "model.bin").read_bytes() == b"model bytes"
        assert SIG not in out + err and TOKEN not in out + err
    requests = [line for line in log.read_text().splitlines() if digest[2:] in line]  # not the readiness check's
    assert requests == [f"403 /{digest[:2]}/{digest[2:]}"] * 2 + [f"GET /{digest[:2]}/{digest[2:]}"]


def test_the_fetcher_refuses_to_send_a_credential_in_clear(tmp_path: Path, blobs: tuple):
    _, layout = blobs
    with pytest.raises(fetch.FetchError, match="would travel in clear") as caught:
        fetch.fetch("http://blobs.example/ws", layout, tmp_path / "app", fetch.Credential(SAS, TOKEN))
    assert SIG not in str(caught.value) and TOKEN not in str(caught.value)
    assert repr(fetch.Credential(SAS, TOKEN)) == "Credential(sas=***, token=***)"
    # a Secret made from a file ends in a newline: stripped; anything else unsendable is refused unshown
    assert fetch.Credential(f" ?{SAS}\n", f"{TOKEN}\n").sas == SAS
    with pytest.raises(fetch.FetchError, match="MODELFLEET_BLOB_TOKEN holds spaces") as caught:
        fetch.fetch("https://blobs.example/ws", layout, tmp_path / "app", fetch.Credential(None, "two\nlines"))
    assert "two" not in str(caught.value)
    with pytest.raises(fetch.FetchError, match="no query"):
        fetch.fetch(f"https://blobs.example/ws?{SAS}", layout, tmp_path / "app")


def test_the_init_container_reads_the_credential_from_the_blob_stores_secret_only():
    url = "https://acct.blob.core.windows.net/models/team"
    src = m.ServiceSource(
        name="scorer", deploy=aks_deploy_configuration(), image="i", entry_script="s.py", blob_store=url
    )
    secret, config, deployment = m.service_objects(src)
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    name = m.blob_secret_name(url)
    assert name == m.blob_secret_name(url + "/") and name.startswith("modelfleet-blobs-")
    assert init["env"] == [
        {"name": fetch.SAS_ENV, "valueFrom": {"secretKeyRef": {"name": name, "key": "sas", "optional": True}}},
        {"name": fetch.TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": name, "key": "token", "optional": True}}},
    ]
    assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"  # the fetch's reason reaches the status
    obj = m.blob_secret(url, "models", sas=f"?{SAS}")
    assert obj["metadata"]["name"] == name and obj["metadata"]["namespace"] == "models"
    assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelfleet"
    assert obj["stringData"] == {"sas": SAS}
    assert SIG not in json.dumps([secret, config, deployment])


def test_attach_refuses_what_pods_cannot_use_saying_why(tmp_path: Path):
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")

    def attach(**kw: object) -> None:
        KubernetesCompute.attach(ws, "prod", kubeconfig=str(kubeconfig), **kw)  # type: ignore[arg-type]

    cases = [
        ({"blob_store": "file:///srv/blobs"}, "is on this machine's disk: the pods' init containers fetch"),
        ({"blob_store": "az://models/team"}, r"https://<account>\.blob\.core\.windows\.net/models/team"),
        ({"blob_store": "s3://bucket/team"}, "does not sign S3 requests; .* public-read bucket, or of a proxy"),
        ({"blob_store": "http://blobs.internal/ws", "blob_store_sas": SAS}, "blob_store_sas would travel in clear"),
        ({"blob_store": "http://blobs.internal", "blob_store_token": TOKEN}, "blob_store_token would travel in clear"),
        (
            {"blob_store": f"https://acct.blob.core.windows.net/c?{SAS}"},
            "no query, .* pass a SAS token as blob_store_sas",
        ),
        ({"blob_store": "https://b.example", "blob_store_sas": "not a query"}, "blob_store_sas must be a URL query"),
        ({"blob_store": "https://b.example", "blob_store_token": "has a space"}, "blob_store_token must be 8-8192"),
        ({"blob_store_sas": SAS}, "need a blob_store"),
    ]
    for kw, message in cases:
        with pytest.raises(ConfigError, match=message) as caught:
            attach(**kw)
        assert SIG not in str(caught.value) and TOKEN not in str(caught.value), kw
    assert ws.store.computes.list() == []
    # over http to a loopback address nothing leaves the host (in a pod: a sidecar proxy)
    ok = KubernetesCompute.attach(ws, "prod", kubeconfig=str(kubeconfig), blob_store="http://127.0.0.1:9/")
    assert ok.settings["blob_store"] == "http://127.0.0.1:9"

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "modelfleet", "-w", str(ws.path), "compute", "attach", "-n", "dev"]
        argv += ["--kubeconfig", str(kubeconfig), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)

    done = cli("--blob-store", "file:///x")
    assert done.returncode != 0 and "is on this machine's disk" in done.stderr, done.stderr
    done = cli("--blob-store", "https://b.example", "--blob-store-sas-env", "NO_SUCH_VARIABLE_HERE")
    assert done.returncode != 0 and "environment variable NO_SUCH_VARIABLE_HERE is not set" in done.stderr
    env = {**os.environ, "TEAM_SAS": SAS}
    done = cli("--blob-store", "http://blobs.internal", "--blob-store-sas-env", "TEAM_SAS", env=env)
    assert done.returncode != 0 and "would travel in clear" in done.stderr and SIG not in done.stderr
    assert [c.name for c in ws.store.computes.list()] == ["prod"]


def test_a_redirect_to_another_host_never_carries_the_token():
    # an auth proxy may answer with a presigned URL on the object store: followed, without the token
    req = urllib.request.Request("https://proxy.example/ab/cd")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    handler = fetch._Redirects()
    elsewhere = handler.redirect_request(
        req, None, 302, "Found", {}, "https://bucket.s3.example/ab/cd?X-Amz-Signature=s"
    )
    assert elsewhere is not None and not elsewhere.has_header("Authorization")
    same = handler.redirect_request(req, None, 302, "Found", {}, "https://proxy.example/v2/ab/cd")
    assert same is not None and same.get_header("Authorization") == f"Bearer {TOKEN}"
