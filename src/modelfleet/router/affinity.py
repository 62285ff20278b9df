"""Model-aware routing: which replica a request for a named model prefers. Decisions only.

A request that names a model (header ``x-ms-model``, optionally ``x-ms-model-version``, or the
URL ``/api/v1/service/<svc>/models/<model>/score``) should go to the replica that already
holds that model in its LRU (``modelfleet.replica.models``), so that each replica loads a
share of the models rather than all of them.

The rule (consistent hashing with bounded loads, after Mirrokni, Thorup and Zadimoghaddam,
"Consistent Hashing with Bounded Loads", 2018, with two choices; a replica's bound is its slots
plus as many requests waiting for it, ``2 x limit``, ``limit`` being
``replica_max_concurrent_requests``):

1. The model key (``name`` or ``name:version``, bytes) orders the service's replicas by
   rendezvous (highest random weight) hashing: replica ``r`` scores
   ``blake2b(r || 0x00 || key)`` (8 bytes, big-endian), highest first; ties (never seen in
   practice) go to the lower index. A replica added or removed moves only the models whose
   first choice it is (about 1/n of them); every other model keeps its order.
2. Only open replicas count (listed, not failed, not backing off after a busy answer). The
   request goes at once to the first of its first ``SPREAD`` (2) replicas that has a free
   slot (``in_flight < limit``). Failing that, it waits *pinned* to the first replica in its
   order that has fewer than ``limit`` requests pinned to it, if that replica comes before
   any replica with a free slot; a pinned waiter is served by that replica's next free slot.
   Otherwise it goes to the first replica with a free slot further down its order.
3. So a model's requests go to its first two replicas while they keep up (both hold it), wait
   a little for them when both are busy (about one request's time, against a load and an
   eviction elsewhere: bench/model_affinity.py measures the trade), and a hot model spills to
   its third, fourth, ... replica only as its load grows past ``2 x limit`` requests on each
   of the earlier ones. The order is the same for every request of the model, so the
   replicas it spills to stay warm for it.
4. When every replica is full and has ``limit`` waiters the request waits unpinned in the
   service's FIFO and takes whichever replica frees first, as a request without a model does.
5. A waiter stays pinned at most ``PIN_WAIT_SHARE`` (half) of the service's wait
   (``max_request_wait_time``); then it takes whichever replica frees first. A holding
   replica stuck on a slow request would otherwise turn its waiters into 503s at the end of
   the wait while other replicas sat free: past half the wait, loading the model elsewhere is
   the cheaper risk.

The hash is blake2b, not Python's ``hash()``, so every router process (the Kubernetes
router pods, future worker processes) agrees on the order. Orders are cached per model key
and dropped whenever the replica list changes (``Ranking``), so a request pays one dict
look-up and a scan of its order, not n hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from typing import Protocol

__all__ = ["MAX_KEY_BYTES", "PIN_WAIT_SHARE", "SPREAD", "Ranking", "choose", "model_key", "place", "rank"]

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


PIN_WAIT_SHARE = 0.5  # rule 5: the share of the service's wait a waiter may spend pinned
SPREAD = 2  # rule 2: a request may take any of the first SPREAD open replicas of its order that has room


def choose(
    order: Sequence[int],
    is_open: Sequence[bool],
    in_flight: Sequence[int],
    pinned: Sequence[int],
    limit: int,
    spread: int = SPREAD,
) -> tuple[int, bool]:
    """Rules 2 and 4 over plain data, per replica index: open or not, requests in flight,
    requests waiting pinned to it. Returns ``(i, True)``: send to ``i`` now; ``(i, False)``:
    wait pinned to ``i``; ``(-1, False)``: wait unpinned."""
    pin = -1
    seen = 0  # open replicas walked
    for i in order:
        if is_open[i]:
            if in_flight[i] < limit:
                return i, True  # past the first ``spread`` only when no pin was possible
            if pin < 0 and pinned[i] < limit:
                pin = i
            seen += 1
            if seen >= spread and pin >= 0:
                return pin, False
    return pin, False


class SlotView(Protocol):
    """What ``place`` reads of a replica (``dispatch.Slot``)."""

    in_flight: int
    pinned: int
    listed: bool
    failed: bool
    busy_until: float


def place(
    order: Sequence[int], slots: Sequence[SlotView], limit: int, now: float, spread: int = SPREAD
) -> tuple[int, bool]:
    """``choose`` over the dispatcher's slots (``is_open``: ``Slot.open(now)``), without
    building the lists."""
    pin = -1
    seen = 0
    for i in order:
        s = slots[i]
        if s.listed and not s.failed and s.busy_until <= now:
            if s.in_flight < limit:
                return i, True  # past the first ``spread`` only when no pin was possible
            if pin < 0 and s.pinned < limit:
                pin = i
            seen += 1
            if seen >= spread and pin >= 0:
                return pin, False
    return pin, False


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
