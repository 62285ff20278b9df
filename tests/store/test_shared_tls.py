"""TLS in a workspace a team shares: the certificate and its key live in the shared database.

Alice starts her cluster with a self-signed certificate; Bob, in another folder (another
machine) that has never held a certificate file, scores through Alice's router with
verification on, trusting the certificate his SDK reads from the database; his own cluster,
started later on ports of its own, serves that same certificate, and ``service.run()`` through
it verifies too. In the database the private key is sealed with the team's key, never plain.
"""

from __future__ import annotations

import datetime
import shutil
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from sqlalchemy import text
from team import two_members

from e2e_support import SUM_BODY, cli, deploy
from modelfleet.control import tls
from modelfleet.store.db import Database
from modelfleet.store.registry import Store
from tls_support import handshake, make_cert


def served_certificate(uri: str) -> str:
    parts = urlsplit(uri)
    return ssl.get_server_certificate((parts.hostname or "127.0.0.1", parts.port or 443))


def test_a_teammates_cluster_serves_the_teams_certificate_and_every_client_trusts_it(
    tmp_path: Path, postgres_server: Any
) -> None:
    with two_members(tmp_path, postgres_server) as (alice, bob):
        assert "router https://127.0.0.1:" in cli(alice, "cluster", "start", "--tls-self-signed").stdout
        secure = deploy(alice, "secure", "sum")
        assert secure.scoring_uri is not None and secure.scoring_uri.startswith("https://")
        headers = {"Authorization": f"Bearer {secure.get_keys()[0]}", "Content-Type": "application/json"}

        # Bob's client verifies Alice's router with what his SDK trusts: the team's certificate
        trusted_by_bob = tls.client_context(bob.store, bob.path)
        answer = httpx.post(secure.scoring_uri, content=SUM_BODY, headers=headers, verify=trusted_by_bob, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == [55]
        assert not (bob.path / ".modelfleet" / "credentials").exists()  # read from the database, no file of his

        # Bob's own cluster (the TLS choice is the team's) serves the same certificate, on its own port
        mine = deploy(bob, "bobs", "sum")
        assert mine.scoring_uri is not None and mine.scoring_uri.startswith("https://")
        assert urlsplit(mine.scoring_uri).port != urlsplit(secure.scoring_uri).port
        assert served_certificate(mine.scoring_uri) == served_certificate(secure.scoring_uri)
        assert mine.run(SUM_BODY) == [55]  # Webservice.run verifies: the team's certificate is trusted

        # the raw table: the certificate and its key are sealed with the team's key
        db = Database(alice.store.backends()["database"])
        try:
            rows = dict(db.read(lambda conn: list(conn.execute(text("SELECT name, value FROM secrets")))))
        finally:
            db.close()
        assert rows["tls-self-signed"].startswith("fernet:")
        key_pem = (alice.path / ".modelfleet" / "credentials" / "tls-key.pem").read_text()
        key_body = "".join(key_pem.strip().splitlines()[1:-1])
        for name, value in rows.items():
            assert "PRIVATE KEY" not in value and key_body not in value, name


def test_own_certificate_files_are_copied_in_and_a_renewal_is_agreed_on(tmp_path: Path, postgres_server: Any) -> None:
    url = postgres_server.new_database()
    now = datetime.datetime.now(datetime.timezone.utc)
    with Store.create(tmp_path / "alice", "team", database=url) as alice:
        (tmp_path / "bob" / ".modelfleet").mkdir(parents=True)
        shutil.copy(tmp_path / "alice" / ".modelfleet" / "secret.key", tmp_path / "bob" / ".modelfleet")
        with Store.create(tmp_path / "bob", "team", database=url) as bob:
            cert, key = make_cert(tmp_path, [x509.DNSName("localhost")])
            tls.save(alice, tls.requested(self_signed=False, cert=str(cert), key=str(key), off=False, http_port=None))
            original = cert.read_bytes()
            cert.unlink()
            key.unlink()  # `cluster start --tls-cert/--tls-key` on Alice's machine: only the workspace has them now
            served = tls.router_listeners(bob, bob.root, now)
            assert served.cert_file is not None and served.cert_file.read_bytes() == original
            assert handshake(served.context, tls.client_context(alice, alice.root), "localhost") == b"ping"

            tls.save(alice, tls.TlsSettings(mode="self-signed"))
            first = tls.router_listeners(alice, alice.root, now).cert_file
            assert first is not None and first.read_bytes() != original
            made_once = tls.router_listeners(bob, bob.root, now).cert_file
            assert made_once is not None and made_once.read_bytes() == first.read_bytes()
            later = now + datetime.timedelta(days=tls.SELF_SIGNED_DAYS - tls.RENEW_BEFORE_DAYS + 5)
            renewed = tls.router_listeners(bob, bob.root, later).cert_file  # Bob's cluster renews it
            assert renewed is not None
            renewed_pem = renewed.read_bytes()
            assert renewed_pem != original
            again = tls.router_listeners(alice, alice.root, later).cert_file  # and Alice's serves Bob's renewal
            assert again is not None and again.read_bytes() == renewed_pem


def test_a_clusters_own_self_signed_certificate_becomes_the_teams_but_a_copy_of_files_does_not(
    tmp_path: Path, postgres_server: Any
) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    with Store.create(tmp_path / "before", "team", database=postgres_server.new_database()) as store:
        # a cluster that served its own self-signed certificate before modelfleet shared it
        cert, _ = tls.ensure_self_signed(tls.credentials_dir(store.root), now)
        served_before = cert.read_bytes()
        tls.save(store, tls.TlsSettings(mode="self-signed"))
        served = tls.router_listeners(store, store.root, now).cert_file
        assert served is not None and served.read_bytes() == served_before  # clients that trust it go on
    with Store.create(tmp_path / "files", "team", database=postgres_server.new_database()) as store:
        own, own_key = make_cert(tmp_path, [x509.DNSName("localhost")])
        tls.save(store, tls.requested(self_signed=False, cert=str(own), key=str(own_key), off=False, http_port=None))
        tls.router_listeners(store, store.root, now)  # the local copy of the user's certificate
        tls.save(store, tls.TlsSettings(mode="self-signed"))
        served = tls.router_listeners(store, store.root, now).cert_file
        assert served is not None and served.read_bytes() != own.read_bytes()
        assert x509.load_pem_x509_certificate(served.read_bytes()).issuer.rfc4514_string().startswith("CN=localhost")
