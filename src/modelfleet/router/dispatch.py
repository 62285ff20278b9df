"""Which replica gets a request, and who waits: decisions only, no I/O, no clock.

Theory of operation
-------------------
A ``Dispatch`` belongs to one service. It keeps a ``Slot`` per replica (requests in flight,
whether the replica may take new ones) and a FIFO of waiting requests, each with a deadline
(arrival + ``max_wait_s``). Every method takes ``now`` (monotonic seconds, read by the caller)
and returns action values; ``proxy.py`` performs them:

- ``Send(req, replica)``: the request holds one slot of ``replica`` until ``finish`` (or
  ``busy``/``refused``) gives it back.
- ``Reject(req)``: no replica had room before the deadline; answer 503 with Retry-After.
- ``Expire(req)``: the caller's own deadline (``x-request-timeout-ms``) passed while it was
  queued; answer 504 now. It was never sent to a replica.

Rules (the invariants the tests check):

1. A replica takes a new request only while it is *open*: listed by ``set_replicas``, not
   marked failed, not in busy back-off, and ``in_flight < limit``. ``in_flight`` never
   exceeds ``limit`` through this class.
2. Waiters are served strictly first come, first served; an arrival never overtakes a waiter.
   A request put back by ``busy``/``refused`` goes to the head with its original deadline.
3. A waiter is rejected once ``deadline <= now``, by ``expire`` or by whichever call next
   looks at the queue. ``next_wakeup`` tells the caller when to call ``expire``.
4. A replica left out of ``set_replicas`` (or named by ``retire``) takes nothing new and keeps
   its slots until they finish; then it is forgotten. Listing it again re-opens it and clears
   a failure mark.
5. A replica that answered "busy" (another router filled it) is skipped for
   ``busy_backoff_s``; one that failed is skipped until ``mark_healthy`` or ``set_replicas``.
6. A request may carry a caller's deadline (``arrive(req, now, deadline)``). A waiter whose
   caller's deadline comes before its queue deadline is expired (``Expire``) once
   ``deadline <= now``, whatever its place in the queue; a request already past it on
   arrival is expired at once. These deadlines are kept in a heap beside the FIFO (the FIFO
   stays ordered by queue deadline), so ``next_wakeup`` and expiry stay O(log n).
7. Scale to zero: a request that must wait while no replica is listed at all (the service is
   at zero, or its first replica is starting) may wait ``max_wait_s + cold_wait_s``.
   ``last_arrival`` is the ``now`` of the latest ``arrive`` (the autoscaler's idle time).
   A request that arrived before the first replica was listed again and is put back by
   ``busy``/``refused`` keeps that longer wait (``arrived + max_wait_s + cold_wait_s``).
8. Model-aware routing: a request object with a ``model_key`` attribute (bytes; the router's
   ``client.ModelCycle``) is placed by ``affinity.place`` (the rule is in affinity.py) over
   that key's rendezvous-hash order instead of by the policy: sent to a replica with room near
   the top of its order, or queued *pinned* to a replica that holds the model (at most
   ``limit`` waiters pinned to a replica), or queued unpinned (any replica) when all are
   full. A pinned waiter is served only by its replica, in FIFO order among the waiters that
   can use that replica; waiters behind it may go to other replicas meanwhile (rule 2 holds
   per replica), and a request of either kind may take a free replica on arrival while the
   only waiters are pinned elsewhere. A pinned waiter whose replica fails or goes away is
   placed again at the next look at the queue. A waiter stays pinned at most
   ``PIN_WAIT_SHARE`` of ``max_wait_s`` (affinity.py, rule 5); then it is *loose*: served by
   whichever replica has room first, as a request without a model is. Deadlines (rules 3, 6)
   are unchanged. The orders are cached per replica list; requests without a model pay one
   attribute look-up.

Worked example: three replicas at limit 1, max wait 0.5 s. Five arrivals at t=0 give
``Send(a, r0)``, ``Send(b, r1)``, ``Send(c, r2)``, then ``None`` twice (queued):
``<Dispatch svc=x in_flight=[1,1,1] queued=2>``. Had ``finish("r1", 0.2)`` come, it would
have returned ``[Send(d, r1)]``. With nothing finished, ``expire(0.5)`` returns
``[Reject(d), Reject(e)]``.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence

from modelfleet.router.affinity import PIN_WAIT_SHARE, Ranking, place

__all__ = [
    "Action",
    "Dispatch",
    "Expire",
    "Reject",
    "Send",
    "Slot",
    "pick_least_loaded",
]


class Slot:
    """One replica as the dispatcher sees it."""

    __slots__ = ("id", "in_flight", "pinned", "listed", "failed", "busy_until")

    def __init__(self, replica_id: str) -> None:
        self.id = replica_id
        self.in_flight = 0
        self.pinned = 0  # queued model requests waiting for this replica (rule 8)
        self.listed = True  # named by the last set_replicas and not retired
        self.failed = False  # failed mid-request; skipped until mark_healthy / set_replicas
        self.busy_until = 0.0  # answered "busy"; skipped until then

    def open(self, now: float) -> bool:
        return self.listed and not self.failed and self.busy_until <= now

    def __repr__(self) -> str:
        return f"<Slot {self.id} in_flight={self.in_flight} open={self.open(float('inf'))}>"


class Send:
    """Send ``req`` to ``replica``; the request now holds one of its slots."""

    __slots__ = ("req", "replica")

    def __init__(self, req: Hashable, replica: str) -> None:
        self.req = req
        self.replica = replica

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Send) and other.req == self.req and other.replica == self.replica

    def __repr__(self) -> str:
        return f"Send({self.req!r}, {self.replica!r})"


class Reject:
    """Answer ``req`` with 503 + Retry-After: no capacity before its deadline."""

    __slots__ = ("req",)

    def __init__(self, req: Hashable) -> None:
        self.req = req

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reject) and other.req == self.req

    def __repr__(self) -> str:
        return f"Reject({self.req!r})"


class Expire:
    """Answer ``req`` with 504: its caller's deadline passed while it waited in the queue."""

    __slots__ = ("req",)

    def __init__(self, req: Hashable) -> None:
        self.req = req

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expire) and other.req == self.req

    def __repr__(self) -> str:
        return f"Expire({self.req!r})"


Action = Send | Reject | Expire
Policy = Callable[[Sequence[Slot], int, float, int], int]
_NOTHING: tuple[Action, ...] = ()


def pick_least_loaded(slots: Sequence[Slot], limit: int, now: float, turn: int) -> int:
    """Return the index of the replica to use, or -1 when none has room.

    Algorithm: only open slots (listed, not failed, past any busy back-off) with
    ``in_flight < limit`` qualify. Among them the lowest ``in_flight`` wins. The scan starts
    at index ``turn % len(slots)`` and wraps around; the first slot seen with the lowest count
    wins, so replicas with equal load take turns as the caller advances ``turn`` by one per
    pick. A slot with nothing in flight ends the scan early. Cost: one pass, O(replicas).
    """
    n = len(slots)
    if n == 0:
        return -1
    best = -1
    best_load = limit
    i = turn % n
    for _ in range(n):
        s = slots[i]
        if s.in_flight < best_load and s.listed and not s.failed and s.busy_until <= now:
            best = i
            best_load = s.in_flight
            if best_load == 0:
                break
        i += 1
        if i == n:
            i = 0
    return best


class Dispatch:
    """Slots and the wait queue of one service (see the module docstring for the rules)."""

    def __init__(
        self,
        name: str,
        limit: int,
        max_wait_s: float,
        *,
        policy: Policy = pick_least_loaded,
        busy_backoff_s: float = 0.02,
    ) -> None:
        # Settings: change only through configure().
        self.name = name
        self.limit = limit
        self.max_wait_s = max_wait_s
        self.busy_backoff_s = busy_backoff_s
        self.cold_wait_s = 0.0  # extra wait while no replica is listed (scale to zero)
        self._policy = policy
        self.last_arrival = 0.0  # ``now`` of the latest arrive (set at creation by the caller)
        self._warm_since = float("-inf")  # when a replica was listed after none was (rule 7)
        # Replicas: the list is the pick order; the dict finds a slot by id.
        self._slots: list[Slot] = []
        self._by_id: dict[str, Slot] = {}
        # Waiting requests, oldest first: request -> deadline. OrderedDict gives O(1) pop at
        # the head, O(1) removal of a cancelled waiter and O(1) put-back at the head.
        self._queue: OrderedDict[Hashable, float] = OrderedDict()
        # Callers' deadlines of waiters, earliest first: (deadline, seq, request). An entry
        # whose request is no longer queued is dropped when it reaches the top (lazily).
        self._due: list[tuple[float, int, Hashable]] = []
        self._seq = 0
        self._turn = 0  # advances once per pick, rotating ties
        self.in_flight = 0  # sum of slot.in_flight, kept for the gauges
        self._ranking: Ranking | None = None  # model keys' orders over _slots (rule 8); None: stale
        self._pins: dict[Hashable, Slot] = {}  # queued model requests pinned to a replica (rule 8)
        self._pinned_until: dict[Hashable, float] = {}  # when each pin ends (rule 8)
        # (end, seq, request), earliest first; an entry whose pin is gone is dropped lazily
        self._pin_ends: list[tuple[float, int, Hashable]] = []
        self._loose: set[Hashable] = set()  # queued model requests whose pin ended: any replica

    # -- read-only views ---------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    def slots(self) -> list[Slot]:
        return list(self._slots)

    def slot(self, replica_id: str) -> Slot | None:
        return self._by_id.get(replica_id)

    @property
    def cold(self) -> bool:
        """No replica is listed at all (scale to zero: rule 7's longer wait applies)."""
        return not any(s.listed for s in self._slots)

    def idle(self, replica_ids: Iterable[str]) -> bool:
        """True when none of ``replica_ids`` has a request in flight."""
        by_id = self._by_id
        return all((s := by_id.get(r)) is None or s.in_flight == 0 for r in replica_ids)

    def next_wakeup(self) -> float | None:
        """When ``expire`` should next run: the head's deadline or the end of a busy back-off
        that would let a waiter in; ``None`` when nobody waits."""
        if not self._queue:
            return None
        when = next(iter(self._queue.values()))
        due = self._due
        while due and due[0][2] not in self._queue:
            heapq.heappop(due)
        if due and due[0][0] < when:
            when = due[0][0]
        for s in self._slots:
            if s.listed and not s.failed and s.in_flight < self.limit and s.busy_until < when:
                when = s.busy_until
        ends = self._pin_ends
        while ends and self._pinned_until.get(ends[0][2]) != ends[0][0]:
            heapq.heappop(ends)
        if ends and ends[0][0] < when:
            when = ends[0][0]  # a pin's end can let its waiter take a replica with room (rule 8)
        return when

    def __repr__(self) -> str:
        loads = ",".join(str(s.in_flight) for s in self._slots)
        return f"<Dispatch svc={self.name} in_flight=[{loads}] queued={len(self._queue)}>"

    # -- requests ----------------------------------------------------------------------

    def arrive(self, req: Hashable, now: float, deadline: float | None = None) -> Action | None:
        """A new request: ``Send`` at once, ``None`` (queued), ``Reject`` when it may not wait,
        or ``Expire`` when its caller's ``deadline`` (monotonic seconds) has passed already."""
        self.last_arrival = now
        if deadline is not None and deadline <= now:
            return Expire(req)
        key = getattr(req, "model_key", None)
        pin = -1
        if key is not None:
            pin, go = self._place(key, now)
            if go:
                return self._assign(pin, req)
        elif not self._queue or len(self._pins) == len(self._queue):  # none waiting, or all for full replicas
            i = self._policy(self._slots, self.limit, now, self._turn)
            if i >= 0:
                return self._assign(i, req)
        wait = self.max_wait_s
        if self.cold_wait_s and not any(s.listed for s in self._slots):
            wait += self.cold_wait_s  # no replica at all: one is being started for it
        if wait <= 0:
            return Reject(req)
        self._queue[req] = until = now + wait
        if pin >= 0:
            self._pin(req, self._slots[pin], now)
        if deadline is not None and deadline < until:
            self._push_due(req, deadline)
        return None

    def take_free(self, req: Hashable, now: float) -> Send | None:
        """A slot free right now for ``req``, or ``None``: it never waits, and never goes before
        a waiter (a mirrored copy, ``mirror.py``: dropped first under load). Given back as any
        ``Send`` is, by ``finish``."""
        if self._queue:
            return None
        i = self._policy(self._slots, self.limit, now, self._turn)
        return self._assign(i, req) if i >= 0 else None

    def finish(self, replica_id: str, now: float) -> Sequence[Action]:
        """A request on ``replica_id`` ended (answered, or its connection closed)."""
        self._release(replica_id)
        return self._serve(now) if self._queue else _NOTHING

    def busy(
        self, replica_id: str, req: Hashable, now: float, arrived: float, deadline: float | None = None
    ) -> Sequence[Action]:
        """The replica answered "busy": free the slot, back the replica off, put ``req`` back
        at the head of the queue with its original deadline (``arrived + max_wait_s``, and
        its caller's ``deadline`` if it has one)."""
        slot = self._release(replica_id)
        if slot is not None:
            slot.busy_until = now + self.busy_backoff_s
        return self._requeue(req, now, arrived, deadline)

    def refused(
        self, replica_id: str, req: Hashable, now: float, arrived: float, deadline: float | None = None
    ) -> Sequence[Action]:
        """The replica refused the connection before the request was sent: free the slot,
        mark the replica failed, and put ``req`` back at the head for another replica."""
        slot = self._release(replica_id)
        if slot is not None:
            slot.failed = True
        return self._requeue(req, now, arrived, deadline)

    def cancel(self, req: Hashable) -> bool:
        """A queued request's client went away: forget it. False when it was not queued."""
        found = self._queue.pop(req, None) is not None
        if self._pins:
            self._unpin(req)
        self._loose.discard(req)
        if not self._queue:
            self._due.clear()
        return found

    def expire(self, now: float) -> Sequence[Action]:
        """Reject waiters past their deadline and hand others to replicas that opened up."""
        return self._serve(now) if self._queue else _NOTHING

    # -- replicas ----------------------------------------------------------------------

    def set_replicas(self, replica_ids: Iterable[str], now: float) -> Sequence[Action]:
        """The replicas that may take new requests; others finish what they have."""
        wanted = list(dict.fromkeys(replica_ids))
        keep = set(wanted)
        if wanted and not any(s.listed for s in self._slots):
            self._warm_since = now  # requests that arrived before now were held cold
        for s in self._slots:
            if s.id not in keep:
                s.listed = False
        for rid in wanted:
            found = self._by_id.get(rid)
            if found is None:
                found = Slot(rid)
                self._by_id[rid] = found
                self._slots.append(found)
                self._ranking = None
            else:
                found.listed = True
                found.failed = False
        self._forget_idle_unlisted()
        return self._serve(now) if self._queue else _NOTHING

    def retire(self, replica_ids: Iterable[str]) -> None:
        """Stop assigning to these replicas (drain); they go once their slots are free."""
        for rid in replica_ids:
            s = self._by_id.get(rid)
            if s is not None:
                s.listed = False
        self._forget_idle_unlisted()

    def fail(self, replica_id: str) -> None:
        """The replica failed mid-request: no new requests until ``mark_healthy``."""
        s = self._by_id.get(replica_id)
        if s is not None:
            s.failed = True

    def mark_healthy(self, replica_id: str, now: float) -> Sequence[Action]:
        s = self._by_id.get(replica_id)
        if s is None:
            return _NOTHING
        s.failed = False
        s.busy_until = 0.0
        return self._serve(now) if self._queue else _NOTHING

    def configure(
        self, limit: int, max_wait_s: float, now: float, cold_wait_s: float | None = None
    ) -> Sequence[Action]:
        """New per-replica limit and wait (and, unless None, the extra wait with no replica:
        rule 7). Waiters keep their place; their deadlines move by the change in wait, so the
        queue stays ordered by deadline."""
        shift = max_wait_s - self.max_wait_s
        self.limit = limit
        self.max_wait_s = max_wait_s
        if cold_wait_s is not None:
            self.cold_wait_s = cold_wait_s
        if shift and self._queue:
            for req in self._queue:
                self._queue[req] += shift
        return self._serve(now) if self._queue else _NOTHING

    def clear(self) -> list[Reject]:
        """The service is going away: reject every waiter."""
        out = [Reject(req) for req in self._queue]
        self._queue.clear()
        self._due.clear()
        for slot in self._pins.values():
            slot.pinned -= 1
        self._pins.clear()
        self._pinned_until.clear()
        self._pin_ends.clear()
        self._loose.clear()
        return out

    # -- internals ---------------------------------------------------------------------

    def _assign(self, i: int, req: Hashable) -> Send:
        s = self._slots[i]
        s.in_flight += 1
        self.in_flight += 1
        self._turn += 1
        return Send(req, s.id)

    def _release(self, replica_id: str) -> Slot | None:
        s = self._by_id.get(replica_id)
        if s is None or s.in_flight <= 0:
            # Releasing what was never held would corrupt the counts; callers pair every
            # Send with exactly one release, so this is a bug upstream, made loud.
            raise ValueError(f"{self!r}: release of replica {replica_id!r} that holds no request")
        s.in_flight -= 1
        self.in_flight -= 1
        if s.in_flight == 0 and not s.listed:
            self._slots.remove(s)
            del self._by_id[s.id]
            self._ranking = None
        return s

    def _requeue(self, req: Hashable, now: float, arrived: float, deadline: float | None) -> Sequence[Action]:
        until = arrived + self.max_wait_s
        if arrived < self._warm_since:
            until += self.cold_wait_s  # it was held while no replica existed (rule 7)
        self._queue[req] = until
        self._queue.move_to_end(req, last=False)
        if deadline is not None and deadline < until:
            self._push_due(req, deadline)
        return self._serve(now)

    def _place(self, key: bytes, now: float) -> tuple[int, bool]:
        """Rule 8: ``(i, True)`` send to slot ``i``; ``(i, False)`` wait pinned to it; ``(-1, False)``."""
        ranking = self._ranking
        if ranking is None:
            ranking = self._ranking = Ranking([s.id for s in self._slots])
        return place(ranking.order(key), self._slots, self.limit, now)

    def _pin(self, req: Hashable, slot: Slot, now: float) -> None:
        self._pins[req] = slot
        self._pinned_until[req] = until = now + self.max_wait_s * PIN_WAIT_SHARE
        self._seq += 1
        heapq.heappush(self._pin_ends, (until, self._seq, req))
        slot.pinned += 1

    def _unpin(self, req: Hashable) -> None:
        slot = self._pins.pop(req, None)
        if slot is not None:
            slot.pinned -= 1
            del self._pinned_until[req]

    def _loosen(self, now: float) -> None:
        """Pins that have ended (rule 8): their waiters take any replica from now on."""
        ends = self._pin_ends
        while ends and ends[0][0] <= now:
            until, _, req = heapq.heappop(ends)
            if self._pinned_until.get(req) == until:
                self._unpin(req)
                self._loose.add(req)

    def _push_due(self, req: Hashable, deadline: float) -> None:
        self._seq += 1
        heapq.heappush(self._due, (deadline, self._seq, req))

    def _serve(self, now: float) -> list[Action]:
        out: list[Action] = []
        q = self._queue
        due = self._due
        while due and due[0][0] <= now:
            req = heapq.heappop(due)[2]
            if q.pop(req, None) is not None:
                out.append(Expire(req))
                self._unpin(req)
                self._loose.discard(req)
        if self._pin_ends:
            self._loosen(now)
        while q:
            req, deadline = next(iter(q.items()))
            if deadline <= now:
                del q[req]
                if self._pins:
                    self._unpin(req)
                self._loose.discard(req)
                out.append(Reject(req))
                continue
            if self._pins or getattr(req, "model_key", None) is not None:
                self._scan(now, out)  # rule 8
                break
            i = self._policy(self._slots, self.limit, now, self._turn)
            if i < 0:
                break
            del q[req]
            out.append(self._assign(i, req))
        if not q:
            due.clear()  # every entry left names a request no longer waiting
            self._pin_ends.clear()
            self._loose.clear()
        return out

    def _scan(self, now: float, out: list[Action]) -> None:
        """``_serve`` with model requests waiting (rule 8): the queue in order, a pinned waiter
        passed over while its replica is full, a loose one placed as a request without a model.
        Stops once no replica has room: then only a finish, a back-off's end or a pin's end can
        let anyone in. Cost: the pinned waiters passed over (at most ``limit`` a replica) plus
        one step per request placed or rejected."""
        q = self._queue
        pins = self._pins
        loose = self._loose
        limit = self.limit
        room = sum(limit - s.in_flight for s in self._slots if s.in_flight < limit and s.open(now))
        gone: list[Hashable] = []  # leave the queue after the walk (no change to it during it)
        for req, deadline in q.items():
            if deadline <= now:
                gone.append(req)
                self._unpin(req)
                out.append(Reject(req))
                continue
            if room <= 0:
                break
            slot = pins.get(req)
            if slot is not None:
                if slot.listed and not slot.failed:
                    if slot.in_flight < limit and slot.busy_until <= now:
                        gone.append(req)
                        self._unpin(req)
                        out.append(self._assign(self._slots.index(slot), req))
                        room -= 1
                    continue
                self._unpin(req)  # its replica failed or went: placed again
            key = getattr(req, "model_key", None)
            if key is None or req in loose:
                i = self._policy(self._slots, limit, now, self._turn)
            else:
                i, go = self._place(key, now)
                if not go:
                    if i >= 0:
                        self._pin(req, self._slots[i], now)
                    continue
            if i < 0:
                break
            gone.append(req)
            out.append(self._assign(i, req))
            room -= 1
        for req in gone:
            del q[req]
            loose.discard(req)

    def _forget_idle_unlisted(self) -> None:
        gone = [s for s in self._slots if not s.listed and s.in_flight == 0]
        for s in gone:
            self._slots.remove(s)
            del self._by_id[s.id]
        if gone:
            self._ranking = None
