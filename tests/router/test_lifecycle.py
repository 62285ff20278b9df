"""The request lifecycle's state table (router/cycle.py), checked as plain data: every state
can end, the final states have no way out, and a request that began can never wait again."""

from __future__ import annotations

from modelfleet.router.cycle import _NEXT, ACTIVE, DONE, GONE, STATE_NAMES, STREAMING, WAITING


def reachable(start: int) -> set[int]:
    seen, todo = set(), [start]
    while todo:
        for nxt in _NEXT[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_named_and_has_a_row() -> None:
    assert len(STATE_NAMES) == len(_NEXT) == 5
    assert [STATE_NAMES[s] for s in (WAITING, ACTIVE, STREAMING, DONE, GONE)] == [
        "WAITING",
        "ACTIVE",
        "STREAMING",
        "DONE",
        "GONE",
    ]


def test_every_request_ends_done_or_gone_and_final_states_are_final() -> None:
    for state in (WAITING, ACTIVE, STREAMING):
        assert {DONE, GONE} <= reachable(state), STATE_NAMES[state]
    assert _NEXT[DONE] == _NEXT[GONE] == frozenset()


def test_no_way_back() -> None:
    assert WAITING not in reachable(WAITING)  # begun once, never waits again
    assert ACTIVE not in reachable(ACTIVE) and STREAMING not in reachable(STREAMING)
    assert STREAMING not in _NEXT[WAITING]  # a replica's answer needs the request to have begun
