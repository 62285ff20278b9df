"""Safe rollout and compare end to end: a real daemon, router and replica processes on 127.0.0.1.

Endpoint "shop": blue (the default) answers its name; green's run() raises (every answer a
500); teal answers its name. A thread sends requests to the endpoint while a rollout runs and
records each answer's status and ``azureml-model-deployment`` header (which version answered).
Intervals are short (1.5-2 s); the bounds on waiting are generous (a loaded 2-core machine).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e_support import cli, stop_cluster, wait_until
from modelfleet import AksEndpoint, Environment, InferenceConfig, Model, Workspace
from modelfleet.errors import ClusterUnavailable, ConfigError, Conflict

SCRIPTS = Path(__file__).parent / "scripts"
FIXED = {"autoscale_enabled": False, "num_replicas": 1}


def ic(script: str) -> InferenceConfig:
    return InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / script, environment=Environment("e2e"))


def named_model(ws: Workspace, name: str) -> Model:
    path = Path(ws.path) / f"{name}.json"
    path.write_text(json.dumps({"name": name}))
    return Model.register(ws, model_path=path, model_name=f"answers-{name}")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("rollouts", tmp_path_factory.mktemp("rollouts") / "ws")
    yield workspace
    if workspace.cluster().info() is not None:
        stop_cluster(workspace)


@pytest.fixture(scope="module")
def shop(ws: Workspace) -> AksEndpoint:
    dc = AksEndpoint.deploy_configuration(version_name="blue", is_default=True, **FIXED)
    endpoint = Model.deploy(ws, "shop", [named_model(ws, "blue")], ic("named"), dc)
    assert isinstance(endpoint, AksEndpoint)
    endpoint.create_version("green", models=[named_model(ws, "green")], inference_config=ic("raising"), **FIXED)
    endpoint.create_version("teal", models=[named_model(ws, "teal")], inference_config=ic("named"), **FIXED)
    endpoint.wait_for_deployment(timeout_sec=180)
    return endpoint


class Load:
    """Requests to the endpoint, one at a time, until stopped: (status, answering version) each."""

    def __init__(self, endpoint: AksEndpoint) -> None:
        self.uri = str(endpoint.scoring_uri)
        self.key = endpoint.get_keys()[0]
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {self.key}"}, timeout=30) as c:
            while not self._stop.is_set():
                r = c.post(self.uri, content="{}")
                self.answers.append((r.status_code, r.headers.get("azureml-model-deployment", "?")))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def rollout_events(endpoint: AksEndpoint, version: str) -> list[dict[str, object]]:
    return [e for e in endpoint.get_events() if e["version"] == version]


def a_failing_version_is_rolled_back_and_only_its_own_answers_failed(ws: Workspace, shop: AksEndpoint) -> None:
    assert shop.traffic == {"blue": 100.0, "green": 0.0, "teal": 0.0}
    with Load(shop) as load:
        wait_until(lambda: len(load.answers) >= 5, timeout=30)
        shop.update_version("green", rollout={"steps": [25, 50, 100], "interval_s": 2, "max_error_rate": 0.05})
        wait_until(lambda: (shop.rollout or {}).get("status") == "rolled_back", timeout=90, interval=0.2)
        after_rollback = len(load.answers)
        wait_until(lambda: len(load.answers) >= after_rollback + 20, timeout=30)
    assert shop.traffic == {"blue": 100.0, "green": 0.0, "teal": 0.0} and shop.default_version == "blue"
    failed = Counter(version for status, version in load.answers if status != 200)
    assert set(failed) == {"green"}, failed  # every failure is one the new version itself answered
    assert all(version == "blue" for status, version in load.answers if status == 200)
    assert all(v == "blue" for _, v in load.answers[-10:])  # green gets nothing after it
    events = rollout_events(shop, "green")
    assert [e["event"] for e in events] == ["started", "step", "rolled_back"], events
    back = events[-1]
    assert back["step"] == 25 and "over max_error_rate 0.05" in str(back["reason"])
    assert back["errors"] == back["requests"] and int(back["requests"]) > 0  # type: ignore[call-overload]
    assert "error rate 1" in str(shop.rollout["reason"])  # type: ignore[index]


def a_healthy_rollout_reaches_100_percent(ws: Workspace, shop: AksEndpoint) -> None:
    with Load(shop) as load:
        wait_until(lambda: len(load.answers) >= 5, timeout=30)
        shop.update_version("teal", rollout={"steps": [30, 100], "interval_s": 1.5, "max_error_rate": 0.05})
        with pytest.raises(Conflict, match="endpoint shop has a rollout running"):
            shop.update_version("green", rollout={"steps": [10], "interval_s": 1, "max_error_rate": 0.5})
        wait_until(lambda: (shop.rollout or {}).get("status") == "completed", timeout=90, interval=0.2)
        done = len(load.answers)
        wait_until(lambda: len(load.answers) >= done + 20, timeout=30)
    assert all(status == 200 for status, _ in load.answers), Counter(load.answers)
    assert shop.default_version == "teal" and shop.traffic == {"blue": 0.0, "green": 0.0, "teal": 100.0}
    assert all(v == "teal" for _, v in load.answers[-10:])
    assert {v for _, v in load.answers} == {"blue", "teal"}
    events = rollout_events(shop, "teal")
    assert [(e["event"], e.get("step")) for e in events] == [
        ("started", None), ("step", 30), ("passed", 30), ("step", 100), ("passed", 100), ("completed", 100)
    ], events  # fmt: skip
    text = cli(ws, "endpoint", "events", "-n", "shop").stdout
    assert "teal  completed step 100" in text and "green  rolled_back step 25" in text
    shown = json.loads(cli(ws, "endpoint", "show", "-n", "shop", "-o", "json").stdout)
    assert shown["rollout"]["version"] == "teal" and shown["rollout"]["status"] == "completed"
    assert "teal steps 30,100, completed" in cli(ws, "endpoint", "show", "-n", "shop").stdout
    # the stored row (service list, the dashboard) is the endpoint's state again, not Transitioning
    wait_until(lambda: ws.store.get_service("shop").state == "Healthy", timeout=30)


def bad_rollouts_are_refused_naming_the_field(ws: Workspace, shop: AksEndpoint) -> None:
    good = {"steps": [10, 100], "interval_s": 1, "max_error_rate": 0.01}
    with pytest.raises(ConfigError, match=r"rollout\.steps must be strictly increasing"):
        shop.update_version("blue", rollout={**good, "steps": [50, 10]})
    with pytest.raises(ConfigError, match=r"rollout\.interval_s must be above 0"):
        shop.update_version("blue", rollout={**good, "interval_s": 0})
    with pytest.raises(ConfigError, match=r"rollout\.max_error_rate must be from 0 to 1"):
        shop.update_version("blue", rollout={**good, "max_error_rate": 2})
    with pytest.raises(ConfigError, match="rollout: version teal is the default already"):
        shop.update_version("teal", rollout=good)
    with pytest.raises(ConfigError, match="rollout: a rollout sets the version's share step by step"):
        shop.update_version("blue", traffic_percentile=10, rollout=good)
    with pytest.raises(ConfigError, match="version_name: no version 'purple'"):
        shop.update_version("purple", rollout=good)
    refused = cli(ws, "endpoint", "rollout", "-n", "shop", "--version-name", "blue", "--steps", "10,x",
                  "--interval-s", "1", "--max-error-rate", "0.1", check=False)  # fmt: skip
    assert refused.returncode == 1 and "--steps" in refused.stderr
    assert (shop.rollout or {}).get("version") == "teal"  # nothing was requested
    assert shop.traffic == {"blue": 0.0, "green": 0.0, "teal": 100.0}


def compare_counts_what_each_version_answered(ws: Workspace, shop: AksEndpoint) -> None:
    dc = AksEndpoint.deploy_configuration(version_name="blue", is_default=True, **FIXED)
    cmp = Model.deploy(ws, "cmp", [named_model(ws, "blue")], ic("named"), dc)
    assert isinstance(cmp, AksEndpoint)
    cmp.create_version("red", models=[named_model(ws, "red")], inference_config=ic("raising"), **FIXED)
    cmp.wait_for_deployment(timeout_sec=180)
    key = {"Authorization": f"Bearer {cmp.get_keys()[0]}"}
    with httpx.Client(headers=key, timeout=30) as c:
        for _ in range(15):
            r = c.post(str(cmp.scoring_uri), content="{}", headers={"azureml-model-deployment": "red"})
            assert r.status_code == 500
    # a mirror answering as blue does (the same model): its copies of blue's answers agree
    cmp.create_version(
        "shadow", models=[named_model(ws, "blue")], inference_config=ic("named"), mirror_percentile=100, **FIXED
    )
    cmp.wait_for_deployment(timeout_sec=180)
    with httpx.Client(headers=key, timeout=30) as c:
        for _ in range(40):
            r = c.post(str(cmp.scoring_uri), content="{}")  # blue takes them all; shadow gets copies
            assert r.status_code == 200 and r.headers["azureml-model-deployment"] == "blue"
    report = cmp.compare("blue", "red")
    blue, red = report["versions"]["blue"], report["versions"]["red"]
    assert (blue["requests"], blue["errors"], blue["error_rate"]) == (40, 0, 0.0)
    assert (red["requests"], red["errors"], red["error_rate"]) == (15, 15, 1.0)
    assert 0 < blue["p50_ms"] <= blue["p99_ms"] and red["p99_ms"] > 0
    assert report["agreement"] is None  # neither mirrors the other

    def settled() -> dict[str, Any] | None:
        agreement = cmp.compare("blue", "shadow")["agreement"]
        return agreement if agreement["compared"] + agreement["dropped"] == 40 else None

    agreement = wait_until(settled, timeout=30, interval=0.2)
    assert agreement["mirror"] == "shadow" and agreement["compared"] > 0
    assert agreement["agreed"] == agreement["compared"] and agreement["agreement"] == 1.0
    out = json.loads(cli(ws, "endpoint", "compare", "-n", "cmp", "blue", "red", "-o", "json").stdout)
    assert out["versions"]["red"]["requests"] == 15 and out["versions"]["blue"]["requests"] == 40
    table = cli(ws, "endpoint", "compare", "-n", "cmp", "blue", "red").stdout
    assert "red" in table and "error rate" in table
    mirrored = cli(ws, "endpoint", "compare", "-n", "cmp", "blue", "shadow").stdout
    assert f"mirror shadow: {agreement['compared']} of {agreement['compared']} answers agreed" in mirrored
    with pytest.raises(ConfigError, match="version b: no version 'purple'"):
        cmp.compare("blue", "purple")
    stop_cluster(ws)
    with pytest.raises(ClusterUnavailable, match="compare needs the running local cluster"):
        cmp.compare("blue", "red")
    with pytest.raises(ClusterUnavailable, match="rollout .* needs the running local cluster"):
        cmp.update_version("red", rollout={"steps": [10], "interval_s": 1, "max_error_rate": 0.1})
    stopped = cli(ws, "endpoint", "compare", "-n", "cmp", "blue", "red", check=False)
    assert stopped.returncode == 1 and "modelfleet cluster start" in stopped.stderr


def a_rollout_outlives_the_process_that_asked_and_the_daemon(ws: Workspace, shop: AksEndpoint) -> None:
    ws.cluster().ensure_running()  # the test before stopped it
    wait_until(lambda: shop.state == "Healthy", timeout=90)
    cli(ws, "endpoint", "rollout", "-n", "shop", "--version-name", "blue", "--steps", "10,100",
        "--interval-s", "600", "--max-error-rate", "0.1")  # fmt: skip
    # the CLI process has ended; the daemon runs the rollout
    wait_until(lambda: shop.traffic["blue"] == 10.0 and (shop.rollout or {}).get("status") == "running", timeout=30)
    rid = shop.rollout["id"]  # type: ignore[index]
    assert ws.cluster().status()["rollouts"] == {"shop": rid}
    stop_cluster(ws)
    assert (shop.rollout or {}).get("status") == "running" and shop.traffic["blue"] == 10.0  # left at its step
    ws.cluster().ensure_running()
    wait_until(lambda: [e["event"] for e in rollout_events(shop, "blue")] == ["started", "step", "resumed"], timeout=60)
    assert ws.cluster().status()["rollouts"] == {"shop": rid}  # the new daemon runs it, at step 10
    assert shop.traffic == {"blue": 10.0, "green": 0.0, "teal": 90.0}
    assert (shop.rollout or {}).get("step_index") == 0


def test_rollouts_and_compare_in_their_order(ws: Workspace, shop: AksEndpoint) -> None:
    """One test, not five: each step starts from where the one before left the endpoint (the
    default, the shares, the cluster stopped), so they cannot run in a random order."""
    for step in (
        a_failing_version_is_rolled_back_and_only_its_own_answers_failed,
        a_healthy_rollout_reaches_100_percent,
        bad_rollouts_are_refused_naming_the_field,
        compare_counts_what_each_version_answered,
        a_rollout_outlives_the_process_that_asked_and_the_daemon,
    ):
        step(ws, shop)
