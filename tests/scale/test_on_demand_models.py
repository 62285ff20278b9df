"""Issue 16: models loaded on demand (``modelfleet.replica.models``), a per-replica LRU bounded
by ``model_cache_size`` / ``model_cache_memory_gb``. Real model folders on disk; the e2e case
runs a real cluster and scores over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from e2e_support import stop_cluster
from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace
from modelfleet.errors import ConfigError
from modelfleet.replica.models import ModelCache

SCRIPT = Path(__file__).parent / "scripts" / "on_demand"


def _lay_out(root: Path, sizes: dict[str, int]) -> Path:
    for name, size in sizes.items():
        folder = root / name / "1"
        folder.mkdir(parents=True)
        (folder / "weights.bin").write_bytes(b"x" * size)
    return root


def test_the_least_recently_used_model_goes_first_past_the_count(tmp_path: Path) -> None:
    loaded: list[str] = []
    cache = ModelCache(_lay_out(tmp_path, {n: 10 for n in "abcd"}), max_models=2)
    cache.set_loader(lambda folder: loaded.append(folder.parent.name) or folder.parent.name)
    assert [cache.load(n) for n in "abab"] == list("abab")
    assert loaded == ["a", "b"] and cache.hits == 2
    cache.load("c")  # a was used before b: a goes
    assert cache.info()["loaded"] == ["b:1", "c:1"] and cache.evictions == 1
    cache.load("a")
    assert loaded == ["a", "b", "c", "a"] and cache.info()["loaded"] == ["c:1", "a:1"]


def test_the_memory_budget_counts_the_models_bytes_and_keeps_one_too_big(tmp_path: Path) -> None:
    cache = ModelCache(_lay_out(tmp_path, {"s1": 40, "s2": 40, "s3": 40, "big": 500}), max_bytes=100)
    cache.load("s1"), cache.load("s2")
    assert cache.info()["bytes"] == 80
    cache.load("s3")  # 120 > 100: s1 goes
    assert cache.info()["loaded"] == ["s2:1", "s3:1"]
    assert cache.load("big") == tmp_path / "big" / "1"  # no loader: the folder
    assert cache.info()["loaded"] == ["big:1"] and cache.info()["bytes"] == 500


def test_one_load_per_model_however_many_threads_ask(tmp_path: Path) -> None:
    calls: list[str] = []

    def slow(folder: Path) -> str:
        calls.append(folder.parent.name)
        time.sleep(0.2)
        return folder.parent.name

    cache = ModelCache(_lay_out(tmp_path, {"m": 1}), loader=slow)
    threads = [threading.Thread(target=cache.load, args=("m",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert calls == ["m"] and cache.misses == 1 and cache.hits == 7


def test_unknown_models_and_bad_bounds_are_refused_by_name(tmp_path: Path) -> None:
    cache = ModelCache(_lay_out(tmp_path, {"a": 1}))
    with pytest.raises(LookupError, match="model 'nope' is not deployed"):
        cache.load("nope")
    with pytest.raises(LookupError, match="model a:2 is not deployed"):
        cache.load("a", 2)
    with pytest.raises(ConfigError, match="model_cache_size must be at least 1"):
        ModelCache(tmp_path, max_models=0)
    with pytest.raises(ConfigError, match="model_cache_size must be at least 1 .got 0"):
        AksWebservice.deploy_configuration(model_cache_size=0)
    with pytest.raises(ConfigError, match="model_cache_memory_gb must be greater than 0"):
        AksWebservice.deploy_configuration(model_cache_memory_gb=-1)


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.create("ondemand", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def test_a_replica_loads_models_on_demand_within_model_cache_size(ws: Workspace, tmp_path: Path) -> None:
    weights = tmp_path / "w.json"
    models = []
    for i in range(12):
        weights.write_text(json.dumps({"w": i}))
        models.append(Model.register(ws, weights, f"m{i}"))
    config = AksWebservice.deploy_configuration(num_replicas=1, cpu_cores=0.05, memory_gb=0.1, model_cache_size=3)
    inference = InferenceConfig(entry_script="score.py", source_directory=SCRIPT, environment=Environment("scale"))
    service = Model.deploy(ws, "ondemand", models, inference, config)
    service.wait_for_deployment(timeout_sec=120)
    headers = {"Authorization": f"Bearer {service.get_keys()[0]}", "Content-Type": "application/json"}

    def score(name: str) -> dict[str, object]:
        r = requests.post(service.scoring_uri, json={"model": name}, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    answers = [score(f"m{i}") for i in (0, 1, 2, 0, 3, 4, 0, 1)]
    assert [a["w"] for a in answers] == [0, 1, 2, 0, 3, 4, 0, 1]
    assert answers[3]["loads"] == 3  # m0 again: a hit
    assert answers[6]["loads"] == 5  # m0 kept: used more recently than m1 and m2
    assert answers[7]["loads"] == 6 and answers[7]["loaded"] == ["m4:1", "m0:1", "m1:1"]
    assert all(len(a["loaded"]) <= 3 for a in answers)  # type: ignore[arg-type]
