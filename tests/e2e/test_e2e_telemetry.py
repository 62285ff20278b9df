"""End to end: metrics, logs, request timings and collected model data of a deployed service.

One cluster for the module and one service on it that has seen a known batch of requests, which
the read-only tests count. Tests that add traffic, kill a replica or stop the cluster (the
collected-data promise is about a graceful stop) use a service or workspace of their own, so the
tests hold in any order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_support import deploy, stop_cluster, wait_until
from modelfleet import Webservice, Workspace
from modelfleet.errors import ModelfleetError

NAME = "observed"
OK = [f"ok-{i}" for i in range(5)]
BAD = [f"bad-{i}" for i in range(4)]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("telemetry", tmp_path_factory.mktemp("ws"))
    yield workspace
    stop_cluster(workspace)


def deploy_observed(ws: Workspace, name: str) -> Webservice:
    return deploy(ws, name, "telemetry", collect_model_data=True, enable_app_insights=True)


def observed(ws: Workspace) -> Webservice:
    """The service NAME, sent the batch: 5 OK, 4 failing, 3 refused (401) and 3 unknown (404)."""
    svc = deploy_observed(ws, NAME)
    key = svc.get_keys()[0]
    uri = svc.scoring_uri
    with httpx.Client() as client:

        def post(rid: str, body: dict[str, Any], auth: str | None = f"Bearer {key}", url: str = uri) -> int:
            headers = {"x-request-id": rid, "Content-Type": "application/json"}
            if auth:
                headers["Authorization"] = auth
            return client.post(url, content=json.dumps(body), headers=headers).status_code

        assert [post(rid, {"i": i}) for i, rid in enumerate(OK)] == [200] * 5
        assert [post(rid, {"i": i, "fail": True}) for i, rid in enumerate(BAD)] == [500] * 4
        assert [post("no-key-1", {"i": 0}, None), post("no-key-2", {"i": 0}, None)] == [401, 401]
        assert post("bad-key", {"i": 0}, "Bearer not-the-key") == 401
        base = uri.rsplit("/", 1)[0]
        assert [post("nf-1", {}, url=base + "/nope"), post("nf-2", {}, url=base + "/other")] == [404, 404]
        assert post("nf-3", {}, url=base.replace(NAME, "nobody") + "/score") == 404
    return svc


@pytest.fixture(scope="module")
def service(ws: Workspace) -> Webservice:
    return observed(ws)


def cli(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(ws.path), *args], capture_output=True, text=True, timeout=60
    )


def scrape(ws: Workspace) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status = json.loads(cli(ws, "cluster", "status", "--output", "json").stdout)
    assert status["metricsUri"].startswith("http://127.0.0.1:")
    text = httpx.get(status["metricsUri"]).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_count_exactly_the_requests_sent(ws: Workspace, service: Webservice) -> None:
    m = scrape(ws)
    codes = {
        dict(k[1])["code"]: v for k, v in m.items() if k[0] == "modelfleet_requests_total" and ("service", NAME) in k[1]
    }
    assert codes == {"200": 5, "500": 4, "401": 3, "404": 2}
    assert sample(m, "modelfleet_unrouted_requests_total", code="404") == 1
    assert sample(m, "modelfleet_request_duration_seconds_count", service=NAME) == 9  # the ones a replica saw
    assert sample(m, "modelfleet_request_duration_seconds_bucket", service=NAME, le="+Inf") == 9
    assert sample(m, "modelfleet_auth_failures_total", service=NAME, reason="missing") == 2
    assert sample(m, "modelfleet_auth_failures_total", service=NAME, reason="invalid") == 1
    assert sample(m, "modelfleet_replicas", service=NAME) == 1
    assert sample(m, "modelfleet_requests_in_flight", service=NAME) == 0
    assert sample(m, "modelfleet_requests_queued", service=NAME) == 0
    assert sample(m, "modelfleet_utilization_ratio", service=NAME) == 0
    assert sample(m, "modelfleet_scale_events_total", service=NAME) == 0
    replica = f"{NAME}-1-0"
    assert sample(m, "modelfleet_replica_requests_in_flight", service=NAME, replica=replica) == 0
    assert sample(m, "modelfleet_replica_restarts_total", service=NAME, replica=replica) == 0


def test_request_timings_go_to_the_service_log(ws: Workspace, service: Webservice) -> None:
    router_log = ws.store.runtime_dir / "services" / NAME / "logs" / "router.log"

    def timings() -> dict[str, dict[str, Any]]:
        if not router_log.is_file():
            return {}
        return {(t := json.loads(line))["request_id"]: t for line in router_log.read_text().splitlines()}

    got = wait_until(lambda: (t := timings()) and set(OK + BAD) <= set(t) and t, timeout=10)
    assert {got[r]["status"] for r in OK} == {200} and {got[r]["status"] for r in BAD} == {500}
    for rid in OK + BAD:
        t = got[rid]
        assert t["total_ms"] > 0 and t["queue_ms"] >= 0 and t["replica_ms"] > 0
        assert abs(t["queue_ms"] + t["replica_ms"] - t["total_ms"]) < 0.01
    assert "no-key-1" not in got  # a 401 never reached the dispatcher: nothing to time


def test_logs_follow_streams_new_lines(ws: Workspace) -> None:
    service = deploy_observed(ws, "followed")  # its requests would change the counts of NAME's
    follower = subprocess.Popen(
        [sys.executable, "-m", "modelfleet", "-w", str(ws.path), "service", "logs", "-n", service.name, "--follow",
         "--replica", "0", "--num-lines", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        # a shell's background job ignores SIGINT, and Python then installs no Ctrl-C handler:
        # the follower gets the disposition a terminal would give it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follower.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        key = service.get_keys()[0]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

        def sent_and_seen() -> bool:  # the follower may still be starting: send until a line shows
            headers["x-request-id"] = f"follow-{len(lines)}-{os.urandom(3).hex()}"
            assert httpx.post(service.scoring_uri, content='{"i": 21}', headers=headers).status_code == 200
            return any('"request_id": "follow-' in line for line in list(lines))

        wait_until(sent_and_seen, timeout=20, interval=0.5)
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
        reader.join(5)
        follower.stdout.close()  # type: ignore[union-attr]
    seen = [json.loads(line) for line in lines if '"request_id": "follow-' in line]
    assert seen[0]["route"] == "/score" and seen[0]["status"] == 200 and follower.returncode == 130

    # router.log is the daemon tracer's, written on its first one-second tick with timings: it
    # may come a moment after the replica's line the follower saw
    def with_router_log() -> str | None:
        whole = service.get_logs(num_lines=10_000)
        return whole if "=== router.log ===" in whole else None

    whole = wait_until(with_router_log, timeout=10)
    assert "=== replica-0.log ===" in whole
    assert f'"request_id": "{seen[0]["request_id"]}"' in service.get_logs(num_lines=10_000, replica=0)
    assert "router.log" not in service.get_logs(replica=0)


def test_replica_restart_is_counted(ws: Workspace) -> None:
    service = deploy_observed(ws, "restarted")  # NAME's replica must stay at 0 restarts
    (replica,) = ws.cluster().status()["services"][service.name]["replicas"]
    os.kill(replica["pid"], signal.SIGKILL)
    wait_until(
        lambda: (
            sample(scrape(ws), "modelfleet_replica_restarts_total", service=service.name, replica=replica["id"]) == 1
        ),
        timeout=30,
        interval=0.2,
    )

    def scores() -> bool:
        try:
            return bool(service.run(json.dumps({"i": 1})) == {"double": 2})
        except ModelfleetError:  # 503 until the restarted replica is Ready again
            return False

    wait_until(scores, timeout=30, interval=0.2)


def test_collected_rows_equal_the_requests_after_a_graceful_stop(fresh_ws: Workspace) -> None:
    observed(fresh_ws)
    stop_cluster(fresh_ws)
    out = cli(fresh_ws, "data", "export", "-n", NAME, "--file", "-")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert all(set(r) == {"model", "version", "designation", "request_id", "time", "data"} for r in rows)
    inputs = {r["request_id"]: r["data"] for r in rows if r["designation"] == "inputs"}
    predictions = {r["request_id"]: r["data"] for r in rows if r["designation"] == "predictions"}
    expected_in = {rid: {"i": i} for i, rid in enumerate(OK)} | {
        rid: {"i": i, "fail": True} for i, rid in enumerate(BAD)
    }
    expected_out = {rid: {"double": 2 * i} for i, rid in enumerate(OK)}
    assert inputs == expected_in and predictions == expected_out  # the batch, and nothing else
    assert {(r["model"], r["version"]) for r in rows} == {(NAME, "0")}  # a service without models

    only = cli(fresh_ws, "data", "export", "-n", NAME, "--designation", "predictions", "--format", "csv", "--file", "-")
    assert only.stdout.splitlines()[0] == "model,version,designation,request_id,time,data"
    assert len(only.stdout.splitlines()) == 1 + len(predictions)
    assert cli(fresh_ws, "data", "export", "-n", NAME, "--since", "2999-01-01T00:00:00Z", "--file", "-").stdout == ""
    show = json.loads(cli(fresh_ws, "data", "show", "-n", NAME, "-o", "json").stdout)
    assert {p["designation"]: p["records"] for p in show} == {"inputs": len(inputs), "predictions": len(predictions)}
    missing = cli(fresh_ws, "data", "export", "-n", "never-deployed", "--file", "-")
    assert missing.returncode == 1 and "--collect-model-data true" in missing.stderr
