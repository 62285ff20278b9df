"""The Open Inference Protocol (V2) on a replica: model metadata and ``infer``, for any entry
script (``oip/`` holds the protocol's encoding; this module decides what the script is asked).

A script serves V2 calls in one of two ways, chosen once when it is loaded:

- it defines ``infer(inputs: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]``, which is
  called with the request's tensors by name and answers with named arrays;
- its ``run()`` has inference-schema decorators: the tensors are checked against what they
  declare and passed as run()'s arguments (``oip/signature.py``), and what run() returns
  becomes the outputs.

A script with neither answers V2 calls 400, saying so, while its v1 route keeps working.
``infer`` runs on a worker thread, as run() does for /score, under the same limits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from modelfleet.oip.rest import HEADER_LENGTH, InferError, decode_infer_request, encode_infer_response, error_body
from modelfleet.oip.signature import Signature, outputs_of
from modelfleet.replica.entry import STYLE_SCHEMA, Call, Entry
from modelfleet.replica.responses import Reply
from modelfleet.replica.workers import ScoringInterrupted

__all__ = ["V2Model", "v2_path"]

logger = logging.getLogger("modelfleet.replica")

_JSON = b"Content-Type: application/json\r\n"
MAX_ELEMENTS = 64 * 1024 * 1024  # per input; the body limit bounds it first in practice


def v2_path(path: str) -> tuple[str, str | None, str] | None:
    """(model name, model version or None, action: "" | "ready" | "infer") for a
    ``/v2/models/<name>[/versions/<v>][/ready|/infer]`` path, else None."""
    parts = path.split("/")
    if len(parts) < 4 or parts[1] != "v2" or parts[2] != "models" or not parts[3]:
        return None
    name, rest = parts[3], parts[4:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        version, rest = rest[1], rest[2:]
    if not rest:
        return name, version, ""
    if len(rest) == 1 and rest[0] in ("ready", "infer"):
        return name, version, rest[0]
    return None


def _reply(status: int, body: bytes, header_length: int | None = None) -> Reply:
    headers = _JSON if header_length is None else _JSON + b"%s: %d\r\n" % (HEADER_LENGTH.encode(), header_length)
    return Reply(status, headers, body)


def error_reply(status: int, message: str) -> Reply:
    return _reply(status, error_body(message))


class V2Model:
    """How one loaded entry script answers V2 calls."""

    def __init__(self, entry: Entry, format_exception: Callable[[BaseException], str]) -> None:
        self.entry = entry
        self._format_exception = format_exception
        infer = getattr(entry.module, "infer", None)
        self.infer_function: Callable[[dict[str, Any]], Any] | None = infer if callable(infer) else None
        self.signature = _signature(entry.run_function) if entry.plan.style == STYLE_SCHEMA else None
        self.lacks = (
            None
            if self.infer_function is not None or self.signature is not None
            else (
                f"the entry script {entry.path} cannot serve Open Inference Protocol (V2) calls: its run() has no "
                "inference-schema decorators (@input_schema/@output_schema) and it defines no "
                "infer(inputs: dict[str, numpy.ndarray]); add either. Its v1 route, /score, is unaffected"
            )
        )

    def __repr__(self) -> str:
        how = "infer()" if self.infer_function else "run() schema" if self.signature else "none"
        return f"<V2Model {self.entry.path} via {how}>"

    def metadata(self, name: str, version: str | None) -> Reply:
        if self.lacks is not None:
            return error_reply(400, self.lacks)
        signature = self.signature or Signature((), ())
        return _reply(200, json.dumps(signature.metadata(name, [version] if version else [])).encode())

    def infer(self, call: Call, name: str, version: str | None) -> Reply:
        """Answer one infer request (on a worker thread). A ScoringInterrupted (the scoring
        timeout) is raised on to the caller, which has answered already."""
        if self.lacks is not None:
            return error_reply(400, self.lacks)
        length = call.header(HEADER_LENGTH.encode())
        try:
            header_length = int(length) if length is not None else None
        except ValueError:
            return error_reply(400, f"Inference-Header-Content-Length must be a whole number of bytes (got {length!r})")
        try:
            request = decode_infer_request(call.body, header_length, MAX_ELEMENTS)
            tensors = {t.name: t for t in request.inputs}
            if self.infer_function is not None:
                result = self._call(self.infer_function, {n: t.array for n, t in tensors.items()})
            else:
                assert self.signature is not None
                result = self._call_run(self.signature.bind(request.inputs))
            if isinstance(result, Reply):
                return result
            outputs = outputs_of(result, self.signature if self.infer_function is None else None)
            body, out_length = encode_infer_response(name, version, request, outputs)
        except InferError as ex:
            return error_reply(400, ex.message)
        except (TypeError, ValueError) as ex:
            logger.error("the answer to a V2 infer call could not be encoded: %s", ex)
            return error_reply(500, f"the script's answer cannot be sent as V2 outputs: {ex}")
        return _reply(200, body, out_length)

    def _call(self, function: Callable[[dict[str, Any]], Any], inputs: dict[str, Any]) -> Any:
        try:
            return function(inputs)
        except ScoringInterrupted:
            raise
        except BaseException as ex:  # noqa: BLE001 - the script's failure is the caller's 500, not the worker's
            logger.error("infer() raised:\n%s", self._format_exception(ex))
            return error_reply(500, "infer() raised an exception; the service's log has the traceback")

    def _call_run(self, kwargs: dict[str, Any]) -> Any:
        try:
            return self.entry.run_function(**kwargs)
        except ScoringInterrupted:
            raise
        except BaseException as ex:  # noqa: BLE001 - as above
            logger.error("run() raised for a V2 infer call:\n%s", self._format_exception(ex))
            return error_reply(500, "run() raised an exception; the service's log has the traceback")


def _signature(run: Callable[..., Any]) -> Signature:
    from inference_schema import schema_util  # type: ignore[import-untyped]

    return Signature.from_swagger(schema_util.get_input_schema(run), schema_util.get_output_schema(run))
