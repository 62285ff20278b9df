"""End to end: the cluster's own life (stop, start, restore), the CLI with v1 JSON files,
local deployments and the one-replica ``modelfleet serve``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from e2e_support import SCRIPTS, SUM_BODY, cli, cluster_pids, deploy, pid_alive, stop_cluster, wait_until
from modelfleet import Environment, InferenceConfig, LocalWebservice, Model, Webservice, Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    workspace = Workspace.create("life", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def test_daemon_restart_brings_services_back_with_same_keys_and_uri(ws: Workspace) -> None:
    service = deploy(ws, "keeper", "sum")
    keys, uri = service.get_keys(), service.scoring_uri
    old_pids = cluster_pids(ws)
    stop_cluster(ws)
    assert not any(pid_alive(p) for p in old_pids)
    with pytest.raises(httpx.ConnectError):  # the router went with the daemon
        httpx.post(uri, content=SUM_BODY)

    ws.cluster().ensure_running()
    wait_until(lambda: ws.cluster().status()["services"].get("keeper", {}).get("serving_generation") is not None)
    again = Webservice(ws, "keeper")
    assert again.scoring_uri == uri
    assert again.get_keys() == keys
    response = httpx.post(uri, content=SUM_BODY, headers={"Authorization": f"Bearer {keys[0]}"})
    assert response.status_code == 200 and response.json() == [55]


def test_killed_daemon_takes_its_replicas_with_it(ws: Workspace) -> None:
    deploy(ws, "orphan-check", "sum")
    pids = cluster_pids(ws)
    daemon_pid = pids[0]
    os.kill(daemon_pid, signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(p) for p in pids))
    # and a later start restores the service from the workspace
    ws.cluster().ensure_running()
    wait_until(
        lambda: (
            Webservice(ws, "orphan-check").state == "Healthy"
            and ws.cluster().status()["services"]["orphan-check"]["serving_generation"] is not None
        )
    )


def test_local_deployment_is_one_replica_with_auth_off(ws: Workspace) -> None:
    ic = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "sum")
    service = Model.deploy(ws, "local-one", [], ic, LocalWebservice.deploy_configuration(port=8890))
    service.wait_for_deployment(timeout_sec=60)
    assert isinstance(service, LocalWebservice)
    assert service.compute_type == "Local"
    assert httpx.post(service.scoring_uri, content=SUM_BODY).json() == [55]
    assert len(ws.cluster().status()["services"]["local-one"]["replicas"]) == 1


def test_cli_v1_files_deploy_run_and_read(ws: Workspace, tmp_path: Path) -> None:
    model_file = tmp_path / "weights.json"
    model_file.write_text(json.dumps({"weight": 1}))
    registered = json.loads(
        cli(ws, "model", "register", "-n", "weights", "-p", str(model_file), "-t", "stage=dev", "-o", "json").stdout
    )
    assert registered["version"] == 1 and registered["tags"] == {"stage": "dev"}

    source = tmp_path / "app"
    source.mkdir()
    (source / "score.py").write_text((SCRIPTS / "sum" / "score.py").read_text())
    (tmp_path / "inferenceconfig.json").write_text(
        json.dumps({"entryScript": "score.py", "sourceDirectory": "app", "environment": {"name": "cli-env"}})
    )
    (tmp_path / "deploymentconfig.json").write_text(
        json.dumps(
            {
                "computeType": "aks",
                "autoScaler": {"autoscaleEnabled": False},
                "numReplicas": 1,
                "authEnabled": True,
                "containerResourceRequirements": {"cpu": 0.5, "memoryInGB": 1.0},
                "scoringTimeoutMs": 5000,
            }
        )
    )
    deployed = cli(
        ws,
        "model",
        "deploy",
        "-n",
        "from-cli",
        "-m",
        "weights:1",
        "--ic",
        str(tmp_path / "inferenceconfig.json"),
        "--dc",
        str(tmp_path / "deploymentconfig.json"),
    )
    assert "Healthy" in deployed.stdout and "/api/v1/service/from-cli/score" in deployed.stdout

    assert json.loads(cli(ws, "service", "run", "-n", "from-cli", "-d", SUM_BODY).stdout) == [55]
    keys = json.loads(cli(ws, "service", "get-keys", "-n", "from-cli", "-o", "json").stdout)
    assert keys["primaryKey"] == Webservice(ws, "from-cli").get_keys()[0]
    listed = json.loads(cli(ws, "service", "list", "-o", "json").stdout)
    assert [s["name"] for s in listed] == ["from-cli"]
    assert listed[0]["deploymentConfig"]["scoringTimeoutMs"] == 5000
    assert "primaryKey" not in json.dumps(listed) and keys["primaryKey"] not in json.dumps(listed)
    status = json.loads(cli(ws, "cluster", "status", "-o", "json").stdout)
    assert status["running"] is True and "from-cli" in status["services"]
    assert status["router"]["from-cli"]["limit"] == 1
    text = cli(ws, "cluster", "status").stdout
    assert "from-cli: generation 1, 0 in flight, 0 queued, at most 1 per replica" in text, text


def test_cli_errors_are_one_line_and_nonzero(ws: Workspace, tmp_path: Path) -> None:
    missing = cli(ws, "service", "show", "-n", "nosuch", check=False)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "nosuch" in missing.stderr
    (tmp_path / "dc.json").write_text(json.dumps({"computeType": "aks", "autoScaler": {"targetUtilization": 150}}))
    (tmp_path / "ic.json").write_text(json.dumps({"entryScript": "score.py"}))
    bad = cli(
        ws,
        "model",
        "deploy",
        "-n",
        "bad-dc",
        "-m",
        "x:1",
        "--ic",
        str(tmp_path / "ic.json"),
        "--dc",
        str(tmp_path / "dc.json"),
        check=False,
    )
    assert bad.returncode == 1 and "targetUtilization" in bad.stderr and "150" in bad.stderr
    bad_name = cli(ws, "model", "deploy", "-n", "Bad_Name", "-m", "x:1", "--ic", str(tmp_path / "ic.json"), check=False)
    assert bad_name.returncode == 1 and "name" in bad_name.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_runs_one_replica_in_the_foreground(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelfleet",
            "serve",
            "--entry_script",
            str(SCRIPTS / "sum" / "score.py"),
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=30)
        response = httpx.post(f"http://127.0.0.1:{port}/score", content=SUM_BODY)
        assert response.status_code == 200 and response.json() == [55]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGINT, 130)


def test_data_path_processes_never_load_the_sdk() -> None:
    code = (
        "import sys, modelfleet.replica.server, modelfleet.router.proxy\n"
        "bad = [m for m in ('sqlalchemy', 'modelfleet.sdk', 'modelfleet.store', 'modelfleet.control', 'kubernetes')"
        " if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_cluster_that_cannot_start_says_why_at_once(ws: Workspace) -> None:
    from modelfleet.errors import ClusterUnavailable

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ClusterUnavailable, match="failed to start"):
            ws.cluster().ensure_running(port=port)
        assert time.monotonic() - started < 15  # not the 30 s start timeout
    assert ws.cluster().info() is None


def test_a_service_whose_replicas_all_failed_init_says_so_and_not_retry(ws: Workspace) -> None:
    service = deploy(ws, "doomed", "failing_init", wait=False, auth_enabled=False)
    wait_until(lambda: Webservice(ws, "doomed").state == "Failed", timeout=60)
    answer = httpx.post(service.scoring_uri, content=SUM_BODY)
    assert answer.status_code == 503 and "retry-after" not in answer.headers
    message = answer.json()["message"]
    assert "failed" in message and "init() raised" in message, message

    # a working update serves, and the router forgets the failure
    fixed = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "sum", environment=Environment("e2e"))
    service.update(inference_config=fixed)
    service.wait_for_deployment(timeout_sec=60)
    assert httpx.post(service.scoring_uri, content=SUM_BODY).json() == [55]
