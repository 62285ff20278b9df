"""A v1 user's script, run unchanged but for its import line, against a real local cluster.

The script is written as v1 scripts were (``Workspace.from_config()`` reading the v1
``config.json``, the v1 calls by their v1 names and arguments) and runs as its own process;
it prints what it saw as JSON, and this test checks that against what v1 did.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e_support import SCRIPTS, stop_cluster
from modelfleet import Workspace

V1_SCRIPT = """
import json, sys
from modelfleet import (AksWebservice, Environment, InferenceConfig, Model,  # was: azureml.core...
                        Webservice, Workspace)
from modelfleet.errors import ModelfleetError

ws = Workspace.from_config()          # the v1 config.json in the current folder
out = {"workspace": ws.name}
model = Model.register(ws, model_path="model.json", model_name="regressor")
other = Model.register(ws, model_path="model.json", model_name="classifier")
env = Environment("scoring-env")
ic = InferenceConfig(entry_script="score.py", source_directory=sys.argv[1], environment=env)
dc = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=1, cpu_cores=0.1,
                                        memory_gb=0.5, tags={"stage": "dev"},
                                        properties={"owner": "ana"}, description="first")
Webservice.check_for_existing_webservice(ws, "reg-svc")          # none yet: no error
service = Model.deploy(ws, "reg-svc", [model], ic, dc)
service.wait_for_deployment(show_output=False)
second = Model.deploy(ws, "cls-svc", [other], ic,
                      AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=1))
second.wait_for_deployment()
try:
    Webservice.check_for_existing_webservice(ws, "reg-svc")
    out["exists_error"] = None
except ModelfleetError as exc:
    out["exists_error"] = str(exc)
out["checked_with_funcs"] = Webservice.check_for_existing_webservice(
    ws, "reg-svc", request_func=lambda w, n: {"state": "Failed"},
    check_func=lambda content: content["state"] != "Failed") is None

print(json.dumps({"phase": "deployed"}), flush=True)
sys.stdin.readline()  # the test notes the replicas' pids here

service.add_tags({"team": "vision", "tmp": "1"})
service.remove_tags(["tmp"])
service.add_properties({"ticket": 42})
service.update(description="second")
service.update_deployment_state()
out["state"] = service.state
out["tags"] = service.tags
out["properties"] = service.properties
out["description"] = service.description
service.update(tags={"stage": "prod"}, properties={"reviewed": "yes"})
out["after_update"] = {"tags": service.tags, "properties": service.properties}
names = lambda services: sorted(s.name for s in services)
out["list"] = {
    "all": names(Webservice.list(ws)),
    "aks": names(Webservice.list(ws, compute_type="AKS")),
    "aci": names(Webservice.list(ws, compute_type="ACI")),
    "model_name": names(Webservice.list(ws, model_name="regressor")),
    "model_id": names(Webservice.list(ws, model_id="classifier:1")),
    "model_id_none": names(Webservice.list(ws, model_id="classifier:2")),
    "image_name": names(Webservice.list(ws, image_name="scoring-env")),
    "image_id": names(Webservice.list(ws, image_id=second.image_id)),
    "tag_key": names(Webservice.list(ws, tags=["stage"])),
    "tag_pair": names(Webservice.list(ws, tags=[["stage", "prod"]])),
    "tag_pair_miss": names(Webservice.list(ws, tags=[["stage", "dev"]])),
    "props": names(Webservice.list(ws, properties=["owner", ["reviewed", "yes"]])),
}
out["run"] = service.run(json.dumps({"data": [[1, 2, 3]]}))
Webservice.check_for_existing_webservice(ws, "cls-svc", overwrite=True)  # v1: deletes it
out["after_overwrite"] = names(Webservice.list(ws))
print(json.dumps(out), flush=True)
"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    ws = Workspace.create("fleet", tmp_path / "fleet")
    (tmp_path / "config.json").write_text(
        json.dumps({"subscription_id": "0000", "resource_group": "rg", "workspace_name": "fleet"})
    )
    (tmp_path / "model.json").write_text(json.dumps({"weight": 1}))
    (tmp_path / "v1_script.py").write_text(textwrap.dedent(V1_SCRIPT))
    yield tmp_path
    stop_cluster(ws)


def _replicas(ws: Workspace, name: str) -> list[tuple[str, int]]:
    return [(r["id"], r["pid"]) for r in ws.cluster().status()["services"][name]["replicas"]]


def test_v1_script_replays_unchanged(project: Path) -> None:
    ws = Workspace.get(project / "fleet")
    proc = subprocess.Popen(
        [sys.executable, "v1_script.py", str(SCRIPTS / "sum")],
        cwd=project,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline()
        assert json.loads(first or "{}") == {"phase": "deployed"}, proc.stderr.read() if proc.stderr else ""
        before = _replicas(ws, "reg-svc")
        generation = ws.store.get_service("reg-svc").generation
        proc.stdin.write("\n")
        proc.stdin.flush()
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    out = json.loads(stdout.strip().splitlines()[-1])

    assert out["workspace"] == "fleet"
    assert "already a service" in out["exists_error"] and out["checked_with_funcs"]
    assert out["state"] == "Healthy"
    assert out["tags"] == {"stage": "dev", "team": "vision"}
    assert out["properties"] == {"owner": "ana", "ticket": "42"}
    assert out["description"] == "second"
    # v1's update: tags replace the service's tags, properties are added to its properties
    assert out["after_update"] == {
        "tags": {"stage": "prod"},
        "properties": {"owner": "ana", "ticket": "42", "reviewed": "yes"},
    }
    assert out["list"] == {
        "all": ["cls-svc", "reg-svc"],
        "aks": ["cls-svc", "reg-svc"],
        "aci": [],
        "model_name": ["reg-svc"],
        "model_id": ["cls-svc"],
        "model_id_none": [],
        "image_name": ["cls-svc", "reg-svc"],
        "image_id": ["cls-svc", "reg-svc"],
        "tag_key": ["reg-svc"],
        "tag_pair": ["reg-svc"],
        "tag_pair_miss": [],
        "props": ["reg-svc"],
    }
    assert out["run"] == [6]
    assert out["after_overwrite"] == ["reg-svc"]
    # metadata changes touched neither the config's generation nor any running replica
    assert ws.store.get_service("reg-svc").generation == generation
    assert _replicas(ws, "reg-svc") == before


def test_list_filters_refuse_a_malformed_filter(tmp_path: Path) -> None:
    from modelfleet import Webservice
    from modelfleet.errors import ConfigError

    ws = Workspace.create("filters", tmp_path / "ws")
    with pytest.raises(ConfigError, match=r'"key" or \["key", "value"\]'):
        Webservice.list(ws, tags="stage")
    with pytest.raises(ConfigError, match="each properties filter"):
        Webservice.list(ws, properties=[["a", "b", "c"]])
