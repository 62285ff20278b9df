"""Safe rollout's rules (control/rollout.py), on plain data: the spec's validation, the
interval's figures from two counter snapshots, the decision, each step's and the rollback's shares."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet.control.rollout import (
    MAX_HOLDS,
    Counts,
    Figures,
    check_steps,
    decide,
    figures,
    parse_rollout,
    quantile,
    restored_versions,
    step_versions,
)
from modelfleet.errors import ConfigError
from modelfleet.store.endpoints import weights
from modelfleet.telemetry.counters import LATENCY_BUCKETS

GOOD = {"steps": [10, 50, 100], "interval_s": 60, "max_error_rate": 0.01}
BLUE_GREEN = {
    "blue": {"traffic_percentile": 0.0, "is_default": True},
    "green": {"traffic_percentile": 0.0, "is_default": False},
}
SLOTS = len(LATENCY_BUCKETS) + 1


def test_a_good_spec_parses() -> None:
    spec = parse_rollout({**GOOD, "max_p99_ms": 250})
    assert spec.steps == (10.0, 50.0, 100.0) and spec.interval_s == 60.0
    assert spec.max_error_rate == 0.01 and spec.max_p99_ms == 250.0
    assert parse_rollout(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": [50, 10]}, r"rollout\.steps must be strictly increasing"),
        ({"steps": [10, 10]}, r"rollout\.steps must be strictly increasing"),
        ({"steps": [0, 50]}, r"rollout\.steps must each be from 1 to 100"),
        ({"steps": [10, 150]}, r"rollout\.steps must each be from 1 to 100"),
        ({"steps": []}, r"rollout\.steps must be a non-empty list"),
        ({"steps": "10,50"}, r"rollout\.steps must be a non-empty list"),
        ({"steps": [10, "x"]}, r"rollout\.steps must be a list of numbers"),
        ({"interval_s": 0}, r"rollout\.interval_s must be above 0"),
        ({"interval_s": -1}, r"rollout\.interval_s must be above 0"),
        ({"interval_s": True}, r"rollout\.interval_s must be a number"),
        ({"max_error_rate": 1.5}, r"rollout\.max_error_rate must be from 0 to 1"),
        ({"max_error_rate": -0.1}, r"rollout\.max_error_rate must be from 0 to 1"),
        ({"max_p99_ms": 0}, r"rollout\.max_p99_ms must be above 0"),
        ({"max_p99_ms": "fast"}, r"rollout\.max_p99_ms must be a number"),
        ({"speed": 2}, r"rollout\.speed: no such field \(allowed: steps, interval_s, max_error_rate, max_p99_ms\)"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_rollout({**GOOD, **change})


def test_a_missing_field_or_a_non_dict_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"rollout\.interval_s is required"):
        parse_rollout({"steps": [10], "max_error_rate": 0.1})
    with pytest.raises(ConfigError, match="rollout must be a dict"):
        parse_rollout([10, 50])


def slots(**at: int) -> tuple[int, ...]:
    """Histogram slots with ``n`` answers in the bucket whose bound is ``ms`` (keys like b5=3)."""
    out = [0] * SLOTS
    for key, n in at.items():
        bound = float(key[1:]) / 1000
        out[LATENCY_BUCKETS.index(bound)] = n
    return tuple(out)


def test_the_interval_is_the_difference_of_two_snapshots() -> None:
    start = Counts({200: 100, 500: 2}, slots(b5=102))
    end = Counts({200: 190, 500: 12}, slots(b5=102, b50=100))
    seen = figures(end.since(start))
    assert (seen.requests, seen.errors, seen.error_rate) == (100, 10, 0.1)
    assert seen.p50_ms is not None and 25 < seen.p50_ms <= 50  # all of them in the 25-50 ms bucket
    # counters that went down (the service's state was replaced): all of the new ones count
    assert figures(Counts({200: 5}, slots(b1=5)).since(start)).requests == 5
    assert figures(end.since(None)).requests == 202


def test_quantiles_interpolate_inside_the_bucket() -> None:
    assert quantile([0] * SLOTS, 0.5) is None
    ten_in_10ms = slots(b10=10)  # 5-10 ms
    assert quantile(ten_in_10ms, 0.5) == pytest.approx(0.0075)
    assert quantile(ten_in_10ms, 0.99) == pytest.approx(0.00995)
    tail = list(slots(b1=99))
    tail[-1] = 1  # one past the last bound
    assert quantile(tail, 0.5) == pytest.approx(0.000505, rel=1e-3)
    assert quantile(tail, 1.0) == LATENCY_BUCKETS[-1]


def test_the_decision() -> None:
    spec = parse_rollout({**GOOD, "max_p99_ms": 100})
    assert decide(spec, Figures(200, 1, 5, 20), holds=0).action == "next"  # 0.5 % errors
    over = decide(spec, Figures(200, 3, 5, 20), holds=0)
    assert over.action == "rollback" and "error rate 0.015 (3 of 200 answers 5xx)" in over.reason
    slow = decide(spec, Figures(200, 0, 5, 250), holds=0)
    assert slow.action == "rollback" and "p99 250 ms is over max_p99_ms 100" in slow.reason
    assert decide(spec, Figures(0, 0, None, None), holds=0).action == "hold"
    gave_up = decide(spec, Figures(0, 0, None, None), holds=MAX_HOLDS - 1)
    assert gave_up.action == "rollback" and "no request" in gave_up.reason
    no_p99_bound = parse_rollout(GOOD)
    assert decide(no_p99_bound, Figures(10, 0, 5, 10_000), holds=0).action == "next"
    assert decide(parse_rollout({**GOOD, "max_error_rate": 0}), Figures(1000, 1, 1, 1), holds=0).action == "rollback"


def test_steps_set_the_share_and_100_makes_the_version_the_default() -> None:
    three = {**BLUE_GREEN, "red": {"traffic_percentile": 20.0, "is_default": False}}
    at_50 = step_versions(three, "green", 50)
    assert weights(at_50) == {"blue": 30.0, "green": 50.0, "red": 20.0}
    at_100 = step_versions(at_50, "green", 100)
    assert weights(at_100) == {"blue": 0.0, "green": 100.0, "red": 0.0}
    assert at_100["green"]["is_default"] and not at_100["blue"]["is_default"]
    back = restored_versions(at_100, three)
    assert weights(back) == {"blue": 80.0, "green": 0.0, "red": 20.0} and back["blue"]["is_default"]
    # a version created during the rollout keeps its share, never the default
    added = {**at_50, "new": {"traffic_percentile": 5.0, "is_default": False}}
    assert weights(restored_versions(added, three)) == {"blue": 75.0, "green": 0.0, "red": 20.0, "new": 5.0}


def test_a_rollout_that_cannot_take_its_steps_is_refused() -> None:
    spec = parse_rollout(GOOD)
    check_steps(BLUE_GREEN, "green", spec)
    with pytest.raises(ConfigError, match="rollout: version blue is the default already"):
        check_steps(BLUE_GREEN, "blue", spec)
    with pytest.raises(ConfigError, match="version_name: no version 'purple'"):
        check_steps(BLUE_GREEN, "purple", spec)
    crowded = {**BLUE_GREEN, "red": {"traffic_percentile": 60.0, "is_default": False}}
    with pytest.raises(ConfigError, match=r"rollout\.steps: step 50 does not fit the other versions' shares"):
        check_steps(crowded, "green", spec)
