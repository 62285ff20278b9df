"""Listing many services (issue 16: ``service list`` of 1,000 services within 0.5 s): the
listing reads the workspace a fixed number of times, not a dozen times per service, and says
exactly what ``serialize()`` of each service says. A real SQLite workspace; no cluster."""

from __future__ import annotations

from pathlib import Path

from modelfleet import AksWebservice, InferenceConfig, Model, Webservice, Workspace
from modelfleet.sdk import service_meta
from modelfleet.sdk.service_config import build_config
from modelfleet.sdk.webservice import ROUTER_PORT_SETTING
from store_statements import counted_statements

SERVICES = 120


def _workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.create("many", tmp_path / "ws")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "score.py").write_text("def init():\n    pass\n\ndef run(raw):\n    return raw\n")
    (tmp_path / "model.json").write_text("{}")
    model = Model.register(ws, model_path=tmp_path / "model.json", model_name="m")
    ic = InferenceConfig(entry_script="score.py", source_directory=str(tmp_path / "app"))
    for i in range(SERVICES):
        dc = AksWebservice.deploy_configuration(cpu_cores=0.001, memory_gb=0.02, tags={"n": str(i % 3)})
        config = build_config(ws, [model], ic.to_spec(), dc)
        ws.store.create_service(f"svc-{i:03d}", config, primary_key="p" * 43, secondary_key="s" * 43)
    ws.store.set_setting(ROUTER_PORT_SETTING, "41000")
    service_meta.save(ws.store, "svc-007", service_meta.Metadata({"changed": "yes"}, {}, "described later"))
    return ws


def test_listing_reads_the_workspace_a_fixed_number_of_times(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    services = Webservice.list(ws)
    one_by_one = [s.serialize() for s in services]
    with counted_statements(ws.store) as statements:
        listed = Webservice.serialize_all(ws, Webservice.list(ws))
    assert listed == one_by_one  # the same answer as serialize(), metadata events included
    assert listed[7]["tags"] == {"changed": "yes"} and listed[7]["description"] == "described later"
    assert listed[0]["scoringUri"] == "http://127.0.0.1:41000/api/v1/service/svc-000/score"
    # services twice, metadata events, three router settings: 6 reads, each with its BEGIN
    # (before: 17 reads per service)
    assert len(statements) <= 12, f"{len(statements)} statements for {SERVICES} services"
    with counted_statements(ws.store) as statements:
        everything = Webservice.serialize_all(ws)  # what `service list` calls: no list() before it
    assert everything == listed
    # svc-000 and svc-003 share their settings (one parse), not their deploymentConfig dicts
    assert everything[0]["deploymentConfig"] == everything[3]["deploymentConfig"]
    assert everything[0]["deploymentConfig"] is not everything[3]["deploymentConfig"]
    # services once, metadata events, three router settings: 5 reads, each with its BEGIN
    assert len(statements) <= 10, f"{len(statements)} statements for {SERVICES} services"
    with counted_statements(ws.store) as statements:
        # svc-007 (7 % 3 == 1) had its tags replaced afterwards
        assert len(Webservice.list(ws, tags=[["n", "1"]])) == SERVICES // 3 - 1
    assert len(statements) <= 4, f"{len(statements)} statements to filter {SERVICES} services by tag"


def test_a_service_deleted_after_listing_is_left_out(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    services = Webservice.list(ws)
    ws.store.delete_service("svc-003")
    names = [d["name"] for d in Webservice.serialize_all(ws, services)]
    assert len(names) == SERVICES - 1 and "svc-003" not in names
