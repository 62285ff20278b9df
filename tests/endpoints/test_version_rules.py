"""The rules on an endpoint's versions (store/endpoints.py, spec/names.py): each bad input is
refused with an error naming the field and what is allowed."""

from __future__ import annotations

import pytest

from modelfleet.errors import ConfigError
from modelfleet.spec.names import is_version_service_name, validate_version_name, version_service_name
from modelfleet.store.endpoints import (
    check_versions,
    endpoint_state,
    weights,
    with_traffic,
    with_version,
    without_version,
)

BLUE_GREEN = {
    "blue": {"traffic_percentile": 0.0, "is_default": True},
    "green": {"traffic_percentile": 10.0, "is_default": False},
}


def test_the_first_version_is_the_default_and_a_new_default_demotes_the_old() -> None:
    first = with_version({}, "blue", create=True)
    assert first["blue"]["is_default"] is True
    two = with_version(first, "green", traffic_percentile=30, create=True)
    assert weights(two) == {"blue": 70.0, "green": 30.0}
    swapped = with_version(two, "green", is_default=True, create=False)
    assert swapped["green"]["is_default"] and not swapped["blue"]["is_default"]
    assert weights(swapped) == {"blue": 0.0, "green": 100.0}  # the old default gets 0 until given a share


def test_non_default_shares_over_100_are_refused() -> None:
    three = with_version(BLUE_GREEN, "red", traffic_percentile=90, create=True)
    with pytest.raises(ConfigError, match=r"traffic_percentile.*add up to 101.*at most 100"):
        with_version(three, "green", traffic_percentile=11, create=False)
    with pytest.raises(ConfigError, match="traffic_percentile must be from 0 to 100"):
        with_version(BLUE_GREEN, "green", traffic_percentile=150, create=False)
    with pytest.raises(ConfigError, match="traffic_percentile must be a number"):
        with_version(BLUE_GREEN, "green", traffic_percentile="ten", create=False)  # type: ignore[arg-type]


def test_unknown_and_duplicate_versions_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"version_name: no version 'purple' \(versions: blue, green\)"):
        with_version(BLUE_GREEN, "purple", traffic_percentile=5, create=False)
    with pytest.raises(ConfigError, match="already has a version 'green'"):
        with_version(BLUE_GREEN, "green", create=True)
    with pytest.raises(ConfigError, match="no version 'purple'"):
        without_version(BLUE_GREEN, "purple")


def test_the_default_and_the_only_version_cannot_be_deleted() -> None:
    with pytest.raises(ConfigError, match="blue is the default version; make another version the default first"):
        without_version(BLUE_GREEN, "blue")
    with pytest.raises(ConfigError, match="only version; delete the endpoint instead"):
        without_version({"blue": {"is_default": True}}, "blue")
    assert list(without_version(BLUE_GREEN, "green")) == ["blue"]


def test_two_defaults_or_none_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"is_default: exactly one version .* \(got 2: \['blue', 'green'\]\)"):
        check_versions({"blue": {"is_default": True}, "green": {"is_default": True}})
    with pytest.raises(ConfigError, match=r"is_default: exactly one version .* \(got 0"):
        check_versions({"blue": {"is_default": False}})
    with pytest.raises(ConfigError, match="blue is the default; make another version the default"):
        with_version(BLUE_GREEN, "blue", is_default=False, create=False)


def test_a_mirror_is_neither_the_default_nor_given_traffic() -> None:
    mirrored = with_version(BLUE_GREEN, "green", traffic_percentile=0, mirror_percentile=100, create=False)
    assert mirrored["green"]["mirror_percentile"] == 100.0
    with pytest.raises(ConfigError, match=r"mirror_percentile of version green: a mirror takes no traffic share"):
        with_version(BLUE_GREEN, "green", mirror_percentile=100, create=False)  # green has 10 %
    with pytest.raises(ConfigError, match=r"mirror_percentile of version green: a mirror takes no traffic share"):
        with_version(mirrored, "green", traffic_percentile=5, create=False)
    with pytest.raises(ConfigError, match=r"mirror_percentile of version blue: the default version cannot be a mirror"):
        with_version(BLUE_GREEN, "blue", mirror_percentile=50, create=False)
    with pytest.raises(ConfigError, match=r"version green: the default version cannot be a mirror"):
        with_version(mirrored, "green", is_default=True, create=False)
    with pytest.raises(ConfigError, match=r"mirror_percentile must be from 0 to 100 \(got 101\)"):
        with_version(mirrored, "green", mirror_percentile=101, create=False)


def test_version_names_follow_their_rule() -> None:
    for good in ("blue", "v2", "a", "canary-1"):
        assert validate_version_name(good) == good
    for bad in ("Blue", "2fast", "x_y", "", "a" * 33, "ends-", "a:b"):
        with pytest.raises(ConfigError, match="version_name must be 1-32 characters"):
            validate_version_name(bad)
    with pytest.raises(ConfigError, match="version_name must be"):
        with_version({}, "Blue", create=True)
    assert version_service_name("fraud", "blue") == "fraud:blue"
    assert is_version_service_name("fraud:blue") and not is_version_service_name("fraud")


def test_the_traffic_command_sets_the_whole_split() -> None:
    three = with_version(BLUE_GREEN, "red", traffic_percentile=20, create=True)
    assert weights(with_traffic(three, {"green": 25})) == {"blue": 75.0, "green": 25.0, "red": 0.0}
    assert weights(with_traffic(three, {"blue": 90, "green": 10})) == {"blue": 90.0, "green": 10.0, "red": 0.0}
    with pytest.raises(ConfigError, match="traffic of blue: the default version takes what the others leave, 90"):
        with_traffic(three, {"blue": 80, "green": 10})
    with pytest.raises(ConfigError, match="traffic: no version 'purple'"):
        with_traffic(three, {"purple": 10})
    with pytest.raises(ConfigError, match="add up to 120"):
        with_traffic(three, {"green": 60, "red": 60})


def test_an_endpoints_state_follows_its_versions() -> None:
    assert endpoint_state({"blue": "Healthy", "green": "Healthy"}, "blue") == "Healthy"
    assert endpoint_state({"blue": "Healthy", "green": "Transitioning"}, "blue") == "Transitioning"
    assert endpoint_state({"blue": "Healthy", "green": "Failed"}, "blue") == "Unhealthy"  # serves, not as configured
    assert endpoint_state({"blue": "Failed", "green": "Healthy"}, "blue") == "Failed"
