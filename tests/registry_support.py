"""A real OCI registry for the tests: Debian's ``docker-registry`` (distribution 2.8) on a free
127.0.0.1 port with its storage in a temporary folder, open, behind htpasswd (Basic) or behind
a token endpoint (Bearer, the flow ACR and Docker Hub use). Images go in with Debian's
``skopeo`` from an OCI layout written here with the standard library: no engine.

The token endpoint is test infrastructure standing in for ACR's ``/oauth2/token``: it checks
the Basic credential and signs a JWT that the registry verifies against the certificate in
its ``rootcertbundle`` (the ``x5c`` header), with the access the request asked for.

Missing binaries skip, with the reason, unless ``MODELFLEET_REGISTRY_REQUIRED`` is set (CI):
then they fail. ``apt-get install docker-registry skopeo`` (scripts/test.sh does).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import datetime
import hashlib
import io
import json
import os
import secrets
import socket
import subprocess
import tarfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from http_support import QuietHandler, serving

REGISTRY_BIN = "/usr/bin/docker-registry"
SKOPEO_BIN = "/usr/bin/skopeo"
USER, PASSWORD = "mf-user", "s3cret-pass"
SERVICE = "modelfleet-test-registry"


def require_binaries() -> None:
    missing = [b for b in (REGISTRY_BIN, SKOPEO_BIN) if not os.access(b, os.X_OK)]
    if missing:
        reason = f"{', '.join(missing)} missing; apt-get install docker-registry skopeo"
        if os.environ.get("MODELFLEET_REGISTRY_REQUIRED"):
            pytest.fail(f"MODELFLEET_REGISTRY_REQUIRED is set but {reason}")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bcrypt(password: str) -> str:
    """An htpasswd bcrypt line's hash, from glibc's libcrypt (Debian's supports $2b$)."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    alphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    salt = "".join(secrets.choice(alphabet) for _ in range(21)) + "."  # the 22nd holds 2 bits: '.' is 0
    out = lib.crypt(password.encode(), f"$2b$05${salt}".encode())
    assert out and out.startswith(b"$2b$"), out
    return str(out.decode())


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log: Path


class _TokenIssuer:
    """A self-signed certificate for the registry's rootcertbundle, and JWTs signed by its key."""

    def __init__(self, folder: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelfleet test token issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = folder / "token-ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.issued: list[str] = []  # the scopes asked for, in order

    def token(self, scope: str) -> str:
        access = []
        if scope:
            kind, name, actions = scope.split(":", 2)
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": "modelfleet-test-issuer",
            "sub": USER,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        der = self.cert.public_bytes(serialization.Encoding.DER)
        headers = {"x5c": [base64.b64encode(der).decode()]}
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return jwt.encode(claims, pem, algorithm="RS256", headers=headers)


@contextlib.contextmanager
def _token_endpoint(issuer: _TokenIssuer) -> Iterator[str]:
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            auth = self.headers.get("Authorization")
            if auth is not None and auth != expected:
                self.send_response(401)
                self.end_headers()
                return
            scope = (query.get("scope") or [""])[0]
            if auth is None:  # anonymous: pull only, as Docker Hub gives public repositories
                scope = scope.replace(",push", "").replace("push,", "") if scope else scope
            issuer.issued.append(scope)
            body = json.dumps({"token": issuer.token(scope), "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as port:
        yield f"http://127.0.0.1:{port}/token"


@contextlib.contextmanager
def running_registry(folder: Path, auth: str | None = None) -> Iterator[Registry]:
    """``auth``: None (open), "htpasswd" (Basic) or "token" (Bearer via a token endpoint)."""
    require_binaries()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = [
        "version: 0.1",
        "log:",
        "  level: info",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {folder / 'storage'}",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    with contextlib.ExitStack() as stack:
        if auth == "htpasswd":
            (folder / "htpasswd").write_text(f"{USER}:{bcrypt(PASSWORD)}\n")
            config += ["auth:", "  htpasswd:", "    realm: modelfleet-test", f"    path: {folder / 'htpasswd'}"]
        elif auth == "token":
            issuer = _TokenIssuer(folder)
            realm = stack.enter_context(_token_endpoint(issuer))
            config += [
                "auth:",
                "  token:",
                f"    realm: {realm}",
                f"    service: {SERVICE}",
                "    issuer: modelfleet-test-issuer",
                f"    rootcertbundle: {issuer.bundle}",
            ]
        elif auth is not None:
            raise ValueError(auth)
        (folder / "config.yml").write_text("\n".join(config) + "\n")
        log = folder / "registry.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(folder / "config.yml")], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                        break
                except urllib.error.HTTPError:
                    break  # 401: up, and asking for a credential
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"docker-registry did not start:\n{log.read_text()}") from None
                    time.sleep(0.05)
            yield Registry(f"127.0.0.1:{port}", process, log)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def write_oci_layout(layout: Path, tag: str, content: Path, prefix: str = "build") -> str:
    """An OCI image layout holding one image: one uncompressed layer, the files of ``content``
    under ``/<prefix>``, with its config and manifest. Returns the manifest's digest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(content.rglob("*")):
            info = tar.gettarinfo(str(path), f"{prefix}/{path.relative_to(content).as_posix()}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") if path.is_file() else contextlib.nullcontext() as f:
                tar.addfile(info, f)
    layer, layer_size = _blob(layout, buffer.getvalue())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"org.modelfleet.test": "1"}},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    }
    config_digest, config_size = _blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
    }
    manifest_digest, manifest_size = _blob(layout, json.dumps(manifest).encode())
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return manifest_digest


def skopeo_push(layout: Path, tag: str, destination: str, credential: tuple[str, str] | None = None) -> None:
    """``skopeo copy oci:LAYOUT:TAG docker://DESTINATION`` over plain http."""
    argv = [SKOPEO_BIN, "--insecure-policy", "copy", "--dest-tls-verify=false"]
    if credential is not None:
        argv += ["--dest-creds", f"{credential[0]}:{credential[1]}"]
    argv += [f"oci:{layout}:{tag}", f"docker://{destination}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"skopeo copy failed ({done.returncode}):\n{done.stdout}{done.stderr}"
