"""Safe rollout of an endpoint's version, and the figures it and ``endpoint.compare`` read: pure.

``update_version("green", rollout={"steps": [10, 50, 100], "interval_s": 60,
"max_error_rate": 0.01, "max_p99_ms": 250})`` moves green's share step by step. At each step
the rollout waits ``interval_s`` and reads green's figures over that interval (the router's
counters of green's service, ``telemetry/counters.ServiceMetrics``, as a difference of two
snapshots): the decision (``decide``) is to go on, to hold (no request reached green in the
interval: wait another one, at most ``MAX_HOLDS`` times, then roll back, there is no
evidence), or to roll back (error rate over ``max_error_rate``, or p99 over ``max_p99_ms``).

- A step below 100 sets green's ``traffic_percentile``; the default version takes what the
  others leave, as always. Step 100 makes green the default with every other share 0, so it
  takes everything (``step_versions``); a rollout whose last step is below 100 ends with green
  at that share.
- Rolling back puts every version's share and default-ness back as they were before the
  rollout (``restored_versions``), then stops.
- The error rate is 5xx answers / all answers of the version's service in the interval; p99
  and p50 are estimated from the latency histogram's buckets by linear interpolation inside
  the bucket (as Prometheus' ``histogram_quantile`` does), so they are as fine as the buckets.

The asyncio side (``control/rollouts.py``) only sleeps, reads counters and writes the store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.store.endpoints import Versions, check_versions, with_version
from modelfleet.telemetry.counters import LATENCY_BUCKETS

__all__ = [
    "MAX_HOLDS",
    "Counts",
    "Decision",
    "Figures",
    "RolloutSpec",
    "decide",
    "figures",
    "parse_rollout",
    "quantile",
    "restored_versions",
    "step_versions",
]

# Intervals in a row without a request to the new version before the rollout gives up (rolls back).
MAX_HOLDS = 5
_KEYS = ("steps", "interval_s", "max_error_rate", "max_p99_ms")
_MAX_INTERVAL_S = 86400.0


@dataclass(frozen=True)
class RolloutSpec:
    steps: tuple[float, ...]
    interval_s: float
    max_error_rate: float
    max_p99_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "interval_s": self.interval_s,
            "max_error_rate": self.max_error_rate,
            "max_p99_ms": self.max_p99_ms,
        }


def _number(field: str, value: Any, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"rollout.{field} must be {allowed} (got {value!r})")
    return float(value)


def parse_rollout(raw: Any) -> RolloutSpec:
    """A rollout spec from its dict, each bad field refused naming it and the allowed values."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"rollout must be a dict with {', '.join(_KEYS)} "
            f'(e.g. {{"steps": [10, 50, 100], "interval_s": 60, "max_error_rate": 0.01}}; got {raw!r})'
        )
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ConfigError(f"rollout.{unknown[0]}: no such field (allowed: {', '.join(_KEYS)})")
    for key in ("steps", "interval_s", "max_error_rate"):
        if key not in raw:
            raise ConfigError(f"rollout.{key} is required")
    steps_raw = raw["steps"]
    if isinstance(steps_raw, str | bytes) or not isinstance(steps_raw, Sequence) or not steps_raw:
        raise ConfigError(f"rollout.steps must be a non-empty list of percentages from 1 to 100 (got {steps_raw!r})")
    steps = tuple(_number("steps", s, "a list of numbers from 1 to 100") for s in steps_raw)
    for s in steps:
        if not 1 <= s <= 100:
            raise ConfigError(f"rollout.steps must each be from 1 to 100 (got {s:g})")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ConfigError(f"rollout.steps must be strictly increasing (got {[f'{s:g}' for s in steps]})")
    interval = _number("interval_s", raw["interval_s"], f"a number of seconds above 0, at most {_MAX_INTERVAL_S:g}")
    if not 0 < interval <= _MAX_INTERVAL_S:
        raise ConfigError(f"rollout.interval_s must be above 0 and at most {_MAX_INTERVAL_S:g} (got {interval:g})")
    rate = _number("max_error_rate", raw["max_error_rate"], "a number from 0 to 1")
    if not 0 <= rate <= 1:
        raise ConfigError(f"rollout.max_error_rate must be from 0 to 1 (got {rate:g})")
    p99 = raw.get("max_p99_ms")
    if p99 is not None:
        p99 = _number("max_p99_ms", p99, "a number of milliseconds above 0, or None")
        if p99 <= 0:
            raise ConfigError(f"rollout.max_p99_ms must be above 0 (got {p99:g})")
    return RolloutSpec(steps, interval, rate, p99)


@dataclass(frozen=True)
class Counts:
    """A snapshot of one service's router counters: answers by status, latency histogram slots
    (one per bound of ``LATENCY_BUCKETS`` plus +Inf, not cumulative)."""

    codes: Mapping[int, int]
    buckets: tuple[int, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Counts:
        return cls({int(k): int(v) for k, v in data["codes"].items()}, tuple(int(b) for b in data["buckets"]))

    def to_json(self) -> dict[str, Any]:
        return {"codes": {str(k): v for k, v in sorted(self.codes.items())}, "buckets": list(self.buckets)}

    def since(self, earlier: Counts | None) -> Counts:
        """What was counted after ``earlier``; everything when the counters restarted meanwhile
        (a new service state: a count went down) or there was no earlier snapshot."""
        if earlier is None:
            return self
        codes = {c: n - earlier.codes.get(c, 0) for c, n in self.codes.items()}
        buckets = tuple(a - b for a, b in zip(self.buckets, earlier.buckets, strict=False))
        if any(n < 0 for n in codes.values()) or any(b < 0 for b in buckets) or set(earlier.codes) - set(self.codes):
            return self
        return Counts({c: n for c, n in codes.items() if n}, buckets)


@dataclass(frozen=True)
class Figures:
    requests: int
    errors: int  # 5xx answers
    p50_ms: float | None
    p99_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


def quantile(buckets: Sequence[int], q: float, bounds: Sequence[float] = LATENCY_BUCKETS) -> float | None:
    """The ``q`` quantile (seconds) of a histogram of per-bucket counts (``bounds`` plus +Inf),
    interpolated linearly inside its bucket; the highest finite bound when it falls in +Inf;
    None for an empty histogram."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i else 0.0
            return low + (bounds[i] - low) * (rank - seen) / n
        seen += n
    return bounds[-1]


def figures(counts: Counts) -> Figures:
    def ms(q: float) -> float | None:
        s = quantile(counts.buckets, q)
        return None if s is None else round(s * 1000, 3)

    requests = sum(counts.codes.values())
    errors = sum(n for c, n in counts.codes.items() if c >= 500)
    return Figures(requests, errors, ms(0.5), ms(0.99))


@dataclass(frozen=True)
class Decision:
    action: str  # "next": go on (to the next step, or done after the last), "hold", "rollback"
    reason: str


def decide(spec: RolloutSpec, interval: Figures, holds: int) -> Decision:
    """What to do after an interval at a step: ``holds`` is how many intervals in a row before
    this one saw no request to the new version."""
    if interval.requests == 0:
        if holds + 1 >= MAX_HOLDS:
            return Decision("rollback", f"no request reached the version in {MAX_HOLDS} intervals in a row")
        return Decision("hold", "no request reached the version in the interval")
    rate = interval.errors / interval.requests
    if rate > spec.max_error_rate:
        return Decision(
            "rollback",
            f"error rate {rate:.4g} ({interval.errors} of {interval.requests} answers 5xx) "
            f"is over max_error_rate {spec.max_error_rate:g}",
        )
    if spec.max_p99_ms is not None and interval.p99_ms is not None and interval.p99_ms > spec.max_p99_ms:
        return Decision("rollback", f"p99 {interval.p99_ms:g} ms is over max_p99_ms {spec.max_p99_ms:g}")
    return Decision("next", f"error rate {rate:.4g} over {interval.requests} answers within the bounds")


def step_versions(versions: Mapping[str, Mapping[str, Any]], version: str, percent: float) -> Versions:
    """The versions with ``version`` at ``percent``: its traffic_percentile below 100; at 100
    the default, every other version's share 0 (it takes everything)."""
    if percent >= 100:
        out = with_version(versions, version, is_default=True, create=False)
        for v in out.values():
            v["traffic_percentile"] = 0.0
        check_versions(out)
        return out
    return with_version(versions, version, traffic_percentile=percent, create=False)


def check_steps(versions: Mapping[str, Mapping[str, Any]], version: str, spec: RolloutSpec) -> None:
    """Refuse a rollout that could not take its steps: a version that is the default already,
    or a step that with the other versions' shares would go over 100."""
    if version not in versions:
        raise ConfigError(f"version_name: no version {version!r} (versions: {', '.join(sorted(versions))})")
    if versions[version].get("is_default"):
        raise ConfigError(
            f"rollout: version {version} is the default already (it takes what the others leave); "
            "roll out a version that is not the default"
        )
    for step in spec.steps:
        try:
            step_versions(versions, version, step)
        except ConfigError as exc:
            raise ConfigError(f"rollout.steps: step {step:g} does not fit the other versions' shares: {exc}") from None


def restored_versions(now: Mapping[str, Mapping[str, Any]], before: Mapping[str, Mapping[str, Any]]) -> Versions:
    """``now`` with each version's share and default-ness as in ``before`` (a version added
    since keeps its share; if that does not make a valid split, the default stays as it is now
    and only the shares go back)."""
    out = {n: dict(v) for n, v in now.items()}
    for name, v in out.items():
        if name in before:
            v["traffic_percentile"] = float(before[name].get("traffic_percentile", 0.0))
            v["is_default"] = bool(before[name].get("is_default"))
        else:
            v["is_default"] = False
    try:
        check_versions(out)
    except ConfigError:
        for name, v in out.items():
            v["is_default"] = bool(now[name].get("is_default"))
        check_versions(out)
    return out
