"""End to end: the Open Inference Protocol (V2) through the real router of a local cluster,
called with tritonclient's HTTP client, unchanged: server and model health, metadata derived
from the script's inference-schema decorators, infer with JSON and binary tensors, an infer()
script, keys checked as on /score, and each refusal (unknown model or version, wrong
datatype, a script that cannot serve V2) with a clear message."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from e2e_support import SUM_BODY, deploy, register_json_model, stop_cluster, wait_until
from modelfleet import Webservice, Workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("e2ev2", tmp_path_factory.mktemp("ws"))
    yield workspace
    stop_cluster(workspace)


@pytest.fixture(scope="module")
def services(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Webservice]:
    model = register_json_model(ws, tmp_path_factory.mktemp("m"), "weights", 1.0)
    return {
        "schema": deploy(ws, "schema", "v2_schema", models=[model]),
        "tensors": deploy(ws, "tensors", "v2_infer"),
        "plain": deploy(ws, "plain", "sum"),
    }


def client(service: Webservice) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(urlsplit(service.scoring_uri).netloc)


def bearer(service: Webservice) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.get_keys()[0]}"}


def rows(binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("data", [2, 3], "FP32")
    tensor.set_data_from_numpy(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32), binary_data=binary)
    return tensor


def test_server_health_and_metadata_need_no_key(services):
    c = client(services["schema"])
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    assert meta["name"] == "modelfleet" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_comes_from_the_scripts_schema(services):
    service = services["schema"]
    c = client(service)
    assert c.is_model_ready("schema", headers=bearer(service))
    meta = c.get_model_metadata("schema", headers=bearer(service))
    assert meta["inputs"] == [{"name": "data", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "output_0", "datatype": "FP64", "shape": [-1]}]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_with_json_or_binary_tensors(services, binary):
    service = services["schema"]
    outputs = [triton.InferRequestedOutput("output_0", binary_data=binary)]
    result = client(service).infer(
        "schema", [rows(binary)], outputs=outputs, headers=bearer(service), request_id="r-42"
    )
    np.testing.assert_array_equal(result.as_numpy("output_0"), [6.0, 15.0])
    assert result.get_response()["id"] == "r-42"


def test_the_deployed_model_version_is_served_and_another_is_404(services):
    service = services["schema"]
    c = client(service)
    result = c.infer("schema", [rows(True)], model_version="1", headers=bearer(service))
    assert result.get_response()["model_version"] == "1"
    with pytest.raises(InferenceServerException, match="has no version 7"):
        c.infer("schema", [rows(True)], model_version="7", headers=bearer(service))


def test_an_infer_script_answers_v2_and_its_v1_route_still_works(services):
    service = services["tensors"]
    x = triton.InferInput("x", [3], "INT64")
    x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int64))
    result = client(service).infer("tensors", [x], headers=bearer(service))
    np.testing.assert_array_equal(result.as_numpy("doubled"), [2, 4, 6])
    assert service.run(SUM_BODY) == [55]


def test_keys_are_checked_as_on_score(services):
    service = services["schema"]
    c = client(service)
    with pytest.raises(InferenceServerException, match="missing") as missing:
        c.infer("schema", [rows(True)])
    assert missing.value.status() == "401"
    with pytest.raises(InferenceServerException, match="invalid"):
        c.infer("schema", [rows(True)], headers={"Authorization": "Bearer wrong"})
    other = services["tensors"]
    with pytest.raises(InferenceServerException, match="invalid"):
        c.infer("schema", [rows(True)], headers=bearer(other))


def test_refusals_say_what_is_wrong(services):
    service = services["schema"]
    c = client(service)
    wrong = triton.InferInput("data", [1, 3], "FP64")
    wrong.set_data_from_numpy(np.ones((1, 3), dtype=np.float64))
    with pytest.raises(InferenceServerException, match=r"input 'data' must be FP32 \(got FP64\)") as bad:
        c.infer("schema", [wrong], headers=bearer(service))
    assert bad.value.status() == "400"
    with pytest.raises(InferenceServerException) as unknown:
        c.infer("nosuch", [rows(True)], headers=bearer(service))
    assert unknown.value.status() == "404"
    plain = services["plain"]
    with pytest.raises(InferenceServerException, match="no inference-schema decorators") as lacking:
        client(plain).infer("plain", [rows(True)], headers=bearer(plain))
    assert lacking.value.status() == "400"
    assert plain.run(SUM_BODY) == [55]


def test_wrong_methods_are_405(services):
    base = services["schema"].scoring_uri.split("/api/")[0]
    with httpx.Client() as http:
        assert http.get(f"{base}/v2/models/schema/infer", headers=bearer(services["schema"])).status_code == 405
        assert http.post(f"{base}/v2/health/live").status_code == 405
        assert http.get(f"{base}/v2/nothing").status_code == 404


# -- gRPC: tritonclient's gRPC client and a stub generated from the proto ------------------


def grpc_client(service: Webservice):
    import tritonclient.grpc as triton_grpc

    assert service.grpc_address is not None
    return triton_grpc, triton_grpc.InferenceServerClient(service.grpc_address)


def grpc_rows(triton_grpc):
    tensor = triton_grpc.InferInput("data", [2, 3], "FP32")
    tensor.set_data_from_numpy(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
    return tensor


def test_grpc_health_metadata_and_infer(services):
    service = services["schema"]
    triton_grpc, c = grpc_client(service)
    auth = {"authorization": f"Bearer {service.get_keys()[0]}"}
    assert c.is_server_live() and c.is_server_ready()
    assert "binary_tensor_data" in c.get_server_metadata().extensions
    assert c.is_model_ready("schema", headers=auth)
    meta = c.get_model_metadata("schema", headers=auth)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("data", "FP32", [-1, 3])]
    result = c.infer("schema", [grpc_rows(triton_grpc)], headers=auth, request_id="g-1")
    np.testing.assert_array_equal(result.as_numpy("output_0"), [6.0, 15.0])
    assert result.get_response().id == "g-1"


def test_grpc_refusals_carry_the_grpc_status(services):
    from tritonclient.utils import InferenceServerException as GrpcError

    service = services["schema"]
    triton_grpc, c = grpc_client(service)
    with pytest.raises(GrpcError) as missing:
        c.infer("schema", [grpc_rows(triton_grpc)])
    assert missing.value.status() == "StatusCode.UNAUTHENTICATED"
    auth = {"authorization": f"Bearer {service.get_keys()[0]}"}
    wrong = triton_grpc.InferInput("data", [1, 3], "FP64")
    wrong.set_data_from_numpy(np.ones((1, 3), dtype=np.float64))
    with pytest.raises(GrpcError, match=r"input 'data' must be FP32") as bad:
        c.infer("schema", [wrong], headers=auth)
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(GrpcError) as unknown:
        c.infer("nosuch", [grpc_rows(triton_grpc)], headers=auth)
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


def test_a_grpc_deadline_is_honoured(services):
    service = services["tensors"]
    triton_grpc, c = grpc_client(service)
    auth = {"authorization": f"Bearer {service.get_keys()[0]}"}
    x = triton_grpc.InferInput("x", [1], "INT64")
    x.set_data_from_numpy(np.array([1], dtype=np.int64))
    slow = triton_grpc.InferInput("sleep_s", [1], "FP64")
    slow.set_data_from_numpy(np.array([2.0]))
    from tritonclient.utils import InferenceServerException as GrpcError

    started = time.monotonic()
    with pytest.raises(GrpcError) as late:
        c.infer("tensors", [x, slow], headers=auth, client_timeout=0.5)
    assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 1.9  # not the script's 2 s

    def answers() -> bool:  # the replica finishes its 2 s (the router stopped waiting): free again
        try:
            c.infer("tensors", [x], headers=auth)
        except GrpcError:
            return False
        return True

    wait_until(answers, timeout=10, interval=0.2)


STUB_CLIENT = """
import sys
sys.path.insert(0, sys.argv[1])
import grpc, grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as rpc
stub = rpc.GRPCInferenceServiceStub(grpc.insecure_channel(sys.argv[2]))
request = pb.ModelInferRequest(model_name="tensors")
tensor = request.inputs.add(name="x", datatype="INT32", shape=[3])
tensor.contents.int_contents.extend([5, 6, 7])
answer = stub.ModelInfer(request, metadata=[("authorization", "Bearer " + sys.argv[3])], timeout=30)
out = answer.outputs[0]
print(out.name, out.datatype, list(out.shape), answer.raw_output_contents[0].hex())
"""


def test_a_stub_generated_from_the_proto_calls_it(services, tmp_path):
    """The third client: grpcio-tools' stub from oip/proto/grpc_predict_v2.proto, with typed contents
    (in a process of its own: its messages share full names with tritonclient's)."""
    from modelfleet.oip import grpc_messages

    proto_dir = grpc_messages.DESCRIPTOR_FILE.parent
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", str(proto_dir / "grpc_predict_v2.proto")],
        check=True,
    )  # fmt: skip
    service = services["tensors"]
    out = subprocess.run(
        [sys.executable, "-c", STUB_CLIENT, str(tmp_path), service.grpc_address, service.get_keys()[0]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    out = out.stdout.split()
    assert out[:3] == ["doubled", "INT32", "[3]"]
    assert bytes.fromhex(out[-1]) == np.array([10, 12, 14], dtype="<i4").tobytes()


def test_an_endpoint_answers_v2_for_its_versions(ws, services):
    """V2 paths name the endpoint; its router picks the version as for /score (pinnable by header)."""
    from e2e_support import SCRIPTS
    from modelfleet import AksEndpoint, Environment, InferenceConfig, Model

    ic = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "v2_infer", environment=Environment("e2e"))
    fixed = {"autoscale_enabled": False, "num_replicas": 1}
    dc = AksEndpoint.deploy_configuration(version_name="blue", is_default=True, **fixed)
    endpoint = Model.deploy(ws, "epv2", [], ic, dc)
    endpoint.create_version("green", models=[], inference_config=ic, traffic_percentile=50, **fixed)
    endpoint.wait_for_deployment(timeout_sec=120)
    base = services["schema"].scoring_uri.split("/api/")[0]
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}
    served = set()
    with httpx.Client(headers={"Authorization": f"Bearer {endpoint.get_keys()[0]}"}, timeout=30) as http:
        for _ in range(20):
            answer = http.post(f"{base}/v2/models/epv2/infer", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"][0]["data"] == [2, 4]
            served.add(answer.headers["azureml-model-deployment"])
        pinned = http.post(f"{base}/v2/models/epv2/infer", json=body, headers={"azureml-model-deployment": "green"})
        assert pinned.headers["azureml-model-deployment"] == "green"
        assert http.post(f"{base}/v2/models/epv2:blue/infer", json=body).status_code == 404  # only through epv2
    assert served == {"blue", "green"}


def test_each_model_of_a_multi_model_service_answers_as_service_dot_model(ws, tmp_path):
    from e2e_support import register_json_model

    alpha = register_json_model(ws, tmp_path, "alpha", 1.0)
    beta = register_json_model(ws, tmp_path, "beta", 2.0)
    service = deploy(ws, "multi", "v2_models", models=[alpha, beta])
    c = client(service)
    x = triton.InferInput("x", [1], "INT32")
    x.set_data_from_numpy(np.array([7], dtype=np.int32))
    for model in ("alpha", "beta"):
        result = c.infer(f"multi.{model}", [x], headers=bearer(service), model_version="1")
        assert list(result.as_numpy("model")) == [model.encode()]
    assert list(c.infer("multi", [x], headers=bearer(service)).as_numpy("model")) == [b"-"]
    with pytest.raises(InferenceServerException, match="no model 'gamma'; it has alpha, beta") as unknown:
        c.infer("multi.gamma", [x], headers=bearer(service))
    assert unknown.value.status() == "404"
