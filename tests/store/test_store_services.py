"""Workspace store: services (desired state, keys, generations), events and settings."""

from __future__ import annotations

import pytest

from modelfleet.errors import ConfigError, Conflict, NotFound
from modelfleet.store.registry import Store


def test_create_starts_transitioning_at_generation_1(store: Store) -> None:
    rec = store.create_service("svc", {"cpu_cores": 0.1}, primary_key="p1", secondary_key="s1")
    assert (rec.name, rec.config) == ("svc", {"cpu_cores": 0.1})
    assert (rec.generation, rec.serving_generation) == (1, None)
    assert (rec.state, rec.detail) == ("Transitioning", None)
    assert (rec.primary_key, rec.secondary_key) == ("p1", "s1")
    assert rec.created_time == rec.updated_time
    assert store.get_service("svc") == rec


def test_create_conflicts_unless_overwrite(store: Store) -> None:
    first = store.create_service("svc", {"v": 1}, primary_key="p1", secondary_key="s1")
    store.set_service_state("svc", "Healthy", serving_generation=1)
    with pytest.raises(Conflict, match='service "svc" already exists.*overwrite=True'):
        store.create_service("svc", {"v": 2}, primary_key=None, secondary_key=None)
    assert store.get_service("svc").config == {"v": 1}
    rec = store.create_service("svc", {"v": 2}, primary_key="p2", secondary_key=None, overwrite=True)
    assert (rec.config, rec.generation, rec.primary_key, rec.secondary_key) == ({"v": 2}, 2, "p2", None)
    # Still serving the old generation until the control plane rolls the new one out.
    assert (rec.state, rec.serving_generation) == ("Transitioning", 1)
    assert rec.created_time == first.created_time


def test_update_config_bumps_generation_by_one(store: Store) -> None:
    store.create_service("svc", {"v": 1}, primary_key=None, secondary_key=None)
    store.set_service_state("svc", "Healthy", serving_generation=1)
    rec = store.update_service_config("svc", {"v": 2})
    assert (rec.config, rec.generation, rec.serving_generation) == ({"v": 2}, 2, 1)
    assert rec.state == "Transitioning"
    assert store.update_service_config("svc", {"v": 3}).generation == 3
    with pytest.raises(NotFound, match='service "nope" not found in workspace "ws"'):
        store.update_service_config("nope", {})
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        store.update_service_config("svc", {"bad": object()})


def test_keys_change_only_where_given(store: Store) -> None:
    store.create_service("svc", {}, primary_key="p1", secondary_key="s1")
    rec = store.set_service_keys("svc", primary_key="p2")
    assert (rec.primary_key, rec.secondary_key, rec.generation) == ("p2", "s1", 1)
    rec = store.set_service_keys("svc", secondary_key="s2")
    assert (rec.primary_key, rec.secondary_key) == ("p2", "s2")


def test_state_and_serving_generation(store: Store) -> None:
    store.create_service("svc", {}, primary_key=None, secondary_key=None)
    store.set_service_state("svc", "Failed", "replica exited during init()")
    rec = store.get_service("svc")
    assert (rec.state, rec.detail, rec.serving_generation) == ("Failed", "replica exited during init()", None)
    store.set_service_state("svc", "Healthy", serving_generation=1)
    rec = store.get_service("svc")
    assert (rec.state, rec.detail, rec.serving_generation) == ("Healthy", None, 1)
    assert rec.updated_time >= rec.created_time
    with pytest.raises(ConfigError, match="Transitioning, Healthy, Unhealthy, Failed.*'Running'"):
        store.set_service_state("svc", "Running")


def test_list_and_delete(store: Store) -> None:
    for name in ["b", "a", "c"]:
        store.create_service(name, {}, primary_key=None, secondary_key=None)
    store.add_event("b", "scale", {"from": 1, "to": 2})
    assert [s.name for s in store.list_services()] == ["a", "b", "c"]
    store.delete_service("b")
    assert [s.name for s in store.list_services()] == ["a", "c"]
    with pytest.raises(NotFound):
        store.get_service("b")
    with pytest.raises(NotFound):
        store.delete_service("b")
    # A new service of the same name starts with an empty log.
    store.create_service("b", {}, primary_key=None, secondary_key=None)
    assert store.list_events("b") == []


def test_repr_never_shows_keys(store: Store) -> None:
    rec = store.create_service("svc", {}, primary_key="SECRET-PRIMARY", secondary_key="SECRET-SECONDARY")
    for text in (repr(rec), str(rec), repr([rec]), f"{rec}"):
        assert "SECRET" not in text
        assert "svc" in text and "generation=1" in text


def test_events_are_an_ordered_log(store: Store) -> None:
    store.add_event("svc", "scale", {"from": 1, "to": 3, "reason": "up", "utilization": 2.4}, time=100.0)
    store.add_event("svc", "deployment", {"generation": 1, "outcome": "succeeded"}, time=50.0)
    store.add_event("svc", "scale", {"from": 3, "to": 1, "reason": "down", "utilization": 0.1}, time=200.0)
    store.add_event("other", "scale", {"from": 1, "to": 2}, time=150.0)
    store.add_event("svc", "deployment", {"generation": 2})  # now
    every = store.list_events("svc")
    assert [e["time"] for e in every[:3]] == [50.0, 100.0, 200.0] and every[3]["time"] > 200.0
    assert store.list_events("svc", kind="scale") == [
        {"time": 100.0, "kind": "scale", "from": 1, "to": 3, "reason": "up", "utilization": 2.4},
        {"time": 200.0, "kind": "scale", "from": 3, "to": 1, "reason": "down", "utilization": 0.1},
    ]
    assert [e["time"] for e in store.list_events("svc", kind="scale", since=100.0)] == [100.0, 200.0]
    assert [e["time"] for e in store.list_events("svc", since=150.0)][0] == 200.0
    with pytest.raises(ConfigError, match=r"\['time'\]"):
        store.add_event("svc", "scale", {"time": 1})


def test_settings(store: Store) -> None:
    assert store.get_setting("router_port") is None
    assert store.get_setting("router_port", "0") == "0"
    store.set_setting("router_port", "8765")
    store.set_setting("router_port", "8766")
    assert store.get_setting("router_port") == "8766"
    with pytest.raises(ConfigError, match="must be a string"):
        store.set_setting("router_port", 8765)  # type: ignore[arg-type]
