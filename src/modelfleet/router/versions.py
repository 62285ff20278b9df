"""An endpoint's versions in the router: which version serves a request.

An endpoint (v1's ``AksEndpoint``) is one scoring URI, ``/api/v1/service/<endpoint>/score``,
with several *versions* behind it ("blue", "green"), each a service of its own that runs as
``<endpoint>:<version>`` (its replicas, queue, limits and metrics are that service's). The
endpoint's own ``ServiceState`` (the front) holds its auth and body limit; its ``endpoint``
slot holds an :class:`EndpointState`, which picks the version after the credentials passed.

The rule (``split`` and ``choose``, pure, tested in tests/endpoints/test_chooser.py):

- a non-default version gets its ``traffic_percentile``; the default version takes what the
  others leave (v1: "blue" default and "green" at 10 -> 90/10); shares are percentages and the
  non-default ones add up to at most 100 (the store refuses more);
- a version that is not healthy (no Ready replica, or failed) gets nothing and its share goes
  to the default; one that scales to zero keeps its share at zero replicas (the router holds
  its requests while a replica starts, as for a service); when the default itself is not
  healthy the healthy others share all traffic by their weights; when none is healthy the
  default gets everything (requests wait in its queue as a service's do while it starts, then
  503);
- ``azureml-model-deployment: <version>`` (Azure ML v2's header) pins a version, whatever its
  share or health; an unknown one is answered 404 naming it;
- ``x-modelfleet-session: <key>`` makes the choice sticky: the key's CRC-32 stands for the random
  draw, so a key goes to the same version while the shares and health stay as they are (and on
  every router replica: CRC-32 is the same everywhere, unlike Python's ``hash``).

Answers carry ``azureml-model-deployment: <version>`` (as v2's do), added to the request-id
lines the router writes both ways, so the replica sees it too. The per-request work is a
header scan, one random draw and a walk over a tuple of cumulative weights built when the
shares or the health change (``refresh``), never per request.

Mirrors (``mirror.py``): a version with ``mirror_percentile`` > 0 takes no share (the store
refuses one, and the default cannot be a mirror); ``copies`` says, for the version picked, which
mirrors get a copy of this request (none when that version is itself a mirror).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from random import random
from typing import Any
from zlib import crc32

from modelfleet.errors import ConfigError
from modelfleet.router.mirror import counters_of, wants_copy
from modelfleet.router.routes import Canned, ServiceState, error_answer
from modelfleet.telemetry.counters import ServiceMetrics, histogram

__all__ = [
    "PIN_HEADER",
    "SESSION_HEADER",
    "EndpointState",
    "VersionShare",
    "choose",
    "healthy",
    "split",
    "version_figures",
]

PIN_HEADER = b"azureml-model-deployment"
SESSION_HEADER = b"x-modelfleet-session"
_SCALE = 1.0 / 4294967296.0  # CRC-32 -> [0, 1)


@dataclass(frozen=True)
class VersionShare:
    """One version as the router is told it: its name, the internal service it runs as, its
    share of traffic in percent, whether it is the default, and the percent of the others'
    requests it gets a copy of as a mirror (target-neutral plain data)."""

    name: str
    service: str
    traffic_percentile: float
    is_default: bool
    mirror_percentile: float = 0.0


def split(shares: Sequence[tuple[float, bool, bool]]) -> tuple[float, ...]:
    """Cumulative weights, one per version, from (traffic_percentile, is_default, healthy) each
    (see the module's rule). The last one is the total (> 0 whenever there is a version)."""
    default = next((i for i, s in enumerate(shares) if s[1]), 0)
    weights = [pct if ok and not is_default else 0.0 for pct, is_default, ok in shares]
    taken = sum(weights)
    if shares and shares[default][2]:
        weights[default] = max(0.0, 100.0 - taken)
    if not any(w > 0 for w in weights) and shares:
        weights[default] = 1.0  # nothing healthy (or every share 0 and the default down): the default
    out: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        out.append(total)
    return tuple(out)


def choose(cumulative: Sequence[float], draw: float) -> int:
    """The version whose slice of ``[0, total)`` holds ``draw`` (in ``[0, 1)``) scaled to the total."""
    x = draw * cumulative[-1]
    last = len(cumulative) - 1
    for i in range(last):
        if x < cumulative[i]:
            return i
    return last


def session_draw(key: bytes) -> float:
    """A client's session key as a draw in ``[0, 1)``: the same key, the same draw, everywhere."""
    return crc32(key) * _SCALE


def healthy(svc: ServiceState | None) -> bool:
    """The router's view of a version: it has a Ready replica listed, or it scales to zero (with
    no replica the router holds its requests while one starts), and it has not failed."""
    if svc is None or svc.removed or svc.failed is not None:
        return False
    d = svc.dispatch
    return d.cold_wait_s > 0 or any(s.listed for s in d.slots())


class EndpointState:
    """An endpoint's versions, their pre-built weights and answers (see the module's doc)."""

    __slots__ = (
        "name", "versions", "by_name", "states", "cumulative", "lines", "names", "c503_absent",
        "mirrors", "mirror_states",
    )  # fmt: skip

    def __init__(self, name: str, versions: Sequence[VersionShare]) -> None:
        defaults = [v.name for v in versions if v.is_default]
        if not versions or len(defaults) != 1:
            raise ConfigError(f"endpoint {name}: needs versions, exactly one of them the default (got {defaults})")
        self.name = name
        self.versions = tuple(versions)
        self.by_name = {v.name.encode(): i for i, v in enumerate(self.versions)}
        self.states: list[ServiceState | None] = [None] * len(self.versions)
        self.lines = tuple(PIN_HEADER + b": " + v.name.encode() + b"\r\n" for v in self.versions)
        self.cumulative: tuple[float, ...] = ()
        # (index, percent) of each mirror; empty for most endpoints (then the only cost per
        # request is client.py's check of this tuple).
        self.mirrors = tuple((i, v.mirror_percentile) for i, v in enumerate(self.versions) if v.mirror_percentile > 0)
        self.mirror_states: tuple[ServiceState, ...] = ()
        self.names = ", ".join(v.name for v in self.versions)
        self.c503_absent = tuple(
            error_answer(
                503,
                f"version '{v.name}' of endpoint '{name}' is not serving yet; retry later "
                f"(`modelfleet endpoint show -n {name}`)",
                [("retry-after", "1")],
            )
            for v in self.versions
        )

    def refresh(self, services: Mapping[bytes, ServiceState]) -> None:
        """Look the versions' services up again and rebuild the weights (a version's replicas,
        failure or presence changed, or the shares did)."""
        self.states = [services.get(v.service.encode()) for v in self.versions]
        mirror_states = []
        for i, _ in self.mirrors:
            state = self.states[i]
            if state is not None:
                counters_of(state)  # the counts exist (zeros) from the start: stats and series show them
                mirror_states.append(state)
        self.mirror_states = tuple(mirror_states)
        self.cumulative = split(
            [(v.traffic_percentile, v.is_default, healthy(s)) for v, s in zip(self.versions, self.states, strict=True)]
        )

    def copies(self, served: ServiceState) -> tuple[ServiceState, ...]:
        """The mirrors that get a copy of a request ``served`` answers (``mirror.py`` rule 1):
        none when ``served`` is a mirror itself (pinned to it), or is not in the router."""
        if served in self.mirror_states:
            return ()
        out: tuple[ServiceState, ...] = ()
        states = self.states
        for i, percent in self.mirrors:
            target = states[i]
            if target is not None and wants_copy(percent, random()):
                out += (target,)
        return out

    def unknown(self, pin: bytes) -> Canned:
        """404 naming the version asked for (a rare answer: built when given)."""
        asked = pin.strip().decode("latin-1")[:64]
        return error_answer(
            404,
            f"endpoint '{self.name}' has no version {asked!r} (header azureml-model-deployment); "
            f"its versions are: {self.names}",
        )

    def weights(self) -> dict[str, float]:
        """Each version's share of traffic now, in percent (status and tests)."""
        out: dict[str, float] = {}
        before = 0.0
        total = self.cumulative[-1] if self.cumulative else 0.0
        for v, c in zip(self.versions, self.cumulative, strict=True):
            out[v.name] = round(100.0 * (c - before) / total, 6) if total else 0.0
            before = c
        return out

    def pick(self, pin: bytes | None, session: bytes | None) -> tuple[ServiceState | None, Canned | None, bytes]:
        """(the version's service, None, its answer header line), or (None, the answer, the
        line) when the request names an unknown version or the version is not in the router yet.
        ``pin`` and ``session``: the request's ``azureml-model-deployment`` and
        ``x-modelfleet-session`` values (the connection reads them with the other headers)."""
        if pin is not None:
            i = self.by_name.get(pin.strip())
            if i is None:
                return None, self.unknown(pin), b""
        else:
            cumulative = self.cumulative
            x = (random() if session is None else crc32(session) * _SCALE) * cumulative[-1]
            i = 0
            for c in cumulative:  # choose(), inline: a call costs more than the loop
                if x < c:
                    break
                i += 1
            else:
                i -= 1
        svc = self.states[i]
        if svc is None:
            return None, self.c503_absent[i], self.lines[i]
        return svc, None, self.lines[i]


def _service_figures(m: ServiceMetrics) -> dict[str, Any]:
    requests = sum(m.codes.values())
    errors = sum(n for code, n in m.codes.items() if code >= 500)
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        "codes": {str(code): n for code, n in sorted(m.codes.items())},
        "latency": histogram(m.buckets, m.count, m.seconds),
    }


def version_figures(endpoint: EndpointState) -> dict[str, Any]:
    """An endpoint's per-version figures, as ``Router.stats()`` gives them under the endpoint's
    entry (``stats()["fraud"]["endpoint"]``; the daemon's admin status carries them). Shape::

        {"versions": {
            "<version>": {
                "service": "fraud:blue", "is_default": bool, "traffic_percentile": float,
                "mirror_percentile": float, "weight": float (its share now, percent),
                "requests": int (answers by this version, mirrored copies included),
                "errors": int (5xx of those), "error_rate": float, "codes": {"200": int, ...},
                "latency": {"bounds_s": [...], "counts": [... one per bound, then +Inf, not
                            cumulative], "count": int (timed), "sum_s": float,
                            "p50_ms": float|None, "p99_ms": float|None (bucket upper bounds)},
                "mirror": None, or for a mirror {"sent": int, "dropped": int, "agreed": int,
                           "disagreed": int, "errors": int, "latency": {as above}},
            }, ...}}

    Counters are totals since the version's service was set in this router (a router restart
    starts them at 0); a reader takes differences between two reads for a window."""
    weights = endpoint.weights()
    versions: dict[str, Any] = {}
    for v, state in zip(endpoint.versions, endpoint.states, strict=True):
        entry: dict[str, Any] = {
            "service": v.service,
            "is_default": v.is_default,
            "traffic_percentile": v.traffic_percentile,
            "mirror_percentile": v.mirror_percentile,
            "weight": weights.get(v.name, 0.0),
        }
        if state is None:
            entry.update(_service_figures(ServiceMetrics()))
            entry["mirror"] = None
        else:
            entry.update(_service_figures(state.metrics))
            mc = state.metrics.mirror
            entry["mirror"] = (
                None
                if mc is None or v.mirror_percentile <= 0
                else {
                    "sent": mc.sent,
                    "dropped": mc.dropped,
                    "agreed": mc.agreed,
                    "disagreed": mc.disagreed,
                    "errors": mc.errors,
                    "latency": histogram(mc.buckets, mc.count, mc.seconds),
                }
            )
        versions[v.name] = entry
    return {"versions": versions}
