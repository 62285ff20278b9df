"""The dashboard's HTTP endpoints against a real cluster: daemon, router and replica
processes on 127.0.0.1, a real SQLite workspace, the login link from the real CLI.

One cluster for the module; one autoscaled service ``dash`` (the ``sum`` script, key auth).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from dashboard_support import base_uri, logged_in, login_link

from e2e_support import SUM_BODY, cli, deploy, register_json_model, stop_cluster, wait_until
from modelfleet import Webservice, Workspace
from modelfleet.control.dashboard.login import COOKIE

SERVICE = "dash"
AUTOSCALE = {
    "num_replicas": None,
    "autoscale_enabled": True,
    "autoscale_min_replicas": 1,
    "autoscale_max_replicas": 3,
    "auth_enabled": True,
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("dashboard", tmp_path_factory.mktemp("ws"))
    register_json_model(workspace, tmp_path_factory.mktemp("model"), "weights", 2.0)
    deploy(workspace, SERVICE, "sum", **AUTOSCALE)
    yield workspace
    stop_cluster(workspace)


@pytest.fixture
def client(ws: Workspace) -> Iterator[httpx.Client]:
    c = logged_in(ws)
    try:
        yield c
    finally:
        c.close()


def score(ws: Workspace, n: int, key: str | None = None) -> list[int]:
    service = Webservice(ws, SERVICE)
    key = key or service.get_keys()[0]
    with httpx.Client(timeout=30.0) as http:
        return [
            http.post(service.scoring_uri, content=SUM_BODY, headers={"Authorization": f"Bearer {key}"}).status_code
            for _ in range(n)
        ]


def row(client: httpx.Client) -> dict:
    services = client.get("/api/overview").json()["services"]
    return next(s for s in services if s["name"] == SERVICE)


def test_cluster_status_gives_the_dashboard_uri(ws: Workspace) -> None:
    status = json.loads(cli(ws, "cluster", "status", "-o", "json").stdout)
    assert status["dashboardUri"] == base_uri(login_link(ws)) + "/"
    assert f"dashboard: {status['dashboardUri']}" in cli(ws, "cluster", "status").stdout


def test_the_login_link_works_once_and_leaves_a_strict_httponly_cookie(ws: Workspace) -> None:
    link = login_link(ws)
    with httpx.Client(timeout=30.0) as http:
        answer = http.get(link, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/"  # no code in the address after
        cookie = answer.headers["set-cookie"]
        assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert http.get(base_uri(link) + "/api/overview").status_code == 200
    with httpx.Client(timeout=30.0) as other:
        again = other.get(link, follow_redirects=False)
        assert again.status_code == 401 and "already used" in again.text
        assert COOKIE not in other.cookies


def test_no_cookie_or_a_forged_one_is_refused(ws: Workspace) -> None:
    base = base_uri(login_link(ws))
    with httpx.Client(base_url=base, timeout=30.0) as http:
        for path in ("/api/overview", f"/api/services/{SERVICE}", "/api/models", "/api/feed"):
            answer = http.get(path)
            assert answer.status_code == 401, path
            assert "modelfleet dashboard" in answer.json()["message"]
        page = http.get("/")
        assert page.status_code == 401 and "modelfleet dashboard" in page.text
        assert http.post(f"/api/services/{SERVICE}/regen-key", json={"key": "Primary"}).status_code == 401
        http.cookies.set(COOKIE, "forged-session-id")
        assert http.get("/api/overview").status_code == 401
        assert http.get("/static/app.js").status_code == 200  # the page's code holds no secret
        forged_code = http.get("/login?code=9999999999.nonce.bWFj", follow_redirects=False)
        assert forged_code.status_code == 401 and COOKIE not in forged_code.headers.get("set-cookie", "")


def test_another_host_name_gets_nothing(ws: Workspace, client: httpx.Client) -> None:
    port = client.base_url.port
    for host in (f"rebound.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1"):
        answer = client.get("/api/overview", headers={"Host": host})  # with a valid session cookie
        assert answer.status_code == 421 and "unknown host" in answer.json()["message"], host
    assert client.get("/api/overview", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_pages_forbid_framing_and_caching(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert client.get("/static/vendor/uPlot.LICENSE").text.startswith("The MIT License")


def test_overview_shows_last_minute_traffic(ws: Workspace, client: httpx.Client) -> None:
    assert score(ws, 40) == [200] * 40
    assert score(ws, 3, key="wrong-key") == [401] * 3

    def counted() -> dict | None:
        r = row(client)
        return r if r["last_minute"]["requests_per_s"] > 0 and r["last_minute"]["p50_ms"] is not None else None

    r = wait_until(counted, timeout=30)
    spec = Webservice(ws, SERVICE)._spec().autoscale  # set_replicas may have run first (random order)
    assert r["state"] == "Healthy" and spec.min_replicas <= r["desired"] <= spec.max_replicas
    assert r["autoscale"] and (r["min_replicas"], r["max_replicas"]) == (spec.min_replicas, spec.max_replicas)
    assert 0 < r["last_minute"]["p50_ms"] <= r["last_minute"]["p99_ms"]
    assert r["last_minute"]["error_rate"] == 0.0  # 401s are the client's errors, not the service's


def test_service_detail_has_series_replicas_config_and_logs(ws: Workspace, client: httpx.Client) -> None:
    score(ws, 5)
    detail = wait_until(
        lambda: sum((d := client.get(f"/api/services/{SERVICE}?minutes=5").json())["series"]["ok"]) >= 5 and d
    )
    series = detail["series"]
    assert len({len(v) for v in series.values()}) == 1  # columns of one length, as uPlot wants
    assert max(series["ready"]) >= 1 and series["time"] == sorted(series["time"])
    replica = detail["replicas"][0]
    assert replica["state"] == "Ready" and replica["collected"] == {"records": 0, "written": 0, "dropped": 0}
    assert detail["config"]["models"] == []
    text = json.dumps(detail)
    for key in Webservice(ws, SERVICE).get_keys():
        assert key not in text  # keys never reach the page
    logs = client.get(f"/api/services/{SERVICE}/logs", params={"replica": replica["id"], "lines": 50})
    assert logs.status_code == 200 and logs.text
    assert client.get(f"/api/services/{SERVICE}/logs", params={"replica": "nope"}).status_code == 404
    assert client.get(f"/api/services/{SERVICE}?minutes=61").status_code == 400
    assert "minutes" in client.get(f"/api/services/{SERVICE}?minutes=x").json()["message"]
    assert client.get("/api/services/no-such-service").status_code == 404


def test_environments_and_models(client: httpx.Client) -> None:
    models = client.get("/api/models").json()
    assert [(m["name"], m["version"]) for m in models] == [("weights", 1)]
    assert isinstance(client.get("/api/environments").json(), list)


def test_the_feed_streams_overview_and_service_events(client: httpx.Client) -> None:
    seen: dict[str, dict] = {}
    with client.stream("GET", "/api/feed", params={"service": SERVICE}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: ") and kind:
                seen[kind] = json.loads(line[len("data: ") :])
            if len(seen) == 2:
                break
    assert [s["name"] for s in seen["overview"]["services"]] == [SERVICE]
    assert seen["service"]["name"] == SERVICE and "series" in seen["service"]


def test_actions_refuse_bad_input_and_other_origins(client: httpx.Client) -> None:
    path = f"/api/services/{SERVICE}/regen-key"
    assert client.post(path, json={"key": "Tertiary"}).json()["message"].startswith("key must be one of")
    assert client.post(path, content=b'{"key": "Primary"}').status_code == 415  # not declared JSON
    assert client.post(path, content=b"[", headers={"Content-Type": "application/json"}).status_code == 400
    other = client.post(path, json={"key": "Primary"}, headers={"Origin": "http://evil.example"})
    assert other.status_code == 403
    replicas = f"/api/services/{SERVICE}/replicas"
    for bad in (0, -1, "2", 2.5, True, None):
        answer = client.post(replicas, json={"replicas": bad})
        assert answer.status_code == 400 and "replicas must be" in answer.json()["message"], bad


def test_regenerate_key_acts_as_the_cli_does(ws: Workspace, client: httpx.Client) -> None:
    old_primary, secondary = Webservice(ws, SERVICE).get_keys()
    answer = client.post(f"/api/services/{SERVICE}/regen-key", json={"key": "Primary"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"] == "Primary key regenerated"
    new_primary, same_secondary = Webservice(ws, SERVICE).get_keys()
    assert new_primary != old_primary and same_secondary == secondary
    assert score(ws, 1, key=old_primary) == [401]
    assert score(ws, 1, key=new_primary) == [200]


def test_set_replicas_with_autoscale_sets_its_minimum_and_maximum(ws: Workspace, client: httpx.Client) -> None:
    answer = client.post(f"/api/services/{SERVICE}/replicas", json={"replicas": 2})
    assert answer.status_code == 200, answer.text
    spec = Webservice(ws, SERVICE)._spec()
    assert spec.autoscale.enabled and (spec.autoscale.min_replicas, spec.autoscale.max_replicas) == (2, 2)
    r = wait_until(lambda: (r := row(client))["ready"] == 2 and r["desired"] == 2 and r, timeout=90)
    assert (r["min_replicas"], r["max_replicas"]) == (2, 2)
