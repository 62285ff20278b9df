"""``modelfleet dashboard``: a login link to the cluster's live dashboard, opened in a browser.

The link carries a one-time code signed with the cluster's admin token (only this user can
read it; ``control/dashboard/login.py``), valid for five minutes; the dashboard exchanges it
for a session cookie and drops it from the address.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from modelfleet.cli.common import workspace
from modelfleet.errors import ClusterUnavailable


def register(groups: Any) -> None:
    dashboard = groups.add_parser("dashboard", help="open the cluster's live dashboard (starts the cluster if needed)")
    dashboard.add_argument("--no-browser", action="store_true", help="only print the login link")
    dashboard.set_defaults(handler=dashboard_open)


def dashboard_open(args: argparse.Namespace) -> int:
    from modelfleet.control.dashboard.login import CODE_TTL_S, issue_code

    cluster = workspace(args).cluster()
    info = cluster.ensure_running()
    port = info.get("dashboard_port")
    if not port:
        raise ClusterUnavailable(
            "the running cluster serves no dashboard (started with --no-dashboard, or by an older modelfleet); "
            "restart it: `modelfleet cluster stop` then `modelfleet cluster start`"
        )
    code = issue_code(cluster.paths.admin_token.read_text().strip(), time.time())
    link = f"http://127.0.0.1:{port}/login?code={code}"
    print(f"dashboard: http://127.0.0.1:{port}/")
    print(f"login link (one use, {CODE_TTL_S // 60} minutes): {link}")
    if not args.no_browser:
        import webbrowser  # here: every other command starts faster without it

        webbrowser.open(link)
    return 0
