"""Helpers for the dashboard tests: a login link from the real CLI, and a logged-in client."""

from __future__ import annotations

import re

import httpx

from e2e_support import cli
from modelfleet import Workspace
from modelfleet.control.dashboard.login import COOKIE

_LINK = re.compile(r"login link .*: (http://127\.0\.0\.1:\d+/login\?code=\S+)")


def login_link(ws: Workspace) -> str:
    """The link ``modelfleet dashboard --no-browser`` prints (it starts the cluster if needed)."""
    out = cli(ws, "dashboard", "--no-browser").stdout
    match = _LINK.search(out)
    assert match, out
    return match.group(1)


def base_uri(link: str) -> str:
    return link.split("/login", 1)[0]


def logged_in(ws: Workspace) -> httpx.Client:
    """An HTTP client holding a dashboard session cookie, as a browser would after the link."""
    link = login_link(ws)
    client = httpx.Client(base_url=base_uri(link), timeout=30.0)
    answer = client.get(link, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    assert client.cookies.get(COOKIE)
    return client
