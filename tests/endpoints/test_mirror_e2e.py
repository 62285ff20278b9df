"""Mirroring end to end: real daemon, router and replica processes on 127.0.0.1.

Endpoint "shop": version "main" (the default) answers with its model's name; a mirror version
"shadow" is added that is slow (0.5 s per request, one replica taking one request at a time),
then made to raise. The primary's answers and latency must not change; the mirror's copies are
counted in the router's per-version figures (``Router.stats()``, the daemon's admin status) and
the Prometheus series.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_support import cli, stop_cluster, wait_until
from modelfleet import AksEndpoint, Environment, InferenceConfig, Model, Workspace
from modelfleet.errors import ConfigError

SCRIPTS = Path(__file__).parent / "scripts"
FIXED = {"autoscale_enabled": False, "num_replicas": 1}
N = 200


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("mirror", tmp_path_factory.mktemp("mirror") / "ws")
    yield workspace
    stop_cluster(workspace)


def ic(script: str) -> InferenceConfig:
    return InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / script, environment=Environment("e2e"))


def model_saying(ws: Workspace, model_name: str, says: str) -> Model:
    path = Path(ws.path) / f"{model_name}.json"
    path.write_text(json.dumps({"name": says}))
    return Model.register(ws, model_path=path, model_name=model_name)


@pytest.fixture(scope="module")
def shop(ws: Workspace) -> AksEndpoint:
    dc = AksEndpoint.deploy_configuration(version_name="main", is_default=True, **FIXED)
    endpoint = Model.deploy(ws, "shop", [model_saying(ws, "m-main", "main")], ic("named"), dc)
    assert isinstance(endpoint, AksEndpoint)
    endpoint.wait_for_deployment(timeout_sec=120)
    return endpoint


def figures(ws: Workspace) -> dict[str, Any]:
    versions: dict[str, Any] = ws.cluster().status()["router"]["shop"]["endpoint"]["versions"]
    return versions


def copies_ended(ws: Workspace) -> dict[str, Any]:
    """The mirror's figures once every copy sent has ended (agreed, or disagreed: an error too).
    A copy is counted sent as it leaves and ended as its answer comes, up to 0.5 s later."""

    def ended() -> dict[str, Any] | None:
        m: dict[str, Any] = figures(ws)["shadow"]["mirror"]
        return m if m["agreed"] + m["disagreed"] == m["sent"] else None

    return wait_until(ended, timeout=15)


def primary_run(endpoint: AksEndpoint, n: int, headers: dict[str, str] | None = None) -> list[float]:
    """``n`` requests one after another; each must be the primary's 200 "main". Latencies in s."""
    took = []
    with httpx.Client(headers={"Authorization": f"Bearer {endpoint.get_keys()[0]}"}, timeout=30) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post(endpoint.scoring_uri, content="{}", headers=headers)  # type: ignore[arg-type]
            took.append(time.perf_counter() - t0)
            assert r.status_code == 200 and r.json() == "main", (r.status_code, r.text)
            assert r.headers["azureml-model-deployment"] == "main"
    return took


def p99(samples: list[float]) -> float:
    return sorted(samples)[int(0.99 * (len(samples) - 1))]


def test_a_slow_then_raising_mirror_changes_neither_the_answers_nor_the_p99(ws: Workspace, shop: AksEndpoint) -> None:
    primary_run(shop, 20)  # warm connections
    without = p99(primary_run(shop, N))

    # a slow mirror that answers what the primary answers ("main"): its copies agree
    shop.create_version(
        "shadow",
        models=[model_saying(ws, "m-shadow", "main")],
        inference_config=ic("slow_named"),
        mirror_percentile=100,
        **FIXED,
    )
    shop.wait_for_deployment(timeout_sec=120)
    assert shop.traffic == {"main": 100.0, "shadow": 0.0}
    wait_until(lambda: figures(ws)["shadow"]["mirror"] is not None, timeout=30)
    before = figures(ws)["shadow"]["mirror"]
    with_slow = p99(primary_run(shop, N))
    m = copies_ended(ws)
    after = figures(ws)
    sent, dropped = m["sent"] - before["sent"], m["dropped"] - before["dropped"]
    assert sent + dropped == N, m  # 100 %: every request the primary served was copied or dropped
    assert sent >= 1 and dropped >= 1, m  # one slot, 0.5 s each: most copies find it busy, dropped first
    assert m["agreed"] - before["agreed"] == sent and m["disagreed"] == before["disagreed"], m
    assert m["errors"] == 0 and m["latency"]["p50_ms"] >= 500, m
    assert after["main"]["requests"] >= 2 * N + 20 and after["main"]["errors"] == 0
    assert after["main"]["latency"]["p99_ms"] is not None
    # the primary never waits for its copy (0.5 s): a generous bound for a loaded machine
    assert with_slow < without + 0.35, (without, with_slow)

    # a request pinned to the mirror is served by it and copied nowhere (a mirror is never mirrored)
    with httpx.Client(headers={"Authorization": f"Bearer {shop.get_keys()[0]}"}, timeout=30) as c:
        r = c.post(shop.scoring_uri, content="{}", headers={"azureml-model-deployment": "shadow"})  # type: ignore[arg-type]
    assert r.status_code == 200 and r.headers["azureml-model-deployment"] == "shadow"
    pinned = figures(ws)["shadow"]["mirror"]
    assert pinned["sent"] + pinned["dropped"] == m["sent"] + m["dropped"]

    # now half the requests are copied to a mirror that raises: the primary's answers stay 200
    shop.update_version("shadow", inference_config=ic("raising"), mirror_percentile=50)
    shop.wait_for_deployment(timeout_sec=120)
    wait_until(lambda: figures(ws)["shadow"]["mirror_percentile"] == 50.0, timeout=30)
    time.sleep(0.7)
    before = figures(ws)["shadow"]["mirror"]
    with_raising = p99(primary_run(shop, N))
    m = copies_ended(ws)
    copied = (m["sent"] - before["sent"]) + (m["dropped"] - before["dropped"])
    assert 0.3 * N <= copied <= 0.7 * N, m  # 50 % of N, binomial sd 5 % of N
    new_errors = m["errors"] - before["errors"]
    assert new_errors == m["sent"] - before["sent"] > 0, m  # every copy sent got the 500
    assert m["disagreed"] - before["disagreed"] == new_errors and m["agreed"] == before["agreed"], m
    assert with_raising < without + 0.35, (without, with_raising)


def test_prometheus_series_carry_the_endpoint_and_the_version(ws: Workspace, shop: AksEndpoint) -> None:
    status = json.loads(cli(ws, "cluster", "status", "--output", "json").stdout)
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(httpx.get(status["metricsUri"], timeout=10).text)
        for s in family.samples
    }
    main = frozenset({"endpoint": "shop", "version": "main"}.items())
    shadow = frozenset({"endpoint": "shop", "version": "shadow"}.items())
    v = figures(ws)
    assert samples[("modelfleet_version_requests_total", main | {("code", "200")})] == v["main"]["requests"]
    assert samples[("modelfleet_version_request_duration_seconds_count", main)] == v["main"]["latency"]["count"]
    m = v["shadow"]["mirror"]
    for outcome, key in (("sent", "sent"), ("dropped", "dropped"), ("agreed", "agreed"), ("error", "errors")):
        assert samples[("modelfleet_mirror_copies_total", shadow | {("outcome", outcome)})] == m[key]
    assert samples[("modelfleet_mirror_duration_seconds_count", shadow)] == m["sent"]
    # the version's own service series are still there, under its service name
    assert samples[("modelfleet_requests_total", frozenset({"service": "shop:main", "code": "200"}.items()))] > 0


def test_bad_mirror_input_is_refused_naming_the_field(ws: Workspace, shop: AksEndpoint) -> None:
    with pytest.raises(ConfigError, match="mirror_percentile of version other: a mirror takes no traffic share"):
        shop.create_version(
            "other", models=[], inference_config=ic("named"), mirror_percentile=10, traffic_percentile=5
        )
    with pytest.raises(ConfigError, match="mirror_percentile of version shadow: a mirror takes no traffic share"):
        shop.update_version("shadow", traffic_percentile=10)
    with pytest.raises(ConfigError, match="percentile of version shadow: the default version cannot be a mirror"):
        shop.update_version("shadow", is_default=True)
    with pytest.raises(ConfigError, match="mirror_percentile of version main: the default version cannot be"):
        shop.update_version("main", mirror_percentile=100)
    with pytest.raises(ConfigError, match=r"mirror_percentile must be from 0 to 100 \(got 150\)"):
        shop.update_version("shadow", mirror_percentile=150)


def test_the_dashboard_shows_versions_under_their_endpoint_and_a_versions_own_page(
    ws: Workspace, shop: AksEndpoint
) -> None:
    out = cli(ws, "dashboard", "--no-browser").stdout
    match = re.search(r"login link .*: (http://127\.0\.0\.1:\d+/login\?code=\S+)", out)
    assert match, out
    link = match.group(1)
    with httpx.Client(base_url=link.split("/login", 1)[0], timeout=30.0) as c:
        assert c.get(link, follow_redirects=False).status_code == 303
        rows = c.get("/api/overview").json()["services"]
        names = [r["name"] for r in rows]
        assert names.index("shop") + 1 == names.index("shop:main")  # right under its endpoint
        main = rows[names.index("shop:main")]
        assert (main["endpoint"], main["version"]) == ("shop", "main")
        assert rows[names.index("shop")]["version"] is None
        page = c.get("/api/services/shop:shadow")
        assert page.status_code == 200, page.text  # was 400: not a service name
        assert page.json()["name"] == "shop:shadow" and page.json()["replicas"]
        endpoint = c.get("/api/services/shop").json()
        assert set(endpoint["versions"]) == {"main", "shadow"}
        assert endpoint["versions"]["shadow"]["mirror"]["sent"] > 0
        assert endpoint["versions"]["main"]["requests"] >= 2 * N
        assert c.get("/api/services/shop:Bad_Name").status_code == 400


def test_the_cli_sets_and_shows_a_mirror(ws: Workspace, shop: AksEndpoint) -> None:
    cli(ws, "endpoint", "version", "update", "-n", "shop", "--version-name", "shadow", "--mirror-percentile", "25")
    shown = json.loads(cli(ws, "endpoint", "show", "-n", "shop", "-o", "json").stdout)
    assert {v["name"]: v["mirrorPercentile"] for v in shown["versions"]} == {"main": 0.0, "shadow": 25.0}
    wait_until(lambda: figures(ws)["shadow"]["mirror_percentile"] == 25.0, timeout=30)
    bad = cli(ws, "endpoint", "version", "update", "-n", "shop", "--version-name", "main", "--mirror-percentile", "5",
              check=False)  # fmt: skip
    assert bad.returncode != 0 and "version main: the default version cannot be a mirror" in bad.stderr, bad.stderr
