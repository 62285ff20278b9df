"""The v1 names entry scripts import, for environments without the azureml packages.

Scripts written for v1 import ``azureml.core.model.Model`` (for ``get_model_path``),
``azureml.contrib.services.aml_request`` (``rawhttp``, ``AMLRequest``),
``azureml.contrib.services.aml_response`` (``AMLResponse``) and ``azureml.monitoring``
(``ModelDataCollector``). ``install()`` makes those imports work:

- ``azureml.contrib.services.aml_request``/``aml_response`` are always ours, placed in
  ``sys.modules`` before the script is imported, as azmlinfsrv does with its own copies: the
  server must understand the request and response types the script uses.
- Everything else under ``azureml.*`` is served by a finder appended at the *end* of
  ``sys.meta_path`` from the files in ``compat_modules/``; an installed azureml-core or
  azureml-monitoring is found first and wins.

The classes live here; the files under ``compat_modules/azureml`` only re-export them.
"""

from __future__ import annotations

import email.parser
import email.policy
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote

from modelfleet.replica.entry import RAWHTTP_ATTR, Call, is_json_type

# azureml.monitoring.ModelDataCollector is the real collector (telemetry/collect.py): it records
# when the service has collect_model_data, and accepts the calls and stores nothing otherwise.
from modelfleet.telemetry.collect import ModelDataCollector  # noqa: F401 - re-exported

COMPAT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compat_modules")
_FORCED = ("azureml.contrib.services.aml_request", "azureml.contrib.services.aml_response")


class _CompatFinder(importlib.abc.MetaPathFinder):
    """Serves ``azureml.*`` modules from ``COMPAT_ROOT`` when no earlier finder found them."""

    def __init__(self, root: str) -> None:
        self.root = root

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "azureml" and not fullname.startswith("azureml."):
            return None
        base = os.path.join(self.root, *fullname.split("."))
        package_init = os.path.join(base, "__init__.py")
        if os.path.isfile(package_init):
            return importlib.util.spec_from_file_location(fullname, package_init, submodule_search_locations=[base])
        if os.path.isfile(base + ".py"):
            return importlib.util.spec_from_file_location(fullname, base + ".py")
        return None


def install() -> None:
    """Make the v1 imports available (idempotent). Call before importing the entry script."""
    if not any(isinstance(f, _CompatFinder) for f in sys.meta_path):
        sys.meta_path.append(_CompatFinder(COMPAT_ROOT))
    for name in _FORCED:
        if getattr(sys.modules.get(name), "__modelfleet_compat__", False):
            continue
        path = os.path.join(COMPAT_ROOT, *name.split(".")) + ".py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.__modelfleet_compat__ = True  # type: ignore[attr-defined]
        sys.modules[name] = module


# ---- azureml.contrib.services: rawhttp, AMLRequest, AMLResponse --------------------------


def rawhttp(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark run() to receive the request object (``AMLRequest``) instead of the body text."""
    try:
        setattr(func, RAWHTTP_ATTR, True)
    except (AttributeError, TypeError):
        # Callables that refuse attributes (builtins, some C wrappers) get a thin wrapper.
        inner = func

        def func(*args: Any, **kwargs: Any) -> Any:
            return inner(*args, **kwargs)

        func.__wrapped__ = inner  # type: ignore[attr-defined]
        setattr(func, RAWHTTP_ATTR, True)
    return func


class Headers:
    """A small case-insensitive, multi-valued header list with werkzeug's common methods."""

    def __init__(self, items: Iterable[tuple[str, Any]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(k, str(v)) for k, v in items]

    def add(self, key: str, value: Any) -> None:
        self._items.append((key, str(value)))

    add_header = add

    def set(self, key: str, value: Any) -> None:
        low = key.lower()
        for i, (k, _) in enumerate(self._items):
            if k.lower() == low:
                self._items[i] = (key, str(value))
                self._items = [kv for j, kv in enumerate(self._items) if j <= i or kv[0].lower() != low]
                return
        self._items.append((key, str(value)))

    __setitem__ = set

    def get(self, key: str, default: Any = None) -> Any:
        low = key.lower()
        for k, v in self._items:
            if k.lower() == low:
                return v
        return default

    def __getitem__(self, key: str) -> str:
        low = key.lower()
        for k, v in self._items:
            if k.lower() == low:
                return v
        raise KeyError(key)

    def getlist(self, key: str) -> list[str]:
        low = key.lower()
        return [v for k, v in self._items if k.lower() == low]

    def remove(self, key: str) -> None:
        low = key.lower()
        self._items = [kv for kv in self._items if kv[0].lower() != low]

    __delitem__ = remove

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def keys(self) -> list[str]:
        return [k for k, _ in self._items]

    def values(self) -> list[str]:
        return [v for _, v in self._items]

    def extend(self, items: Iterable[tuple[str, Any]] | dict[str, Any]) -> None:
        pairs = items.items() if isinstance(items, dict) else items
        for k, v in pairs:
            self.add(k, v)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class MultiDict(dict):  # type: ignore[type-arg]
    """Query or form values: ``d[key]`` and ``dict(d)`` give the first value, ``getlist`` all."""

    def __init__(self, pairs: Iterable[tuple[str, Any]] = ()) -> None:
        super().__init__()
        self._lists: dict[str, list[Any]] = {}
        for k, v in pairs:
            self._lists.setdefault(k, []).append(v)
            if k not in self:
                super().__setitem__(k, v)

    def getlist(self, key: str, type: Callable[[Any], Any] | None = None) -> list[Any]:  # noqa: A002
        values = self._lists.get(key, [])
        return [type(v) for v in values] if type else list(values)

    def get(self, key: str, default: Any = None, type: Callable[[Any], Any] | None = None) -> Any:  # noqa: A002
        if key not in self:
            return default
        value = self[key]
        if type is None:
            return value
        try:
            return type(value)
        except (ValueError, TypeError):
            return default

    def to_dict(self, flat: bool = True) -> dict[str, Any]:
        return dict(self) if flat else {k: list(v) for k, v in self._lists.items()}

    def items_multi(self) -> list[tuple[str, Any]]:
        return [(k, v) for k, vs in self._lists.items() for v in vs]


class FileStorage:
    """One uploaded file of a multipart/form-data request (werkzeug's common attributes)."""

    def __init__(self, data: bytes, filename: str | None, name: str, content_type: str | None) -> None:
        self.stream = io.BytesIO(data)
        self.filename = filename
        self.name = name
        self.content_type = content_type
        self.mimetype = (content_type or "").split(";", 1)[0].strip()

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(size)

    def save(self, dst: str | Any) -> None:
        data = self.stream.getvalue()
        if isinstance(dst, (str, os.PathLike)):
            with open(dst, "wb") as f:
                f.write(data)
        else:
            dst.write(data)

    def __repr__(self) -> str:
        return f"<FileStorage: {self.filename!r} ({self.content_type!r})>"


class AMLRequest:
    """The request a ``@rawhttp`` run() receives: the parts of Flask's request v1 scripts use."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self.method = call.method
        self.path = call.path
        self.query_string = call.query
        self.headers = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in call.headers)
        self._args: MultiDict | None = None
        self._form: tuple[MultiDict, MultiDict] | None = None

    def __repr__(self) -> str:
        return f"<AMLRequest '{self.full_path}' [{self.method}]>"

    # -- URL parts
    @property
    def args(self) -> MultiDict:
        if self._args is None:
            self._args = MultiDict(parse_qsl(self.query_string.decode("utf-8", "replace"), keep_blank_values=True))
        return self._args

    @property
    def full_path(self) -> str:
        return f"{self.path}?{self.query_string.decode('utf-8', 'replace')}"

    @property
    def host(self) -> str:
        return str(self.headers.get("Host", ""))

    @property
    def scheme(self) -> str:
        return "http"

    @property
    def host_url(self) -> str:
        return f"{self.scheme}://{self.host}/"

    url_root = host_url

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    @property
    def url(self) -> str:
        query = self.query_string.decode("utf-8", "replace")
        return self.base_url + (f"?{query}" if query else "")

    # -- body
    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return None if value is None else str(value)

    @property
    def mimetype(self) -> str:
        return (self.content_type or "").split(";", 1)[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        return len(self._call.body) if self._call.body or "Content-Length" in self.headers else None

    @property
    def is_json(self) -> bool:
        return is_json_type(self.content_type)

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False) -> Any:
        body = self._call.body
        return body.decode("utf-8", "replace") if as_text else body

    @property
    def data(self) -> bytes:
        return self._call.body

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        """The body parsed as JSON. Without ``force`` the content type must be JSON; ``silent``
        returns None instead of raising, as in Flask."""
        if not (force or self.is_json):
            if silent:
                return None
            raise ValueError(
                "Did not attempt to load JSON data because the request Content-Type was not 'application/json'."
            )
        try:
            return json.loads(self._call.body)
        except ValueError:
            if silent:
                return None
            raise

    @property
    def json(self) -> Any:
        return self.get_json()

    # -- forms
    def _parse_form(self) -> tuple[MultiDict, MultiDict]:
        if self._form is None:
            form: list[tuple[str, Any]] = []
            files: list[tuple[str, Any]] = []
            if self.mimetype == "application/x-www-form-urlencoded":
                form = parse_qsl(self._call.body.decode("utf-8", "replace"), keep_blank_values=True)
            elif self.mimetype == "multipart/form-data":
                form, files = _parse_multipart(self.content_type or "", self._call.body)
            self._form = (MultiDict(form), MultiDict(files))
        return self._form

    @property
    def form(self) -> MultiDict:
        return self._parse_form()[0]

    @property
    def files(self) -> MultiDict:
        return self._parse_form()[1]

    @property
    def values(self) -> MultiDict:
        return MultiDict([*self.args.items_multi(), *self.form.items_multi()])

    @property
    def cookies(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in (self.headers.get("Cookie") or "").split(";"):
            if "=" in part:
                k, v = part.split("=", 1)
                out.setdefault(k.strip(), unquote(v.strip()))
        return out


def _parse_multipart(content_type: str, body: bytes) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    form: list[tuple[str, Any]] = []
    files: list[tuple[str, Any]] = []
    if not message.is_multipart():
        return form, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            payload = b""
        if filename is not None:
            files.append((name, FileStorage(payload, filename, name, part.get("Content-Type"))))
        else:
            form.append((name, payload.decode(part.get_content_charset() or "utf-8", "replace")))
    return form, files


class AMLResponse:
    """What a ``@rawhttp`` run() may return: body, status and headers of its own choosing.

    ``AMLResponse(message, status_code, response_headers={}, json_str=False)`` as in v1: with
    ``json_str`` the message is JSON-encoded (``application/json``), otherwise it is sent as
    given (``text/html; charset=utf-8`` unless a Content-Type header says otherwise); None
    sends ``{}``. A header value with commas becomes one header per comma-separated part.

    A message that is an iterable without a length (a generator) is streamed, as a Flask
    response over one is: ``is_streamed`` is true and the server sends each item as it is
    produced (chunked). ``get_data()`` on it reads the whole stream, as in werkzeug.
    """

    default_mimetype = "text/html"

    def __init__(
        self,
        message: Any,
        status_code: int,
        response_headers: dict[str, str] | None = None,
        json_str: bool = False,
        run_function_failed: bool = False,
    ) -> None:
        response_headers = response_headers or {}
        self.status_code = int(status_code)
        self._stream: Iterable[Any] | None = None
        if message is None or json_str:
            self._data = _to_bytes(json.dumps({} if message is None else message))
            content_type = "application/json"
        else:
            content_type = "text/html; charset=utf-8"
            if _is_stream(message):
                self._stream, self._data = message, b""
            else:
                self._data = _to_bytes(message)
        self.headers = Headers()
        if not any(k.lower() == "content-type" for k in response_headers):
            self.headers["Content-Type"] = content_type
        self.headers["x-ms-run-function-failed"] = run_function_failed
        for header, value in response_headers.items():
            for part in value.split(","):
                self.headers.add(header, part.strip())

    def __repr__(self) -> str:
        return f"<AMLResponse {len(self._data)} bytes [{self.status}]>"

    @property
    def status(self) -> str:
        try:
            return f"{self.status_code} {HTTPStatus(self.status_code).phrase.upper()}"
        except ValueError:
            return f"{self.status_code} UNKNOWN"

    @property
    def mimetype(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";", 1)[0].strip()

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return None if value is None else str(value)

    def get_data(self, as_text: bool = False) -> Any:
        if self._stream is not None:  # reading the data ends the stream, as in werkzeug
            stream, self._stream = self._stream, None
            self._data = _to_bytes(stream)
        return self._data.decode("utf-8", "replace") if as_text else self._data

    def set_data(self, value: Any) -> None:
        self._close_stream()
        self._stream = None
        self._data = _to_bytes(value)

    data = property(get_data, set_data)

    @property
    def is_streamed(self) -> bool:
        return self._stream is not None

    @property
    def response(self) -> Iterable[Any]:
        """The body as werkzeug exposes it: the stream, or a one-item list."""
        return self._stream if self._stream is not None else [self._data]

    def iter_encoded(self) -> Iterator[bytes]:
        """The body's pieces as bytes, each as soon as the stream produces it."""
        for item in self.response:
            if item:
                yield _to_bytes(item)

    def close(self) -> None:
        """End the stream: a generator's ``finally`` runs now (the server calls this)."""
        self._close_stream()

    def _close_stream(self) -> None:
        close = getattr(self._stream, "close", None)
        if callable(close):
            close()


def _is_stream(message: Any) -> bool:
    # werkzeug's rule: an iterable without a length is streamed; strings and sequences are not.
    if isinstance(message, (str, bytes, bytearray, memoryview)):
        return False
    return isinstance(message, Iterable) and not hasattr(message, "__len__")


def _to_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, Iterable):
        return b"".join(_to_bytes(chunk) for chunk in body)
    return str(body).encode("utf-8")


# ---- azureml.exceptions and azureml.core.model.Model -------------------------------------


class AzureMLException(Exception):
    def __init__(self, exception_message: str = "", *args: Any, **kwargs: Any) -> None:
        super().__init__(exception_message, *args)
        self.message = exception_message


class WebserviceException(AzureMLException):
    pass


class ModelNotFoundException(WebserviceException):
    pass


def _model_roots() -> list[str]:
    # v1 reads these from the environment of the serving process at call time; so do we.
    roots: list[str] = []
    model_dir = os.environ.get("AZUREML_MODEL_DIR")
    if model_dir:
        trimmed = model_dir.rstrip("/\\") or model_dir
        grandparent = os.path.dirname(os.path.dirname(trimmed))
        if os.path.basename(grandparent) == "azureml-models":
            roots.append(grandparent)  # one model: .../azureml-models/<name>/<version>
        else:
            roots.append(trimmed)  # several models: .../azureml-models, or any folder of <name>/<version>
    roots.append(os.path.join(os.environ.get("AML_APP_ROOT", ""), "azureml-models"))
    return list(dict.fromkeys(roots))


def _latest_version(folder: str) -> int | None:
    versions = [int(v) for v in os.listdir(folder) if v.isdigit()]
    return max(versions) if versions else None


class Model:
    """The part of v1's ``azureml.core.model.Model`` a scoring script uses: ``get_model_path``."""

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None, _workspace: Any = None) -> str:
        """Path of a deployed model, resolved as v1 does inside a service.

        Looks for ``<models>/<model_name>/<version>`` (the latest version when none is given)
        under the folder ``AZUREML_MODEL_DIR`` names (its ``azureml-models`` grandparent when it
        points at one model's version folder) and then under ``$AML_APP_ROOT/azureml-models``.
        Returns the single file or folder inside the version folder, or the version folder when
        it holds several entries; paths are absolute when those variables are. Falls back to
        ``model_name`` as a path relative to the current folder.
        """
        if version is not None and not isinstance(version, int):
            raise WebserviceException("version should be an int")
        if model_name is None:
            raise WebserviceException("model_name is None")
        roots = _model_roots()
        for root in roots:
            folder = os.path.join(root, model_name)
            if not os.path.isdir(folder):
                continue
            chosen = version if version is not None else _latest_version(folder)
            if chosen is None:
                continue
            version_dir = os.path.join(folder, str(chosen))
            if not os.path.isdir(version_dir):
                continue
            entries = sorted(os.listdir(version_dir))
            return os.path.join(version_dir, entries[0]) if len(entries) == 1 else version_dir
        if os.path.exists(model_name):
            return model_name
        wanted = f"{model_name}:{version}" if version is not None else model_name
        raise ModelNotFoundException(
            f"Model {wanted} not found in {', '.join(roots)} or in current working directory {os.getcwd()}; "
            "check the model name and version passed to Model.get_model_path against the deployed models"
        )
