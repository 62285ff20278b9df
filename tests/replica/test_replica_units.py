"""The replica's decisions without sockets: run() analysis, input adaptation, v1 compat names,
configuration, CORS, swagger answers and the worker pool's interrupt."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelfleet.errors import ConfigError
from modelfleet.replica import compat
from modelfleet.replica.config import DEFAULT_SCORING_TIMEOUT_MS, parse_config
from modelfleet.replica.entry import (
    RAWHTTP_ATTR,
    STYLE_PLAIN,
    STYLE_RAWHTTP,
    BadInput,
    Call,
    PlainInput,
    SchemaInput,
    ScriptError,
    UnsupportedInput,
    UnsupportedMethod,
    analyse_run,
    is_json_type,
    query_to_dict,
)
from modelfleet.replica.responses import Cors, encode_result
from modelfleet.replica.swagger import SwaggerDocs
from modelfleet.replica.workers import ScoringInterrupted, WorkerPool
from replica_scripts.harness import SCRIPTS, base_env


def _call(method: str = "POST", body: bytes = b"", query: bytes = b"", headers=()) -> Call:
    return Call(method, "/score", query, list(headers), body)


# ---- run() analysis -------------------------------------------------------------------


def test_plain_run_and_request_headers() -> None:
    def run(data, request_headers):  # noqa: ANN001
        return data

    plan = analyse_run(run, "score.py")
    assert plan.style == STYLE_PLAIN
    assert [p.name for p in plan.params] == ["data"]
    assert plan.wants_headers


def test_rawhttp_marks_the_function() -> None:
    def run(request):  # noqa: ANN001
        return request

    marked = compat.rawhttp(run)
    assert getattr(marked, RAWHTTP_ATTR) is True
    assert analyse_run(marked, "score.py").style == STYLE_RAWHTTP


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("def run(*args): pass", "positional-only, *args or **kwargs parameters (args)"),
        ("def run(data, /): pass", "positional-only"),
        ("def run(): pass", "takes no parameter for the input data"),
        ("def run(request_headers): pass", "takes no parameter for the input data"),
    ],
)
def test_refused_run_signatures_name_the_function_and_the_fix(source: str, fragment: str) -> None:
    namespace: dict[str, object] = {}
    exec(source, namespace)
    with pytest.raises(ScriptError) as info:
        analyse_run(namespace["run"], "/app/score.py")  # type: ignore[arg-type]
    assert "run() in /app/score.py" in info.value.message
    assert fragment in info.value.message
    assert "def run(data):" in info.value.message


# ---- input adaptation -----------------------------------------------------------------


def test_query_to_dict_parses_json_values_and_repeats() -> None:
    assert query_to_dict(b"a=1&b=%5B1,2%5D&c=x&a=2&d=null&e=") == {
        "a": [1, 2],
        "b": [1, 2],
        "c": "x",
        "d": None,
        "e": "",
    }


def test_plain_input() -> None:
    adapter = PlainInput("raw")
    assert adapter(_call(body="é".encode())) == {"raw": "é"}
    assert adapter(_call("GET", query=b"x=1")) == {"raw": '{"x": 1}'}
    with pytest.raises(BadInput, match="Input cannot be decoded as UTF-8"):
        adapter(_call(body=b"\xff"))
    with pytest.raises(UnsupportedMethod):
        adapter(_call("DELETE"))


def test_schema_input() -> None:
    def run(data, scale=1.0):  # noqa: ANN001
        return data

    params = tuple(inspect.signature(run).parameters.values())
    adapter = SchemaInput(params)
    json_type = [(b"Content-Type", b"application/json")]
    assert adapter(_call(body=b'{"data": [1]}', headers=json_type)) == {"data": [1], "scale": 1.0}
    assert adapter(_call("GET", query=b"data=[2]&scale=3")) == {"data": [2], "scale": 3}
    with pytest.raises(UnsupportedInput):
        adapter(_call(body=b'{"data": [1]}'))
    with pytest.raises(BadInput, match="POST body is empty"):
        adapter(_call(body=b"", headers=json_type))
    with pytest.raises(BadInput, match="A value is not provided for the 'data' parameter."):
        adapter(_call(body=b"{}", headers=json_type))
    assert is_json_type("application/problem+json; charset=utf-8")
    assert not is_json_type("text/json")


def test_header_dict_is_title_case_with_repeats_joined() -> None:
    call = _call(headers=[(b"x-custom", b"a"), (b"X-Custom", b"b"), (b"content-type", b"text/plain")])
    assert call.header_dict() == {"X-Custom": "a,b", "Content-Type": "text/plain"}
    assert call.header(b"content-type") == "text/plain"


# ---- results --------------------------------------------------------------------------


def test_results_are_encoded_as_v1_does() -> None:
    assert encode_result([55], 0.5).body == b"[55]"
    assert encode_result('{"a": 1}', 0.5).body == b'"{\\"a\\": 1}"'
    assert encode_result(None, 0.5).body == b"{}"
    with pytest.raises(TypeError):
        encode_result({1, 2}, 0.5)
    reply = encode_result(compat.AMLResponse("busy", 503, {"X-A": "1, 2"}), 1.25)
    assert reply.status == 503
    assert b"X-A: 1\r\nX-A: 2\r\n" in reply.headers
    assert b"x-ms-run-function-failed: True\r\n" in reply.headers
    assert b"x-ms-run-fn-exec-ms: 1.250\r\n" in reply.headers


def test_aml_response_and_request_objects() -> None:
    response = compat.AMLResponse({"k": 1}, 201, json_str=True)
    assert (response.status_code, response.mimetype, response.get_data()) == (201, "application/json", b'{"k": 1}')
    response.headers["X-New"] = "v"
    assert response.headers.getlist("x-new") == ["v"]
    body = b'--B\r\nContent-Disposition: form-data; name="f"; filename="a.txt"\r\n\r\nfile!\r\n'
    body += b'--B\r\nContent-Disposition: form-data; name="k"\r\n\r\nv\r\n--B--\r\n'
    request = compat.AMLRequest(
        Call("POST", "/score", b"x=1&x=2", [(b"Content-Type", b"multipart/form-data; boundary=B")], body)
    )
    assert request.args.getlist("x") == ["1", "2"] and dict(request.args) == {"x": "1"}
    assert request.full_path == "/score?x=1&x=2"
    assert request.form["k"] == "v"
    assert request.files["f"].filename == "a.txt" and request.files["f"].read() == b"file!"
    assert request.get_json(silent=True) is None


# ---- Model.get_model_path -------------------------------------------------------------


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "azureml-models"
    for name, version, files in (("m", 1, ["a.pkl"]), ("m", 10, ["b.pkl"]), ("multi", 2, ["x", "y"])):
        folder = root / name / str(version)
        folder.mkdir(parents=True)
        for f in files:
            (folder / f).write_text(f)
    return root


def test_get_model_path_with_several_models(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(models))
    monkeypatch.delenv("AML_APP_ROOT", raising=False)
    assert compat.Model.get_model_path("m") == str(models / "m" / "10" / "b.pkl")  # latest is numeric, not text
    assert compat.Model.get_model_path("m", version=1) == str(models / "m" / "1" / "a.pkl")
    assert compat.Model.get_model_path("multi") == str(models / "multi" / "2")
    with pytest.raises(compat.ModelNotFoundException, match="Model m:3 not found"):
        compat.Model.get_model_path("m", version=3)
    with pytest.raises(compat.WebserviceException, match="version should be an int"):
        compat.Model.get_model_path("m", version="1")  # type: ignore[arg-type]


def test_get_model_path_with_one_model_and_app_root(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(models / "m" / "10"))
    assert compat.Model.get_model_path("multi") == str(models / "multi" / "2")
    monkeypatch.delenv("AZUREML_MODEL_DIR")
    monkeypatch.setenv("AML_APP_ROOT", str(models.parent))
    assert compat.Model.get_model_path("m", 1) == str(models / "m" / "1" / "a.pkl")


def test_model_data_collector_without_collection_is_a_no_op() -> None:
    collector = compat.ModelDataCollector("m", designation="inputs", feature_names=["a"])
    assert collector.collect([[1]]) == {}
    assert collector.add_correlations([[1]], {}) == [[1]]


def test_compat_imports_yield_to_installed_azureml(tmp_path: Path) -> None:
    """The compat finder is last on sys.meta_path: a real azureml.core is found first, while
    names only the compat layer has (azureml.monitoring) still resolve."""
    fake = tmp_path / "site" / "azureml" / "core"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "model.py").write_text("class Model:\n    REAL = True\n")
    code = (
        "from modelfleet.replica import compat; compat.install()\n"
        "from azureml.core.model import Model\n"
        "from azureml.monitoring import ModelDataCollector\n"
        "from azureml.contrib.services.aml_request import rawhttp\n"
        "print(getattr(Model, 'REAL', False), ModelDataCollector.__module__, rawhttp.__module__)\n"
    )
    env = base_env({"PYTHONPATH": str(tmp_path / "site")})
    with_real = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert with_real.stdout.split() == ["True", "modelfleet.telemetry.collect", "modelfleet.replica.compat"], (
        with_real.stderr
    )
    without = subprocess.run([sys.executable, "-c", code], env=base_env(), capture_output=True, text=True, timeout=60)
    assert without.stdout.split()[0] == "False", without.stderr


def test_importing_the_replica_loads_no_sdk_or_sqlalchemy() -> None:
    code = (
        "import sys, modelfleet.replica.server\n"
        "bad = [m for m in sys.modules if m.startswith(('sqlalchemy', 'modelfleet.sdk', 'modelfleet.store', "
        "'modelfleet.control', 'modelfleet.targets', 'modelfleet.envs', 'inference_schema'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=base_env(), capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# ---- configuration --------------------------------------------------------------------


def test_flags_win_over_environment(tmp_path: Path) -> None:
    script = SCRIPTS / "plain_sum.py"
    env = {"AZUREML_MODEL_DIR": "/from/env", "WORKER_COUNT": "3", "SCORING_TIMEOUT_MS": "250", "SERVER_PORT": "9"}
    config = parse_config(
        ["--entry_script", str(script), "--model_dir", "m", "--worker_count", "2"], env, str(tmp_path)
    )
    assert config.model_dir == str(tmp_path / "m")
    assert (config.worker_count, config.scoring_timeout_ms, config.port) == (2, 250, 5001)
    assert config.app_root == str(tmp_path)
    from_env = parse_config(["--entry_script", str(script), "--health_port", "5000"], env, str(tmp_path))
    assert (from_env.model_dir, from_env.worker_count) == ("/from/env", 3)
    assert from_env.ignored == ("--health_port",)  # azmlinfsrv flags are accepted, and reported


def test_entry_script_from_environment_relative_to_app_or_source(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "score.py").write_text("def init(): pass\ndef run(d): return d\n")
    env = {"AML_APP_ROOT": str(tmp_path), "AZUREML_SOURCE_DIRECTORY": "src", "AZUREML_ENTRY_SCRIPT": "score.py"}
    assert parse_config([], env, "/").entry_script == str(source / "score.py")
    env["AZUREML_ENTRY_SCRIPT"] = "src/score.py"  # v1 writes it relative to the app root
    assert parse_config([], env, "/").entry_script == str(source / "score.py")
    config = parse_config([], env, "/")
    assert config.scoring_timeout_ms == DEFAULT_SCORING_TIMEOUT_MS and config.source_dir == str(source)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "entry_script is required"),
        (["--entry_script", "missing.py"], "is not a file"),
        (["--entry_script", str(SCRIPTS / "plain_sum.py"), "--worker_count", "0"], "worker_count must be between 1"),
        (["--entry_script", str(SCRIPTS / "plain_sum.py"), "--port", "70000"], "port must be between 0 and 65535"),
        (
            ["--entry_script", str(SCRIPTS / "plain_sum.py"), "--max-concurrent", "x"],
            "max_concurrent must be an integer",
        ),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(argv, {}, str(tmp_path))


# ---- CORS and swagger ------------------------------------------------------------------


def test_cors_rules() -> None:
    listed = Cors(("http://b.com", "http://a.com"))
    assert listed.headers("http://A.com", "POST", None, None) == (
        b"Access-Control-Allow-Origin: http://A.com\r\nVary: Origin\r\n"
    )
    assert listed.headers("http://evil.com", "POST", None, None) == b""
    assert listed.headers(None, "GET", None, None).startswith(b"Access-Control-Allow-Origin: http://a.com\r\n")
    preflight = listed.headers("http://a.com", "OPTIONS", "post", "X-Token")
    assert b"Access-Control-Allow-Methods: GET, POST\r\n" in preflight
    assert b"Access-Control-Allow-Headers: X-Token\r\n" in preflight
    anyone = Cors(("*",))
    assert anyone.headers(None, "GET", None, None) == b"Access-Control-Allow-Origin: *\r\n"
    assert anyone.headers("http://x.com", "GET", None, None).startswith(b"Access-Control-Allow-Origin: http://x.com")


def test_swagger_answers_and_user_file(tmp_path: Path) -> None:
    def run(data):  # noqa: ANN001
        return data

    docs = SwaggerDocs(run, str(tmp_path), "svc", "2.0", "/api/v1/service/svc/")
    status, body = docs.answer("2")
    doc = json.loads(body)
    assert status == 200 and doc["info"]["title"] == "svc" and "/api/v1/service/svc/score" in doc["paths"]
    assert docs.answer("3.0")[1] == docs.answer("3")[1]
    assert docs.answer("5")[0] == 404
    (tmp_path / "swagger3.json").write_text('{"openapi": "3.0.0", "mine": true}')
    assert json.loads(SwaggerDocs(run, str(tmp_path), "svc", "1", "").answer("3")[1]) == {
        "openapi": "3.0.0",
        "mine": True,
    }


# ---- worker pool ------------------------------------------------------------------------


def test_interrupt_stops_a_spinning_run_and_frees_the_worker() -> None:
    async def scenario() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        pool = WorkerPool(1, loop)
        done: dict[str, asyncio.Future[object]] = {k: loop.create_future() for k in ("spin", "next")}

        def spin(_: object) -> str:
            end = time.monotonic() + 30
            while time.monotonic() < end:
                pass
            return "finished"

        spinning = pool.submit(spin, None, lambda job: done["spin"].set_result(job))
        pool.submit(lambda _: "next ran", None, lambda job: done["next"].set_result(job))
        deadline = time.monotonic() + 10
        while spinning.state != 1 and time.monotonic() < deadline:  # until RUNNING
            await asyncio.sleep(0.01)
        pool.interrupt(spinning)
        first = await asyncio.wait_for(done["spin"], 10)
        second = await asyncio.wait_for(done["next"], 10)
        pool.stop()
        return type(first.error).__name__, second.result  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == (ScoringInterrupted.__name__, "next ran")
