"""auth.authenticate(header, credentials, now): plain data in, a verdict out; no clock read
(the credentials' own clock fails the test if called), and the router passes its wall clock."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from modelfleet.router.auth import (
    CLOCK_SKEW_S,
    TOKEN_LIFETIME_S,
    AuthResult,
    KeyAuth,
    TokenAuth,
    authenticate,
    issue_token,
)
from router_upstream import RouterThread, UpstreamProcess, serve_on, wait_for

KEY = ec.generate_private_key(ec.SECP256R1())
T0 = 1_700_000_000.0


def no_clock() -> float:
    pytest.fail("authenticate() read the credentials' clock instead of using `now`")


def test_keys_and_no_credentials() -> None:
    keys = KeyAuth("k1", "k2")
    assert authenticate(None, None, T0) is AuthResult.OK  # a service without auth
    assert authenticate(None, keys, T0) is AuthResult.MISSING
    assert authenticate(b"Bearer k2", keys, T0) is AuthResult.OK
    assert authenticate(b"Bearer k3", keys, T0) is AuthResult.INVALID


def test_token_expiry_follows_now_only() -> None:
    creds = TokenAuth(KEY.public_key(), "svc", clock=no_clock)
    token, _ = issue_token(KEY, "svc", now=T0)
    header = b"Bearer " + token.encode()
    end = T0 + TOKEN_LIFETIME_S + CLOCK_SKEW_S
    assert authenticate(header, creds, T0 - CLOCK_SKEW_S) is AuthResult.OK
    assert authenticate(header, creds, T0 - CLOCK_SKEW_S - 1) is AuthResult.INVALID  # issued in the future
    assert authenticate(header, creds, end) is AuthResult.OK
    assert authenticate(header, creds, end + 1) is AuthResult.INVALID
    assert authenticate(header, creds, T0) is AuthResult.OK  # the verdict is never cached


def test_the_router_checks_tokens_against_its_wall_clock(
    make_router: Callable[..., RouterThread], upstreams: Callable[..., UpstreamProcess]
) -> None:
    now = [T0]
    rt = make_router(wall_clock=lambda: now[0])
    serve_on(rt, "svc", [upstreams().port], auth=TokenAuth(KEY.public_key(), "svc", clock=no_clock))
    token, _ = issue_token(KEY, "svc", now=T0)
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(timeout=10) as c:
        assert c.post(rt.url("svc"), content=b"{}", headers=headers).status_code == 200
        now[0] = T0 + TOKEN_LIFETIME_S + CLOCK_SKEW_S + 10
        # The router reads its wall clock once per tick (at most a second).
        wait_for(lambda: c.post(rt.url("svc"), content=b"{}", headers=headers).status_code == 401, timeout=5)
