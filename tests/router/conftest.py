"""Fixtures for the router's tests: stand-in upstream processes, real replicas, routers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replica_scripts.harness import Server, start_replica
from router_upstream import RouterThread, UpstreamProcess, assert_idle


@pytest.fixture
def upstreams() -> Iterator[Callable[..., UpstreamProcess]]:
    """Start stand-in upstreams (tests/router_upstream.py); all stopped by pid at the end."""
    procs: list[UpstreamProcess] = []

    def start(*args: str) -> UpstreamProcess:
        p = UpstreamProcess(*args)
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.stop()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real replicas (``python -m modelfleet.replica``) of a script in tests/replica_scripts."""
    started: list[Server] = []

    def start(script: str = "plain_sum.py", args: tuple[str, ...] = ()) -> Server:
        s = start_replica(script, tmp_path, args)
        started.append(s)
        return s

    try:
        yield start
    finally:
        for s in started:
            s.stop()


@pytest.fixture
def make_router(upstreams: Callable[..., UpstreamProcess]) -> Iterator[Callable[..., RouterThread]]:
    """Routers with the given constructor arguments; at the end each must hold no slot. (It
    takes ``upstreams`` so that routers close before the upstreams stop.)"""
    made: list[RouterThread] = []

    def make(**kwargs: Any) -> RouterThread:
        rt = RouterThread(**kwargs)
        made.append(rt)
        return rt

    try:
        yield make
        for rt in made:
            assert_idle(rt)
    finally:
        for rt in made:
            rt.close()


@pytest.fixture
def router(make_router: Callable[..., RouterThread]) -> RouterThread:
    return make_router()
