"""How a loaded entry script answers Open Inference Protocol calls (replica/v2.py), without
sockets: an inference-schema script and an infer() script answer tritonclient's bodies, a
script with neither says what it lacks, and the script's failures are 500s naming run() or
infer()."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from inference_schema import schema_util
from tritonclient.http._utils import _get_inference_request

from modelfleet.replica.entry import Call, load_entry
from modelfleet.replica.scoring import format_exception
from modelfleet.replica.v2 import V2Model, v2_model_refusal, v2_path

SCHEMA_SCRIPT = """
import numpy as np
from inference_schema.schema_decorators import input_schema, output_schema
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType

def init():
    pass

@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0]], dtype=np.float32)))
@output_schema(NumpyParameterType(np.array([1.0], dtype=np.float64)))
def run(data):
    if data[0][0] < 0:
        raise RuntimeError("negative")
    return data.sum(axis=1)
"""

INFER_SCRIPT = """
import json

def init():
    pass

def run(raw):
    return json.loads(raw)

def infer(inputs):
    return {"doubled": inputs["x"] * 2, "count": [inputs["x"].size]}
"""

PLAIN_SCRIPT = """
def init():
    pass

def run(raw):
    return raw
"""


@pytest.fixture(autouse=True)
def _forget_schemas():
    """inference-schema registers run() by module and name, once per process (a replica loads one
    script); these tests load several under the same name."""
    schemas, versions = dict(schema_util.__functions_schema__), dict(schema_util.__versions__)
    yield
    for registry, kept in ((schema_util.__functions_schema__, schemas), (schema_util.__versions__, versions)):
        registry.clear()
        registry.update(kept)  # what other modules' decorated functions registered stays


def model_of(tmp_path, source):
    path = tmp_path / "score.py"
    path.write_text(textwrap.dedent(source))
    entry = load_entry(str(path), make_request=lambda call: call)
    entry.init()
    return V2Model(entry, format_exception)


def infer_call(inputs, outputs=None):
    body, header_length = _get_inference_request(
        inputs,
        request_id="q1",
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=None,
    )
    headers = [(b"content-type", b"application/json")]
    if header_length is not None:
        headers.append((b"inference-header-content-length", str(header_length).encode()))
    return Call("POST", "/v2/models/m/infer", b"", headers, body)


def answer(reply):
    header_length = None
    for line in reply.headers.split(b"\r\n"):
        if line.lower().startswith(b"inference-header-content-length:"):
            header_length = int(line.split(b":")[1])
    return triton.InferResult.from_response_body(reply.body, header_length=header_length)


def data_input(array):
    tensor = triton.InferInput("data", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def test_a_schema_script_answers_with_its_declared_output(tmp_path):
    model = model_of(tmp_path, SCHEMA_SCRIPT)
    reply = model.infer(infer_call([data_input(np.array([[1, 2], [3, 4]], dtype=np.float32))]), "m", "2")
    assert reply.status == 200
    result = answer(reply)
    np.testing.assert_array_equal(result.as_numpy("output_0"), [3.0, 7.0])
    assert result.get_response()["model_version"] == "2" and result.get_response()["id"] == "q1"
    meta = json.loads(model.metadata("m", "2").body)
    assert meta["inputs"] == [{"name": "data", "datatype": "FP32", "shape": [-1, 2]}]


def test_a_wrong_datatype_is_a_400_naming_the_input(tmp_path):
    model = model_of(tmp_path, SCHEMA_SCRIPT)
    tensor = triton.InferInput("data", [1, 2], "FP64")
    tensor.set_data_from_numpy(np.array([[1, 2]], dtype=np.float64))
    reply = model.infer(infer_call([tensor]), "m", None)
    assert reply.status == 400
    assert json.loads(reply.body)["error"] == "input 'data' must be FP32 (got FP64)"


def test_run_raising_is_a_500_and_the_model_keeps_answering(tmp_path):
    model = model_of(tmp_path, SCHEMA_SCRIPT)
    failed = model.infer(infer_call([data_input(np.array([[-1, 0]], dtype=np.float32))]), "m", None)
    assert failed.status == 500 and "run() raised" in json.loads(failed.body)["error"]
    assert model.infer(infer_call([data_input(np.array([[1, 1]], dtype=np.float32))]), "m", None).status == 200


def test_an_infer_script_gets_its_tensors_by_name_and_output_selection_works(tmp_path):
    model = model_of(tmp_path, INFER_SCRIPT)
    x = triton.InferInput("x", [3], "INT32")
    x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
    reply = model.infer(infer_call([x], outputs=[triton.InferRequestedOutput("doubled")]), "m", None)
    result = answer(reply)
    np.testing.assert_array_equal(result.as_numpy("doubled"), [2, 4, 6])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["doubled"]


def test_a_script_with_neither_says_what_it_lacks(tmp_path):
    model = model_of(tmp_path, PLAIN_SCRIPT)
    for reply in (
        model.metadata("m", None),
        model.infer(infer_call([data_input(np.ones((1, 2), np.float32))]), "m", None),
    ):
        assert reply.status == 400
        message = json.loads(reply.body)["error"]
        assert "no inference-schema decorators" in message and "infer(inputs" in message


def test_a_bad_header_length_is_refused(tmp_path):
    model = model_of(tmp_path, INFER_SCRIPT)
    call = infer_call([data_input(np.ones((1, 2), np.float32))])
    reply = model.infer(
        Call(call.method, call.path, b"", [(b"inference-header-content-length", b"ten")], call.body), "m", None
    )
    assert reply.status == 400 and "whole number of bytes" in json.loads(reply.body)["error"]


@pytest.mark.parametrize(
    ("path", "parsed"),
    [
        ("/v2/models/fraud", ("fraud", None, "")),
        ("/v2/models/fraud/ready", ("fraud", None, "ready")),
        ("/v2/models/fraud/infer", ("fraud", None, "infer")),
        ("/v2/models/fraud/versions/3/infer", ("fraud", "3", "infer")),
        ("/v2/models/fraud/versions/3", ("fraud", "3", "")),
        ("/v2/models/fraud/explain", None),
        ("/v2/models//infer", None),
        ("/v2/health/live", None),
    ],
)
def test_v2_paths(path, parsed):
    assert v2_path(path) == parsed


# -- V2 calls joined along the first dimension (V2_BATCHED) ---------------------------------

ROWS_SCRIPT = Path(__file__).resolve().parent / "batch_scripts" / "v2_rows.py"


def id_call(ids, extra=None):
    tensor = triton.InferInput("id", [len(ids)], "BYTES")
    tensor.set_data_from_numpy(np.array([i.encode() for i in ids], dtype=object))
    return infer_call([tensor, *(extra or [])])


def test_joined_calls_are_computed_once_and_each_gets_its_own_rows(tmp_path, monkeypatch):
    monkeypatch.delenv("V2_WRONG_ROWS", raising=False)
    model = model_of(tmp_path, ROWS_SCRIPT.read_text())
    assert model.batched
    calls = [(id_call(["a"]), "m", None), (id_call(["b", "c"]), "m", "1"), (id_call(["d"]), "m", None)]
    replies = model.infer_batch(calls)
    results = [answer(r) for r in replies]
    assert [list(r.as_numpy("id")) for r in results] == [[b"a"], [b"b", b"c"], [b"d"]]
    assert {int(r.as_numpy("call")[0]) for r in results} == {1}  # one call for all three
    assert [int(r.as_numpy("rows")[0]) for r in results] == [4, 4, 4]
    assert results[1].get_response()["model_version"] == "1"


def test_calls_that_cannot_be_joined_are_computed_apart(tmp_path, monkeypatch):
    monkeypatch.delenv("V2_WRONG_ROWS", raising=False)
    model = model_of(tmp_path, ROWS_SCRIPT.read_text())
    other = triton.InferInput("extra", [1, 2], "FP32")  # different input names: another group
    other.set_data_from_numpy(np.ones((1, 2), np.float32))
    bad = infer_call([data_input(np.ones((1, 2), np.float32))])
    bad = Call(bad.method, bad.path, b"", [], b"{not json")
    replies = model.infer_batch([(id_call(["a"]), "m", None), (id_call(["b"], [other]), "m", None), (bad, "m", None)])
    assert [r.status for r in replies] == [200, 200, 400]
    assert int(answer(replies[0]).as_numpy("call")[0]) != int(answer(replies[1]).as_numpy("call")[0])


def test_an_answer_without_a_row_per_input_row_fails_the_joined_calls(tmp_path, monkeypatch):
    monkeypatch.setenv("V2_WRONG_ROWS", "1")
    model = model_of(tmp_path, ROWS_SCRIPT.read_text())
    replies = model.infer_batch([(id_call(["a"]), "m", None), (id_call(["b"]), "m", None)])
    assert [r.status for r in replies] == [500, 500]
    assert "one row per input row" in json.loads(replies[0].body)["error"]


@pytest.mark.parametrize(
    ("name", "version", "refusal"),
    [
        ("svc", None, None),
        ("svc", "2", None),
        ("svc", "9", "model 'svc' has no version 9; it has 1, 2"),
        ("svc.alpha", "1", None),
        ("svc.alpha", "2", "model 'svc.alpha' has no version 2; it has 1"),
        ("svc.gamma", None, "'svc.gamma': this service has no model 'gamma'; it has alpha, beta"),
    ],
)
def test_v2_model_names_and_versions_are_the_services(name, version, refusal):
    assert v2_model_refusal(name, version, [("alpha", "1"), ("beta", "2")]) == refusal
    assert v2_model_refusal(name, version, []) is None  # modelfleet serve: its one script, any name
