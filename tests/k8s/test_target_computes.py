"""Compute targets recorded in the workspace (``store/computes.py``): attach, get, list, detach;
and each reconciler keeps to the services deployed to its own target."""

from __future__ import annotations

import sqlite3

import pytest

from modelfleet.control.reconcile import Reconciler
from modelfleet.errors import ConfigError, Conflict, NotFound
from modelfleet.store.registry import Store
from modelfleet.targets.memory import InMemoryTarget


def test_attach_get_list_detach(store: Store):
    store.computes.attach("prod", "kubernetes", {"namespace": "models", "kubeconfig": "/k"})
    store.computes.attach("dev", "kubernetes", {"namespace": "dev"})
    assert store.computes.get("prod").settings == {"namespace": "models", "kubeconfig": "/k"}
    assert [c.name for c in store.computes.list()] == ["dev", "prod"]
    with pytest.raises(Conflict, match='"prod" is already attached'):
        store.computes.attach("prod", "kubernetes", {})
    store.computes.attach("prod", "kubernetes", {"namespace": "x"}, overwrite=True)
    assert store.computes.get("prod").settings == {"namespace": "x"}
    store.computes.detach("prod")
    with pytest.raises(NotFound, match='no compute target "prod"'):
        store.computes.get("prod")
    with pytest.raises(NotFound):
        store.computes.detach("prod")


def test_names_and_kinds_are_checked(store: Store):
    with pytest.raises(ConfigError, match="2-16 characters"):
        store.computes.attach("-bad", "kubernetes", {})
    with pytest.raises(ConfigError, match="kind must be one of kubernetes"):
        store.computes.attach("prod", "aci", {})


def test_a_workspace_made_before_the_table_existed_gets_it_on_first_use(store: Store):
    db = store.root / ".modelfleet" / "metadata.db"
    with sqlite3.connect(db) as raw:
        raw.execute("DROP TABLE compute_targets")
    reopened = Store.open(store.root)
    try:
        assert reopened.computes.list() == []
        reopened.computes.attach("prod", "kubernetes", {"namespace": "models"})
        assert reopened.computes.get("prod").kind == "kubernetes"
    finally:
        reopened.close()


def test_a_reconciler_takes_only_the_services_of_its_compute_target(store: Store):
    store.create_service("here", {"deploy": {}}, primary_key=None, secondary_key=None)
    store.create_service("there", {"deploy": {}, "compute_target": "prod"}, primary_key=None, secondary_key=None)
    local = Reconciler(store, InMemoryTarget())
    prod = Reconciler(store, InMemoryTarget(), compute_target="prod")
    assert {r.name: (local.owns(r), prod.owns(r)) for r in store.list_services()} == {
        "here": (True, False),
        "there": (False, True),
    }
    local.sync("there")  # the local cluster's daemon is asked about a Kubernetes service: not its own
    prod.sync("here")
    assert local.controllers == {} and prod.controllers == {}
