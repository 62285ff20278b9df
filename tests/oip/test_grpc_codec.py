"""The gRPC API's messages and their REST form, against tritonclient's gRPC client: our
descriptor is wire-compatible with Triton's field by field, a request tritonclient builds
(raw tensors, or typed contents) becomes the REST body our decoder reads back to the same
arrays, and our REST answer becomes a response tritonclient reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as triton_pb2
from tritonclient.grpc._utils import _get_inference_request

from modelfleet.oip import grpc_messages
from modelfleet.oip.grpc_codec import GrpcInputError, infer_request_body, infer_response, status_for
from modelfleet.oip.rest import InferRequest, RequestedOutput, decode_infer_request, encode_infer_response

PROTO_DIR = Path(grpc_messages.__file__).parent / "proto"


def test_the_compiled_descriptor_is_the_proto_file_compiled(tmp_path):
    out = tmp_path / "fresh.desc"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--descriptor_set_out={out}",
            "grpc_predict_v2.proto",
        ],
        check=True,
        cwd=PROTO_DIR,
    )
    assert out.read_bytes() == grpc_messages.DESCRIPTOR_FILE.read_bytes(), (
        "regenerate the .desc (see the .proto's header)"
    )


def fields(descriptor):
    return {f.name: (f.number, f.type, f.is_repeated) for f in descriptor.fields}


def test_every_message_and_call_matches_tritons_field_numbers_and_types():
    ours = grpc_messages.messages()
    for name, cls in ours.items():
        theirs = triton_pb2.DESCRIPTOR.message_types_by_name[name]
        assert fields(cls.DESCRIPTOR) == fields(theirs), name
        for nested in cls.DESCRIPTOR.nested_types:
            assert fields(nested) == fields(theirs.nested_types_by_name[nested.name]), f"{name}.{nested.name}"
    service = triton_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"):
        assert service.methods_by_name[method].input_type.name in ours


def triton_request(inputs, outputs=None, request_id="", parameters=None):
    """A ModelInferRequest as tritonclient builds it, read back with our message class."""
    message = _get_inference_request(
        model_name="fraud",
        inputs=inputs,
        model_version="",
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=parameters,
    )
    return grpc_messages.messages()["ModelInferRequest"].FromString(message.SerializeToString())


def tensor(name, array, datatype):
    t = triton.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def test_a_raw_request_becomes_a_rest_body_with_the_same_tensors():
    floats = np.arange(6, dtype=np.float16).reshape(3, 2)
    words = np.array([b"a", b"\xff\x00bin"], dtype=object)
    request = triton_request(
        [tensor("x", floats, "FP16"), tensor("w", words, "BYTES")],
        outputs=[triton.InferRequestedOutput("probs")],
        request_id="abc",
        parameters={"threshold": 0.5, "mode": "fast"},
    )
    body, header_length = infer_request_body(request)
    decoded = decode_infer_request(body, header_length, 10_000)
    assert decoded.id == "abc" and decoded.parameters == {"threshold": 0.5, "mode": "fast"}
    assert [(o.name, o.binary) for o in decoded.outputs] == [("probs", True)]
    by_name = {t.name: t for t in decoded.inputs}
    np.testing.assert_array_equal(by_name["x"].array, floats)
    assert list(by_name["w"].array) == [b"a", b"\xff\x00bin"]


def test_typed_contents_are_packed_as_raw_tensors():
    cls = grpc_messages.messages()["ModelInferRequest"]
    request = cls(model_name="m")
    request.inputs.add(name="i", datatype="INT32", shape=[2]).contents.int_contents.extend([-3, 7])
    request.inputs.add(name="f", datatype="FP64", shape=[1, 2]).contents.fp64_contents.extend([0.5, 1.5])
    request.inputs.add(name="s", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"hi")
    body, header_length = infer_request_body(request)
    decoded = {t.name: t.array for t in decode_infer_request(body, header_length, 100).inputs}
    np.testing.assert_array_equal(decoded["i"], np.array([-3, 7], dtype=np.int32))
    np.testing.assert_array_equal(decoded["f"], [[0.5, 1.5]])
    assert list(decoded["s"]) == [b"hi"]


def test_requests_that_cannot_be_put_in_rest_form_are_refused_naming_the_input():
    cls = grpc_messages.messages()["ModelInferRequest"]
    request = cls(model_name="m")
    request.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(GrpcInputError, match="input 'h': FP16 has no typed contents field"):
        infer_request_body(request)
    request = cls(model_name="m", raw_input_contents=[b"\x00" * 4, b"\x00" * 4])
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    with pytest.raises(GrpcInputError, match="holds 2 tensors for 1 inputs"):
        infer_request_body(request)
    request = cls(model_name="m")
    request.inputs.add(name="b", datatype="INT8", shape=[1]).contents.int_contents.append(1000)
    with pytest.raises(GrpcInputError, match="input 'b': a value does not fit INT8"):
        infer_request_body(request)


@pytest.mark.parametrize("binary", [True, False])
def test_our_rest_answer_reads_back_in_tritonclient(binary):
    asked = InferRequest(
        id="r9",
        inputs=[],
        outputs=[RequestedOutput("probs", binary), RequestedOutput("label", binary)],
        binary_outputs=False,
    )
    probs = np.array([[0.1, 0.9]], dtype=np.float32)
    labels = np.array([b"fraud"], dtype=object)
    body, header_length = encode_infer_response("fraud", "2", asked, [("probs", probs), ("label", labels)])
    ours = infer_response(body, header_length, grpc_messages.messages()["ModelInferResponse"])
    result = triton.InferResult(triton_pb2.ModelInferResponse.FromString(ours.SerializeToString()))
    np.testing.assert_array_equal(result.as_numpy("probs"), probs)
    assert list(result.as_numpy("label")) == [b"fraud"]
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("fraud", "2", "r9")


def test_http_error_statuses_map_to_grpc_codes():
    assert [status_for(s) for s in (400, 401, 404, 413, 503, 504, 500, 418)] == [
        "INVALID_ARGUMENT",
        "UNAUTHENTICATED",
        "NOT_FOUND",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "INTERNAL",
        "INVALID_ARGUMENT",
    ]
