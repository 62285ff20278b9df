"""Issue 16: v1's limit of 1,000 models per deployment, and a 1,000-model deployment served.

A real workspace (SQLite, blob store) with 1,001 registered models and a real local cluster.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from e2e_support import stop_cluster
from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace
from modelfleet.errors import ConfigError
from modelfleet.spec.names import MAX_MODELS_PER_DEPLOYMENT, check_model_count

SCRIPT = Path(__file__).parent / "scripts" / "count_models"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("many")
    workspace = Workspace.create("many", root / "ws")
    weights = root / "m.json"
    for i in range(MAX_MODELS_PER_DEPLOYMENT + 1):
        weights.write_text(json.dumps({"w": i}))
        workspace.store.register_model(f"m{i:04d}", weights)
    yield workspace
    stop_cluster(workspace)


def _models(ws: Workspace, n: int) -> list[Model]:
    return [Model(ws, f"m{i:04d}", version=1) for i in range(n)]


def _inference() -> InferenceConfig:
    return InferenceConfig(entry_script="score.py", source_directory=SCRIPT, environment=Environment("scale"))


def test_the_limit_is_v1s_and_named() -> None:
    check_model_count(1000)
    with pytest.raises(ConfigError, match=r"at most 1,000 models .*got 1,001"):
        check_model_count(1001)


def test_a_deployment_of_1001_models_is_refused_before_anything_is_stored(ws: Workspace) -> None:
    stop_cluster(ws)  # a test before this one may have started it; this one must not
    before = [s.name for s in ws.store.list_services()]
    with pytest.raises(ConfigError, match="at most 1,000 models"):
        Model.deploy(ws, "toomany", _models(ws, 1001), _inference(), AksWebservice.deploy_configuration(num_replicas=1))
    assert [s.name for s in ws.store.list_services()] == before and "toomany" not in before
    assert ws.cluster().info() is None  # refused before the cluster was asked for anything


def test_1000_models_serve_and_one_more_added_fails_no_request(ws: Workspace) -> None:
    config = AksWebservice.deploy_configuration(num_replicas=1, cpu_cores=0.05, memory_gb=0.1)
    service = Model.deploy(ws, "thousand", _models(ws, 999), _inference(), config)
    service.wait_for_deployment(timeout_sec=120)
    key = service.get_keys()[0]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    assert requests.post(service.scoring_uri, data="{}", headers=headers, timeout=30).json() == {"models": 999}

    answers: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def score() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                r = session.post(service.scoring_uri, data="{}", headers=headers, timeout=30)
                if r.status_code == 200:
                    answers.append(r.json()["models"])
                else:
                    failures.append(f"{r.status_code} {r.text[:200]}")

    scorer = threading.Thread(target=score)
    scorer.start()
    try:
        service.update(models=_models(ws, 1000))
        service.wait_for_deployment(timeout_sec=120)
        with pytest.raises(ConfigError, match="at most 1,000 models"):
            service.update(models=_models(ws, 1001))
    finally:
        stop.set()
        scorer.join(timeout=60)
    assert failures == []
    assert answers and answers[-1] == 1000 and set(answers) <= {999, 1000}
    assert len(service.models) == 1000
