"""Endpoints end to end: real daemon, router and replica processes on 127.0.0.1.

One workspace and cluster for the module; endpoint "fraud" has versions blue (the default)
and green, each answering with its own name (its model file says it), so a body tells which
version's replica served and the ``azureml-model-deployment`` answer header must agree.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e_support import cli, stop_cluster, wait_until
from modelfleet import AksEndpoint, AksWebservice, Environment, InferenceConfig, Model, Webservice, Workspace
from modelfleet.errors import ConfigError, Conflict

SCRIPTS = Path(__file__).parent / "scripts"
FIXED = {"autoscale_enabled": False, "num_replicas": 1}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("endpoints", tmp_path_factory.mktemp("endpoints") / "ws")
    yield workspace
    stop_cluster(workspace)


def ic(script: str = "named") -> InferenceConfig:
    return InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / script, environment=Environment("e2e"))


def named_model(ws: Workspace, name: str) -> Model:
    path = Path(ws.path) / f"{name}.json"
    path.write_text(json.dumps({"name": name}))
    return Model.register(ws, model_path=path, model_name=f"answers-{name}")


@pytest.fixture(scope="module")
def fraud(ws: Workspace) -> AksEndpoint:
    dc = AksEndpoint.deploy_configuration(version_name="blue", is_default=True, **FIXED)
    endpoint = Model.deploy(ws, "fraud", [named_model(ws, "blue")], ic(), dc)
    assert isinstance(endpoint, AksEndpoint)
    endpoint.create_version(
        "green", models=[named_model(ws, "green")], inference_config=ic(), traffic_percentile=10, **FIXED
    )
    endpoint.wait_for_deployment(timeout_sec=120)
    return endpoint


def client(endpoint: AksEndpoint) -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"Bearer {endpoint.get_keys()[0]}"}, timeout=30)


def served(c: httpx.Client, endpoint: AksEndpoint, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        r = c.post(endpoint.scoring_uri, content="{}", headers=headers)  # type: ignore[arg-type]
        assert r.status_code == 200, r.text
        assert r.headers["azureml-model-deployment"] == r.json()  # the header names the version that served
        counts[r.json()] += 1
    return counts


def test_a_90_10_split_over_2000_requests(fraud: AksEndpoint) -> None:
    assert fraud.state == "Healthy" and fraud.traffic == {"blue": 90.0, "green": 10.0}
    assert fraud.scoring_uri.endswith("/api/v1/service/fraud/score")  # type: ignore[union-attr]
    with client(fraud) as c:
        counts = served(c, fraud, 2000)
    assert set(counts) == {"blue", "green"}
    green = 100 * counts["green"] / 2000
    assert 7 <= green <= 13, counts  # 10 ± 3 points


def test_a_pinned_version_always_serves_and_an_unknown_one_is_404(fraud: AksEndpoint) -> None:
    with client(fraud) as c:
        assert served(c, fraud, 100, {"azureml-model-deployment": "green"}) == {"green": 100}
        assert served(c, fraud, 20, {"azureml-model-deployment": "blue"}) == {"blue": 20}
        r = c.post(fraud.scoring_uri, content="{}", headers={"azureml-model-deployment": "purple"})  # type: ignore[arg-type]
    assert r.status_code == 404 and "no version 'purple'" in r.text and "blue, green" in r.json()["message"]
    assert fraud.versions["green"].run("{}") == "green"  # EndpointVersion.run pins its version


def test_a_session_key_sticks_to_one_version(fraud: AksEndpoint) -> None:
    with client(fraud) as c:
        for key in ("alice", "bob", "carol", "dave", "erin"):
            assert len(served(c, fraud, 15, {"x-modelfleet-session": key})) == 1


def test_keys_are_the_endpoints_and_versions_are_not_reachable_on_their_own(fraud: AksEndpoint) -> None:
    assert httpx.post(fraud.scoring_uri, content="{}").status_code == 401  # type: ignore[arg-type]
    with client(fraud) as c:
        inner = fraud.scoring_uri.replace("/fraud/", "/fraud:green/")  # type: ignore[union-attr]
        assert c.post(inner, content="{}").status_code == 404
    assert fraud.versions["green"].get_keys() == fraud.get_keys()
    old = fraud.get_keys()[0]
    fraud.regen_key("Primary")
    assert httpx.post(fraud.scoring_uri, content="{}", headers={"Authorization": f"Bearer {old}"}).status_code == 401  # type: ignore[arg-type]
    assert fraud.run("{}") in ("blue", "green")


def test_a_version_that_is_not_healthy_gets_no_traffic(ws: Workspace, fraud: AksEndpoint) -> None:
    fraud.create_version(
        "red", models=[named_model(ws, "red")], inference_config=ic("broken"), traffic_percentile=30, **FIXED
    )
    wait_until(lambda: Webservice(ws, "fraud:red").state == "Failed", timeout=60)
    # the stored state follows the versions' (service list and the dashboard read it)
    wait_until(lambda: ws.store.get_service("fraud").state == "Unhealthy", timeout=30)
    assert fraud.state == "Unhealthy" and "red Failed" in (ws.store.get_service("fraud").detail or "")
    assert fraud.traffic == {"blue": 60.0, "green": 10.0, "red": 30.0}  # as configured; red is down
    with client(fraud) as c:
        counts = served(c, fraud, 400)
    assert counts["red"] == 0 and counts["blue"] > counts["green"] > 0, counts
    fraud.delete_version("red")
    assert sorted(fraud.versions) == ["blue", "green"]
    wait_until(lambda: "fraud:red" not in ws.cluster().status()["services"], timeout=30)
    wait_until(lambda: ws.store.get_service("fraud").state == "Healthy", timeout=30)


def test_traffic_and_default_changes_take_effect_without_a_redeploy(fraud: AksEndpoint) -> None:
    green_generation = Webservice(fraud.workspace, "fraud:green")._record().generation
    fraud.update_version("green", traffic_percentile=100)
    with client(fraud) as c:
        assert served(c, fraud, 30) == {"green": 30}
        fraud.update_version("green", is_default=True)  # blue becomes a non-default version with 0
        assert fraud.default_version == "green" and fraud.traffic == {"blue": 0.0, "green": 100.0}
        fraud.update_version("blue", traffic_percentile=90)
        assert fraud.traffic == {"blue": 90.0, "green": 10.0}
        fraud.set_traffic({"green": 100})  # versions left out get 0; the default what is left
        assert served(c, fraud, 20) == {"green": 20}
        fraud.update_version("blue", is_default=True)
        fraud.update_version("green", traffic_percentile=10)
    assert Webservice(fraud.workspace, "fraud:green")._record().generation == green_generation  # no replica replaced
    assert fraud.traffic == {"blue": 90.0, "green": 10.0}


def test_a_versions_models_are_updated_through_its_endpoint(ws: Workspace, fraud: AksEndpoint) -> None:
    fraud.update_version("green", models=[named_model(ws, "green-2")])
    fraud.versions["green"].wait_for_deployment(timeout_sec=120)
    with client(fraud) as c:
        r = c.post(fraud.scoring_uri, content="{}", headers={"azureml-model-deployment": "green"})  # type: ignore[arg-type]
        assert r.status_code == 200 and r.json() == "green-2" and r.headers["azureml-model-deployment"] == "green"
    assert fraud.traffic == {"blue": 90.0, "green": 10.0} and fraud.state == "Healthy"
    fraud.update_version("green", models=[named_model(ws, "green")])  # back, for the tests after
    fraud.versions["green"].wait_for_deployment(timeout_sec=120)


def test_bad_input_is_refused_naming_the_field(ws: Workspace, fraud: AksEndpoint) -> None:
    with pytest.raises(ConfigError, match=r"traffic_percentile: the non-default versions' shares add up to 105"):
        fraud.create_version("extra", models=[], inference_config=ic(), traffic_percentile=95)
    with pytest.raises(ConfigError, match=r"traffic_percentile must be from 0 to 100 \(got 101\)"):
        fraud.update_version("green", traffic_percentile=101)
    with pytest.raises(ConfigError, match=r"version_name: no version 'purple'"):
        fraud.update_version("purple", traffic_percentile=5)
    with pytest.raises(ConfigError, match="blue is the default version"):
        fraud.delete_version("blue")
    with pytest.raises(ConfigError, match="version_name must be 1-32 characters"):
        fraud.create_version("Not_OK", models=[], inference_config=ic())
    with pytest.raises(ConfigError, match="mirror_percentile of version shadow: a mirror takes no traffic share"):
        fraud.create_version("shadow", models=[], inference_config=ic(), mirror_percentile=100, traffic_percentile=5)
    with pytest.raises(ConfigError, match="version_name is required"):
        AksEndpoint.deploy_configuration()
    with pytest.raises(Conflict, match='"fraud" is already an endpoint'):
        Model.deploy(ws, "fraud", [], ic(), AksWebservice.deploy_configuration(**FIXED), overwrite=True)
    with pytest.raises(ConfigError, match="deployment_target: endpoints .* run on the local cluster only for now"):
        Model.deploy(
            ws, "elsewhere", [], ic(), AksEndpoint.deploy_configuration(version_name="a"), deployment_target="k8s"
        )
    assert fraud.traffic == {"blue": 90.0, "green": 10.0}  # nothing changed
    assert "fraud:extra" not in {r.name for r in ws.store.list_services()}


def test_an_endpoint_cannot_take_a_services_name(ws: Workspace, fraud: AksEndpoint) -> None:
    Model.deploy(ws, "plain", [named_model(ws, "plain")], ic(), AksWebservice.deploy_configuration(**FIXED))
    dc = AksEndpoint.deploy_configuration(version_name="blue", **FIXED)
    with pytest.raises(Conflict, match='"plain" is already a service'):
        Model.deploy(ws, "plain", [], ic(), dc, overwrite=True)
    assert type(Webservice(ws, "plain")) is AksWebservice
    assert type(Webservice(ws, "fraud")) is AksEndpoint  # v1: Webservice(ws, name) gives the endpoint
    assert {type(s).__name__ for s in Webservice.list(ws)} >= {"AksEndpoint", "AksWebservice"}
    assert not any(":" in s.name for s in Webservice.list(ws))


def test_the_cli(ws: Workspace, fraud: AksEndpoint, tmp_path: Path) -> None:
    shown = json.loads(cli(ws, "endpoint", "show", "-n", "fraud", "-o", "json").stdout)
    assert shown["defaultVersion"] == "blue"
    assert {v["name"]: v["share"] for v in shown["versions"]} == {"blue": 90.0, "green": 10.0}
    listed = json.loads(cli(ws, "endpoint", "list", "-o", "json").stdout)
    assert [e["name"] for e in listed] == ["fraud"]
    assert "blue* 90%, green 10%" in cli(ws, "endpoint", "list").stdout
    cli(ws, "endpoint", "traffic", "-n", "fraud", "blue=80", "green=20")
    assert fraud.traffic == {"blue": 80.0, "green": 20.0}
    bad = cli(ws, "endpoint", "traffic", "-n", "fraud", "green=120", check=False)
    assert bad.returncode == 1 and "traffic of green must be from 0 to 100" in bad.stderr
    (tmp_path / "ic.json").write_text(
        json.dumps({"entryScript": "score.py", "sourceDirectory": str(SCRIPTS / "named")})
    )
    named_model(ws, "teal")
    cli(ws, "endpoint", "version", "create", "-n", "fraud", "--version-name", "teal", "-m", "answers-teal:1",
        "--ic", str(tmp_path / "ic.json"), "--traffic-percentile", "5", "--num-replicas", "1",
        "--autoscale-enabled", "false")  # fmt: skip
    versions = json.loads(cli(ws, "endpoint", "version", "list", "-n", "fraud", "-o", "json").stdout)
    assert {v["name"]: (v["state"], v["share"]) for v in versions} == {
        "blue": ("Healthy", 75.0), "green": ("Healthy", 20.0), "teal": ("Healthy", 5.0)
    }  # fmt: skip
    cli(ws, "endpoint", "version", "update", "-n", "fraud", "--version-name", "teal", "--traffic-percentile", "0")
    with client(fraud) as c:
        assert served(c, fraud, 5, {"azureml-model-deployment": "teal"}) == {"teal": 5}
    refused = cli(ws, "endpoint", "version", "delete", "-n", "fraud", "--version-name", "blue", check=False)
    assert refused.returncode == 1 and "blue is the default version" in refused.stderr
    assert "(`modelfleet endpoint version update --is-default`)" in refused.stderr  # the CLI's words
    cli(ws, "endpoint", "version", "delete", "-n", "fraud", "--version-name", "teal")
    cli(ws, "endpoint", "traffic", "-n", "fraud", "green=10")
    assert sorted(fraud.versions) == ["blue", "green"] and fraud.traffic == {"blue": 90.0, "green": 10.0}
    keys = json.loads(cli(ws, "endpoint", "get-keys", "-n", "fraud", "-o", "json").stdout)
    assert keys["primaryKey"] == fraud.get_keys()[0]
    services = {d["name"]: d for d in json.loads(cli(ws, "service", "list", "-o", "json").stdout)}
    assert services["fraud"]["state"] == "Healthy" and services["fraud"]["computeType"] == "AKSENDPOINT"
    assert not any(":" in name for name in services)  # versions are listed with their endpoint
    refused = cli(
        ws, "service", "update", "-n", "fraud", "--num-replicas", "2", "--autoscale-enabled", "false", check=False
    )
    assert refused.returncode == 1 and "fraud is an endpoint" in refused.stderr


def test_create_and_delete_through_the_cli(ws: Workspace, tmp_path: Path) -> None:
    (tmp_path / "ic.json").write_text(
        json.dumps({"entryScript": "score.py", "sourceDirectory": str(SCRIPTS / "named")})
    )
    named_model(ws, "solo")
    out = cli(ws, "endpoint", "create", "-n", "solo", "--version-name", "v1", "-m", "answers-solo:1",
              "--ic", str(tmp_path / "ic.json"), "--num-replicas", "1", "--autoscale-enabled", "false")  # fmt: skip
    assert "/api/v1/service/solo/score" in out.stdout
    assert AksEndpoint(ws, "solo").run("{}") == "solo"
    refused = cli(ws, "endpoint", "version", "delete", "-n", "solo", "--version-name", "v1", check=False)
    assert refused.returncode == 1 and "only version; delete the endpoint instead" in refused.stderr
    cli(ws, "endpoint", "delete", "-n", "solo")
    wait_until(lambda: not any(n.startswith("solo") for n in ws.cluster().status()["services"]), timeout=30)
    assert not any(r.name.startswith("solo") for r in ws.store.list_services())


def test_token_auth_is_the_endpoints(ws: Workspace) -> None:
    dc = AksEndpoint.deploy_configuration(version_name="v1", auth_enabled=False, token_auth_enabled=True, **FIXED)
    endpoint = Model.deploy(ws, "tokened", [named_model(ws, "tokened")], ic(), dc)
    endpoint.wait_for_deployment(timeout_sec=120)
    token, _ = endpoint.get_token()
    ok = httpx.post(endpoint.scoring_uri, content="{}", headers={"Authorization": f"Bearer {token}"})  # type: ignore[arg-type]
    assert ok.status_code == 200 and ok.json() == "tokened" and ok.headers["azureml-model-deployment"] == "v1"
    assert httpx.post(endpoint.scoring_uri, content="{}").status_code == 401  # type: ignore[arg-type]
    endpoint.update(auth_enabled=True, token_auth_enabled=False)  # the endpoint's auth: no version restarts
    key = endpoint.get_keys()[0]
    wait_until(
        lambda: (
            httpx.post(endpoint.scoring_uri, content="{}", headers={"Authorization": f"Bearer {key}"}).status_code  # type: ignore[arg-type]
            == 200
        )
    )
    assert (
        httpx.post(endpoint.scoring_uri, content="{}", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    )  # type: ignore[arg-type]
    endpoint.delete()


def test_a_restarted_cluster_brings_the_endpoint_back(ws: Workspace, fraud: AksEndpoint) -> None:
    keys, uri = fraud.get_keys(), fraud.scoring_uri
    stop_cluster(ws)
    ws.cluster().ensure_running()
    wait_until(lambda: fraud.state == "Healthy", timeout=60)
    assert fraud.scoring_uri == uri and fraud.get_keys() == keys
    with client(fraud) as c:
        for version in ("blue", "green"):  # each one's replica is Ready again (pinned: no fallback)
            pin = {"azureml-model-deployment": version}
            wait_until(lambda pin=pin: c.post(uri, content="{}", headers=pin).status_code == 200, timeout=60)  # type: ignore[arg-type]
        counts = served(c, fraud, 300)
    assert set(counts) == {"blue", "green"} and counts["blue"] > counts["green"], counts
