"""The router's TLS and Ingress (v1's ``ssl_enabled``, ``ssl_cert_pem_file``,
``ssl_key_pem_file``, ``ssl_cname``): what is refused before anything reaches the cluster, then
``install_router`` on the control plane: the ``kubernetes.io/tls`` Secret, the Ingress, the
router pod serving HTTPS with that certificate to a client that verifies it, and the scoring
URI saying https and the certificate's name."""

from __future__ import annotations

import datetime
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from k8s_control_plane import ControlPlane, wait_for
from k8s_services import serve_blobs
from kubernetes import client
from node_standin import NodeStandIn

from modelfleet import KubernetesCompute, Workspace
from modelfleet.errors import ConfigError
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.router_install import router_uri, tls_material

CNAME = "models.example.com"


def issue(folder: Path, host: str = CNAME) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signed for ``host``: (CA file, certificate file, key file)."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject: str, issuer: x509.Name, key: Any, signer: Any, ca: bool) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("test CA", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]), ca_key, ca_key, True)
    leaf = build(host, ca.subject, key, ca_key, False)
    files = folder / "ca.pem", folder / "tls.crt", folder / "tls.key"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def test_tls_settings_are_checked_before_anything_is_written(tmp_path: Path):
    _, cert, key = issue(tmp_path)
    assert tls_material(False, None, None) is None
    assert tls_material(True, str(cert), str(key)) == (cert.read_bytes(), key.read_bytes())
    with pytest.raises(ConfigError, match="ssl_enabled=True needs ssl_cert_pem_file and ssl_key_pem_file"):
        tls_material(True, str(cert), None)
    with pytest.raises(ConfigError, match="apply only with ssl_enabled=True"):
        tls_material(False, str(cert), str(key))
    with pytest.raises(ConfigError, match="ssl_key_pem_file: .* does not exist"):
        tls_material(True, str(cert), str(tmp_path / "missing.key"))
    other = tmp_path / "other"
    other.mkdir()
    _, _, other_key = issue(other)
    with pytest.raises(ConfigError, match="not a PEM certificate and its unencrypted private key"):
        tls_material(True, str(cert), str(other_key))


def test_an_ingress_needs_cluster_ip_and_a_host():
    with pytest.raises(ConfigError, match='load_balancer_type="ClusterIP"'):
        m.RouterSource(image="r", ingress_class="nginx", ingress_host=CNAME)
    with pytest.raises(ConfigError, match="needs its host: ssl_cname"):
        m.RouterSource(image="r", load_balancer_type="ClusterIP", ingress_class="nginx")
    with pytest.raises(ConfigError, match="ssl_cname must be a DNS name"):
        m.RouterSource(image="r", load_balancer_type="ClusterIP", ingress_class="nginx", ingress_host="Not A Name")
    with pytest.raises(ConfigError, match="ingress_class must be an IngressClass name"):
        m.RouterSource(image="r", load_balancer_type="ClusterIP", ingress_class="Bad Class", ingress_host=CNAME)


def test_the_scoring_uri_says_https_and_the_certificates_name():
    assert router_uri("http://10.0.0.5", True, CNAME, 443, ingress=True) == f"https://{CNAME}"
    assert router_uri("http://10.0.0.5", True, CNAME, 8443, ingress=False) == f"https://{CNAME}:8443"
    assert router_uri("http://10.0.0.5", True, None, 443, ingress=False) == "https://10.0.0.5"
    assert router_uri("https://10.0.0.5", False, None, 80, ingress=False) == "http://10.0.0.5"
    assert router_uri(None, True, None, 443, ingress=False) is None


def tls_get(ip: str, port: int, ca: Path) -> bytes:
    """``GET /`` over TLS to ``ip`` as the client of ``CNAME`` would: the certificate must chain
    to ``ca`` and name ``CNAME``."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((ip, port), timeout=10) as raw, context.wrap_socket(raw, server_hostname=CNAME) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {CNAME}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


@pytest.mark.timeout(600)
def test_install_router_with_tls_and_an_ingress(
    admin: client.ApiClient, node: NodeStandIn, namespace: str, control_plane: ControlPlane, tmp_path: Path
):
    core, networking = client.CoreV1Api(admin), client.NetworkingV1Api(admin)
    ca, cert, key = issue(tmp_path)
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    with serve_blobs(ws.store) as blobs:
        target = KubernetesCompute.attach(
            ws,
            "prod",
            kubeconfig=str(control_plane.admin_kubeconfig),
            namespace=namespace,
            blob_store=blobs,
            router_uri="http://10.0.0.5",
        )
        applied = target.install_router(
            image="modelfleet-router:test",
            replicas=1,
            load_balancer_type="ClusterIP",
            ssl_enabled=True,
            ssl_cert_pem_file=str(cert),
            ssl_key_pem_file=str(key),
            ssl_cname=CNAME,
            ingress_class="nginx",
        )
        assert applied[0] == f"Secret/{m.ROUTER_TLS_SECRET}" and applied[-1] == f"Ingress/{m.ROUTER_NAME}"
        secret = core.read_namespaced_secret(m.ROUTER_TLS_SECRET, namespace)
        assert secret.type == "kubernetes.io/tls"
        ingress = networking.read_namespaced_ingress(m.ROUTER_NAME, namespace)
        assert ingress.spec.ingress_class_name == "nginx"
        assert [r.host for r in ingress.spec.rules] == [CNAME]
        assert [(t.hosts, t.secret_name) for t in ingress.spec.tls] == [([CNAME], m.ROUTER_TLS_SECRET)]
        assert core.read_namespaced_service(m.ROUTER_NAME, namespace).spec.ports[0].port == 443
        scoring = KubernetesCompute(ws, "prod").scoring_uri("svc")
        assert scoring == f"https://{CNAME}/api/v1/service/svc/score"

        def router_pod_ip() -> str | None:
            pods = core.list_namespaced_pod(namespace, label_selector=f"{m.COMPONENT_LABEL}=router").items
            ready = [
                p.status.pod_ip
                for p in pods
                if p.status.pod_ip and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            ]
            return ready[0] if ready else None

        ip = wait_for("the router pod Ready (its HTTPS readiness probe)", router_pod_ip, timeout=180)
        answer = tls_get(ip, m.ROUTER_PORT, ca)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        with pytest.raises(ssl.SSLCertVerificationError):  # a client that trusts another CA
            other = tmp_path / "other"
            other.mkdir()
            tls_get(ip, m.ROUTER_PORT, issue(other)[0])
        with socket.create_connection((ip, m.ROUTER_PORT), timeout=10) as plain:  # no plain HTTP on it
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not plain.recv(65536).startswith(b"HTTP/1.1 200")

        removed = target.uninstall_router()
        assert f"Ingress/{m.ROUTER_NAME}" in removed and f"Secret/{m.ROUTER_TLS_SECRET}" in removed
        selector = f"{m.COMPONENT_LABEL}=router"
        wait_for("the router pod gone", lambda: not core.list_namespaced_pod(namespace, label_selector=selector).items)
