"""A gRPC ``ModelInferRequest`` as the REST body the replica takes, and the replica's REST
answer as a ``ModelInferResponse``, without numpy (the router does this, and never loads it).

Every input travels as raw binary data (the REST binary extension): ``raw_input_contents``
as they are, typed ``contents`` packed little-endian as the protocol lays raw tensors out
(BYTES: a 4-byte length before each element). Every output is asked for raw, so the answer's
tensors become ``raw_output_contents`` as they are; an output the replica sent as JSON is
packed the same way.
"""

from __future__ import annotations

import json
import struct
from typing import Any

__all__ = ["GrpcInputError", "infer_request_body", "infer_response", "status_for"]

# contents field and struct code of each datatype; FP16 and BF16 travel raw only
_CONTENTS = {
    "BOOL": ("bool_contents", "?"),
    "INT8": ("int_contents", "b"),
    "INT16": ("int_contents", "h"),
    "INT32": ("int_contents", "i"),
    "INT64": ("int64_contents", "q"),
    "UINT8": ("uint_contents", "B"),
    "UINT16": ("uint_contents", "H"),
    "UINT32": ("uint_contents", "I"),
    "UINT64": ("uint64_contents", "Q"),
    "FP32": ("fp32_contents", "f"),
    "FP64": ("fp64_contents", "d"),
    "BYTES": ("bytes_contents", ""),
}


class GrpcInputError(ValueError):
    """A request that cannot be put into REST form: INVALID_ARGUMENT with the message."""


def _parameter(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _parameters(params: Any) -> dict[str, Any]:
    return {key: _parameter(value) for key, value in params.items()}


def _pack(values: Any, datatype: str) -> bytes:
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in values]
        return b"".join(struct.pack("<I", len(b)) + b for b in items)
    code = _CONTENTS[datatype][1]
    return struct.pack(f"<{len(values)}{code}", *values)


def infer_request_body(request: Any) -> tuple[bytes, int]:
    """(REST body, its JSON part's length) for a ``ModelInferRequest``."""
    raws = list(request.raw_input_contents)
    if raws and len(raws) != len(request.inputs):
        raise GrpcInputError(
            f"raw_input_contents holds {len(raws)} tensors for {len(request.inputs)} inputs; give one per input"
        )
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for index, tensor in enumerate(request.inputs):
        if raws:
            blob = raws[index]
        else:
            field = _CONTENTS.get(tensor.datatype)
            if field is None:
                raise GrpcInputError(
                    f"input '{tensor.name}': {tensor.datatype} has no typed contents field; "
                    "send it in raw_input_contents"
                )
            try:
                blob = _pack(getattr(tensor.contents, field[0]), tensor.datatype)
            except struct.error as ex:
                raise GrpcInputError(f"input '{tensor.name}': a value does not fit {tensor.datatype} ({ex})") from None
        params = _parameters(tensor.parameters)
        params["binary_data_size"] = len(blob)
        inputs.append(
            {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "parameters": params}
        )
        blobs.append(blob)
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id:
        doc["id"] = request.id
    parameters = _parameters(request.parameters)
    if request.outputs:
        doc["outputs"] = [
            {"name": o.name, "parameters": {**_parameters(o.parameters), "binary_data": True}} for o in request.outputs
        ]
    else:
        parameters["binary_data_output"] = True
    doc["parameters"] = parameters
    head = json.dumps(doc, separators=(",", ":")).encode()
    return head + b"".join(blobs), len(head)


def infer_response(body: bytes, header_length: int | None, response_class: Any) -> Any:
    """The ``ModelInferResponse`` for the replica's REST answer (status 200)."""
    head = body if header_length is None else body[:header_length]
    doc = json.loads(head)
    response = response_class(
        model_name=doc.get("model_name", ""), model_version=doc.get("model_version", ""), id=doc.get("id", "")
    )
    offset = len(head)
    for out in doc.get("outputs", []):
        tensor = response.outputs.add(name=out["name"], datatype=out["datatype"], shape=out["shape"])
        params = dict(out.get("parameters") or {})
        size = params.pop("binary_data_size", None)
        if size is not None:
            response.raw_output_contents.append(body[offset : offset + size])
            offset += size
        else:
            data = out.get("data", [])
            flat = _flatten(data)
            if out["datatype"] == "BYTES":
                flat = [v.encode() if isinstance(v, str) else v for v in flat]
            response.raw_output_contents.append(_pack(flat, out["datatype"]))
        _set_parameters(tensor.parameters, params)
    _set_parameters(response.parameters, doc.get("parameters") or {})
    return response


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for v in data:
        out.extend(_flatten(v) if isinstance(v, list) else [v])
    return out


def _set_parameters(target: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        else:
            target[key].string_param = str(value)


# gRPC status names for the REST statuses the router and replica answer with
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    429: "UNAVAILABLE",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def status_for(http_status: int) -> str:
    """The gRPC status code's name for an HTTP error status."""
    return _STATUS.get(http_status, "INTERNAL" if http_status >= 500 else "INVALID_ARGUMENT")
