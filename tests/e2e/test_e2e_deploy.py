"""End to end: register, deploy to the local cluster, score through the router.

Real daemon, router and replica processes on 127.0.0.1 and a real SQLite workspace. One
cluster serves the whole module (starting one costs about a second); tests that restart or
stop it live in test_e2e_lifecycle.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from urllib.parse import urlsplit

import httpx
import pytest

from e2e_support import (
    SCRIPTS,
    SUM_BODY,
    deploy,
    pid_alive,
    raw_exchange,
    register_json_model,
    stop_cluster,
    wait_until,
)
from fs_support import files_with_bytes
from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Webservice, Workspace
from modelfleet.errors import ConfigError, DeploymentFailed, NotFound


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    workspace = Workspace.create("e2e", tmp_path_factory.mktemp("ws"))
    yield workspace
    stop_cluster(workspace)


@pytest.fixture(scope="module")
def summer(ws: Workspace) -> Webservice:
    return deploy(ws, "summer", "sum")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def test_deploy_and_score_with_either_key(summer: Webservice) -> None:
    assert summer.state == "Healthy"
    assert summer.scoring_uri.endswith("/api/v1/service/summer/score")
    primary, secondary = summer.get_keys()
    assert primary != secondary and len(primary) >= 43  # 256 bits, url-safe base64
    for key in (primary, secondary):
        response = httpx.post(summer.scoring_uri, content=SUM_BODY, headers=auth(key))
        assert response.status_code == 200
        assert response.json() == [55]
        assert response.headers["x-ms-request-id"]
    assert summer.run(SUM_BODY) == [55]


def test_missing_and_wrong_key_are_401(summer: Webservice) -> None:
    missing = httpx.post(summer.scoring_uri, content=SUM_BODY)
    wrong = httpx.post(summer.scoring_uri, content=SUM_BODY, headers=auth("not-the-key"))
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "message" in response.json()


def test_keys_never_reach_the_logs(summer: Webservice) -> None:
    primary, _ = summer.get_keys()
    httpx.post(summer.scoring_uri, content=SUM_BODY, headers=auth(primary))
    httpx.post(summer.scoring_uri, content=SUM_BODY, headers=auth(primary + "x"))
    runtime = summer.workspace.store.runtime_dir
    for path, data in files_with_bytes(runtime, ".log"):  # an old generation's folder may go meanwhile
        assert primary.encode() not in data, path


def test_unknown_service_is_404_and_wrong_method_405(summer: Webservice) -> None:
    base = summer.scoring_uri.rsplit("/api/", 1)[0]
    response = httpx.post(f"{base}/api/v1/service/nosuch/score", content=SUM_BODY)
    assert response.status_code == 404
    assert "message" in response.json()
    response = httpx.put(summer.scoring_uri, content=SUM_BODY, headers=auth(summer.get_keys()[0]))
    assert response.status_code == 405
    assert "message" in response.json()


def test_body_over_the_limit_is_413_and_10mb_passes(ws: Workspace) -> None:
    service = deploy(ws, "sizer", "size", auth_enabled=False)
    big = b'"' + b"x" * (10 * 1024 * 1024) + b'"'
    response = httpx.post(service.scoring_uri, content=big, timeout=60)
    assert response.status_code == 200
    assert response.json() == {"length": len(big)}
    # over the 100 MB default: refused from the declared length, before any replica sees it
    path = urlsplit(service.scoring_uri).path
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {100 * 1024 * 1024 + 1}\r\n\r\n".encode()
    status, body = raw_exchange(service.scoring_uri, head, b"{}")
    assert status == 413
    assert "message" in json.loads(body)


def test_run_raising_is_500_and_service_stays_healthy(ws: Workspace) -> None:
    service = deploy(ws, "raiser", "raising", auth_enabled=False)
    response = httpx.post(service.scoring_uri, json={"fail": True})
    assert response.status_code == 500
    assert "message" in response.json()
    assert "Traceback" not in response.text
    assert httpx.post(service.scoring_uri, json={"fail": False}).json() == {"ok": True}
    assert service.state == "Healthy"
    logs = wait_until(lambda: (text := service.get_logs()) and "run() was told to fail" in text and text)
    assert "ValueError" in logs


def test_init_failure_ends_failed_with_traceback_in_logs(ws: Workspace) -> None:
    service = deploy(ws, "broken", "failing_init", wait=False)
    with pytest.raises(DeploymentFailed, match="init"):
        service.wait_for_deployment(timeout_sec=60)
    assert service.state == "Failed"
    logs = service.get_logs()
    assert "Traceback" in logs
    assert "model file is corrupt" in logs


def test_two_models_laid_out_as_v1(ws: Workspace, tmp_path) -> None:
    alpha = register_json_model(ws, tmp_path, "alpha", 1.5)
    beta = register_json_model(ws, tmp_path, "beta", 2.5)
    beta2 = register_json_model(ws, tmp_path, "beta", 3.5)
    assert (beta.version, beta2.version) == (1, 2)
    service = deploy(ws, "pair", "two_models", models=[alpha, beta2], auth_enabled=False)
    answer = httpx.post(service.scoring_uri, content="{}").json()
    assert answer["model_dir"] == "azureml-models"  # several models: the parent folder
    assert answer["weights"] == {"alpha": 1.5, "beta": 3.5}
    assert answer["alpha_path"].endswith(os.path.join("azureml-models", "alpha", "1", "alpha.json"))


def test_killed_replica_is_restarted_and_serves_again(ws: Workspace, summer: Webservice) -> None:
    status = ws.cluster().status()["services"]["summer"]
    [replica] = status["replicas"]
    os.kill(replica["pid"], signal.SIGKILL)

    def replaced() -> bool:
        [now] = ws.cluster().status()["services"]["summer"]["replicas"]
        return now["state"] == "Ready" and now["pid"] != replica["pid"] and now["restarts"] == replica["restarts"] + 1

    wait_until(replaced, timeout=30)
    assert summer.run(SUM_BODY) == [55]


def test_update_replaces_replicas_with_no_failed_request(ws: Workspace) -> None:
    service = deploy(ws, "rolling", "slow", auth_enabled=False, replica_max_concurrent_requests=4)

    results: list[tuple[int, object]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(service.scoring_uri, content=json.dumps({"sleep": 0.02}))
                results.append((response.status_code, response.json().get("version")))

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: len(results) > 10)
        ic = InferenceConfig(
            entry_script="score.py", source_directory=SCRIPTS / "version_v2", environment=Environment("e2e")
        )
        service.update(inference_config=ic)
        service.wait_for_deployment(timeout_sec=60)
        count = len(results)
        wait_until(lambda: len(results) > count + 10)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    statuses = {status for status, _ in results}
    assert statuses == {200}, statuses
    versions = [version for _, version in results]
    assert versions[0] == 1 and versions[-1] == 2
    assert service.state == "Healthy"


def test_failed_update_leaves_old_replicas_serving(ws: Workspace) -> None:
    # a service of its own: summer's replicas, which other tests count, stay as they are
    service = deploy(ws, "kept-serving", "sum")
    ic = InferenceConfig(
        entry_script="score.py", source_directory=SCRIPTS / "failing_init", environment=Environment("e2e")
    )
    service.update(inference_config=ic)
    with pytest.raises(DeploymentFailed, match="init"):
        service.wait_for_deployment(timeout_sec=60)
    assert service.state == "Healthy"
    assert "still serving" in service.error
    assert service.run(SUM_BODY) == [55]


def test_regenerated_key_refused_at_once(summer: Webservice) -> None:
    old_primary, secondary = summer.get_keys()
    summer.regen_key("Primary")
    new_primary, same_secondary = summer.get_keys()
    assert new_primary != old_primary and same_secondary == secondary
    assert httpx.post(summer.scoring_uri, content=SUM_BODY, headers=auth(old_primary)).status_code == 401
    assert httpx.post(summer.scoring_uri, content=SUM_BODY, headers=auth(new_primary)).status_code == 200
    summer.regen_key("Secondary", set_key="my-own-secondary-key-0123456789abcdef")
    assert (
        httpx.post(
            summer.scoring_uri, content=SUM_BODY, headers=auth("my-own-secondary-key-0123456789abcdef")
        ).status_code
        == 200
    )


def test_bad_service_name_refused_before_anything_is_created(ws: Workspace) -> None:
    for bad in ("My_Service", "ab", "1service", "x" * 33):
        with pytest.raises(ConfigError, match="name"):
            deploy(ws, bad, "sum")
        with pytest.raises(NotFound):
            Webservice(ws, bad)


def test_bad_setting_names_field_and_range(ws: Workspace) -> None:
    with pytest.raises(ConfigError, match=r"autoscale_target_utilization.*150"):
        AksWebservice.deploy_configuration(autoscale_target_utilization=150)
    with pytest.raises(ConfigError, match="cpu_cores"):
        AksWebservice.deploy_configuration(cpu_cores=-1)


def test_list_and_lookup(ws: Workspace, summer: Webservice, tmp_path) -> None:
    listed = register_json_model(ws, tmp_path, "listed", 1.0)
    names = {s.name for s in Webservice.list(ws)}
    assert "summer" in names
    again = Webservice(ws, "summer")
    assert isinstance(again, AksWebservice)
    assert again.scoring_uri == summer.scoring_uri
    [found] = Model.list(ws, name="listed")
    assert (found.name, found.version, found.id) == ("listed", listed.version, listed.id)


def test_delete_removes_service_and_its_processes(ws: Workspace) -> None:
    service = deploy(ws, "doomed", "sum", auth_enabled=False)
    pids = [r["pid"] for r in ws.cluster().status()["services"]["doomed"]["replicas"]]
    uri = service.scoring_uri
    service.delete()
    with pytest.raises(NotFound):
        Webservice(ws, "doomed")
    assert httpx.post(uri, content=SUM_BODY).status_code == 404
    wait_until(lambda: not any(pid_alive(p) for p in pids))
