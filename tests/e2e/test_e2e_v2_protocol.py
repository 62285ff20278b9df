"""End to end: the Open Inference Protocol (V2) through the real router of a local cluster,
called with tritonclient's HTTP client, unchanged: server and model health, metadata derived
from the script's inference-schema decorators, infer with JSON and binary tensors, an infer()
script, keys checked as on /score, and each refusal (unknown model or version, wrong
datatype, a script that cannot serve V2) with a clear message."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from e2e_support import SUM_BODY, deploy, register_json_model, stop_cluster
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
