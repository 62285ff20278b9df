"""End to end: the router over TLS, started through the CLI, with clients that verify.

One workspace and one service go through the TLS choices (each change restarts the cluster,
whose restore brings the service back): self-signed, the choice kept across a restart, plain
HTTP beside TLS when asked for, the user's own certificate files, and TLS off again. A test that
needs the self-signed router with no plain-HTTP port takes ``self_signed``, which restarts the
cluster that way when an earlier test left another choice, so the tests hold in any order.
"""

from __future__ import annotations

import datetime
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from e2e_support import SUM_BODY, cli, deploy, stop_cluster, wait_until
from modelfleet import Webservice, Workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("e2etls", tmp_path_factory.mktemp("ws"))
    yield workspace
    stop_cluster(workspace)


def status(ws: Workspace) -> dict[str, Any]:
    return json.loads(cli(ws, "cluster", "status", "-o", "json").stdout)  # type: ignore[no-any-return]


def restart(ws: Workspace, *flags: str) -> subprocess.CompletedProcess[str]:
    """Stop the cluster, start it with ``flags`` and wait until the service serves again."""
    stop_cluster(ws)
    started = cli(ws, "cluster", "start", *flags)
    wait_until(lambda: ws.cluster().status()["services"].get("secure", {}).get("serving_generation") is not None)
    return started


def auth(service: Webservice) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.get_keys()[0]}", "Content-Type": "application/json"}


def strict_context(cafile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # as Python 3.13 does by default
    return context


@pytest.fixture(scope="module")
def self_signed_cert(ws: Workspace) -> str:
    """Start the cluster with a self-signed certificate; that certificate's file."""
    started = cli(ws, "cluster", "start", "--tls-self-signed")
    assert "router https://127.0.0.1:" in started.stdout and "certificate: " in started.stdout
    return str(status(ws)["tlsCertFile"])


@pytest.fixture(scope="module")
def service(ws: Workspace, self_signed_cert: str) -> Webservice:
    return deploy(ws, "secure", "sum")


@pytest.fixture
def self_signed(ws: Workspace, self_signed_cert: str, service: Webservice) -> Webservice:
    """The service behind the self-signed router with no plain-HTTP port, as the module began."""
    info = status(ws)
    if (info["tlsCertFile"], info["httpPort"]) != (self_signed_cert, None):
        restart(ws, "--tls-self-signed")
    return service


def test_self_signed_tls_end_to_end(ws: Workspace, self_signed: Webservice) -> None:
    service = self_signed
    assert service.scoring_uri.startswith("https://127.0.0.1:")
    assert service.swagger_uri.startswith("https://127.0.0.1:")
    assert service.run(SUM_BODY) == [55]  # the SDK trusts the cluster's own certificate
    ran = cli(ws, "service", "run", "-n", "secure", "-d", SUM_BODY)
    assert ran.stdout.strip() == "[55]"  # and so does the CLI
    info = status(ws)
    cert = info["tlsCertFile"]
    assert info["routerUri"].startswith("https://") and info["httpPort"] is None
    assert Path(cert).is_file() and cert in cli(ws, "cluster", "status").stdout
    with httpx.Client(verify=strict_context(cert)) as client:
        response = client.post(service.scoring_uri, content=SUM_BODY, headers=auth(service))
        assert response.status_code == 200 and response.json() == [55]
        refused = client.post(service.scoring_uri, content=SUM_BODY)
        assert refused.status_code == 401 and refused.json() == {"message": "missing"}


def test_a_client_that_does_not_trust_the_certificate_is_refused(self_signed: Webservice) -> None:
    service = self_signed
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.post(service.scoring_uri, content=SUM_BODY, headers=auth(service))  # system CAs only


def test_plain_http_is_off_when_tls_is_on(self_signed: Webservice) -> None:
    service = self_signed
    plain = service.scoring_uri.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.post(plain, content=SUM_BODY, headers=auth(service), timeout=10)


def test_tls_choice_survives_a_restart_and_a_running_cluster_refuses_another(
    ws: Workspace, self_signed: Webservice
) -> None:
    service = self_signed
    uri, cert = service.scoring_uri, status(ws)["tlsCertFile"]
    cert_bytes = Path(cert).read_bytes()
    restart(ws)  # no flags: the stored choice
    assert service.scoring_uri == uri and Path(cert).read_bytes() == cert_bytes
    assert service.run(SUM_BODY) == [55]
    other = cli(ws, "cluster", "start", "--no-tls", check=False)
    assert other.returncode == 1 and "modelfleet cluster stop" in other.stderr
    assert status(ws)["routerUri"].startswith("https://")


def test_plain_http_port_beside_tls_when_asked_for(ws: Workspace, service: Webservice) -> None:
    started = restart(ws, "--tls-self-signed", "--http-port", "0")
    http_port = status(ws)["httpPort"]
    assert f"plain http also on port {http_port}" in started.stdout
    response = httpx.post(
        f"http://127.0.0.1:{http_port}/api/v1/service/secure/score", content=SUM_BODY, headers=auth(service)
    )
    assert response.status_code == 200 and response.json() == [55]
    assert service.scoring_uri.startswith("https://") and service.run(SUM_BODY) == [55]


def test_own_certificate_files_then_tls_off(ws: Workspace, service: Webservice, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    restart(ws, "--tls-cert", str(cert_file), "--tls-key", str(key_file))
    assert status(ws)["tlsCertFile"] == str(cert_file)
    assert service.scoring_uri.startswith("https://localhost:")  # the name the certificate covers
    assert service.run(SUM_BODY) == [55]
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert_file))) as client:
        assert client.post(service.scoring_uri, content=SUM_BODY, headers=auth(service)).status_code == 200

    restart(ws, "--no-tls")
    assert service.scoring_uri.startswith("http://127.0.0.1:") and status(ws)["tlsCertFile"] is None
    assert httpx.post(service.scoring_uri, content=SUM_BODY, headers=auth(service)).json() == [55]


def test_grpc_serves_tls_with_the_routers_certificate(ws: Workspace, self_signed: Webservice) -> None:
    """The gRPC API (Open Inference Protocol) is TLS whenever the router is, with the same pair:
    keys never cross it in clear."""
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    address = self_signed.grpc_address
    assert address is not None and "(TLS)" in cli(ws, "cluster", "status").stdout
    cert = str(status(ws)["tlsCertFile"])
    secure = triton_grpc.InferenceServerClient(address, ssl=True, root_certificates=cert)
    assert secure.is_server_live()
    assert secure.is_model_ready("secure", headers={"authorization": f"Bearer {self_signed.get_keys()[0]}"})
    with pytest.raises(InferenceServerException):
        triton_grpc.InferenceServerClient(address).is_server_live(client_timeout=5)  # plain text: refused
