"""``modelfleet env audit``: an environment's resolved packages checked with pip-audit.

The vulnerability services cannot be reached from these machines, so findings come from an
answer in pip-audit's JSON shape (``tests/data/pip_audit_answer.json``, replayed by
``tests/pip_audit_replay.py`` in place of the command); the unreachable case runs the real
pip-audit against a closed local port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from e2e_support import deploy, stop_cluster
from modelfleet import Workspace
from modelfleet.envs.audit import parse_report

TESTS = Path(__file__).parents[1]  # the replayed answer and the scripts are shared by all tests
ANSWER = json.loads((TESTS / "data" / "pip_audit_answer.json").read_text())
REPLAY = f"{sys.executable} {TESTS / 'pip_audit_replay.py'}"
HTTPX_PIN = f"httpx=={version('httpx')}"


def test_report_lists_findings_with_fix_versions_and_what_was_not_audited() -> None:
    report = parse_report(ANSWER)
    assert report.audited == 3 and report.unreachable is None
    assert [(f.package, f.version, f.id, f.fix_versions) for f in report.findings] == [
        ("requests", "2.19.0", "PYSEC-2018-28", ("2.20.0",)),
        ("urllib3", "1.24.1", "CVE-2019-11324", ("1.24.2",)),
    ]
    assert report.findings[0].aliases == ("CVE-2018-18074",)
    assert report.skipped == [("private-package", ANSWER["dependencies"][3]["skip_reason"])]


def test_a_service_that_answered_for_nothing_is_unreachable_not_clean() -> None:
    names = ["pip", "six", "httpx"]
    data = {"dependencies": [{"name": n, "skip_reason": f"Dependency not found on PyPI and could not be audited: {n}"}
                             for n in names]}  # fmt: skip
    report = parse_report(data)
    assert report.audited == 0 and not report.findings
    assert report.unreachable is not None and "none of the 3 packages" in report.unreachable


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("audit", tmp_path_factory.mktemp("ws"))
    deploy(workspace, "audited", "sum")  # Environment("e2e"): this interpreter
    stop_cluster(workspace)  # the audit reads the workspace, not the cluster
    yield workspace


def audit(ws: Workspace, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(ws.path), "env", "audit", *args],
        capture_output=True, text=True, timeout=180, check=False, env={**os.environ, **env},
    )  # fmt: skip


def test_audit_prints_each_finding_with_its_fix_and_exits_0(ws: Workspace) -> None:
    result = audit(ws, "e2e", MODELFLEET_PIP_AUDIT=REPLAY, REPLAY_EXPECT_PIN=HTTPX_PIN)
    assert result.returncode == 0, result.stderr
    assert "requests 2.19.0: PYSEC-2018-28 (CVE-2018-18074); fixed in 2.20.0" in result.stdout
    assert "urllib3 1.24.1: CVE-2019-11324; fixed in 1.24.2" in result.stdout
    assert "private-package: not audited" in result.stdout
    assert "3 of " in result.stdout and "2 vulnerabilities" in result.stdout


def test_fail_on_vulnerable_exits_1_and_json_is_for_scripts(ws: Workspace) -> None:
    result = audit(ws, "--all", "--fail-on-vulnerable", "-o", "json",
                   MODELFLEET_PIP_AUDIT=REPLAY, REPLAY_EXPECT_PIN=HTTPX_PIN)  # fmt: skip
    assert result.returncode == 1
    (env,) = json.loads(result.stdout)
    assert env["environment"].startswith("e2e") and env["packages"] > 10
    assert [f["id"] for f in env["findings"]] == ["PYSEC-2018-28", "CVE-2019-11324"]


def test_unreachable_service_is_said_clearly_and_fails_only_when_asked(ws: Workspace) -> None:
    with socket.socket() as s:  # a port nothing listens on: the proxy every request must use
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {"HTTPS_PROXY": f"http://127.0.0.1:{closed}", "HTTP_PROXY": f"http://127.0.0.1:{closed}", "NO_PROXY": ""}
    relaxed = audit(ws, "e2e", "--vulnerability-service", "osv", **env)
    assert relaxed.returncode == 0, relaxed.stderr
    assert "not audited: pip-audit failed against the osv service" in relaxed.stdout
    assert "could not be asked" in relaxed.stderr
    strict = audit(ws, "e2e", "--vulnerability-service", "osv", "--fail-on-unreachable", **env)
    assert strict.returncode == 1


def test_usage_errors_are_one_line(ws: Workspace) -> None:
    neither = audit(ws)
    assert neither.returncode == 1 and neither.stderr.strip() == "error: name one environment, or pass --all (not both)"
    unknown = audit(ws, "no-such-env")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1 and "no-such-env" in unknown.stderr


def cli_deploy(ws: Workspace, tmp: Path, name: str, *flags: str) -> subprocess.CompletedProcess[str]:
    source = tmp / "app"
    source.mkdir(exist_ok=True)
    (source / "score.py").write_text((TESTS / "e2e_scripts" / "sum" / "score.py").read_text())
    ic = tmp / "inferenceconfig.json"
    ic.write_text(
        json.dumps({"entryScript": "score.py", "sourceDirectory": str(source), "environment": {"name": "e2e"}})
    )
    model = tmp / "m.json"
    model.write_text("{}")
    subprocess.run([sys.executable, "-m", "modelfleet", "-w", str(ws.path), "model", "register", "-n", "m", "-p",
                    str(model)], check=True, capture_output=True, timeout=60)  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(ws.path), "model", "deploy", "-n", name, "-m", "m:1",
         "--ic", str(ic), "--num-replicas", "1", *flags],
        capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "MODELFLEET_PIP_AUDIT": REPLAY, "REPLAY_EXPECT_PIN": HTTPX_PIN},
    )  # fmt: skip


def test_deploy_warns_of_known_vulnerabilities_and_still_deploys(ws: Workspace, tmp_path: Path) -> None:
    try:
        result = cli_deploy(ws, tmp_path, "warned")
        assert result.returncode == 0, result.stderr
        assert "warning: environment 'e2e' has 2 known vulnerabilities: requests 2.19.0 (PYSEC-2018-28" in result.stderr
        assert "`modelfleet env audit e2e`" in result.stderr
    finally:
        stop_cluster(ws)


def test_fail_on_vulnerable_refuses_before_anything_is_deployed(ws: Workspace, tmp_path: Path) -> None:
    result = cli_deploy(ws, tmp_path, "refused", "--fail-on-vulnerable")
    assert result.returncode == 1
    assert result.stderr.startswith("error: not deployed: environment 'e2e' has 2 known vulnerabilities")
    assert result.stderr.count("\n") == 1
    listed = subprocess.run([sys.executable, "-m", "modelfleet", "-w", str(ws.path), "service", "list", "-o", "json"],
                            capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    assert "refused" not in listed
