"""Model-aware routing (affinity.py, dispatch.py rule 8, the /models/<model>/score route): pure
decisions over plain data, no sockets, no clock."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

from modelfleet.router.affinity import (
    CACHE_KEYS,
    MAX_KEY_BYTES,
    PIN_WAIT_SHARE,
    Ranking,
    choose,
    model_key,
    place,
    rank,
)
from modelfleet.router.dispatch import Dispatch, Reject, Send, Slot
from modelfleet.router.routes import C_404_MODEL, D_404, ServiceRoute, ServiceState, route

IDS = [f"svc-{i}" for i in range(5)]
KEYS = [f"model-{i}".encode() for i in range(2000)]


@dataclass(frozen=True)
class Req:
    """A request routed by a model, as client.ModelCycle is (any object with ``model_key``)."""

    name: str
    model_key: bytes


def make(n: int = 3, limit: int = 1, wait: float = 0.5) -> Dispatch:
    d = Dispatch("x", limit, wait)
    d.set_replicas([f"r{i}" for i in range(n)], 0.0)
    return d


def test_rank_is_a_permutation_the_same_in_every_process() -> None:
    orders = [rank(k, IDS) for k in KEYS[:50]]
    assert all(sorted(o) == list(range(5)) for o in orders)
    assert len(set(orders)) > 20  # keys really do order the replicas differently
    # Another interpreter with another hash seed computes the same orders (blake2b, not hash()).
    code = (
        "from modelfleet.router.affinity import rank\n"
        f"print([rank(f'model-{{i}}'.encode(), {IDS!r}) for i in range(50)])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == repr(orders)


def test_first_choices_spread_evenly_over_the_replicas() -> None:
    firsts = Counter(IDS[rank(k, IDS)[0]] for k in KEYS)
    assert set(firsts) == set(IDS)
    assert all(abs(n - 400) < 400 * 0.25 for n in firsts.values()), firsts  # 2,000 keys over 5


def test_removing_a_replica_moves_only_the_models_it_was_first_for() -> None:
    smaller = [rid for rid in IDS if rid != "svc-2"]
    moved = 0
    for k in KEYS:
        before = [IDS[i] for i in rank(k, IDS)]
        after = [smaller[i] for i in rank(k, smaller)]
        assert after == [rid for rid in before if rid != "svc-2"]  # the others keep their order
        moved += before[0] == "svc-2"
    assert 0 < moved < len(KEYS) * 0.3


def test_choose_sends_pins_or_leaves_unpinned() -> None:
    order = (2, 0, 1)
    yes = [True, True, True]
    assert choose(order, yes, [0, 0, 0], [0, 0, 0], 1) == (2, True)  # its first replica has room
    assert choose(order, yes, [0, 0, 1], [0, 0, 0], 1) == (0, True)  # or its second
    assert choose(order, yes, [1, 0, 1], [0, 0, 0], 1) == (2, False)  # both full: wait for the first
    assert choose(order, yes, [1, 0, 1], [0, 0, 1], 1) == (0, False)  # ... or the second
    assert choose(order, yes, [1, 0, 1], [1, 0, 1], 1) == (1, True)  # both full and waited for: the third
    assert choose(order, yes, [1, 1, 1], [1, 0, 1], 1) == (1, False)
    assert choose(order, yes, [1, 1, 1], [1, 1, 1], 1) == (-1, False)  # all full: any replica
    assert choose(order, [False, True, True], [0, 0, 1], [0, 0, 0], 1) == (1, True)  # 0 not open
    assert choose(order, yes, [2, 2, 1], [0, 0, 0], 2) == (2, True)  # limit 2: room
    assert choose(order, yes, [0, 0, 1], [0, 0, 0], 1, spread=1) == (2, False)  # one choice


def test_place_over_slots_agrees_with_choose() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        n, limit = rng.randrange(1, 6), rng.randrange(1, 3)
        slots = [Slot(f"r{i}") for i in range(n)]
        for s in slots:
            s.in_flight, s.pinned = rng.randrange(limit + 1), rng.randrange(limit + 1)
            s.failed = rng.random() < 0.1
            s.busy_until = 1.0 if rng.random() < 0.1 else 0.0
        order = tuple(rng.sample(range(n), n))
        spread = rng.randrange(1, 4)
        expect = choose(
            order, [s.open(0.5) for s in slots], [s.in_flight for s in slots], [s.pinned for s in slots], limit, spread
        )
        assert place(order, slots, limit, 0.5, spread) == expect


def test_model_key_joins_the_version_and_is_bounded() -> None:
    assert model_key(b"m") == b"m"
    assert model_key(b"m", b"3") == b"m:3"
    assert model_key(b"m", b"") == b"m"
    assert len(model_key(b"x" * 5000)) == MAX_KEY_BYTES


def test_ranking_caches_orders_and_stays_bounded() -> None:
    r = Ranking(IDS)
    assert r.order(b"a") is r.order(b"a")
    assert r.order(b"a") == rank(b"a", IDS)
    for i in range(CACHE_KEYS + 10):
        r.order(str(i).encode())
    assert len(r._orders) <= CACHE_KEYS


def test_a_model_goes_to_the_same_replica_every_time() -> None:
    d = make(3)
    for key in (b"alpha", b"beta", b"gamma", b"delta"):
        want = f"r{rank(key, ['r0', 'r1', 'r2'])[0]}"
        for i in range(5):
            req = Req(f"{key!r}{i}", key)
            assert d.arrive(req, float(i)) == Send(req, want)
            d.finish(want, float(i))


def test_a_hot_model_spills_to_its_next_replicas_as_its_load_grows() -> None:
    d = make(3, limit=2, wait=10)
    o = [f"r{i}" for i in rank(b"hot", ["r0", "r1", "r2"])]
    reqs = [Req(str(i), b"hot") for i in range(13)]
    sends = [d.arrive(r, 0.0) for r in reqs]
    # its first two replicas' slots, then two waiting for each of them, then the third
    # replica's slots and waiters, then unpinned
    got = [s.replica if isinstance(s, Send) else None for s in sends]
    assert got == [o[0], o[0], o[1], o[1], None, None, None, None, o[2], o[2], None, None, None]
    assert [d.slot(r).pinned for r in o] == [2, 2, 2]  # type: ignore[union-attr]
    # a freed slot goes to the oldest waiter that can use it: the first pinned to that replica
    assert d.finish(o[1], 0.1) == [Send(reqs[6], o[1])]
    assert d.finish(o[0], 0.2) == [Send(reqs[4], o[0])]
    # no replica has room left: the scan stopped there (the unpinned waiter stays unpinned)
    assert d.slot(o[0]).pinned == 1 and d.queued == 5  # type: ignore[union-attr]
    assert d.finish(o[2], 0.3) == [Send(reqs[10], o[2])]
    assert d.expire(11.0) == [Reject(r) for r in (reqs[5], reqs[7], reqs[11], reqs[12])]
    assert [d.slot(r).pinned for r in o] == [0, 0, 0]  # type: ignore[union-attr]


def test_waiters_behind_a_pinned_one_go_to_other_replicas() -> None:
    d = make(3, wait=10)
    o = [f"r{i}" for i in rank(b"k", ["r0", "r1", "r2"])]
    a, b, c = Req("a", b"k"), Req("b", b"k"), Req("c", b"k")
    assert d.arrive(a, 0.0) == Send(a, o[0])
    assert d.arrive(b, 0.0) == Send(b, o[1])
    assert d.arrive(c, 0.0) is None  # waits for o[0], which holds the model
    assert d.arrive("plain", 0.0) == Send("plain", o[2])  # a free replica nobody waits for
    assert d.arrive("plain2", 0.0) is None
    assert d.finish(o[2], 0.1) == [Send("plain2", o[2])]  # passes over c, pinned to o[0]
    assert d.finish(o[0], 0.2) == [Send(c, o[0])]


def test_a_pinned_waiter_whose_replica_goes_is_placed_again() -> None:
    d = make(3, wait=10)
    o = [f"r{i}" for i in rank(b"k", ["r0", "r1", "r2"])]
    a, b, c = Req("a", b"k"), Req("b", b"k"), Req("c", b"k")
    d.arrive(a, 0.0), d.arrive(b, 0.0)
    assert d.arrive(c, 0.0) is None and d.slot(o[0]).pinned == 1  # type: ignore[union-attr]
    d.fail(o[0])
    assert d.finish(o[1], 0.1) == [Send(c, o[1])]  # o[0] failed: c goes to the next one
    assert d.slot(o[0]).pinned == 0  # type: ignore[union-attr]
    f, e = Req("f", b"k"), Req("e", b"k")
    assert d.arrive(f, 0.1) == Send(f, o[2])
    assert d.arrive(e, 0.1) is None and d.slot(o[1]).pinned == 1  # type: ignore[union-attr]
    assert d.cancel(e) and d.slot(o[1]).pinned == 0  # type: ignore[union-attr]


def test_a_pinned_waiter_takes_any_replica_after_half_the_wait() -> None:
    d = make(3, wait=1.0)  # pinned at most PIN_WAIT_SHARE x 1.0 s
    assert PIN_WAIT_SHARE == 0.5
    o = [f"r{i}" for i in rank(b"k", ["r0", "r1", "r2"])]
    a, b, c = Req("a", b"k"), Req("b", b"k"), Req("c", b"k")
    d.arrive(a, 0.0), d.arrive(b, 0.0)
    assert d.arrive("plain", 0.0) == Send("plain", o[2])
    assert d.arrive(c, 0.1) is None and d.slot(o[0]).pinned == 1  # type: ignore[union-attr]
    assert d.next_wakeup() == 0.6  # the pin's end, before the queue deadline (1.1)
    assert d.finish(o[2], 0.3) == []  # still pinned to o[0]: o[2]'s free slot is not for it
    assert d.expire(0.6) == [Send(c, o[2])]  # pin over: the free replica takes it
    assert d.slot(o[0]).pinned == 0 and d.queued == 0  # type: ignore[union-attr]


def test_a_loose_waiter_takes_whichever_replica_frees_first() -> None:
    d = make(2, wait=1.0)
    o = [f"r{i}" for i in rank(b"k", ["r0", "r1"])]
    a, b, c = Req("a", b"k"), Req("b", b"k"), Req("c", b"k")
    d.arrive(a, 0.0), d.arrive(b, 0.0)
    assert d.arrive(c, 0.0) is None
    assert d.expire(0.5) == [] and d.slot(o[0]).pinned == 0  # type: ignore[union-attr]
    assert d.next_wakeup() == 1.0  # only the queue deadline is left
    assert d.finish(o[1], 0.7) == [Send(c, o[1])]  # not its first replica, but the first free


def test_requests_without_a_model_still_go_to_the_least_loaded() -> None:
    d = make(3)
    key = b"k"
    first = f"r{rank(key, ['r0', 'r1', 'r2'])[0]}"
    m = Req("m", key)
    assert d.arrive(m, 0.0) == Send(m, first)
    plain = [d.arrive(name, 0.0) for name in "ab"]
    assert {s.replica for s in plain if isinstance(s, Send)} == {"r0", "r1", "r2"} - {first}


def test_a_new_replica_takes_over_the_models_it_now_ranks_first_for() -> None:
    d = make(3)
    four = ["r0", "r1", "r2", "r3"]
    key = next(k for k in KEYS if rank(k, four)[0] == 3)
    req = Req("a", key)
    assert d.arrive(req, 0.0) == Send(req, f"r{rank(key, four[:3])[0]}")
    d.finish(f"r{rank(key, four[:3])[0]}", 0.0)
    d.set_replicas(four, 1.0)  # the cached orders are dropped with the old list
    req2 = Req("b", key)
    assert d.arrive(req2, 1.0) == Send(req2, "r3")
    d.finish("r3", 1.0)
    d.set_replicas(four[:3], 2.0)  # r3 goes (it holds nothing): the model is back where it was
    req3 = Req("c", key)
    assert d.arrive(req3, 2.0) == Send(req3, f"r{rank(key, four[:3])[0]}")


def test_a_failed_or_backing_off_preferred_replica_is_skipped() -> None:
    d = make(3, wait=10)
    order = [f"r{i}" for i in rank(b"m", ["r0", "r1", "r2"])]
    d.fail(order[0])
    a = Req("a", b"m")
    assert d.arrive(a, 0.0) == Send(a, order[1])
    d.finish(order[1], 0.0)
    d.mark_healthy(order[0], 0.0)
    b = Req("b", b"m")
    assert d.arrive(b, 0.0) == Send(b, order[0])
    # "busy" from the preferred replica: it is backed off, the request goes to the next one
    assert d.busy(order[0], b, 0.1, 0.0) == [Send(b, order[1])]


# -- the URL form --------------------------------------------------------------------------


def table() -> dict[bytes, ServiceState]:
    return {b"svc": ServiceState(ServiceRoute("svc", max_body_bytes=100))}


def test_the_models_url_routes_to_score_with_the_model() -> None:
    t = table()
    d = route(b"POST", b"/api/v1/service/svc/models/my-model.v2_x/score", 10, t)
    assert d.service is t[b"svc"] and d.answer is None and d.path == b"/score" and d.model == b"my-model.v2_x"
    assert route(b"GET", b"/api/v1/service/svc/models/m/score", -1, t).model == b"m"
    assert route(b"POST", b"/api/v1/service/svc/score", 10, t).model is None


def test_the_models_url_refuses_what_score_refuses_and_bad_names() -> None:
    t = table()
    svc = t[b"svc"]
    assert route(b"POST", b"/api/v1/service/nope/models/m/score", 10, t) is D_404
    assert route(b"PUT", b"/api/v1/service/svc/models/m/score", 10, t) is svc.d_405_score
    assert route(b"POST", b"/api/v1/service/svc/models/m/score", 101, t) is svc.d_score_413
    for bad in (b"", b"a/b", b"-lead", b"sp ace", b"x" * 256):
        d = route(b"POST", b"/api/v1/service/svc/models/" + bad + b"/score", 10, t)
        assert d.answer is C_404_MODEL and d.model is None, bad
    assert b"1-255 letters, digits" in C_404_MODEL.body
    assert route(b"POST", b"/api/v1/service/svc/models/m/other", 10, t) is svc.d_404


def test_random_mixes_keep_the_counts_exact() -> None:
    """Model and plain requests, finishes, busy answers, failures, cancels and expiry in a
    random mix: no slot over its limit, pinned counts match the pins, every request ends once."""
    for seed in range(20):
        _mix(seed)


def _mix(seed: int) -> None:
    rng = random.Random(seed)
    d = make(4, limit=2, wait=1.0)
    ids = [f"r{i}" for i in range(4)]
    held: dict[str, list[object]] = {rid: [] for rid in ids}
    waiting: set[object] = set()
    done: set[object] = set()
    now = 0.0

    def apply(actions: object) -> None:
        for a in actions if isinstance(actions, list | tuple) else [actions]:
            if a is None:
                continue
            if isinstance(a, Send):
                waiting.discard(a.req)
                held[a.replica].append(a.req)
            else:
                waiting.discard(a.req)
                assert a.req not in done
                done.add(a.req)

    for n in range(400):
        now += rng.random() * 0.05
        op = rng.random()
        if op < 0.5:
            req: object = Req(f"q{n}", f"m{rng.randrange(6)}".encode()) if rng.random() < 0.7 else f"p{n}"
            waiting.add(req)
            apply(d.arrive(req, now))
        elif op < 0.8:
            busy_ids = [r for r in ids if held[r]]
            if busy_ids:
                rid = rng.choice(busy_ids)
                done.add(held[rid].pop(0))
                apply(d.finish(rid, now))
        elif op < 0.85:
            busy_ids = [r for r in ids if held[r]]
            if busy_ids:
                rid = rng.choice(busy_ids)
                req = held[rid].pop(0)
                waiting.add(req)
                apply(d.busy(rid, req, now, now - 0.1))
        elif op < 0.9 and waiting:
            req = rng.choice(sorted(waiting, key=str))
            if d.cancel(req):
                waiting.discard(req)
                done.add(req)
        elif op < 0.95:
            rid = rng.choice(ids)
            d.fail(rid)
            apply(d.mark_healthy(rid, now + 0.01) if rng.random() < 0.5 else ())
        else:
            apply(d.expire(now))
        for s in d.slots():
            assert s.in_flight <= 2 and s.in_flight == len(held[s.id])
            assert s.pinned == sum(1 for slot in d._pins.values() if slot is s)
        assert set(d._pins) <= set(d._queue) and set(d._pins) == set(d._pinned_until)
        assert set(d._loose) <= set(d._queue) and not set(d._loose) & set(d._pins)
        assert d.queued == len(waiting)
