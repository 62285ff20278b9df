"""The REST codec against what ``tritonclient`` (the real client, unchanged) sends and reads:
JSON and binary tensors, BYTES, requested outputs, and each malformed body refused naming the
input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from modelfleet.oip.rest import InferError, InferRequest, RequestedOutput, decode_infer_request, encode_infer_response

LIMIT = 1_000_000


def client_body(inputs, outputs=None, request_id="", parameters=None):
    """The body and header length tritonclient's HTTP client would send."""
    return _get_inference_request(
        inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=parameters,
    )


def triton_input(name, array, datatype, binary):
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False])
def test_numeric_bool_and_bytes_inputs_decode_to_the_arrays_the_client_sent(binary):
    floats = np.arange(6, dtype=np.float32).reshape(2, 3)
    ints = np.array([[-1], [2**40]], dtype=np.int64)
    flags = np.array([True, False])
    words = np.array([b"ab", "cd\u00e9".encode()], dtype=object)
    body, header_length = client_body(
        [
            triton_input("x", floats, "FP32", binary),
            triton_input("n", ints, "INT64", binary),
            triton_input("b", flags, "BOOL", binary),
            triton_input("s", words, "BYTES", binary),
        ],
        request_id="req-7",
        parameters={"temperature": 0.5},
    )
    request = decode_infer_request(body, header_length, LIMIT)
    assert request.id == "req-7"
    assert request.parameters["temperature"] == 0.5
    assert request.binary_outputs is True  # tritonclient asks for raw outputs when it names none
    by_name = {t.name: t for t in request.inputs}
    np.testing.assert_array_equal(by_name["x"].array, floats)
    assert by_name["x"].array.dtype == np.float32 and by_name["x"].shape == (2, 3)
    np.testing.assert_array_equal(by_name["n"].array, ints)
    np.testing.assert_array_equal(by_name["b"].array, flags)
    assert list(by_name["s"].array) == [b"ab", "cd\u00e9".encode()]


@pytest.mark.parametrize("binary", [True, False])
def test_the_client_reads_the_answer_back_binary_or_json(binary):
    request = InferRequest(
        id="r1",
        inputs=[],
        outputs=[RequestedOutput("probs", binary), RequestedOutput("label", binary)],
        binary_outputs=False,
    )
    probs = np.array([[0.25, 0.75]], dtype=np.float64)
    labels = np.array(["spam"], dtype=object)
    body, header_length = encode_infer_response("fraud", "3", request, [("label", labels), ("probs", probs)])
    assert (header_length is not None) is binary
    result = triton.InferResult.from_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("probs"), probs)
    assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")] == ["spam"]
    answer = result.get_response()
    assert answer["model_name"] == "fraud" and answer["model_version"] == "3" and answer["id"] == "r1"
    assert [o["name"] for o in answer["outputs"]] == ["probs", "label"]  # the order asked for


def test_every_output_is_sent_when_none_is_named_and_json_unless_asked():
    request = InferRequest(id=None, inputs=[], outputs=[], binary_outputs=False)
    body, header_length = encode_infer_response("m", None, request, [("output_0", np.array([1, 2], dtype=np.int32))])
    assert header_length is None
    doc = json.loads(body)
    assert doc == {
        "model_name": "m",
        "outputs": [{"name": "output_0", "datatype": "INT32", "shape": [2], "data": [1, 2]}],
    }


def test_an_output_the_model_does_not_have_is_refused_naming_it():
    request = InferRequest(id=None, inputs=[], outputs=[RequestedOutput("nope", False)], binary_outputs=False)
    with pytest.raises(InferError, match="no output named 'nope'; this model's outputs: output_0"):
        encode_infer_response("m", None, request, [("output_0", np.array([1]))])


def body_of(doc):
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": []}, "needs 'inputs'"),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP33", "data": [1, 2]}]}, "input 'x': datatype 'FP33'"),
        (
            {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]},
            "holds 2 elements and the shape says 3",
        ),
        (
            {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2.5]}]},
            "INT32 data must be whole numbers",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}, "does not fit INT8"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}]}, "BOOL data must be true or false"),
        ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}, "non-negative integers"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "input 'x' has no 'data'"),
        (
            {"inputs": [{"name": "x", "shape": [2000, 1000], "datatype": "FP32", "data": []}]},
            "at most 1000000 per input",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2}, "input 'x' is given twice"),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, r"inputs\[0\] needs a 'name'"),
    ],
)
def test_malformed_requests_are_refused_naming_the_input(doc, message):
    with pytest.raises(InferError, match=message):
        decode_infer_request(body_of(doc), None, LIMIT)


def test_binary_sizes_that_disagree_with_the_body_are_refused():
    head = body_of({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]})
    with pytest.raises(InferError, match="input 'x': binary_data_size 8 runs past the end"):
        decode_infer_request(head + b"\x00" * 4, len(head), LIMIT)
    with pytest.raises(InferError, match="4 bytes after the last binary input"):
        decode_infer_request(head + b"\x00" * 12, len(head), LIMIT)
    with pytest.raises(InferError, match="outside the body"):
        decode_infer_request(head, len(head) + 1, LIMIT)
    odd = body_of({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 6}}]})
    with pytest.raises(InferError, match="6 bytes of binary data; 2 FP32 elements take 8"):
        decode_infer_request(odd + b"\x00" * 6, len(odd), LIMIT)


def test_not_json_is_refused():
    with pytest.raises(InferError, match="not valid JSON"):
        decode_infer_request(b"{oops", None, LIMIT)
