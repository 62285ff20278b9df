"""A router pod that owns no slot of a service forwards its requests to a peer that does.

``peers.py`` deals each replica's slots to the router pods; with fewer slots than router pods
(one replica at limit 1 behind two routers) some router owns none. Sending to every slot
then, and letting the replica's busy answer settle the collision, costs a round trip and a
queue jump per collision. Instead that router forwards the service's requests to the router
pods that own its slots, which queue them with their own, in one FIFO per slot owner:

- **Where**: each router pod listens on a second port, ``PEER_PORT`` (``--peer-port``), on its
  pod IP, for forwarded requests only. A forwarding router sends to it as to an upstream
  (``ForwardUpstream``: ``PER_SLOT`` requests in flight per slot the peer owns; more wait
  here), so the router's own dispatch, retries and timeouts apply unchanged.
- **Proof**: a forwarded request carries the service's replica secret
  (``x-modelfleet-replica-secret``, what the router already sends the service's replicas and
  only routers and the service's own pods hold) and the hop header ``HOP_HEADER`` naming the
  router that forwarded it. The peer finds the service by that secret, refuses (401) anything
  without both, and does **not** check the client's key or token again: the first router did,
  and the ``Authorization`` header never leaves it.
- **At most once**: a forwarded request goes to the receiving router's own slots, never on.
  If that router owns no slot of the service either (the two routers' views of the peers
  differ for a moment), it answers the busy answer (503 ``x-modelfleet-busy: 1``) that a
  replica gives, and the forwarding router retries as it would after a replica's.
- **Answers** are relayed as the router relays a replica's, status, headers and body.
- **Fallback**: no owner among the peers (none Ready), or every owner unreachable (a connect
  to its peer port failed within the last ``UNREACHABLE_S``), and the router sends to every
  slot of the replicas itself, as before.

The peer port speaks plain HTTP inside the cluster, as the router does to the replicas (with
the same secret); TLS on the router's front port is for clients.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from modelfleet.errors import ConfigError
from modelfleet.router.client import ClientConnection
from modelfleet.router.ports import FrontPort
from modelfleet.router.routes import SECRET_HEADER, Canned, Upstream, error_answer
from modelfleet.targets.kubernetes.manifests import ROUTER_PEER_PORT
from modelfleet.targets.kubernetes.peers import shares
from modelfleet.wire.server import Refused

__all__ = [
    "HOP_HEADER",
    "PEER_PORT",
    "PER_SLOT",
    "ForwardUpstream",
    "PeerConnection",
    "PeerDesk",
    "forward_counts",
    "forward_upstreams",
    "peer_of",
    "secret_digest",
]

PEER_PORT = ROUTER_PEER_PORT  # the router Deployment's "peer" container port
HOP_HEADER = b"x-modelfleet-forwarded-by"
FORWARD_PREFIX = "fwd:"
PER_SLOT = 16  # requests in flight to a peer per slot it owns; the rest wait at the first router
UNREACHABLE_S = 10.0  # a peer whose port refused a connection is not forwarded to for this long
_SERVICE_PREFIX = b"/api/v1/service/"
_HOP_RE = re.compile(rb"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a pod name

C_PEER_401 = error_answer(
    401, "the router's peer port takes only requests forwarded by a router pod (the service's secret and hop header)"
)
C_PEER_BUSY = Canned(
    503,
    b'{"error": "this router owns no slot of the service either; the forwarding router retries"}',
    [("x-modelfleet-busy", "1"), ("retry-after", "0")],
)


def forward_counts(
    replica_ids: Sequence[str], limit: int, peers: Sequence[str], me: str, unreachable: frozenset[str] = frozenset()
) -> dict[str, int] | None:
    """The peers router ``me`` forwards a service's requests to, each with the number of the
    service's slots it owns; ``None`` when ``me`` owns a slot itself (it sends there), or no
    reachable peer owns one (it sends to every slot, as before)."""
    if not replica_ids or limit < 1 or shares(replica_ids, limit, peers, me) is not None:
        return None
    out = {}
    for peer in sorted(set(peers)):
        if peer == me or peer in unreachable:
            continue
        owned = shares(replica_ids, limit, peers, peer)
        if owned:
            out[peer] = sum(owned.values())
    return out or None


@dataclass(frozen=True)
class ForwardUpstream(Upstream):
    """A peer router's peer port as an upstream: the service's secret, and the hop header
    naming the router that forwards (``hop``, its pod name)."""

    hop: bytes = b""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.secret is None:
            raise ConfigError(f"upstream {self.id}: forwarding needs the service's replica secret")
        if not isinstance(self.hop, bytes) or not _HOP_RE.match(self.hop):
            raise ConfigError(f"upstream {self.id}: hop must be the forwarding router's pod name (got {self.hop!r})")

    def head_lines(self) -> bytes:
        return super().head_lines() + HOP_HEADER + b": " + self.hop + b"\r\n"


def forward_upstreams(
    counts: Mapping[str, int], addresses: Mapping[str, str], secret: bytes, me: str, port: int = PEER_PORT
) -> list[ForwardUpstream]:
    """``PER_SLOT`` upstreams per slot each peer owns (ids ``fwd:<peer>#<k>``), slot k of every
    peer before slot k+1 of any; peers without an address are left out."""
    per_peer = {p: n * PER_SLOT for p, n in counts.items() if addresses.get(p)}
    out = []
    for k in range(max(per_peer.values(), default=0)):
        out += [
            ForwardUpstream(id=f"{FORWARD_PREFIX}{p}#{k}", host=addresses[p], port=port, secret=secret, hop=me.encode())
            for p in sorted(per_peer)
            if per_peer[p] > k
        ]
    return out


def peer_of(upstream_id: str) -> str | None:
    """The peer a forwarding upstream's id names; ``None`` for a replica's."""
    if not upstream_id.startswith(FORWARD_PREFIX):
        return None
    return upstream_id[len(FORWARD_PREFIX) :].rsplit("#", 1)[0]


def secret_digest(secret: bytes) -> bytes:
    return hashlib.sha256(b"modelfleet-peer\0" + secret).digest()


class PeerDesk(Protocol):
    """What the peer port asks the router's discovery (on the router's loop)."""

    identity: str | None

    def service_for(self, digest: bytes) -> str | None:
        """The service whose replica secret has this ``secret_digest``."""
        ...

    def forwards(self, service: str) -> bool:
        """This router owns no slot of ``service`` and forwards its requests itself."""
        ...


class PeerConnection(ClientConnection):
    """A connection on the peer port: a request forwarded by another router pod goes into the
    service's queue here as if a client had sent it, without a second key or token check."""

    trusted = True  # ClientConnection skips the service's auth check for this connection's requests

    def __init__(self, router: FrontPort, desk: PeerDesk) -> None:
        super().__init__(router)
        self.desk = desk

    def on_headers_complete(self) -> None:
        if self.closing:
            super().on_headers_complete()
            return
        secret = hop = None
        for name, value in self.headers:
            n = name.lower()
            if n == SECRET_HEADER:
                secret = value
            elif n == HOP_HEADER:
                hop = value
        service = self.desk.service_for(secret_digest(secret)) if secret is not None and hop is not None else None
        if service is None or not self.url.startswith(b"/") or hop == (self.desk.identity or "").encode():
            self.refuse(C_PEER_401)
            raise Refused
        if self.desk.forwards(service):
            self.refuse(C_PEER_BUSY)  # never forwarded twice: the first router retries
            raise Refused
        self.url = _SERVICE_PREFIX + service.encode() + self.url  # the replica's path under the service's
        super().on_headers_complete()
