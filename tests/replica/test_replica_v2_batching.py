"""V2 calls joined by dynamic batching on a real replica process: a script that sets V2_BATCHED
(and has no run_batch) gets concurrent infer calls joined along the first dimension into one
infer() call, every caller gets exactly its own rows back, and /score still runs one request
at a time."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from replica_scripts.harness import request, start_replica

SCRIPT = Path(__file__).resolve().parent / "batch_scripts" / "v2_rows.py"


def infer_body(rid: str) -> tuple[bytes, dict[str, str]]:
    tensor = triton.InferInput("id", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([rid.encode()], dtype=object))
    body, length = _get_inference_request(
        [tensor], request_id=rid, outputs=None, sequence_id=0, sequence_start=False,
        sequence_end=False, priority=0, timeout=None, custom_parameters=None,
    )  # fmt: skip
    return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(length)}


def test_concurrent_v2_calls_are_joined_and_each_gets_its_own_rows(tmp_path: Path) -> None:
    server = start_replica(
        SCRIPT, tmp_path, args=["--max-batch-size", "16", "--max-batch-delay-ms", "50"], env={"V2_COST_S": "0.1"}
    )
    try:
        answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
        start_line = threading.Barrier(32)

        def caller(n: int) -> None:
            rid = f"r{n}"
            body, headers = infer_body(rid)
            start_line.wait(30)
            a = request(server.port, "POST", "/v2/models/rows/infer", body, headers)
            answers[rid] = (a.status, a.headers, a.body)

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(answers) == 32
        calls, sizes = set(), []
        for rid, (status, headers, body) in answers.items():
            assert status == 200, (rid, body[:300])
            length = headers.get("inference-header-content-length")
            result = triton.InferResult.from_response_body(body, header_length=int(length) if length else None)
            assert list(result.as_numpy("id")) == [rid.encode()]  # its own row, never a neighbour's
            calls.add(int(result.as_numpy("call")[0]))
            sizes.append(int(headers["x-modelfleet-batch-size"]))
        assert len(calls) < 32 and sum(sizes) / len(sizes) > 4, (len(calls), sorted(sizes))
        plain = request(server.port, "POST", "/score", "hello", {"Content-Type": "text/plain"})
        assert plain.status == 200 and json.loads(plain.body) == "hello"
    finally:
        assert server.stop() == 0
