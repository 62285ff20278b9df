"""TLS in a workspace a team shares: the certificate and its key live in the shared database.

Alice starts her cluster with a self-signed certificate; Bob, in another folder (another
machine) that has never held a certificate file, scores through Alice's router with
verification on, trusting the certificate his SDK reads from the database; his own cluster,
started later on ports of its own, serves that same certificate, and ``service.run()`` through
it verifies too. In the database the private key is sealed with the team's key, never plain.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import text
from team import two_members

from e2e_support import SUM_BODY, cli, deploy
from modelfleet.control import tls
from modelfleet.store.db import Database


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
