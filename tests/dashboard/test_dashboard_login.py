"""One-time login codes and sessions (control/dashboard/login.py); time is an argument."""

from __future__ import annotations

from modelfleet.control.dashboard.login import CODE_TTL_S, MAX_SESSIONS, SESSION_TTL_S, Sessions, issue_code

TOKEN = "admin-token-of-this-daemon"


def test_the_worked_example_of_the_module_docstring() -> None:
    sessions = Sessions(TOKEN)
    code = issue_code(TOKEN, now=1000.0)
    assert code.startswith(f"{1000 + CODE_TTL_S}.")
    session = sessions.redeem(code, now=1010.0)
    assert session is not None
    assert sessions.valid(session, now=1010.0 + SESSION_TTL_S)
    assert sessions.redeem(code, now=1011.0) is None  # one use
    assert not sessions.valid(session, now=1011.0 + SESSION_TTL_S)


def test_a_code_signed_with_another_token_or_altered_is_refused() -> None:
    sessions = Sessions(TOKEN)
    assert sessions.redeem(issue_code("another-daemons-token", 0.0), 1.0) is None
    expires, nonce, mac = issue_code(TOKEN, 0.0).split(".")
    assert sessions.redeem(f"{int(expires) + 3600}.{nonce}.{mac}", 1.0) is None  # a longer life, forged
    assert sessions.redeem(f"{expires}.{nonce}x.{mac}", 1.0) is None
    for junk in ("", "...", "abc", "1.2", "x.y.z", "1.2.3.4"):
        assert sessions.redeem(junk, 1.0) is None
    assert sessions.redeem(f"{expires}.{nonce}.{mac}", 1.0) is not None


def test_an_expired_code_is_refused() -> None:
    sessions = Sessions(TOKEN)
    code = issue_code(TOKEN, now=0.0)
    assert sessions.redeem(code, now=CODE_TTL_S + 0.5) is None


def test_unknown_ended_and_missing_sessions_are_not_valid() -> None:
    sessions = Sessions(TOKEN)
    assert not sessions.valid(None, 0.0)
    assert not sessions.valid("", 0.0)
    assert not sessions.valid("made-up-session-id", 0.0)
    session = sessions.redeem(issue_code(TOKEN, 0.0), 0.0)
    sessions.end(session)
    assert not sessions.valid(session, 0.0)


def test_sessions_kept_are_bounded() -> None:
    sessions = Sessions(TOKEN)
    first = sessions.redeem(issue_code(TOKEN, 0.0), 0.0)
    for _ in range(MAX_SESSIONS):
        assert sessions.redeem(issue_code(TOKEN, 0.0), 0.0) is not None
    assert not sessions.valid(first, 0.0)  # the oldest made room
    assert "open=64" in repr(sessions)
