"""Tier 1: key and token checks, and the failure counter, with plain values (no sockets, no sleeps).

Token expiry is checked against a ``now`` stepped by the test, never against the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from modelfleet.errors import ConfigError
from modelfleet.router.auth import (
    CLOCK_SKEW_S,
    TOKEN_LIFETIME_S,
    AuthFailures,
    AuthResult,
    KeyAuth,
    TokenAuth,
    bearer_token,
    issue_token,
    token_audience,
    verify_token,
)

OK, MISSING, INVALID = AuthResult.OK, AuthResult.MISSING, AuthResult.INVALID
T0 = 1_700_000_000.0
KEY = ec.generate_private_key(ec.SECP256R1())
PUB = KEY.public_key()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims(service: str = "svc", iat: float = T0, lifetime: int = TOKEN_LIFETIME_S) -> dict[str, object]:
    return {
        "iss": "modelfleet",
        "aud": token_audience(service),
        "sub": service,
        "iat": int(iat),
        "exp": int(iat) + lifetime,
    }


def forge(header: dict[str, object], payload: dict[str, object], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


# -- keys ------------------------------------------------------------------------------------


def test_key_auth_cases() -> None:
    auth = KeyAuth("primary-key", "secondary-key")
    assert auth.check(None) is MISSING
    assert auth.check(b"") is MISSING
    assert auth.check(b"Basic primary-key") is INVALID  # wrong scheme
    assert auth.check(b"primary-key") is INVALID  # no scheme at all
    assert auth.check(b"Bearer ") is INVALID
    assert auth.check(b"Bearer wrong") is INVALID
    assert auth.check(b"Bearer primary-key") is OK
    assert auth.check(b"bearer secondary-key") is OK  # the scheme is case-insensitive
    assert auth.check(b"Bearer primary-keyx") is INVALID
    assert auth.check(b"Bearer primary-ke") is INVALID


def test_the_header_as_sent_and_the_parsed_credential_agree() -> None:
    # check() first compares the whole value with "Bearer <key>" (no parsing), then parses
    # anything else: every spelling gets the verdict of the parsed comparison.
    for primary, secondary in (("primary-key", "secondary-key"), ("primary-key", None), (None, "secondary-key")):
        auth = KeyAuth(primary, secondary)
        keys = [k.encode() for k in (primary, secondary) if k]
        spellings = [b"Bearer primary-key", b"Bearer secondary-key", b"BEARER primary-key", b"Bearer  primary-key "]
        spellings += [b"Bearer primary-key\t", b"Bearer primary-keyx", b"Bearer ", b"Bearer", b"Bearer none"]
        for value in spellings:
            parsed = value[7:].strip() if value[:7].lower() == b"bearer " else None
            assert (auth.check(value) is OK) == (parsed in keys), (primary, secondary, value)
        assert auth.key_material() == (primary and primary.encode(), secondary and secondary.encode())


def test_key_of_another_service_is_refused() -> None:
    a, b = KeyAuth("a-primary", "a-secondary"), KeyAuth("b-primary", "b-secondary")
    assert a.check(b"Bearer b-primary") is INVALID
    assert b.check(b"Bearer a-secondary") is INVALID


def test_set_keys_refuses_the_old_key_at_once_and_keeps_the_other() -> None:
    auth = KeyAuth("old-primary", "secondary")
    auth.set_keys("new-primary", "secondary")
    assert auth.check(b"Bearer old-primary") is INVALID
    assert auth.check(b"Bearer new-primary") is OK
    assert auth.check(b"Bearer secondary") is OK


def test_unset_keys_let_nobody_in_and_repr_hides_keys() -> None:
    auth = KeyAuth(None, "")
    assert auth.check(b"Bearer ") is INVALID
    assert auth.check(b"Bearer anything") is INVALID
    shown = repr(KeyAuth("s3cret-value", None))
    assert "s3cret" not in shown and shown == "<KeyAuth primary=*** secondary=none>"


def test_key_with_a_space_is_a_config_error_that_does_not_echo_it() -> None:
    with pytest.raises(ConfigError) as err:
        KeyAuth("has a-space")
    assert "has a-space" not in str(err.value)


def test_bearer_token_parsing() -> None:
    assert bearer_token(b"Bearer  tok ") == b"tok"
    assert bearer_token(b"BEARER tok") == b"tok"
    assert bearer_token(b"Token tok") is None
    assert bearer_token(None) is None


# -- tokens: the worked example and the refusals ---------------------------------------------


def test_worked_example_from_the_docstring() -> None:
    token, refresh_by = issue_token(KEY, "svc", now=1000)
    assert refresh_by == 2800
    assert jwt.decode(token, options={"verify_signature": False})["exp"] == 4600
    for now, want in ((969, INVALID), (970, OK), (1000, OK), (4600, OK), (4630, OK), (4631, INVALID)):
        assert verify_token(token, PUB, "svc", now=now) is want, now


def test_fresh_token_is_ok_until_expiry_plus_skew() -> None:
    token, refresh_by = issue_token(KEY, "svc", now=T0)
    assert refresh_by == int(T0) + TOKEN_LIFETIME_S // 2
    assert verify_token(token, PUB, "svc", now=T0) is OK
    assert verify_token(token, PUB, "svc", now=refresh_by) is OK
    assert verify_token(token, PUB, "svc", now=T0 + TOKEN_LIFETIME_S + CLOCK_SKEW_S) is OK
    assert verify_token(token, PUB, "svc", now=T0 + TOKEN_LIFETIME_S + CLOCK_SKEW_S + 1) is INVALID  # expired


def test_token_header_says_es256_and_claims_are_scoped() -> None:
    token, _ = issue_token(KEY, "svc", now=T0)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    body = jwt.decode(token, options={"verify_signature": False})
    assert body["aud"] == "modelfleet:service:svc" and body["iss"] == "modelfleet" and body["sub"] == "svc"


def test_token_of_another_service_is_refused() -> None:
    token, _ = issue_token(KEY, "other", now=T0)
    assert verify_token(token, PUB, "svc", now=T0) is INVALID
    assert verify_token(token, PUB, "other", now=T0) is OK


def test_token_with_a_changed_payload_is_refused() -> None:
    token, _ = issue_token(KEY, "other", now=T0)
    header, payload, signature = token.split(".")
    changed = json.loads(unb64(payload))
    changed["aud"] = token_audience("svc")  # point another service's token at this one
    assert verify_token(f"{header}.{b64(json.dumps(changed).encode())}.{signature}", PUB, "svc", T0) is INVALID
    longer = json.loads(unb64(payload))
    longer["exp"] += 10 * TOKEN_LIFETIME_S  # or stretch its life
    forged = f"{header}.{b64(json.dumps(longer).encode())}.{signature}"
    assert verify_token(forged, PUB, "other", now=T0 + 2 * TOKEN_LIFETIME_S) is INVALID


def test_alg_none_token_is_refused() -> None:
    unsigned = forge({"alg": "none", "typ": "JWT"}, claims())
    assert verify_token(unsigned, PUB, "svc", now=T0) is INVALID
    assert verify_token(unsigned.rstrip("."), PUB, "svc", now=T0) is INVALID
    with_sig = forge({"alg": "none", "typ": "JWT"}, claims(), b"anything")
    assert verify_token(with_sig, PUB, "svc", now=T0) is INVALID


def test_hs256_token_made_with_the_public_key_is_refused() -> None:
    # the classic algorithm swap: an HMAC "signed" with the public key the verifier holds
    for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
        secret = PUB.public_bytes(encoding, serialization.PublicFormat.SubjectPublicKeyInfo)
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = b64(json.dumps(claims()).encode())
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        assert verify_token(f"{header}.{payload}.{b64(mac)}", PUB, "svc", now=T0) is INVALID


def test_tokens_signed_by_another_key_or_algorithm_are_refused() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    assert verify_token(jwt.encode(claims(), other, algorithm="ES256"), PUB, "svc", now=T0) is INVALID
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert verify_token(jwt.encode(claims(), rsa_key, algorithm="RS256"), PUB, "svc", now=T0) is INVALID
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert verify_token(jwt.encode(claims(), p384, algorithm="ES384"), PUB, "svc", now=T0) is INVALID


@pytest.mark.parametrize(
    "change",
    [
        {"aud": [token_audience("svc"), token_audience("other")]},  # a list of audiences
        {"iss": "someone-else"},
        {"exp": None},
        {"iat": None},
        {"aud": None},
        {"exp": "4600"},
        {"exp": True},
    ],
)
def test_tokens_with_wrong_or_missing_claims_are_refused(change: dict[str, object]) -> None:
    body = {**claims(), **change}
    body = {k: v for k, v in body.items() if v is not None}
    assert verify_token(jwt.encode(body, KEY, algorithm="ES256"), PUB, "svc", now=T0) is INVALID


def test_token_issued_in_the_future_beyond_the_skew_is_refused() -> None:
    token, _ = issue_token(KEY, "svc", now=T0 + 60)
    assert verify_token(token, PUB, "svc", now=T0) is INVALID
    assert verify_token(token, PUB, "svc", now=T0 + 30) is OK


@pytest.mark.parametrize("garbage", ["", "a.b", "a.b.c", "not a token", "\x00\xff", "e30.e30.e30"])
def test_garbage_is_invalid_not_an_exception(garbage: str) -> None:
    assert verify_token(garbage, PUB, "svc", now=T0) is INVALID


# -- TokenAuth: the router's check with an injected clock ------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_auth_check_steps_through_expiry_after_caching() -> None:
    clock = Clock(T0)
    auth = TokenAuth(PUB, "svc", clock=clock)
    token, _ = issue_token(KEY, "svc", now=T0)
    header = b"Bearer " + token.encode()
    assert auth.check(None) is MISSING
    assert auth.check(b"Basic " + token.encode()) is INVALID
    assert auth.check(header) is OK
    assert "cached=1" in repr(auth)
    clock.now = T0 + TOKEN_LIFETIME_S + CLOCK_SKEW_S
    assert auth.check(header) is OK
    clock.now += 1
    assert auth.check(header) is INVALID  # the cache remembers the signature, never the verdict
    other, _ = issue_token(KEY, "other", now=T0)
    clock.now = T0
    assert auth.check(b"Bearer " + other.encode()) is INVALID
    assert "cached=1" in repr(auth)  # refused tokens are not cached


def test_token_auth_cache_is_bounded() -> None:
    clock = Clock(T0)
    auth = TokenAuth(PUB, "svc", clock=clock)
    for i in range(1100):
        token, _ = issue_token(KEY, "svc", now=T0 - i)
        assert auth.check(b"Bearer " + token.encode()) is OK
    assert "cached=1024" in repr(auth)


def test_token_auth_needs_an_ec_public_key() -> None:
    with pytest.raises(ConfigError):
        TokenAuth(b"secret", "svc", clock=Clock(T0))  # type: ignore[arg-type]


# -- failures --------------------------------------------------------------------------------


def test_auth_failures_counted_per_client_and_bounded() -> None:
    failures = AuthFailures(max_clients=3)
    for _ in range(4):
        failures.record("10.0.0.1", INVALID)
    failures.record("10.0.0.2", MISSING)
    assert failures.count("10.0.0.1") == 4
    snap = failures.snapshot()
    assert snap == {"missing": 1, "invalid": 4, "by_client": {"10.0.0.1": 4, "10.0.0.2": 1}}
    for host in ("10.0.0.3", "10.0.0.4"):
        failures.record(host, INVALID)
    # the least recently failing address went; the totals keep its failures
    assert failures.count("10.0.0.1") == 0 and failures.count("10.0.0.2") == 1
    assert failures.invalid == 6 and failures.missing == 1
    assert repr(failures) == "<AuthFailures missing=1 invalid=6 clients=3>"
