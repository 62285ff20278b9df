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

import inspect
import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from modelfleet.oip.errors import HEADER_LENGTH, InferError, error_body
from modelfleet.replica.entry import STYLE_SCHEMA, Call, Entry
from modelfleet.replica.responses import Reply
from modelfleet.replica.workers import ScoringInterrupted

if TYPE_CHECKING:
    from modelfleet.oip.rest import InferRequest, Tensor
    from modelfleet.oip.signature import Signature

__all__ = ["V2_BATCHED", "V2Model", "error_reply", "v2_model_refusal", "v2_path"]

logger = logging.getLogger("modelfleet.replica")

_JSON = b"Content-Type: application/json\r\n"
V2_BATCHED = "V2_BATCHED"  # the entry script's module-level declaration
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


def v2_model_refusal(name: str, version: str | None, models: Sequence[tuple[str, str]]) -> str | None:
    """Why a V2 path's model name or version is not this service's (a 404's message), or None.
    ``name`` is ``<service>`` or ``<service>.<model>`` (one model of the service's); ``version``,
    when given, must be that model's version (``<service>``: any of the service's models').
    ``models`` empty (``modelfleet serve``): anything goes."""
    if not models:
        return None
    _, dot, model = name.partition(".")
    if dot:
        versions = [v for n, v in models if n == model]
        if not versions:
            return f"'{name}': this service has no model '{model}'; it has {', '.join(sorted({n for n, _ in models}))}"
    else:
        versions = [v for _, v in models]
    if version is not None and version not in versions:
        return f"model '{name}' has no version {version}; it has {', '.join(sorted(set(versions)))}"
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
        self.infer_function: Callable[..., Any] | None = infer if callable(infer) else None
        # infer(inputs, model_name=...) is told which model a <service>.<model> call named (else None)
        self.infer_takes_model = self.infer_function is not None and _takes(self.infer_function, "model_name")
        # the script says its infer() (or run()) answers row by row along the first dimension:
        # with max_batch_size > 1, concurrent V2 calls are joined into one (infer_batch)
        self.batched = getattr(entry.module, V2_BATCHED, False) is True
        # Found on the first V2 call (_prepare): numpy, which the protocol's tensors need, is
        # loaded then, never at a replica's start (not every environment has it).
        self.prepared = False
        self.signature: Signature | None = None
        self.lacks: str | None = None

    def __repr__(self) -> str:
        how = "infer()" if self.infer_function else "run() schema" if self.signature else "none"
        return f"<V2Model {self.entry.path} via {how}>"

    def _prepare(self) -> str | None:
        """What the script lacks for V2 (a 400's message), or None; works it out once."""
        if not self.prepared:
            try:
                import numpy  # noqa: F401 - only its presence is checked here
            except ImportError:
                self.lacks = (
                    "Open Inference Protocol (V2) calls need numpy in the service's environment; add numpy to "
                    "its requirements. Its v1 route, /score, is unaffected"
                )
            else:
                if self.entry.plan.style == STYLE_SCHEMA:
                    self.signature = _signature(self.entry.run_function)
                if self.infer_function is None and self.signature is None:
                    self.lacks = (
                        f"the entry script {self.entry.path} cannot serve Open Inference Protocol (V2) calls: its "
                        "run() has no inference-schema decorators (@input_schema/@output_schema) and it defines no "
                        "infer(inputs: dict[str, numpy.ndarray]); add either. Its v1 route, /score, is unaffected"
                    )
            self.prepared = True
        return self.lacks

    def metadata(self, name: str, version: str | None) -> Reply:
        lacks = self._prepare()
        if lacks is not None:
            return error_reply(400, lacks)
        from modelfleet.oip.signature import Signature

        signature = self.signature or Signature((), ())
        return _reply(200, json.dumps(signature.metadata(name, [version] if version else [])).encode())

    def infer(self, call: Call, name: str, version: str | None) -> Reply:
        """Answer one infer request (on a worker thread). A ScoringInterrupted (the scoring
        timeout) is raised on to the caller, which has answered already."""
        request = self._decode(call)
        return request if isinstance(request, Reply) else self._answer(request, name, version)

    def _answer(self, request: InferRequest, name: str, version: str | None) -> Reply:
        try:
            result = self._compute(request.inputs, name)
            if isinstance(result, Reply):
                return result
            return self._encode(name, version, request, self._outputs(result))
        except InferError as ex:
            return error_reply(400, ex.message)
        except (TypeError, ValueError) as ex:  # an answer with no V2 datatype (outputs_of)
            logger.error("the answer to a V2 infer call could not be encoded: %s", ex)
            return error_reply(500, f"the script's answer cannot be sent as V2 outputs: {ex}")

    def infer_batch(self, calls: Sequence[tuple[Call, str, str | None]]) -> list[Reply]:
        """Answer several infer requests with one call of the script (on a worker thread):
        requests whose inputs have the same names, datatypes and dimensions after the first are
        joined along the first dimension, computed once, and each gets its own rows of every
        output back. A request that cannot be joined is computed on its own; a call that raises
        fails the requests it held."""
        replies: list[Reply | None] = [None] * len(calls)
        groups: dict[tuple[tuple[str, str, tuple[int, ...]], ...], list[tuple[int, InferRequest]]] = {}
        for i, (call, _, _) in enumerate(calls):
            request = self._decode(call)
            if isinstance(request, Reply):
                replies[i] = request
                continue
            if any(len(t.shape) == 0 for t in request.inputs):
                groups.setdefault(((f"#{i}", "", ()),), []).append((i, request))  # nothing to join along
                continue
            key = ((calls[i][1], "", ()), *sorted((t.name, t.datatype, t.shape[1:]) for t in request.inputs))
            groups.setdefault(key, []).append((i, request))
        for members in groups.values():
            for i, reply in zip([i for i, _ in members], self._joined(calls, members), strict=True):
                replies[i] = reply
        return [r if r is not None else error_reply(500, "no answer was made for this request") for r in replies]

    def _joined(
        self, calls: Sequence[tuple[Call, str, str | None]], members: list[tuple[int, InferRequest]]
    ) -> list[Reply]:
        import numpy as np  # present: _decode checked (_prepare)

        from modelfleet.oip import rest

        if len(members) == 1 or any(len({t.shape[0] for t in r.inputs}) > 1 for _, r in members):
            # alone, or inputs that disagree on the first dimension (their rows cannot be split back)
            return [self._answer(request, calls[i][1], calls[i][2]) for i, request in members]
        rows = [r.inputs[0].shape[0] for _, r in members]
        by_name = [{t.name: t.array for t in r.inputs} for _, r in members]
        joined = [
            rest.Tensor(t.name, t.datatype, (sum(rows), *t.shape[1:]), np.concatenate([own[t.name] for own in by_name]))
            for t in members[0][1].inputs
        ]
        try:
            result = self._compute(joined, calls[members[0][0]][1])
        except InferError as ex:
            return [error_reply(400, ex.message)] * len(members)
        if isinstance(result, Reply):
            return [result] * len(members)
        try:
            outputs = self._outputs(result)
        except (TypeError, ValueError) as ex:
            return [error_reply(500, f"the script's answer cannot be sent as V2 outputs: {ex}")] * len(members)
        total = sum(rows)
        wrong = [name for name, array in outputs if array.ndim == 0 or array.shape[0] != total]
        if wrong:
            message = (
                f"the batched call's output {', '.join(map(repr, wrong))} does not have one row per input row "
                f"({total}); a script that sets V2_BATCHED must answer along the first dimension"
            )
            logger.error("%s", message)
            return [error_reply(500, message)] * len(members)
        replies: list[Reply] = []
        at = 0
        for (i, request), count in zip(members, rows, strict=True):
            own = [(name, array[at : at + count]) for name, array in outputs]
            at += count
            try:
                replies.append(self._encode(calls[i][1], calls[i][2], request, own))
            except InferError as ex:
                replies.append(error_reply(400, ex.message))
        return replies

    def _decode(self, call: Call) -> InferRequest | Reply:
        lacks = self._prepare()
        if lacks is not None:
            return error_reply(400, lacks)
        from modelfleet.oip.rest import decode_infer_request

        length = call.header(HEADER_LENGTH.encode())
        try:
            header_length = int(length) if length is not None else None
        except ValueError:
            return error_reply(400, f"Inference-Header-Content-Length must be a whole number of bytes (got {length!r})")
        try:
            return decode_infer_request(call.body, header_length, MAX_ELEMENTS)
        except InferError as ex:
            return error_reply(400, ex.message)

    def _compute(self, inputs: Sequence[Tensor], name: str) -> Any:
        """What the script answers for these tensors (a Reply when it raised); InferError when they
        do not fit run()'s schema. ``name``: the V2 model name called (``<service>[.<model>]``)."""
        infer = self.infer_function
        if infer is not None:
            tensors = {t.name: t.array for t in inputs}
            if self.infer_takes_model:
                model = name_of(name)
                return self._call(lambda x: infer(x, model_name=model), tensors)
            return self._call(infer, tensors)
        assert self.signature is not None
        return self._call_run(self.signature.bind(inputs))

    def _outputs(self, result: Any) -> Any:
        """What the script returned as named arrays (run()'s: in its output schema's datatypes)."""
        from modelfleet.oip.signature import outputs_of

        return outputs_of(result, self.signature if self.infer_function is None else None)

    def _encode(self, name: str, version: str | None, request: InferRequest, outputs: Any) -> Reply:
        try:
            from modelfleet.oip.rest import encode_infer_response

            body, out_length = encode_infer_response(name, version, request, outputs)
        except (TypeError, ValueError) as ex:
            if isinstance(ex, InferError):
                raise
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


def name_of(v2_name: str) -> str | None:
    """The model part of ``<service>.<model>``, or None for ``<service>``."""
    return v2_name.partition(".")[2] or None


def _takes(function: Callable[..., Any], parameter: str) -> bool:
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _signature(run: Callable[..., Any]) -> Signature:
    from inference_schema import schema_util  # type: ignore[import-untyped]

    from modelfleet.oip.signature import Signature

    return Signature.from_swagger(schema_util.get_input_schema(run), schema_util.get_output_schema(run))
