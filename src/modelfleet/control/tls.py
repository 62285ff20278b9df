"""TLS for the router: the stored choice, the certificate, and the contexts on each side.

The choice lives in the workspace store, so that it survives daemon restarts and so that
the SDK (``Webservice.run``, scoring URIs) and the CLI know it without asking the daemon:

    tls_mode           "off" (default) | "self-signed" | "files"
    tls_cert_file      the certificate (chain) PEM the router presents (absolute path)
    tls_key_file       its private key PEM (absolute path)
    router_http_port   a plain-HTTP port served beside the TLS one; absent: none (TLS only)

``modelfleet cluster start --tls-self-signed | --tls-cert F --tls-key F | --no-tls`` writes
it (``save``); the daemon reads it at start (``router_listeners``) and records, for the SDK,
``router_scheme`` and ``router_uri_host`` (the name scoring URIs use: 127.0.0.1 when the
certificate covers it, else localhost, else the certificate's first DNS name).

The self-signed certificate (``credentials/tls-cert.pem`` and ``tls-key.pem``, 0600) covers
localhost, 127.0.0.1 and ::1, is valid for 365 days and is made again at a daemon start once
fewer than 30 days are left. It is shaped like ``openssl req -x509`` output (CA basic
constraint, key identifiers), so that strict verifiers (Python 3.13's X509_STRICT, curl, Go)
accept it as their trust anchor. The SDK and CLI trust it by themselves; other clients pass
the file as their CA bundle (``modelfleet cluster status`` says where it is).

In a workspace a team shares (its metadata in a database that workspace.json names), the TLS
choice is the team's, and so is the material: the certificate and its private key live in the
database's secrets table, sealed with the team's key like the service keys
(``store/secrets.py``): ``tls-self-signed`` (made by the first cluster that needs it, renewed
by the first that finds it within 30 days of expiry, in one transaction so that racing
clusters agree) or ``tls-files`` (the pair ``cluster start --tls-cert/--tls-key`` read, copied
in). Every teammate's cluster serves that one certificate, and every teammate's SDK and CLI
trust it, read from the database; the files under ``credentials/`` are then local copies (the
server's TLS library loads files), rewritten from the database at each daemon start.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from modelfleet.control.credentials import credentials_dir, write_private
from modelfleet.errors import ConfigError

MODE_SETTING = "tls_mode"
CERT_SETTING = "tls_cert_file"
KEY_SETTING = "tls_key_file"
HTTP_PORT_SETTING = "router_http_port"
SCHEME_SETTING = "router_scheme"
URI_HOST_SETTING = "router_uri_host"
MODES = ("off", "self-signed", "files")
SELF_SIGNED_CERT = "tls-cert.pem"
SELF_SIGNED_KEY = "tls-key.pem"
SELF_SIGNED_DAYS = 365
RENEW_BEFORE_DAYS = 30
_NO_PORT = ""
_SELF_SIGNED_ORG = "modelfleet local cluster"
# a shared workspace's TLS material, in its secrets table: {"cert": PEM, "key": PEM}, sealed
SHARED_SECRETS = {"self-signed": "tls-self-signed", "files": "tls-files"}


@dataclass(frozen=True)
class TlsSettings:
    mode: str = "off"
    cert_file: Path | None = None
    key_file: Path | None = None
    http_port: int | None = None  # plain HTTP beside TLS; None: none

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"tls mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.mode == "files" and (self.cert_file is None or self.key_file is None):
            raise ConfigError("TLS from files needs both --tls-cert FILE and --tls-key FILE")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ConfigError(f"--http-port must be between 0 and 65535 (got {self.http_port})")
        if self.mode == "off" and self.http_port is not None:
            raise ConfigError("--http-port applies only with TLS on (--tls-self-signed or --tls-cert/--tls-key)")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True)
class RouterListeners:
    """What the daemon binds: the main port's TLS context (None: plain HTTP) and, when TLS is
    on and asked for, a second plain-HTTP port."""

    context: ssl.SSLContext | None
    http_port: int | None
    cert_file: Path | None
    scheme: str
    uri_host: str
    key_file: Path | None = None  # the gRPC API serves TLS from the same pair (router/grpc_front.py)


# -- the stored choice -------------------------------------------------------------------


def load(store: Any) -> TlsSettings:
    mode = store.get_setting(MODE_SETTING) or "off"
    cert, key = store.get_setting(CERT_SETTING), store.get_setting(KEY_SETTING)
    port = store.get_setting(HTTP_PORT_SETTING) or _NO_PORT
    return TlsSettings(
        mode=mode,
        cert_file=Path(cert) if cert else None,
        key_file=Path(key) if key else None,
        http_port=int(port) if port != _NO_PORT else None,
    )


def save(store: Any, settings: TlsSettings) -> None:
    """Store the choice; in a shared workspace, the files of ``--tls-cert/--tls-key`` are copied
    into the team's secrets too (their paths stay, as where they came from)."""
    if settings.mode == "files" and _shared(store):
        assert settings.cert_file is not None and settings.key_file is not None
        pems = {"cert": settings.cert_file.read_text(), "key": settings.key_file.read_text()}
        store.secrets.put(SHARED_SECRETS["files"], json.dumps(pems))
    store.set_setting(MODE_SETTING, settings.mode)
    store.set_setting(CERT_SETTING, str(settings.cert_file) if settings.mode == "files" else "")
    store.set_setting(KEY_SETTING, str(settings.key_file) if settings.mode == "files" else "")
    store.set_setting(HTTP_PORT_SETTING, str(settings.http_port) if settings.http_port is not None else _NO_PORT)


def requested(
    *, self_signed: bool, cert: str | None, key: str | None, off: bool, http_port: int | None
) -> TlsSettings | None:
    """The settings ``cluster start`` flags ask for, checked (files exist, key matches the
    certificate); None when no TLS flag was given (the stored choice stays)."""
    if sum((self_signed, off, cert is not None or key is not None)) > 1:
        raise ConfigError("choose one of --tls-self-signed, --tls-cert/--tls-key and --no-tls")
    if self_signed:
        return TlsSettings(mode="self-signed", http_port=http_port)
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise ConfigError("--tls-cert and --tls-key go together: give both files")
        cert_file, key_file = Path(cert).expanduser().resolve(), Path(key).expanduser().resolve()
        server_context(cert_file, key_file)  # refuse a bad pair now, not in the daemon
        return TlsSettings("files", cert_file, key_file, http_port)
    if http_port is not None:
        raise ConfigError(
            f"--http-port {http_port} goes with --tls-self-signed or --tls-cert/--tls-key; "
            "without TLS, --port sets the router's (plain HTTP) port"
        )
    return TlsSettings(mode="off") if off else None


# -- the daemon's side -----------------------------------------------------------------------


def router_listeners(store: Any, workspace_root: Path, now: datetime.datetime) -> RouterListeners:
    """Resolve the stored choice into a server context (making or renewing the self-signed
    certificate), and record the scheme and URI host the SDK builds scoring URIs with."""
    settings = load(store)
    if not settings.enabled:
        listeners = RouterListeners(None, None, None, "http", "127.0.0.1")
    else:
        if _shared(store):  # the team's certificate, from the database
            folder = credentials_dir(workspace_root)
            cert, key = _local_copies(folder, *_shared_material(store, settings.mode, now, folder))
        elif settings.mode == "self-signed":
            cert, key = ensure_self_signed(credentials_dir(workspace_root), now)
        else:
            assert settings.cert_file is not None and settings.key_file is not None
            cert, key = settings.cert_file, settings.key_file
        listeners = RouterListeners(server_context(cert, key), settings.http_port, cert, "https", uri_host(cert), key)
    store.set_setting(SCHEME_SETTING, listeners.scheme)
    store.set_setting(URI_HOST_SETTING, listeners.uri_host)
    return listeners


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    for flag, path in (("--tls-cert", cert_file), ("--tls-key", key_file)):
        if not path.is_file():
            raise ConfigError(f"{flag}: {path} does not exist or is not a file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"--tls-cert {cert_file} and --tls-key {key_file} are not a PEM certificate and its unencrypted "
            f"private key ({exc.reason or exc}); check that the key belongs to the certificate"
        ) from None
    return context


def ensure_self_signed(folder: Path, now: datetime.datetime) -> tuple[Path, Path]:
    """The self-signed certificate and key in ``folder``, made (again) when missing, unreadable
    or within ``RENEW_BEFORE_DAYS`` of expiry."""
    cert_path, key_path = folder / SELF_SIGNED_CERT, folder / SELF_SIGNED_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        fresh = cert.not_valid_after_utc - now > datetime.timedelta(days=RENEW_BEFORE_DAYS) and key_path.is_file()
    except (FileNotFoundError, ValueError):
        fresh = False
    if not fresh:
        cert_pem, key_pem = self_signed_certificate(now)
        write_private(key_path, key_pem)
        write_private(cert_path, cert_pem)
    return cert_path, key_path


def _shared(store: Any) -> bool:
    return bool(getattr(store, "shared", False))


def _fresh(cert_pem: bytes, now: datetime.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return False
    return cert.not_valid_after_utc - now > datetime.timedelta(days=RENEW_BEFORE_DAYS)


def _made_here(cert_pem: bytes) -> bool:
    """Whether a certificate is one ``self_signed_certificate`` made (not a user's, from files)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return cert.subject == cert.issuer and [o.value for o in orgs] == [_SELF_SIGNED_ORG]


def _shared_material(store: Any, mode: str, now: datetime.datetime, folder: Path) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a shared workspace, the self-signed pair made or renewed.
    The first one made adopts a fresh self-signed pair already in ``folder`` (a cluster that
    served TLS before modelfleet shared it), so clients that trust that file go on trusting it."""
    name = SHARED_SECRETS[mode]
    if mode == "self-signed":

        def keep(value: str) -> bool:
            return _fresh(json.loads(value)["cert"].encode(), now)

        def make() -> str:
            try:
                cert_pem, key_pem = (folder / SELF_SIGNED_CERT).read_bytes(), (folder / SELF_SIGNED_KEY).read_bytes()
                server_context(folder / SELF_SIGNED_CERT, folder / SELF_SIGNED_KEY)  # a pair that loads
                if not (_fresh(cert_pem, now) and _made_here(cert_pem)):
                    raise ValueError("expired, or the copy of a certificate from files")
            except (OSError, ValueError, ConfigError):
                cert_pem, key_pem = self_signed_certificate(now)
            return json.dumps({"cert": cert_pem.decode("ascii"), "key": key_pem.decode("ascii")})

        value: str | None = store.secrets.renew(name, keep, make)
    else:
        value = store.secrets.get(name)
        if value is None:
            raise ConfigError(
                "this shared workspace uses TLS from files, and its certificate is not in the workspace "
                "(it was chosen before modelfleet shared it); choose it again: `modelfleet cluster start "
                "--tls-cert FILE --tls-key FILE`"
            )
    assert value is not None
    pems = json.loads(value)
    return pems["cert"].encode(), pems["key"].encode()


def _local_copies(folder: Path, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    """Write the shared certificate and key into ``folder`` (0600) for the server's TLS library,
    leaving files that already hold them as they are."""
    cert_path, key_path = folder / SELF_SIGNED_CERT, folder / SELF_SIGNED_KEY
    for path, pem in ((key_path, key_pem), (cert_path, cert_pem)):
        try:
            same = path.read_bytes() == pem
        except FileNotFoundError:
            same = False
        if not same:
            write_private(path, pem)
    return cert_path, key_path


def _shared_certificate(store: Any, mode: str) -> bytes | None:
    value = store.secrets.get(SHARED_SECRETS[mode])
    return None if value is None else str(json.loads(value)["cert"]).encode()


def self_signed_certificate(now: datetime.datetime, days: int = SELF_SIGNED_DAYS) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for localhost, 127.0.0.1 and ::1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _SELF_SIGNED_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a little clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def uri_host(cert_file: Path) -> str:
    """The host name scoring URIs use, so that the certificate's names match it."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return "127.0.0.1"
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    dns = names.get_values_for_type(x509.DNSName)
    if "127.0.0.1" in ips:
        return "127.0.0.1"
    if "localhost" in dns:
        return "localhost"
    return str(dns[0]) if dns else "127.0.0.1"


# -- the client's side (SDK and CLI) ---------------------------------------------------------


def client_context(store: Any, workspace_root: Path) -> ssl.SSLContext:
    """A verifying client context that also trusts the cluster's own certificate: the
    self-signed one, or the file given with --tls-cert (harmless when a public CA signed it)."""
    context = ssl.create_default_context()
    settings = load(store)
    if settings.enabled and _shared(store):  # the team's certificate, read from the database
        pem = _shared_certificate(store, settings.mode)
        if pem is not None:
            with contextlib.suppress(ssl.SSLError):
                context.load_verify_locations(cadata=pem.decode("ascii"))
        return context
    cert = settings.cert_file
    if settings.mode == "self-signed":
        cert = credentials_dir(workspace_root) / SELF_SIGNED_CERT
    if cert is not None and cert.is_file():
        # not a certificate we can trust directly: the system's CAs still apply
        with contextlib.suppress(ssl.SSLError):
            context.load_verify_locations(cafile=str(cert))
    return context


def certificate_file(store: Any, workspace_root: Path) -> Path | None:
    """Where the router's certificate is, for other clients (None when TLS is off)."""
    settings = load(store)
    if settings.enabled and _shared(store):  # a local copy of the team's certificate
        pem = _shared_certificate(store, settings.mode)
        if pem is None:
            return None
        path = credentials_dir(workspace_root) / SELF_SIGNED_CERT
        if not path.is_file() or path.read_bytes() != pem:
            write_private(path, pem)
        return path
    if settings.mode == "self-signed":
        return credentials_dir(workspace_root) / SELF_SIGNED_CERT
    return settings.cert_file
