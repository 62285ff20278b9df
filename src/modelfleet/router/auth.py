"""Request authentication for the router: the pluggable check, service keys, tokens, failures.

The router asks ``ServiceRoute.auth.check(value)`` with the raw ``Authorization`` header value
(``None`` when absent) and gets an ``AuthResult`` back. Anything with that method plugs in:
``KeyAuth`` (v1 key auth) and ``TokenAuth`` (v1 token auth) here. A check never logs and never
raises on bad input; the router turns MISSING/INVALID into a precomputed 401 whose body says
only that, and records the failure per client in ``AuthFailures``.

Keys are compared with ``hmac.compare_digest`` against both the primary and the secondary
key every time (no early exit), so the time taken says nothing about which key, or how much
of one, matched.

Tokens are JWTs signed with the cluster's own ES256 (ECDSA P-256) key pair; the private key
stays in the workspace (the SDK signs with it in ``Webservice.get_token``), the router holds
only the public key. A token is accepted when, and only when:

1. its header names ES256: the accepted algorithm list is pinned, never read from the token,
   so ``alg: none`` and the HS256-with-the-public-key swap are refused before any crypto;
2. its signature verifies with the cluster's public key (any changed byte fails);
3. ``iss`` is ``modelfleet`` and ``aud`` is exactly this service's audience (a token of
   another service, or one with a list of audiences, is refused);
4. ``iat <= now + skew`` and ``now <= exp + skew`` with ``skew`` = 30 s, ``now`` being wall
   clock seconds since the epoch, passed in (JWT times are epoch seconds, not monotonic).

Worked example: issued at now=1000 with the default lifetime of 3600 s, a token has exp=4600
and refresh_by=2800 (half-way, so a client that refreshes on time always holds a token with
at least 30 min left). It is accepted at now=970 (issued "in the future" by 30 s of skew) up
to now=4630, and refused at now=969 and now=4631.

A verified token's ``exp`` is cached by its exact bytes (bounded), so the signature is checked
once per token rather than once per request; the time check runs on every request.
"""

from __future__ import annotations

import enum
import hmac
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from modelfleet.errors import ConfigError

__all__ = [
    "CLOCK_SKEW_S",
    "TOKEN_ALGORITHM",
    "TOKEN_LIFETIME_S",
    "AuthCheck",
    "AuthFailures",
    "AuthResult",
    "KeyAuth",
    "TokenAuth",
    "authenticate",
    "bearer_token",
    "issue_token",
    "token_audience",
    "verify_token",
]

TOKEN_ALGORITHM = "ES256"
_ALGORITHMS = [TOKEN_ALGORITHM]  # pinned: the token's own "alg" is never trusted
TOKEN_ISSUER = "modelfleet"
TOKEN_LIFETIME_S = 3600  # v1's tokens live about an hour too; refresh_by is half of it
CLOCK_SKEW_S = 30.0
_TOKEN_CACHE_SIZE = 1024


class AuthResult(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    INVALID = "invalid"


class AuthCheck(Protocol):
    """A service's credentials. ``now``: wall-clock epoch seconds (tokens expire); ``None``
    lets the credentials read their own injected clock."""

    def check(self, authorization: bytes | None, now: float | None = None) -> AuthResult: ...


def authenticate(authorization: bytes | None, credentials: AuthCheck | None, now: float) -> AuthResult:
    """The request's ``Authorization`` header value (``None`` when absent) against a service's
    credentials (``None``: the service needs none) at wall-clock time ``now``: what the router
    asks for every scoring request. No I/O, no clock read; the same inputs give the same answer."""
    if credentials is None:
        return AuthResult.OK
    return credentials.check(authorization, now)


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The credential of ``Bearer <credential>`` (scheme case-insensitive), else ``None``."""
    if authorization is None or len(authorization) < 7 or authorization[:7].lower() != b"bearer ":
        return None
    token = authorization[7:].strip()
    return token or None


# -- keys ------------------------------------------------------------------------------------


class KeyAuth:
    """Primary/secondary key check. ``set_keys`` takes effect for the next request.

    An empty or ``None`` key matches nothing (a service whose keys are not set yet refuses
    everyone rather than letting everyone in)."""

    __slots__ = ("_held",)

    def __init__(self, primary: str | bytes | None, secondary: str | bytes | None = None) -> None:
        self._held: tuple[bytes | None, bytes | None, bytes, bytes] = (None, None, b"", b"")
        self.set_keys(primary, secondary)

    def set_keys(self, primary: str | bytes | None, secondary: str | bytes | None = None) -> None:
        # One tuple assignment: a request sees either the old pair or the new one, never half.
        # After the keys, the Authorization value that carries each (b"" for none: matches nothing).
        p, s = _key(primary), _key(secondary)
        self._held = (p, s, b"Bearer " + p if p else b"", b"Bearer " + s if s else b"")

    def key_material(self) -> tuple[bytes | None, bytes | None]:
        """The primary and secondary key (router workers are handed them: control/router_fleet.py)."""
        return self._held[0], self._held[1]

    def check(self, authorization: bytes | None, now: float | None = None) -> AuthResult:
        if not authorization:
            return AuthResult.MISSING
        primary, secondary, sent, sent_2 = self._held
        # The header as clients write it ("Bearer <key>"), against both keys' (no short circuit):
        # a match needs no parsing. Anything else (another casing of the scheme, spaces, a
        # wrong key) is parsed and compared below, as it always was.
        if hmac.compare_digest(authorization, sent) | hmac.compare_digest(authorization, sent_2):
            return AuthResult.OK
        token = bearer_token(authorization)
        if token is None:
            return AuthResult.INVALID
        # Always compare both (no short circuit) so timing does not tell which key matched.
        ok = hmac.compare_digest(token, primary) if primary is not None else False
        ok_2 = hmac.compare_digest(token, secondary) if secondary is not None else False
        return AuthResult.OK if ok | ok_2 else AuthResult.INVALID

    def __repr__(self) -> str:  # never show the keys
        p, s = ("***" if k is not None else "none" for k in self.key_material())
        return f"<KeyAuth primary={p} secondary={s}>"


def _key(key: str | bytes | None) -> bytes | None:
    if not key:
        return None
    k = key.encode() if isinstance(key, str) else bytes(key)
    if any(c in k for c in (b" ", b"\t", b"\r", b"\n")):
        raise ConfigError(
            "service keys may not contain spaces or line breaks; regenerate the key with `modelfleet service regen-key`"
        )
    return k


# -- tokens ----------------------------------------------------------------------------------


def token_audience(service: str) -> str:
    """The ``aud`` claim of a token for ``service``: valid for that one service only."""
    return f"modelfleet:service:{service}"


def issue_token(
    private_key: EllipticCurvePrivateKey, service: str, now: float, lifetime_s: int = TOKEN_LIFETIME_S
) -> tuple[str, int]:
    """A signed token for ``service`` and its refresh-by time (both epoch seconds based)."""
    iat = int(now)
    claims = {
        "iss": TOKEN_ISSUER,
        "aud": token_audience(service),
        "sub": service,
        "iat": iat,
        "exp": iat + int(lifetime_s),
    }
    token = jwt.encode(claims, private_key, algorithm=TOKEN_ALGORITHM)
    return token, iat + int(lifetime_s) // 2


def verify_token(
    token: bytes | str,
    public_key: EllipticCurvePublicKey,
    service: str,
    now: float,
    skew_s: float = CLOCK_SKEW_S,
) -> AuthResult:
    """Rules 1-4 of the module docstring; OK or INVALID, never an exception."""
    times = _verified_times(token, public_key, token_audience(service))
    if times is None:
        return AuthResult.INVALID
    return AuthResult.OK if _in_time(times, now, skew_s) else AuthResult.INVALID


def _verified_times(token: bytes | str, public_key: EllipticCurvePublicKey, audience: str) -> tuple[int, int] | None:
    """(iat, exp) of a token whose algorithm, signature, issuer and audience check out."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=_ALGORITHMS,
            audience=audience,
            issuer=TOKEN_ISSUER,
            # Times are checked by _in_time against the ``now`` we are given, not PyJWT's clock.
            options={
                "require": ["iss", "aud", "iat", "exp"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "strict_aud": True,
            },
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    iat, exp = claims.get("iat"), claims.get("exp")
    if claims.get("aud") != audience or not _is_time(iat) or not _is_time(exp):
        return None
    return int(iat), int(exp)  # type: ignore[arg-type]


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _in_time(times: tuple[int, int], now: float, skew_s: float) -> bool:
    iat, exp = times
    return iat <= now + skew_s and now <= exp + skew_s


class TokenAuth:
    """Token check for one service. ``clock`` gives wall-clock epoch seconds; the composition
    root passes ``time.time`` (tests pass their own), so this module never reads the clock."""

    __slots__ = ("_audience", "_cache", "_clock", "_public_key", "_skew_s")

    def __init__(
        self,
        public_key: EllipticCurvePublicKey,
        service: str,
        clock: Callable[[], float],
        skew_s: float = CLOCK_SKEW_S,
    ) -> None:
        if not isinstance(public_key, EllipticCurvePublicKey):
            raise ConfigError(f"token auth needs the cluster's EC public key (got {type(public_key).__name__})")
        self._public_key = public_key
        self._audience = token_audience(service)
        self._clock = clock
        self._skew_s = skew_s
        # token bytes -> (iat, exp) of tokens whose signature has been verified
        self._cache: OrderedDict[bytes, tuple[int, int]] = OrderedDict()

    def public_key_pem(self) -> str:
        """The public key that verifies tokens, as PEM (router workers are handed it:
        control/router_fleet.py)."""
        pem = self._public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        return pem.decode()

    def check(self, authorization: bytes | None, now: float | None = None) -> AuthResult:
        if not authorization:
            return AuthResult.MISSING
        token = bearer_token(authorization)
        if token is None:
            return AuthResult.INVALID
        times = self._cache.get(token)
        if times is None:
            times = _verified_times(token, self._public_key, self._audience)
            if times is None:
                return AuthResult.INVALID
            self._cache[token] = times
            if len(self._cache) > _TOKEN_CACHE_SIZE:
                self._cache.popitem(last=False)  # the oldest verified token goes first
        when = self._clock() if now is None else now
        return AuthResult.OK if _in_time(times, when, self._skew_s) else AuthResult.INVALID

    def __repr__(self) -> str:
        return f"<TokenAuth aud={self._audience} cached={len(self._cache)}>"


# -- failures --------------------------------------------------------------------------------


class AuthFailures:
    """Failed authentications, in total by result and per client address, for the metrics.

    ``record`` is O(1) on the 401 path. At most ``max_clients`` addresses are kept; past that
    the least recently failing one is dropped (its failures stay in the totals), so a flood of
    addresses cannot grow the router's memory. Reading: ``snapshot()`` (a copy, safe to export).
    """

    __slots__ = ("_by_client", "_max_clients", "missing", "invalid")

    def __init__(self, max_clients: int = 10_000) -> None:
        self._max_clients = max_clients
        self._by_client: OrderedDict[str, int] = OrderedDict()
        self.missing = 0
        self.invalid = 0

    def record(self, client: str, result: AuthResult) -> None:
        if result is AuthResult.MISSING:
            self.missing += 1
        else:
            self.invalid += 1
        by_client = self._by_client
        by_client[client] = by_client.get(client, 0) + 1
        by_client.move_to_end(client)
        if len(by_client) > self._max_clients:
            by_client.popitem(last=False)

    def count(self, client: str) -> int:
        return self._by_client.get(client, 0)

    def merge(self, other: Mapping[str, Any]) -> None:
        """Add another router's ``snapshot()`` (a router worker's failures since its last
        report): its totals, and its addresses as the most recently failing, in its order;
        past ``max_clients`` the least recently failing ones are dropped, as ``record`` does."""
        self.missing += int(other["missing"])
        self.invalid += int(other["invalid"])
        by_client = self._by_client
        for client, n in other["by_client"].items():
            by_client[client] = by_client.get(client, 0) + int(n)
            by_client.move_to_end(client)
        while len(by_client) > self._max_clients:
            by_client.popitem(last=False)

    def snapshot(self) -> dict[str, Any]:
        return {"missing": self.missing, "invalid": self.invalid, "by_client": dict(self._by_client)}

    def __repr__(self) -> str:
        return f"<AuthFailures missing={self.missing} invalid={self.invalid} clients={len(self._by_client)}>"
