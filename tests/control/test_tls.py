"""TLS settings, certificates and the signing key: real files under tmp_path, a real SQLite
store, and real TLS handshakes over 127.0.0.1 (no daemon: that is test_e2e_tls.py)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from modelfleet.control import tls
from modelfleet.control.credentials import credentials_dir, signing_key, signing_public_key
from modelfleet.errors import ConfigError
from modelfleet.store.registry import Store
from tls_support import handshake, make_cert

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.create(tmp_path / "ws", "tlsws")
    yield s
    s.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the stored choice -------------------------------------------------------------------


def test_settings_round_trip_through_the_store(store: Store, tmp_path: Path) -> None:
    assert tls.load(store) == tls.TlsSettings()  # off by default
    cert, key = make_cert(tmp_path, [x509.DNSName("localhost")])
    for settings in (
        tls.TlsSettings("self-signed", http_port=8080),
        tls.TlsSettings("files", cert, key),
        tls.TlsSettings("off"),
    ):
        tls.save(store, settings)
        assert tls.load(store) == settings


def test_requested_flags(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, [x509.DNSName("localhost")])
    none = {"self_signed": False, "cert": None, "key": None, "off": False, "http_port": None}
    assert tls.requested(**none) is None  # keep the stored choice
    assert tls.requested(**{**none, "self_signed": True}) == tls.TlsSettings("self-signed")
    assert tls.requested(**{**none, "off": True}) == tls.TlsSettings("off")
    got = tls.requested(**{**none, "cert": str(cert), "key": str(key), "http_port": 0})
    assert got == tls.TlsSettings("files", cert.resolve(), key.resolve(), 0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"self_signed": True, "off": True}, "choose one of"),
        ({"cert": "CERT"}, "go together"),
        ({"key": "KEY"}, "go together"),
        ({"http_port": 8080}, "--http-port 8080 goes with"),
        ({"off": True, "http_port": 8080}, "--http-port 8080 goes with"),
        ({"self_signed": True, "http_port": 70000}, "between 0 and 65535"),
        ({"cert": "missing.pem", "key": "KEY"}, "does not exist"),
        ({"cert": "CERT", "key": "OTHER_KEY"}, "check that the key belongs to the certificate"),
    ],
)
def test_bad_flags_are_refused_with_the_next_step(tmp_path: Path, flags: dict[str, object], message: str) -> None:
    cert, key = make_cert(tmp_path, [x509.DNSName("localhost")])
    _, other_key = make_cert(tmp_path, [x509.DNSName("localhost")], stem="other")
    files = {"CERT": str(cert), "KEY": str(key), "OTHER_KEY": str(other_key)}
    args: dict[str, object] = {"self_signed": False, "cert": None, "key": None, "off": False, "http_port": None}
    args.update({k: files.get(v, v) if isinstance(v, str) else v for k, v in flags.items()})
    with pytest.raises(ConfigError, match=message):
        tls.requested(**args)  # type: ignore[arg-type]


# -- the self-signed certificate -------------------------------------------------------------


def test_self_signed_certificate_is_made_once_owner_only_and_covers_localhost(store: Store) -> None:
    listeners = tls.router_listeners(store, store.root, NOW)
    assert listeners.context is None and listeners.scheme == "http"  # off by default
    tls.save(store, tls.TlsSettings("self-signed"))
    listeners = tls.router_listeners(store, store.root, NOW)
    assert listeners.scheme == "https" and listeners.uri_host == "127.0.0.1" and listeners.http_port is None
    assert store.get_setting("router_scheme") == "https" and store.get_setting("router_uri_host") == "127.0.0.1"
    cert_path = listeners.cert_file
    assert cert_path == tls.certificate_file(store, store.root) == credentials_dir(store.root) / "tls-cert.pem"
    assert mode(cert_path.parent) == 0o700 and mode(cert_path.parent / "tls-key.pem") == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert cert.not_valid_after_utc - NOW == datetime.timedelta(days=365)
    first = cert_path.read_bytes()
    tls.router_listeners(store, store.root, NOW + datetime.timedelta(days=300))
    assert cert_path.read_bytes() == first  # 65 days left: kept
    tls.router_listeners(store, store.root, NOW + datetime.timedelta(days=340))
    assert cert_path.read_bytes() != first  # 25 days left: made again


def test_unreadable_self_signed_certificate_is_made_again(tmp_path: Path) -> None:
    (tmp_path / "tls-cert.pem").write_text("not a certificate")
    cert, key = tls.ensure_self_signed(tmp_path, NOW)
    assert x509.load_pem_x509_certificate(cert.read_bytes()) and key.is_file()


def test_clients_that_trust_the_cluster_certificate_connect_and_others_are_refused(store: Store) -> None:
    tls.save(store, tls.TlsSettings("self-signed"))
    now = datetime.datetime.now(datetime.timezone.utc)
    server = tls.router_listeners(store, store.root, now).context
    assert server is not None
    client = tls.client_context(store, store.root)
    client.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default: the cert must pass it
    assert handshake(server, client) == b"ping"
    assert handshake(server, client, server_name="localhost") == b"ping"
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, ssl.create_default_context())  # the system's CAs do not know it
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, client, server_name="example.com")  # names are checked


def test_own_certificate_files_and_the_uri_host(store: Store, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, [x509.DNSName("localhost")])
    tls.save(store, tls.TlsSettings("files", cert, key, http_port=0))
    listeners = tls.router_listeners(store, store.root, NOW)
    assert listeners.uri_host == "localhost" and listeners.cert_file == cert and listeners.http_port == 0
    assert tls.certificate_file(store, store.root) == cert
    assert listeners.context is not None
    assert handshake(listeners.context, tls.client_context(store, store.root), "localhost") == b"ping"
    ip_cert, _ = make_cert(tmp_path, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], stem="ip")
    named, _ = make_cert(tmp_path, [x509.DNSName("models.example.test")], stem="named")
    assert tls.uri_host(ip_cert) == "127.0.0.1"
    assert tls.uri_host(named) == "models.example.test"


# -- the token-signing key -------------------------------------------------------------------


def test_signing_key_is_made_once_and_owner_only(store: Store) -> None:
    key = signing_key(store.root)
    path = credentials_dir(store.root) / "token-signing-key.pem"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert signing_key(store.root).private_numbers() == key.private_numbers()
    assert signing_public_key(store.root).public_numbers() == key.public_key().public_numbers()


def test_racing_creators_agree_on_one_signing_key(store: Store) -> None:
    results: list[int] = []
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        results.append(signing_key(store.root).private_numbers().private_value)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8 and len(set(results)) == 1
    assert [p.name for p in credentials_dir(store.root).iterdir()] == ["token-signing-key.pem"]  # no temp left


def test_a_damaged_signing_key_says_how_to_recover(store: Store) -> None:
    (credentials_dir(store.root) / "token-signing-key.pem").write_text("garbage")
    with pytest.raises(ConfigError, match="delete it and restart the cluster"):
        signing_key(store.root)
