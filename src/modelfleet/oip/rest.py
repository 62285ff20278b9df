"""The protocol's REST bodies: an inference request in, an inference response out, with the
binary tensor data extension (``Inference-Header-Content-Length``) that ``tritonclient`` uses by
default.

A request body is JSON, or JSON followed by the raw bytes of the inputs whose
``parameters.binary_data_size`` says so, in the order they are listed; the header says where
the JSON ends. Raw tensors are row-major and little-endian; a BYTES element is a 4-byte
little-endian length and its bytes. An answer's outputs are raw the same way when the request
asks (``outputs[].parameters.binary_data``, or ``parameters.binary_data_output`` for all).

Every refusal is an ``InferError`` whose message names the input and what was wrong; the
replica answers it 400 with ``error_body``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelfleet.oip.datatypes import datatype_of, dtype_of
from modelfleet.oip.errors import HEADER_LENGTH, InferError, error_body

__all__ = [
    "HEADER_LENGTH",
    "InferError",
    "InferRequest",
    "RequestedOutput",
    "Tensor",
    "decode_infer_request",
    "encode_infer_response",
    "error_body",
]


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray[Any, Any]  # shaped; BYTES elements are bytes objects


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput]  # empty: every output
    binary_outputs: bool  # parameters.binary_data_output: every output raw unless it says otherwise
    parameters: dict[str, Any] = field(default_factory=dict)


def decode_infer_request(body: bytes, header_length: int | None, max_elements: int) -> InferRequest:
    """The request in ``body``; ``header_length`` is ``Inference-Header-Content-Length`` (None when
    absent: all JSON). ``max_elements``: the most elements one input may hold."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InferError(f"Inference-Header-Content-Length is {header_length}, outside the body's {len(body)} bytes")
    head = body if header_length is None else body[:header_length]
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, ValueError) as ex:
        raise InferError(f"the inference request is not valid JSON: {ex}") from None
    if not isinstance(doc, dict):
        raise InferError("the inference request must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InferError("the inference request needs 'inputs': a non-empty list of tensors")
    parameters = _object(doc.get("parameters"), "parameters")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InferError("'id' must be a string")
    offset = len(head)
    inputs: list[Tensor] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _input(raw, index, body, offset, max_elements)
        if tensor.name in seen:
            raise InferError(f"input '{tensor.name}' is given twice")
        seen.add(tensor.name)
        inputs.append(tensor)
    if offset != len(body):
        raise InferError(
            f"the body holds {len(body) - offset} bytes after the last binary input; binary_data_size "
            "and Inference-Header-Content-Length disagree with the body"
        )
    outputs = [_requested(raw, i) for i, raw in enumerate(_list(doc.get("outputs"), "outputs"))]
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        binary_outputs=parameters.get("binary_data_output") is True,
        parameters=parameters,
    )


def _input(raw: Any, index: int, body: bytes, offset: int, max_elements: int) -> tuple[Tensor, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise InferError(f"inputs[{index}] needs a 'name' (a non-empty string)")
    name: str = raw["name"]
    datatype = raw.get("datatype")
    dtype = dtype_of(datatype) if isinstance(datatype, str) else None
    if dtype is None or not isinstance(datatype, str):
        raise InferError(
            f"input '{name}': datatype {datatype!r} is not one of BOOL, UINT8-64, INT8-64, FP16, FP32, FP64, BYTES"
        )
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InferError(f"input '{name}': 'shape' must be a list of non-negative integers (got {shape!r})")
    count = math.prod(shape)
    if count > max_elements:
        raise InferError(f"input '{name}' holds {count} elements; this service takes at most {max_elements} per input")
    params = _object(raw.get("parameters"), f"input '{name}' parameters")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(body):
            raise InferError(f"input '{name}': binary_data_size {size!r} runs past the end of the body")
        if "data" in raw:
            raise InferError(f"input '{name}' has both 'data' and binary_data_size; give one")
        array = _from_raw(body[offset : offset + size], name, datatype, dtype, count)
        offset += size
    else:
        if "data" not in raw:
            raise InferError(f"input '{name}' has no 'data' (and no binary_data_size)")
        array = _from_json(raw["data"], name, datatype, dtype, count)
    return Tensor(name, datatype, tuple(shape), array.reshape(shape)), offset


def _from_json(data: Any, name: str, datatype: str, dtype: np.dtype[Any], count: int) -> np.ndarray[Any, Any]:
    flat = _flatten(data) if isinstance(data, list) else [data]
    if len(flat) != count:
        raise InferError(f"input '{name}': 'data' holds {len(flat)} elements and the shape says {count}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InferError(f"input '{name}': BYTES data in JSON must be strings")
        return np.array([v.encode() for v in flat], dtype=object)
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise InferError(f"input '{name}': BOOL data must be true or false")
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise InferError(f"input '{name}': {datatype} data must be numbers")
    elif dtype.kind in "iu" and not all(isinstance(v, int) for v in flat):
        raise InferError(f"input '{name}': {datatype} data must be whole numbers")
    try:
        return np.array(flat, dtype=dtype)
    except OverflowError:
        raise InferError(f"input '{name}': a value does not fit {datatype}") from None


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    for v in data:
        out.extend(_flatten(v) if isinstance(v, list) else [v])
    return out


def _from_raw(raw: bytes, name: str, datatype: str, dtype: np.dtype[Any], count: int) -> np.ndarray[Any, Any]:
    if datatype != "BYTES":
        if len(raw) != count * dtype.itemsize:
            raise InferError(
                f"input '{name}': {len(raw)} bytes of binary data; {count} {datatype} elements take "
                f"{count * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    items: list[bytes] = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InferError(f"input '{name}': a BYTES element's 4-byte length is cut short")
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + length > len(raw):
            raise InferError(f"input '{name}': a BYTES element runs past its binary data")
        items.append(raw[at : at + length])
        at += length
    if len(items) != count:
        raise InferError(f"input '{name}': {len(items)} BYTES elements and the shape says {count}")
    return np.array(items, dtype=object)


def _requested(raw: Any, index: int) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InferError(f"outputs[{index}] needs a 'name'")
    params = _object(raw.get("parameters"), f"output '{raw['name']}' parameters")
    return RequestedOutput(raw["name"], params.get("binary_data") is True)


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InferError(f"{what} must be a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InferError(f"'{what}' must be a list")
    return value


def encode_infer_response(
    model_name: str,
    model_version: str | None,
    request: InferRequest,
    outputs: Sequence[tuple[str, np.ndarray[Any, Any]]],
) -> tuple[bytes, int | None]:
    """(body, its JSON part's length when any output is raw, else None) for the named arrays,
    in the order the request asked for them (every one when it named none)."""
    by_name = dict(outputs)
    if request.outputs:
        missing = [o.name for o in request.outputs if o.name not in by_name]
        if missing:
            listed = ", ".join(by_name)
            raise InferError(f"no output named {', '.join(map(repr, missing))}; this model's outputs: {listed}")
        chosen = [(o.name, by_name[o.name], o.binary) for o in request.outputs]
    else:
        chosen = [(name, array, request.binary_outputs) for name, array in outputs]
    described: list[dict[str, Any]] = []
    raws: list[bytes] = []
    for name, array, binary in chosen:
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _to_raw(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            entry["data"] = _to_json(array, datatype)
        described.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "outputs": described}
    if model_version is not None:
        doc["model_version"] = model_version
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not raws:
        return head, None
    return head + b"".join(raws), len(head)


def _to_json(array: np.ndarray[Any, Any], datatype: str) -> list[Any]:
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return flat.tolist()  # type: ignore[no-any-return]


def _to_raw(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    parts: list[bytes] = []
    for v in array.reshape(-1):
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)
