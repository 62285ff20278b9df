"""End to end: model-aware routing (issue 16) through a real local cluster.

Three replicas of tests/e2e_scripts/model_affinity, each able to hold two models
(``model_cache_size=2``); the script loads the model named by ``x-ms-model`` with
``modelfleet.replica.models.load`` and answers its pid and whether the model was loaded there
already. Real daemon, router and replica processes; requests over HTTP."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from e2e_support import deploy, stop_cluster
from modelfleet import Model, Webservice, Workspace

MODELS = [f"m{i}" for i in range(4)]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("e2e-affinity", tmp_path_factory.mktemp("ws"))
    try:
        yield workspace
    finally:
        stop_cluster(workspace)


@pytest.fixture(scope="module")
def service(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Webservice:
    folder = tmp_path_factory.mktemp("models")
    models = []
    for i, name in enumerate(MODELS):
        path = folder / f"{name}.json"
        path.write_text(json.dumps({"w": i}))
        models.append(Model.register(ws, model_path=path, model_name=name))
    return deploy(
        ws,
        "affinity",
        "model_affinity",
        models,
        num_replicas=3,
        cpu_cores=0.05,
        memory_gb=0.1,
        model_cache_size=2,
        max_request_wait_time=20000,
    )


def headers(service: Webservice, model: str | None = None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {service.get_keys()[0]}", "Content-Type": "application/json"}
    if model is not None:
        h["x-ms-model"] = model
    return h


def score(service: Webservice, model: str | None, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = httpx.post(service.scoring_uri, json=body or {}, headers=headers(service, model), timeout=30)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def models_uri(service: Webservice, model: str) -> str:
    assert service.scoring_uri is not None and service.scoring_uri.endswith("/score")
    return service.scoring_uri[: -len("/score")] + f"/models/{model}/score"


def test_requests_for_a_model_go_to_the_replica_that_holds_it(service: Webservice) -> None:
    same = [score(service, "m0") for _ in range(4)]
    assert len({a["pid"] for a in same}) == 1 and all(a["hit"] for a in same[1:]), same
    answers = [score(service, name) for _ in range(3) for name in MODELS]  # interleaved: m0 m1 m2 m3 m0 ...
    assert [a["w"] for a in answers] == [int(n[1:]) for n in MODELS] * 3
    home: dict[str, set[int]] = defaultdict(set)
    for a in answers:
        home[a["model"]].add(a["pid"])
    assert all(len(pids) == 1 for pids in home.values()), home  # one replica per model
    per_replica: dict[int, list[str]] = defaultdict(list)
    for name, (pid,) in home.items():
        per_replica[pid].append(name)
    for a in answers[len(MODELS) :]:
        if len(per_replica[a["pid"]]) <= 2:  # its replica holds all its models (cache of 2)
            assert a["hit"], a


def test_requests_without_a_model_route_as_before(service: Webservice) -> None:
    answers = [score(service, None, {"model": "m0"}) for _ in range(6)]
    assert all(a["w"] == 0 for a in answers)
    assert len({a["pid"] for a in answers}) > 1  # least loaded, ties taking turns: not pinned


def test_the_models_url_routes_like_the_header(service: Webservice) -> None:
    by_header = score(service, "m2")
    r = httpx.post(models_uri(service, "m2"), json={}, headers=headers(service), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "m2" and r.json()["w"] == 2  # the script read x-ms-model
    assert r.json()["pid"] == by_header["pid"] and r.json()["hit"]
    # the URL's model wins over a header
    r = httpx.post(models_uri(service, "m3"), json={}, headers=headers(service, "m1"), timeout=30)
    assert r.status_code == 200 and r.json()["model"] == "m3"
    # a version header travels with it
    h = {**headers(service, "m1"), "x-ms-model-version": "1"}
    r = httpx.post(service.scoring_uri or "", json={}, headers=h, timeout=30)
    assert r.status_code == 200 and r.json()["w"] == 1


def test_unknown_services_and_bad_model_names_get_404(service: Webservice) -> None:
    uri = models_uri(service, "m1")
    r = httpx.post(uri.replace("/affinity/", "/nosuchsvc/"), json={}, headers=headers(service), timeout=30)
    assert r.status_code == 404 and "no such service" in r.text
    r = httpx.post(models_uri(service, "-bad"), json={}, headers=headers(service), timeout=30)
    assert r.status_code == 404 and "1-255 letters, digits" in r.text
    r = httpx.post(uri.replace("/score", "/other"), json={}, headers=headers(service), timeout=30)
    assert r.status_code == 404
    r = httpx.post(uri, json={}, timeout=30)  # credentials are checked as on /score
    assert r.status_code == 401


def test_a_hot_model_spreads_over_more_than_one_replica(service: Webservice) -> None:
    n = 6
    barrier = threading.Barrier(n)
    out: list[dict[str, Any]] = []

    def go() -> None:
        barrier.wait(timeout=30)
        out.append(score(service, "m0", {"hold": 1.0}))

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(out) == n and all(a["w"] == 0 for a in out)
    assert len({a["pid"] for a in out}) > 1  # one slot per replica: the 2nd at once goes to the next
