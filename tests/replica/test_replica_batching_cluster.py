"""Dynamic batching end to end: a local cluster, a service deployed with max_batch_size, 64
concurrent callers through the router (which admits replica_max_concurrent_requests x
max_batch_size per replica), the batch-size histogram on the daemon's /metrics, and a script
without run_batch refused at deploy (the replica's own check at load: test_replica_batching)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_support import stop_cluster, wait_until
from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace
from modelfleet.errors import ConfigError

SCRIPTS = Path(__file__).resolve().parent / "batch_scripts"


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.create("batching", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def _samples(ws: Workspace, name: str) -> dict[str, float]:
    info = ws.cluster().info()
    assert info is not None
    text = httpx.get(f"http://127.0.0.1:{info['metrics_port']}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(name):
                key = s.name + ("" if "le" not in s.labels else f"[{s.labels['le']}]")
                out[key] = out.get(key, 0.0) + s.value
    return out


def test_64_callers_through_the_router_are_batched_and_counted(ws: Workspace) -> None:
    env = Environment("batching")
    env.environment_variables = {"BATCH_COST_S": "0.1"}  # a fixed cost per call
    inference = InferenceConfig(entry_script="batch_ids.py", source_directory=SCRIPTS, environment=env)
    config = AksWebservice.deploy_configuration(
        num_replicas=1,
        cpu_cores=0.05,
        memory_gb=0.1,
        auth_enabled=False,
        max_request_wait_time=60000,  # a loaded machine must not turn queueing into 503s
        max_batch_size=16,
        max_batch_delay_ms=50,
    )
    service = Model.deploy(ws, "batched", [], inference, config)
    service.wait_for_deployment(timeout_sec=120)
    answers: dict[str, dict[str, object]] = {}
    errors: list[BaseException] = []

    def caller(n: int) -> None:
        try:
            with httpx.Client(timeout=60) as client:
                for r in range(3):
                    rid = f"c{n}-r{r}"
                    response = client.post(service.scoring_uri, json={"id": rid})
                    assert response.status_code == 200, response.text
                    answers[rid] = response.json()
        except BaseException as ex:  # noqa: BLE001 - reported below
            errors.append(ex)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors[:3]
    assert len(answers) == 192 and all(a["id"] == rid for rid, a in answers.items())
    # The batch each request was part of. The replica admits 1 x 16 requests, the running call's
    # included, so in steady state two batches share the 16 (10 and 6 here when idle, a mean of
    # 8.5 per request); ramp-up, the tail and a loaded machine split them further. Without
    # batching every request would see 1.
    seen_by_request = sum(int(a["batch"]) for a in answers.values()) / len(answers)  # type: ignore[call-overload]
    assert seen_by_request > 4, seen_by_request
    metric = "modelfleet_replica_batch_size"
    seen = wait_until(lambda: (s := _samples(ws, metric)).get(f"{metric}_sum", 0) >= 192 and s, timeout=15)
    assert seen[f"{metric}_sum"] == 192
    assert seen[f"{metric}_bucket[+Inf]"] == seen[f"{metric}_count"] == seen[f"{metric}_bucket[16.0]"]  # none > 16
    # Per call the mean is lower: the replica admits 1 x 16 requests, those of the running call
    # included, so the next batch forms from what arrived during the call (README: admission).
    assert seen[f"{metric}_sum"] / seen[f"{metric}_count"] > 2


def test_batching_a_script_without_run_batch_is_refused_at_deploy(ws: Workspace) -> None:
    inference = InferenceConfig(entry_script="plain_only.py", source_directory=SCRIPTS, environment=Environment("b"))
    config = AksWebservice.deploy_configuration(num_replicas=1, cpu_cores=0.05, memory_gb=0.1, max_batch_size=4)
    with pytest.raises(ConfigError) as refused:
        Model.deploy(ws, "nobatch", [], inference, config)
    assert refused.value.message == (
        "max_batch_size=4 needs run_batch(items) in entry_script 'plain_only.py', which defines none; "
        "define it (one answer per item, same order) or leave max_batch_size at 1"
    )
    assert ws.webservices == {}  # nothing was stored
