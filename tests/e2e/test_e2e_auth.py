"""End to end: keys, tokens and auth off, through the real router of a real local cluster.

One cluster serves the module: two key-auth services (so that one's key can be tried on the
other), a token-auth service and one with auth off. Each 401 case is checked for its status,
its ``WWW-Authenticate: Bearer`` header and a body that says only "missing" or "invalid".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from e2e_support import SUM_BODY, deploy, stop_cluster, wait_until
from fs_support import files_with_bytes
from modelfleet import AksWebservice, Webservice, Workspace
from modelfleet.control.credentials import credentials_dir, signing_key
from modelfleet.errors import ConfigError
from modelfleet.router.auth import TOKEN_LIFETIME_S, issue_token

MISSING = {"message": "missing"}
INVALID = {"message": "invalid"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("e2eauth", tmp_path_factory.mktemp("ws"))
    yield workspace
    stop_cluster(workspace)


@pytest.fixture(scope="module")
def services(ws: Workspace) -> dict[str, Webservice]:
    return {
        "alpha": deploy(ws, "alpha", "sum"),
        "beta": deploy(ws, "beta", "sum", primary_key="beta-primary-key-chosen-by-the-user"),
        "tok": deploy(ws, "tok", "sum", token_auth_enabled=True),
        "open": deploy(ws, "open", "sum", auth_enabled=False),
    }


def post(service: Webservice, authorization: str | None = None, client: httpx.Client | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return (client or httpx).post(service.scoring_uri, content=SUM_BODY, headers=headers)  # type: ignore[attr-defined]


def assert_401(response: httpx.Response, body: dict[str, str]) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == body


def cli(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(ws.path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- keys ------------------------------------------------------------------------------------


def test_each_valid_key_is_200(services: dict[str, Webservice]) -> None:
    alpha = services["alpha"]
    primary, secondary = alpha.get_keys()
    assert primary != secondary
    assert len(primary) >= 43 and len(secondary) >= 43  # 32 random bytes = 256 bits, url-safe base64
    for key in (primary, secondary):
        response = post(alpha, f"Bearer {key}")
        assert response.status_code == 200 and response.json() == [55]
    beta_primary, _ = services["beta"].get_keys()
    assert beta_primary == "beta-primary-key-chosen-by-the-user"  # given in deploy_configuration
    assert post(services["beta"], f"Bearer {beta_primary}").status_code == 200
    assert alpha.run(SUM_BODY) == [55]


def test_401_without_header_with_wrong_scheme_wrong_key_and_another_services_key(
    services: dict[str, Webservice],
) -> None:
    alpha, beta = services["alpha"], services["beta"]
    primary, secondary = alpha.get_keys()
    assert_401(post(alpha), MISSING)
    assert_401(post(alpha, ""), MISSING)
    assert_401(post(alpha, f"Basic {primary}"), INVALID)
    assert_401(post(alpha, primary), INVALID)  # no scheme
    assert_401(post(alpha, f"Bearer {primary[:-1]}"), INVALID)
    assert_401(post(alpha, "Bearer not-the-key"), INVALID)
    for key in beta.get_keys():
        assert_401(post(alpha, f"Bearer {key}"), INVALID)
    for key in (primary, secondary):
        assert_401(post(beta, f"Bearer {key}"), INVALID)


def test_regenerated_key_is_refused_at_once_and_the_new_one_works(ws: Workspace) -> None:
    # a service of its own: the shared ones keep the keys other tests expect (beta's chosen one)
    beta = deploy(ws, "rotated", "sum")
    old_primary, old_secondary = beta.get_keys()
    beta.regen_key("Primary")
    new_primary, secondary = beta.get_keys()
    assert secondary == old_secondary and new_primary != old_primary and len(new_primary) >= 43
    assert_401(post(beta, f"Bearer {old_primary}"), INVALID)  # no wait: refused from the return on
    assert post(beta, f"Bearer {new_primary}").status_code == 200
    beta.regen_key("Secondary", set_key="a-secondary-the-user-chose")
    assert_401(post(beta, f"Bearer {old_secondary}"), INVALID)
    assert post(beta, "Bearer a-secondary-the-user-chose").status_code == 200
    assert post(beta, f"Bearer {new_primary}").status_code == 200


def test_regeneration_under_continuous_traffic_loses_no_request_with_the_surviving_key(
    services: dict[str, Webservice],
) -> None:
    alpha = services["alpha"]
    _, secondary = alpha.get_keys()
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                statuses.append(post(alpha, f"Bearer {secondary}", client).status_code)

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(statuses) >= 20, timeout=30)
        old_keys = []
        for _ in range(5):
            old_keys.append(alpha.get_keys()[0])
            alpha.regen_key("Primary")
            before = len(statuses)
            wait_until(lambda before=before: len(statuses) >= before + 10, timeout=30)  # type: ignore[misc]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert len(statuses) >= 70 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    for old in old_keys:
        assert_401(post(alpha, f"Bearer {old}"), INVALID)
    assert post(alpha, f"Bearer {alpha.get_keys()[0]}").status_code == 200


def test_bad_set_key_is_refused_without_echoing_it(services: dict[str, Webservice]) -> None:
    with pytest.raises(ConfigError) as err:
        services["beta"].regen_key("Primary", set_key="has a space-and-secret")
    assert "secret" not in str(err.value)
    with pytest.raises(ConfigError, match="'Primary' or 'Secondary'"):
        services["beta"].regen_key("Tertiary")


# -- tokens ----------------------------------------------------------------------------------


def test_fresh_token_is_200_and_refresh_by_is_half_its_life(services: dict[str, Webservice]) -> None:
    tok = services["tok"]
    before = time.time()
    token, refresh_by = tok.get_token()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert claims["exp"] - claims["iat"] == TOKEN_LIFETIME_S
    assert int(before) <= claims["iat"] <= time.time() and refresh_by == claims["iat"] + TOKEN_LIFETIME_S // 2
    response = post(tok, f"Bearer {token}")
    assert response.status_code == 200 and response.json() == [55]
    assert post(tok, f"Bearer {token}").status_code == 200  # again: the verified token is cached
    assert tok.run(SUM_BODY) == [55]


def test_401_for_bad_tokens(ws: Workspace, services: dict[str, Webservice]) -> None:
    tok = services["tok"]
    key = signing_key(ws.path)
    assert_401(post(tok), MISSING)
    expired, _ = issue_token(key, "tok", now=time.time() - TOKEN_LIFETIME_S - 120)
    assert_401(post(tok, f"Bearer {expired}"), INVALID)
    others, _ = issue_token(key, "alpha", now=time.time())
    assert_401(post(tok, f"Bearer {others}"), INVALID)
    # a token with a changed payload: another service's token pointed at this one
    header, payload, signature = others.split(".")
    claims = jwt.decode(others, options={"verify_signature": False})
    claims["aud"], claims["sub"] = "modelfleet:service:tok", "tok"
    changed = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    assert_401(post(tok, f"Bearer {changed}"), INVALID)
    good, _ = tok.get_token()
    body = jwt.decode(good, options={"verify_signature": False})
    unsigned = f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(body).encode())}."
    assert_401(post(tok, f"Bearer {unsigned}"), INVALID)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(body).encode())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert_401(post(tok, f"Bearer {signing_input}.{b64(mac)}"), INVALID)
    assert_401(post(tok, f"Basic {good}"), INVALID)
    assert_401(post(tok, f"Bearer {services['alpha'].get_keys()[0]}"), INVALID)  # a key is not a token
    assert_401(post(services["alpha"], f"Bearer {good}"), INVALID)  # nor a token a key
    assert post(tok, f"Bearer {good}").status_code == 200


def test_get_access_token_cli(ws: Workspace, services: dict[str, Webservice]) -> None:
    result = cli(ws, "service", "get-access-token", "-n", "tok", "-o", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["tokenType"] == "Bearer" and data["refreshBy"] > time.time()
    assert post(services["tok"], f"Bearer {data['accessToken']}").status_code == 200
    text = cli(ws, "service", "get-access-token", "-n", "tok")
    token, when = text.stdout.splitlines()
    assert when.startswith("refresh by ") and post(services["tok"], f"Bearer {token}").status_code == 200
    refused = cli(ws, "service", "get-access-token", "-n", "alpha")
    assert refused.returncode == 1 and "token auth is not enabled for service alpha" in refused.stderr


def test_get_keys_and_get_token_each_refuse_the_other_kind(services: dict[str, Webservice]) -> None:
    with pytest.raises(ConfigError, match="key auth is off"):
        services["tok"].get_keys()
    with pytest.raises(ConfigError, match="token auth is not enabled"):
        services["alpha"].get_token()


def test_key_and_token_auth_together_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot enable both key and token auth"):
        AksWebservice.deploy_configuration(auth_enabled=True, token_auth_enabled=True)
    spec = AksWebservice.deploy_configuration(token_auth_enabled=True)  # key auth off by itself, as v1
    assert spec.token_auth_enabled and not spec.auth_enabled


# -- auth off, secrecy, counting -------------------------------------------------------------


def test_auth_off_serves_without_credentials(services: dict[str, Webservice]) -> None:
    response = post(services["open"])
    assert response.status_code == 200 and response.json() == [55]
    assert post(services["open"], "Bearer anything").status_code == 200
    assert services["open"].run(SUM_BODY) == [55]


def test_keys_are_owner_only_and_never_in_list_show_or_logs(ws: Workspace, services: dict[str, Webservice]) -> None:
    alpha = services["alpha"]
    keys = [*alpha.get_keys(), *services["beta"].get_keys()]
    post(alpha, f"Bearer {keys[0]}x")  # a near miss, which must not be logged either
    outputs = [
        cli(ws, "service", "show", "-n", "alpha", "-o", "json"),
        cli(ws, "service", "show", "-n", "beta"),
        cli(ws, "service", "list", "-o", "json"),
        cli(ws, "service", "list"),
        cli(ws, "cluster", "status", "-o", "json"),
    ]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        for key in keys:
            assert key not in result.stdout + result.stderr
    assert all(key not in repr(alpha) for key in keys)
    logs = list(files_with_bytes(ws.store.runtime_dir, ".log"))
    assert any(p.name == "daemon.log" for p, _ in logs)
    for path, data in logs:
        for key in keys:
            assert key.encode() not in data, path
    meta = ws.path / ".modelfleet"
    assert stat.S_IMODE(os.stat(meta).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(meta / "metadata.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(credentials_dir(ws.path) / "token-signing-key.pem").st_mode) == 0o600


def test_auth_failures_are_counted_per_client(ws: Workspace, services: dict[str, Webservice]) -> None:
    def failures() -> dict[str, object]:
        return ws.cluster().status()["auth_failures"]  # type: ignore[no-any-return]

    before = failures()
    for _ in range(3):
        post(services["alpha"], "Bearer wrong")
    post(services["tok"])
    post(services["alpha"], f"Bearer {services['alpha'].get_keys()[0]}")  # a success counts nothing
    after = failures()
    assert after["invalid"] == before["invalid"] + 3  # type: ignore[operator]
    assert after["missing"] == before["missing"] + 1  # type: ignore[operator]
    by_before = before["by_client"].get("127.0.0.1", 0)  # type: ignore[attr-defined]
    assert after["by_client"]["127.0.0.1"] == by_before + 4  # type: ignore[index]
