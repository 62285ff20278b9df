"""What every connection of a replica reads: the process-wide HTTP state.

One ``Shared`` per process, built by ``app.App`` and read by ``protocol.HttpProtocol``: the
configuration and its limits, the header lines added to every answer (server version, and Date
refreshed once a second), the open connections, whether the server is stopping, the event loop
and the access log. It handles no request, so the connection layer (``protocol``) and the
request handling (``app``) both import it and not each other.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sized
from email.utils import formatdate
from typing import Protocol

from modelfleet.errors import PayloadTooLarge
from modelfleet.replica.access import AccessLog
from modelfleet.replica.config import ReplicaConfig
from modelfleet.replica.limits import Limits
from modelfleet.replica.responses import Reply, header_line


class Connection(Protocol):
    """What the server's housekeeping needs of a connection (``protocol.HttpProtocol``)."""

    @property
    def busy(self) -> bool: ...

    @property
    def pending(self) -> Sized: ...

    def expire(self, now: float) -> None: ...

    def close_if_idle(self, now: float, idle_limit: float) -> None: ...

    def close(self) -> None: ...


class Shared:
    """Process-wide state every connection reads; written on the loop thread only."""

    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config
        self.limits = Limits(config)
        self.max_body_bytes = config.max_body_bytes
        version = config.server_version
        self.server_header = header_line("x-ms-server-version", version) if version else b""
        self.date = b""
        self.refresh_date()
        self.connections: set[Connection] = set()
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None
        # Workers write their answers themselves where the platform allows (protocol.py).
        self.direct_write = sys.platform != "win32"
        self.access = AccessLog() if config.access_log else None
        limit_mb = config.max_body_bytes / (1024 * 1024)
        self.too_large = Reply(
            413,
            b"Content-Type: application/json\r\n",
            PayloadTooLarge(
                f"request body is larger than the replica's limit of {limit_mb:g} MB "
                f"({config.max_body_bytes} bytes); send a smaller payload"
            ).to_body(),
        )

    def __repr__(self) -> str:
        return f"<Shared connections={len(self.connections)} stopping={self.stopping}>"

    def refresh_date(self) -> None:
        self.date = b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"
