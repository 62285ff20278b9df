"""Request authentication for the router: the pluggable check and service keys.

The router asks ``ServiceRoute.auth.check(value)`` with the raw ``Authorization`` header value
(``None`` when absent) and gets an ``AuthResult`` back. Anything with that method plugs in:
``KeyAuth`` here, token (JWT) auth later. A check never logs and never raises on bad input;
the router turns MISSING/INVALID into a precomputed 401 whose body says only that.

Keys are compared with ``hmac.compare_digest`` against both the primary and the secondary
key every time (no early exit), so the time taken says nothing about which key, or how much
of one, matched.
"""

from __future__ import annotations

import enum
import hmac
from typing import Protocol

from modelfleet.errors import ConfigError

__all__ = ["AuthCheck", "AuthResult", "KeyAuth", "bearer_token"]


class AuthResult(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    INVALID = "invalid"


class AuthCheck(Protocol):
    def check(self, authorization: bytes | None) -> AuthResult: ...


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The credential of ``Bearer <credential>`` (scheme case-insensitive), else ``None``."""
    if authorization is None or len(authorization) < 7 or authorization[:7].lower() != b"bearer ":
        return None
    token = authorization[7:].strip()
    return token or None


class KeyAuth:
    """Primary/secondary key check. ``set_keys`` takes effect for the next request.

    An empty or ``None`` key matches nothing (a service whose keys are not set yet refuses
    everyone rather than letting everyone in)."""

    __slots__ = ("_keys",)

    def __init__(self, primary: str | bytes | None, secondary: str | bytes | None = None) -> None:
        self._keys: tuple[bytes | None, bytes | None] = (_key(primary), _key(secondary))

    def set_keys(self, primary: str | bytes | None, secondary: str | bytes | None = None) -> None:
        # One tuple assignment: a request sees either the old pair or the new one, never half.
        self._keys = (_key(primary), _key(secondary))

    def check(self, authorization: bytes | None) -> AuthResult:
        if not authorization:
            return AuthResult.MISSING
        token = bearer_token(authorization)
        if token is None:
            return AuthResult.INVALID
        primary, secondary = self._keys
        # Always compare both (no short circuit) so timing does not tell which key matched.
        ok = hmac.compare_digest(token, primary) if primary is not None else False
        ok_2 = hmac.compare_digest(token, secondary) if secondary is not None else False
        return AuthResult.OK if ok | ok_2 else AuthResult.INVALID

    def __repr__(self) -> str:  # never show the keys
        p, s = ("***" if k is not None else "none" for k in self._keys)
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
