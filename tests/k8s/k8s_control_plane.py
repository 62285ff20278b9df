"""A real Kubernetes 1.20 control plane on 127.0.0.1 for tests, the way envtest does it.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built once per machine by
``scripts/k8s-control-plane.sh`` into ``$MODELFLEET_K8S_CACHE`` (default
``~/.cache/modelfleet/k8s-1.20.2``), started here on free ports with a CA made for the run,
serving and client certificates, a service-account signing key and RBAC on. Nothing runs a
kubelet: ``node_standin.py`` is the one stand-in. ``stop()`` ends exactly the processes
``start()`` started, by pid.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client, config

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CIDR = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "modelfleet" / "k8s-1.20.2"
    return Path(os.environ.get("MODELFLEET_K8S_CACHE") or default)


def missing_binaries(cache: Path) -> list[str]:
    """Names of the binaries that are not built, empty when the cache is complete."""
    if not (cache / ".complete").is_file():
        return [str(cache / ".complete")]
    return [b for b in BINARIES if not os.access(cache / "bin" / b, os.X_OK)]


SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"  # util-linux, essential in Debian


def die_with_parent(argv: list[str], signal_name: str = "TERM") -> list[str]:
    """``argv`` run so that it gets ``signal_name`` when the thread that started it ends
    (util-linux's ``setpriv --pdeathsig``, which then execs it: same pid): a test run killed
    outright, with no fixture teardown, leaves no daemon behind."""
    return [SETPRIV, "--pdeathsig", signal_name, "--", *argv]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Poll ``check`` until it returns something true, and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_client_for(kubeconfig: Path) -> client.ApiClient:
    """An ApiClient of the official client, authenticated as the kubeconfig says."""
    return config.new_client_from_config(config_file=str(kubeconfig))


# --------------------------------------------------------------------------- certificates


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_names or server_ips else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names or server_ips:
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
        alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in server_ips]
        b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return b.sign(signing_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True)
class _Pki:
    ca_cert: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _make_pki(d: Path) -> _Pki:
    ca_key = _key()
    ca = _cert(_name("modelfleet-test-ca"), ca_key, None, ca=True)
    serving_key = _key()
    serving = _cert(
        _name("kube-apiserver"),
        serving_key,
        (ca, ca_key),
        server_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
        server_ips=("127.0.0.1", "10.0.0.1"),
    )
    sa_key = _key()
    pem = serialization.Encoding.PEM
    return _Pki(
        ca_cert=_write(d / "ca.crt", ca.public_bytes(pem), 0o644),
        ca_key=ca_key,
        ca=ca,
        serving_cert=_write(d / "apiserver.crt", serving.public_bytes(pem), 0o644),
        serving_key=_write(d / "apiserver.key", _key_pem(serving_key)),
        sa_key=_write(d / "sa.key", _key_pem(sa_key)),
        sa_pub=_write(
            d / "sa.pub",
            sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
            0o644,
        ),
    )


def _kubeconfig(path: Path, server: str, ca: Path, user: dict[str, str], namespace: str = "default") -> Path:
    # JSON is YAML, and the client's loader reads either.
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}],
        "current-context": "test",
    }
    return _write(path, json.dumps(cfg, indent=1).encode())


# --------------------------------------------------------------------------- the control plane


@dataclass
class ControlPlane:
    """A running control plane. ``server`` is the API server's https URL."""

    workdir: Path
    bin_dir: Path
    server: str = ""
    ca_cert: Path = Path()
    admin_kubeconfig: Path = Path()
    _pki: _Pki | None = None
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, timeout: float = 180.0) -> None:
        pki = self._pki = _make_pki(self.workdir)
        self.ca_cert = pki.ca_cert
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        self.admin_kubeconfig = self.client_kubeconfig("admin", "admin", "system:masters")
        cm_kubeconfig = self.client_kubeconfig("controller-manager", "system:kube-controller-manager")
        sched_kubeconfig = self.client_kubeconfig("scheduler", "system:kube-scheduler")
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--logger=zap",
            "--log-level=warn",
        )
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            "--insecure-port=0",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-account-issuer={ISSUER}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--profiling=false",
            "--v=0",
        )
        common = [
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--port=0",
            "--profiling=false",
        ]
        self._spawn(
            "kube-controller-manager",
            f"--kubeconfig={cm_kubeconfig}",
            f"--authentication-kubeconfig={cm_kubeconfig}",
            f"--authorization-kubeconfig={cm_kubeconfig}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_cert}",
            "--use-service-account-credentials=true",
            *common,
        )
        self._spawn(
            "kube-scheduler",
            f"--kubeconfig={sched_kubeconfig}",
            f"--authentication-kubeconfig={sched_kubeconfig}",
            f"--authorization-kubeconfig={sched_kubeconfig}",
            *common,
        )
        self._wait_ready(timeout)

    def client_kubeconfig(self, file: str, cn: str, org: str | None = None) -> Path:
        assert self._pki is not None
        key = _key()
        cert = _cert(_name(cn, org), key, (self._pki.ca, self._pki.ca_key), client=True)
        crt_path = _write(self.workdir / f"{file}.crt", cert.public_bytes(serialization.Encoding.PEM))
        key_path = _write(self.workdir / f"{file}.key", _key_pem(key))
        user = {"client-certificate": str(crt_path), "client-key": str(key_path)}
        return _kubeconfig(self.workdir / f"{file}.kubeconfig", self.server, self.ca_cert, user)

    def token_kubeconfig(self, token: str, name: str, namespace: str = "default") -> Path:
        """A kubeconfig that authenticates with a bearer token (a ServiceAccount's)."""
        return _kubeconfig(self.workdir / f"{name}.kubeconfig", self.server, self.ca_cert, {"token": token}, namespace)

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it from here
        try:
            proc = subprocess.Popen(
                # KILL: an API server whose etcd died with it waits on etcd after a TERM.
                die_with_parent([str(self.bin_dir / name), *args], "KILL"),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
        finally:
            log.close()
        self._procs.append((name, proc))

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        ctx.load_cert_chain(self.workdir / "admin.crt", self.workdir / "admin.key")
        return ctx

    def get(self, path: str) -> tuple[int, bytes]:
        """An admin GET on the API server (status, body); used before any client is set up."""
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl_context(), timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _wait_ready(self, timeout: float) -> None:
        # 1.20 has /readyz too; the default ServiceAccount must exist before any pod is admitted.
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        checks = ("/readyz", "/api/v1/namespaces/default/serviceaccounts/default")
        pending = list(checks)
        while pending:
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                status, body = self.get(pending[0])
                if status == 200:
                    pending.pop(0)
                    continue
                last = f"{pending[0]}: {status} {body[:300]!r}"
            except OSError as e:
                last = f"{pending[0]}: {e}"
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"control plane not ready after {timeout:.0f} s ({last});\n"
                    f"kube-apiserver log:\n{self.log_tail('kube-apiserver')}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """End the processes this object started, newest first, by pid."""
        for _, proc in reversed(self._procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self._procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs}
