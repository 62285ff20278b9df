"""Model-aware routing: which replica a request for a named model prefers. Decisions only.

A request that names a model (header ``x-ms-model``, optionally ``x-ms-model-version``, or the
URL ``/api/v1/service/<svc>/models/<model>/score``) should go to the replica that already
holds that model in its LRU (``modelfleet.replica.models``), so that each replica loads a
share of the models rather than all of them.

The rule (consistent hashing with bounded loads, after Mirrokni, Thorup and Zadimoghaddam,
"Consistent Hashing with Bounded Loads", 2018, with a replica's slots as its bound):

1. The model key (``name`` or ``name:version``, bytes) orders the service's replicas by
   rendezvous (highest random weight) hashing: replica ``r`` scores
   ``blake2b(r || 0x00 || key)`` (8 bytes, big-endian), highest first; ties (never seen in
   practice) go to the lower index. A replica added or removed moves only the models whose
   first choice it is (about 1/n of them); every other model keeps its order.
2. The request goes to the first replica in that order that is open (listed, not failed,
   not backing off after a busy answer) and has a free slot (``in_flight <
   replica_max_concurrent_requests``). So a model goes to one replica while that replica has
   room, and a hot model spills to its second, third, ... replica only as its load grows
   past what the earlier ones can take at once. The order is the same for every request of
   that model, so the spill replicas warm up too and stay warm.
3. When no replica has a free slot the request waits in the service's FIFO like any other
   (first come, first served); when a slot frees, the waiter at the head takes the first free
   replica in its own order.

The hash is blake2b, not Python's ``hash()``, so every router process (the Kubernetes
router pods, future worker processes) agrees on the order. Orders are cached per model key
and dropped whenever the replica list changes (``Ranking``), so a request pays one dict
look-up and a scan of its order, not n hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from typing import Protocol

__all__ = ["MAX_KEY_BYTES", "Ranking", "choose", "first_open", "model_key", "rank"]

MAX_KEY_BYTES = 512  # a model key longer than this is cut (names are at most 255 characters in v1)
CACHE_KEYS = 4096  # orders kept per replica set; past it the cache starts again (bounded memory)


def model_key(name: bytes, version: bytes | None = None) -> bytes:
    """The key a request is routed by: ``name`` or ``name:version``, at most MAX_KEY_BYTES."""
    key = name if not version else name + b":" + version
    return key[:MAX_KEY_BYTES]


def _score(replica_id: bytes, key: bytes) -> int:
    return int.from_bytes(blake2b(replica_id + b"\x00" + key, digest_size=8).digest(), "big")


def rank(key: bytes, replica_ids: Sequence[str]) -> tuple[int, ...]:
    """The indices of ``replica_ids`` in ``key``'s order (rule 1): highest score first."""
    scores = [_score(rid.encode(), key) for rid in replica_ids]
    return tuple(sorted(range(len(scores)), key=lambda i: (-scores[i], i)))


def choose(order: Sequence[int], free: Sequence[bool]) -> int:
    """Rule 2 over plain data: the first index in ``order`` whose ``free`` is true, else -1."""
    for i in order:
        if free[i]:
            return i
    return -1


class SlotView(Protocol):
    """What ``first_open`` reads of a replica (``dispatch.Slot``)."""

    in_flight: int
    listed: bool
    failed: bool
    busy_until: float


def first_open(order: Sequence[int], slots: Sequence[SlotView], limit: int, now: float) -> int:
    """Rule 2 over the dispatcher's slots: ``choose`` with ``free[i]`` = slot ``i`` is open at
    ``now`` and holds fewer than ``limit`` requests."""
    for i in order:
        s = slots[i]
        if s.in_flight < limit and s.listed and not s.failed and s.busy_until <= now:
            return i
    return -1


class Ranking:
    """Orders of one replica list, computed once per model key (the list must not change:
    make a new Ranking when it does)."""

    __slots__ = ("ids", "_orders")

    def __init__(self, replica_ids: Sequence[str]) -> None:
        self.ids = tuple(replica_ids)
        self._orders: dict[bytes, tuple[int, ...]] = {}

    def order(self, key: bytes) -> tuple[int, ...]:
        found = self._orders.get(key)
        if found is None:
            if len(self._orders) >= CACHE_KEYS:
                self._orders.clear()
            found = self._orders[key] = rank(key, self.ids)
        return found
