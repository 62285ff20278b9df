"""Two router pods sharing replica slots: each slot of a replica belongs to one live router.

Why: every router pod routes (the Service spreads clients over them), and each one fills the
replicas up to ``replica_max_concurrent_requests`` from its own counts. Two routers that both
see a replica free both send to it; the replica's own busy answer (503 ``x-modelfleet-busy``)
keeps its limit exact, and the loser retries elsewhere after a back-off, but that is a wasted
round trip and a queue jump. azureml-fe's instances talk to each other for this reason; the
router pods here only need to agree on who owns which slot, and they can agree without
talking, from what they all read from the API:

- **Peers** are the router's own pods (``ROUTER_SELECTOR``, which the router's Role already
  lets it list and watch) that are Ready and not Terminating, by name. A pod's name is its
  identity (``HOSTNAME`` in a pod). A deleted router pod leaves every peer's set at once (its
  deletionTimestamp); a hung or crashed one when its readiness probe fails (2 x 2 s).
- **Slots**: a replica at limit L has L slots, ``(replica, k)``. They are dealt round-robin to
  the peers sorted by name, the first slot of every replica before the second of any, the
  replicas in the order of a hash of their pod name, that order turned by one every
  lcm(peers, replicas) slots so that each peer's slots spread over the replicas (2 replicas at
  limit 2, 2 peers: one slot of each replica per peer, not both slots of one). ``shares`` is
  that deal, seen from one router: how many slots of each replica it owns. Each router then sends a replica at most as
  many requests as it owns slots of it, so the routers' requests to a replica never add up to
  more than L, and below capacity nobody is answered busy.
- Dealing, not rendezvous hashing per slot: hashing balances only on average, and with two
  replicas and two routers it gives both replicas to one router half the time, leaving the
  other router nothing to send to. Dealing keeps every router's share within one slot of the
  others'; what it costs is that a new replica or peer can move several slots at once (for the
  moment the routers' views differ, a replica may get a busy answer, which it retries).

The data path stays free of the client: a slot owned is fed to the router as one upstream of
its own (``<pod>#<k>``, the same address) under a per-upstream limit of 1, through the same
``RouterTable``/``Router.set_replicas`` as before, so ``router/dispatch.py`` needs no per-upstream
limit.

A router that owns no slot of a service (fewer slots in all than routers, e.g. one replica at
limit 1 behind two routers), or is not itself a peer (not Ready yet, Terminating, run beside
the cluster), forwards the service's requests to the peers that own its slots
(``forward.py``); only with no reachable owner does it send to every slot as before, its
collisions then settled by the replica's busy answer.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from modelfleet.targets.base import ReplicaInfo
from modelfleet.targets.kubernetes.manifests import COMPONENT_LABEL
from modelfleet.targets.kubernetes.pods import is_ready

__all__ = ["ROUTER_SELECTOR", "expand", "peers_of", "shares"]

ROUTER_SELECTOR = f"{COMPONENT_LABEL}=router,app.kubernetes.io/managed-by=modelfleet"


def peers_of(pods: Iterable[Mapping[str, Any]]) -> list[str]:
    """The names of the router pods that are Ready and not Terminating, sorted."""
    names = []
    for p in pods:
        meta = p.get("metadata", {})
        if meta.get("deletionTimestamp") is None and is_ready(p):
            names.append(str(meta.get("name")))
    return sorted(names)


def _order(replica_id: str) -> str:
    return hashlib.sha256(replica_id.encode()).hexdigest()


def shares(replica_ids: Sequence[str], limit: int, peers: Sequence[str], me: str) -> dict[str, int] | None:
    """How many of each replica's ``limit`` slots router ``me`` owns when they are dealt to
    ``peers``; replicas it owns none of are left out. ``None`` when ``me`` is no peer or owns
    nothing of this service: it then uses every slot (see the module docstring)."""
    ring = sorted(set(peers))
    if me not in ring or limit < 1:
        return None
    mine = ring.index(me)
    owned: dict[str, int] = {}
    ordered = sorted(set(replica_ids), key=_order)
    n, r = len(ring), len(ordered)
    if r == 0:
        return None
    # Slot q of the deal (round q // r) goes to router q % n. Were round k always dealt in the
    # same replica order, a router would meet only the replicas in one residue class of
    # gcd(n, r): 2 replicas at limit 2 behind 2 routers would give each router both slots of
    # one replica, and a router the kernel or the Service favoured could use half the capacity.
    # So every lcm(n, r) slots (whole rounds, since r divides it) the order turns by one.
    turn = math.lcm(n, r)
    for q in range(mine, limit * r, n):
        rid = ordered[(q + q // turn) % r]
        owned[rid] = owned.get(rid, 0) + 1
    return owned or None


def expand(replicas: Sequence[ReplicaInfo], limit: int, owned: Mapping[str, int] | None) -> list[ReplicaInfo]:
    """One replica per slot used (id ``<replica>#<k>``, same address), to be routed at a limit
    of 1 each: ``owned``'s counts, or all ``limit`` slots of each replica when it is ``None``.
    Slot k of every replica comes before slot k+1 of any, so the router's least-loaded pick
    spreads requests over replicas before it stacks them."""
    counts = {r.id: (limit if owned is None else owned.get(r.id, 0)) for r in replicas}
    out = []
    for k in range(max(counts.values(), default=0)):
        out += [replace(r, id=f"{r.id}#{k}") for r in replicas if counts[r.id] > k]
    return out
