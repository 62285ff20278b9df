"""Who may see the dashboard: one-time login codes signed with the admin token, then sessions.

Whoever can read the workspace's admin token (``runtime/admin.token``, owner-only) may use
the dashboard, as they may use the admin API. ``modelfleet dashboard`` reads it and signs a
login code: ``EXPIRES.NONCE.MAC`` with MAC = HMAC-SHA256(token, "dashboard-login:EXPIRES.NONCE").
The dashboard's ``/login?code=`` accepts a code once, before it expires, and answers with a
session cookie (random, HttpOnly, SameSite=Strict), then a redirect to a URL without the code.
A forged, altered, expired or replayed code, and an unknown or expired session, are refused.

Worked example: a code issued at t=1000 expires at 1300 (``CODE_TTL_S`` 300 s); redeemed at
t=1010 it yields a session valid until 1010 + 43200; redeemed again, at any time, it yields
nothing; a session looked up at 44211 is gone.

Time is an argument; nothing here reads the clock or does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["CODE_TTL_S", "COOKIE", "SESSION_TTL_S", "Sessions", "issue_code"]

CODE_TTL_S = 300  # a login link is for now, not for later
SESSION_TTL_S = 12 * 3600  # a working day; then run `modelfleet dashboard` again
MAX_SESSIONS = 64  # a bound on what repeated logins make the daemon keep (oldest dropped)
COOKIE = "modelfleet_dashboard"
_CONTEXT = b"dashboard-login:"  # a MAC for this purpose only, never valid as anything else


def issue_code(token: str, now: float, ttl_s: float = CODE_TTL_S) -> str:
    """A login code for the daemon whose admin token is ``token``."""
    payload = f"{int(now + ttl_s)}.{secrets.token_urlsafe(16)}"
    return f"{payload}.{_mac(token, payload)}"


def _mac(token: str, payload: str) -> str:
    digest = hmac.new(token.encode(), _CONTEXT + payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Sessions:
    """Codes already used and the sessions they opened (kept in memory: a daemon restart
    makes a new admin token, so old codes and sessions end with it)."""

    def __init__(self, token: str) -> None:
        self._token = token
        self._used: dict[str, float] = {}  # nonce -> the code's expiry (forgotten after it)
        self._sessions: dict[str, float] = {}  # session id -> expiry

    def __repr__(self) -> str:
        return f"<Sessions open={len(self._sessions)} used_codes={len(self._used)}>"

    def redeem(self, code: str, now: float) -> str | None:
        """A new session id for a valid, unexpired, unused code; None otherwise."""
        self._forget(now)
        parts = code.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        expires_s, nonce, mac = parts
        if not hmac.compare_digest(mac.encode(), _mac(self._token, f"{expires_s}.{nonce}").encode()):
            return None
        expires = float(expires_s)
        if now > expires or nonce in self._used:
            return None
        self._used[nonce] = expires
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        session = secrets.token_urlsafe(32)
        self._sessions[session] = now + SESSION_TTL_S
        return session

    def valid(self, session: str | None, now: float) -> bool:
        if not session:
            return False
        expires = self._sessions.get(session)
        return expires is not None and now <= expires

    def end(self, session: str | None) -> None:
        if session:
            self._sessions.pop(session, None)

    def _forget(self, now: float) -> None:
        self._used = {n: t for n, t in self._used.items() if t >= now}
        self._sessions = {s: t for s, t in self._sessions.items() if t >= now}
