"""The entry-script core: load score.py, decide once how to call run(), call init() and run().

It knows ``init``/``run``, input adaptation and schema validation, and nothing about HTTP: a
request reaches it as a ``Call`` (method, path, query, headers, body) and leaves as whatever
run() returned. ``server.py`` is the v1 HTTP adapter over it.

How run() is called is decided once, at load (``analyse_run``), as azmlinfsrv does:

- ``@rawhttp``: run(request) gets a request object (the first parameter).
- ``@input_schema`` (inference-schema): the JSON body (POST) or the query string (GET) is a
  dictionary whose keys are run()'s parameters; missing ones fall back to their defaults.
- otherwise: run(raw_data) gets the body decoded as UTF-8 (POST), or the query string turned
  into a JSON object string (GET).

A parameter named ``request_headers`` additionally receives the request headers as a dict.

Dynamic batching (``batching.py``): a script may also define ``run_batch(items)``. Each item is
what run()'s data parameter would get for that request: the body as text (plain run), the
request object (``@rawhttp``), or, for ``@input_schema``, the dict of run()'s parameter names to
the JSON values (the decorators are not applied: no type conversion, no schema check).
``request_headers`` is not passed. ``Entry.item(call)`` builds one; ``Entry.batch_function``
is run_batch or None.
Contradictions (``@rawhttp`` with ``@input_schema``, ``*args``, no data parameter) are refused at
load with a message that names the function and the fix.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

from modelfleet.errors import ModelfleetError

# The marker ``@rawhttp`` sets on run(); see compat.rawhttp. An attribute rather than the
# reference's module global, so that two scripts in one process cannot leak into each other.
RAWHTTP_ATTR = "__modelfleet_rawhttp__"

# The reference loads every script under this module name; inference-schema keys its schema
# registry by module and function name, so keeping it keeps swagger documents identical.
SCRIPT_MODULE_NAME = "entry_module"

STYLE_PLAIN = "plain"
STYLE_SCHEMA = "input_schema"
STYLE_RAWHTTP = "rawhttp"


class ScriptError(ModelfleetError):
    """score.py could not be imported, lacks init()/run(), or run() is declared in a way we refuse."""


class InitFailed(ModelfleetError):
    """init() raised; the cause is chained."""


class BadInput(ModelfleetError):
    """The request cannot be turned into run()'s arguments (the reference's 400 answers)."""

    http_status = 400


class UnsupportedInput(ModelfleetError):
    """@input_schema needs a JSON content type (the reference's 415 answer)."""

    http_status = 415


class UnsupportedMethod(ModelfleetError):
    """Only GET and POST reach run() unless it is @rawhttp."""

    http_status = 405


class RunFailed(ModelfleetError):
    """run() raised; ``cause`` holds the exception and ``elapsed_ms`` how long it ran."""

    def __init__(self, cause: BaseException, elapsed_ms: float) -> None:
        super().__init__(f"run() raised {type(cause).__name__}")
        self.cause = cause
        self.elapsed_ms = elapsed_ms


@dataclass(slots=True)
class Call:
    """One request as the core sees it. Header names and values are raw bytes as received."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> str | None:
        """First value of a header (``name`` lower-case), decoded as latin-1."""
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    def header_dict(self) -> dict[str, str]:
        """Headers as WSGI servers hand them to Flask: Title-Case names, repeats joined by ','."""
        out: dict[str, str] = {}
        for key, value in self.headers:
            name = key.decode("latin-1").title()
            text = value.decode("latin-1")
            out[name] = f"{out[name]},{text}" if name in out else text
        return out


@dataclass(frozen=True)
class RunPlan:
    """The outcome of analysing run(): its style, data parameters and whether it takes headers."""

    style: str
    params: tuple[inspect.Parameter, ...]
    wants_headers: bool


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def query_to_dict(query: bytes) -> dict[str, Any]:
    """Query parameters as the reference hands them to run(): each value parsed as JSON when it
    is JSON, else kept as text; a repeated key becomes a list, in first-seen key order."""
    grouped: dict[str, list[str]] = {}
    for key, value in parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True):
        grouped.setdefault(key, []).append(value)
    return {k: _parse_value(vs[0]) if len(vs) == 1 else [_parse_value(v) for v in vs] for k, vs in grouped.items()}


def is_json_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, parameters ignored (werkzeug's is_json)."""
    if not content_type:
        return False
    mimetype = content_type.split(";", 1)[0].strip().lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def _is_schema_decorated(func: Callable[..., Any]) -> bool:
    # inference-schema's decorators register in its module; if the script never imported it,
    # run() cannot be decorated and we need not import it (it pulls wrapt and more).
    if "inference_schema.schema_util" not in sys.modules:
        return False
    from inference_schema.schema_util import is_schema_decorated  # type: ignore[import-untyped]

    return bool(is_schema_decorated(func))


def _is_rawhttp(func: Callable[..., Any]) -> bool:
    if getattr(func, RAWHTTP_ATTR, False):
        return True
    # Scripts written against the reference's own module path set its module global instead.
    ref = sys.modules.get("azureml_inference_server_http.api.aml_request")
    return bool(getattr(ref, "_rawHttpRequested", False))


def analyse_run(run: Callable[..., Any], where: str) -> RunPlan:
    """Decide how run() is called; ``where`` names the script in error messages."""
    try:
        params = list(inspect.signature(run).parameters.values())
    except (TypeError, ValueError) as ex:
        raise ScriptError(f"run() in {where} has no readable signature ({ex}); define it with `def run(data):`") from ex
    odd = [p.name for p in params if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if odd:
        raise ScriptError(
            f"run() in {where} takes positional-only, *args or **kwargs parameters ({', '.join(odd)}); "
            "declare each input as a named parameter, e.g. `def run(data):`"
        )
    wants_headers = any(p.name == "request_headers" for p in params)
    data_params = tuple(p for p in params if p.name != "request_headers")
    if not data_params:
        raise ScriptError(f"run() in {where} takes no parameter for the input data; declare one, e.g. `def run(data):`")
    rawhttp = _is_rawhttp(run)
    schema = _is_schema_decorated(run)
    if rawhttp and schema:
        raise ScriptError(
            f"run() in {where} is decorated with both @rawhttp and @input_schema; keep one: @rawhttp hands "
            "run() the whole request, @input_schema parses the JSON body into run()'s arguments"
        )
    style = STYLE_RAWHTTP if rawhttp else STYLE_SCHEMA if schema else STYLE_PLAIN
    return RunPlan(style=style, params=data_params, wants_headers=wants_headers)


# ---- input adapters: Call -> run() keyword arguments ------------------------------------


class PlainInput:
    """run(raw_data): the body as text (POST) or the query string as a JSON object string (GET)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, call: Call) -> dict[str, Any]:
        if call.method == "POST":
            try:
                return {self.name: call.body.decode("utf-8")}
            except UnicodeDecodeError as ex:
                raise BadInput(f"Input cannot be decoded as UTF-8: {ex}") from None
        if call.method == "GET":
            return {self.name: json.dumps(query_to_dict(call.query))}
        raise UnsupportedMethod(f"Unsupported HTTP method: {call.method}")


class SchemaInput:
    """@input_schema: a JSON dictionary (POST body or GET query) keyed by run()'s parameters."""

    __slots__ = ("params",)

    def __init__(self, params: tuple[inspect.Parameter, ...]) -> None:
        self.params = params

    def __call__(self, call: Call) -> dict[str, Any]:
        if call.method == "GET":
            return self._extract(query_to_dict(call.query))
        if call.method != "POST":
            raise UnsupportedMethod(f"Unsupported HTTP method: {call.method}")
        if not is_json_type(call.header(b"content-type")):
            raise UnsupportedInput("Expects Content-Type to be application/json")
        try:
            body = json.loads(call.body)
        except json.JSONDecodeError as ex:
            if call.body:
                raise BadInput(f"POST body could not be decoded as JSON: {ex}") from None
            raise BadInput("POST body is empty. Expecting a JSON dictionary.") from None
        if not isinstance(body, dict):
            raise BadInput("POST body should be a JSON dictionary.")
        return self._extract(body)

    def _extract(self, body: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.params:
            value = body.get(p.name, p.default)
            if value is inspect.Parameter.empty:
                raise BadInput(f"A value is not provided for the {p.name!r} parameter.")
            out[p.name] = value
        return out


class RawInput:
    """@rawhttp: the first parameter gets a request object built by ``make_request``."""

    __slots__ = ("name", "make_request")

    def __init__(self, name: str, make_request: Callable[[Call], Any]) -> None:
        self.name = name
        self.make_request = make_request

    def __call__(self, call: Call) -> dict[str, Any]:
        return {self.name: self.make_request(call)}


# ---- the loaded script -------------------------------------------------------------------


class Entry:
    """A loaded entry script: ``init()`` once, then ``invoke(call)`` per request (thread-safe
    as far as the script is)."""

    def __init__(
        self,
        path: str,
        module: ModuleType,
        init: Callable[[], Any],
        run: Callable[..., Any],
        plan: RunPlan,
        make_request: Callable[[Call], Any],
    ) -> None:
        self.path = path
        self.module = module
        self.init_function = init
        self.run_function = run
        self.plan = plan
        batch = getattr(module, "run_batch", None)
        self.batch_function: Callable[[list[Any]], Any] | None = batch if callable(batch) else None
        self.adapter: Callable[[Call], dict[str, Any]]
        if plan.style == STYLE_RAWHTTP:
            self.adapter = RawInput(plan.params[0].name, make_request)
        elif plan.style == STYLE_SCHEMA:
            self.adapter = SchemaInput(plan.params)
        else:
            self.adapter = PlainInput(plan.params[0].name)

    def __repr__(self) -> str:
        return f"<Entry {self.path} style={self.plan.style}>"

    def init(self) -> None:
        try:
            self.init_function()
        except BaseException as ex:  # noqa: BLE001 - SystemExit from init() is a failed init too
            raise InitFailed(f"init() in {self.path} raised {type(ex).__name__}: {ex}") from ex

    def item(self, call: Call) -> Any:
        """What run_batch() gets for this call (module docstring); raises BadInput,
        UnsupportedInput or UnsupportedMethod as ``invoke`` does before run()."""
        kwargs = self.adapter(call)
        if self.plan.style == STYLE_SCHEMA:
            return kwargs
        return kwargs[self.plan.params[0].name]

    def check_batching(self) -> None:
        """ScriptError unless run_batch is defined and takes one list (batching is asked for)."""
        batch = self.batch_function
        if batch is None:
            if getattr(self.module, "V2_BATCHED", False) is True:
                return  # V2 calls only are batched (replica/v2.py): /score runs one request at a time
            raise ScriptError(
                f"{self.path} does not define run_batch(items), which max_batch_size > 1 needs; "
                "define it (one answer per item, same order), set V2_BATCHED = True to batch only "
                "Open Inference Protocol calls, or set max_batch_size to 1"
            )
        try:
            inspect.signature(batch).bind([])
        except (TypeError, ValueError) as ex:
            raise ScriptError(
                f"run_batch() in {self.path} cannot be called with one list of items ({ex}); "
                "define it as `def run_batch(items):`"
            ) from ex

    def invoke(self, call: Call) -> tuple[Any, float]:
        """Adapt the call, run run(), return (result, elapsed ms).

        Raises BadInput / UnsupportedInput / UnsupportedMethod before run() is called, and
        RunFailed (with the cause) when run() raises.
        """
        kwargs = self.adapter(call)
        if self.plan.wants_headers:
            kwargs["request_headers"] = call.header_dict()
        start = time.perf_counter()
        try:
            result = self.run_function(**kwargs)
        except BaseException as ex:  # noqa: BLE001 - even SystemExit must not kill a worker thread
            if self.plan.style == STYLE_SCHEMA and refused_by_input_schema(ex):
                # the caller's input, not the script, is at fault (azmlinfsrv answers 500 here)
                raise BadInput(f"Input does not fit run()'s input_schema: {type(ex).__name__}: {ex}") from ex
            raise RunFailed(ex, (time.perf_counter() - start) * 1000) from ex
        return result, (time.perf_counter() - start) * 1000


def refused_by_input_schema(ex: BaseException) -> bool:
    """Whether ``ex`` came from ``@input_schema`` turning the request into run()'s argument,
    before run()'s own body began: the decorator's frame is followed by its deserializer,
    not by the user's function."""
    frames: list[tuple[str, str]] = []
    tb = ex.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    for (filename, name), deeper in zip(frames, frames[1:], strict=False):
        if name == "decorator_input" and filename.endswith(_SCHEMA_DECORATORS):
            return deeper[1] == "_deserialize_input_argument" and deeper[0].endswith(_SCHEMA_DECORATORS)
    return False


_SCHEMA_DECORATORS = os.path.join("inference_schema", "schema_decorators.py")


def load_entry(path: str, make_request: Callable[[Call], Any]) -> Entry:
    """Import the script at ``path`` and analyse its run(); raises ScriptError."""
    try:
        spec = importlib.util.spec_from_file_location(SCRIPT_MODULE_NAME, path)
        if spec is None or spec.loader is None:
            raise ScriptError(f"{path} cannot be loaded as a Python module; the entry script must be a .py file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ScriptError:
        raise
    except BaseException as ex:  # noqa: BLE001 - a script calling sys.exit() at import fails the load too
        raise ScriptError(f"importing {path} raised {type(ex).__name__}: {ex}") from ex

    for name in ("init", "run"):
        if not callable(getattr(module, name, None)):
            raise ScriptError(f"{path} does not define {name}(); an entry script needs both init() and run()")
    run = module.run
    # Generated "driver" scripts forward to the real score script; call its run() directly so
    # that its decorators are seen (as the reference does). init() stays the driver's.
    driver = getattr(module, "driver_module", None)
    if isinstance(driver, ModuleType) and callable(getattr(driver, "run", None)):
        run = driver.run
    plan = analyse_run(run, path)
    return Entry(path, module, module.init, run, plan, make_request)
