"""The request a ``@rawhttp`` run() receives: ``AMLRequest``, the parts of Flask's request v1
scripts use, with werkzeug's case-insensitive ``Headers``, ``MultiDict`` and ``FileStorage``.

azmlinfsrv hands run() a Flask (werkzeug) request. werkzeug itself is not used here: it would
join the runtime every environment installs (about 2 MB with markupsafe, 25-40 ms more cold
start per replica, and a version a script's own Flask may disagree with). Instead this copy is
checked against werkzeug's Request, property by property, in
``tests/replica/test_replica_request_vs_werkzeug.py``. As under a WSGI server, a repeated
header reaches the script once, its values joined by ",".
"""

from __future__ import annotations

import codecs
import email.parser
import email.policy
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from modelfleet.replica.entry import Call, is_json_type


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
        self.headers = Headers(call.header_dict().items())  # as a WSGI server hands them to Flask
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
        return f"{self.scheme}://{self.host}/{_iri_path(quote(self.path.lstrip('/'), safe=_PATH_SAFE))}"

    @property
    def url(self) -> str:
        """The URL as werkzeug gives it: an IRI (percent-escapes of text decoded, reserved kept)."""
        query = self.query_string.decode("latin-1")
        return self.base_url + (f"?{_iri_query(quote(query, safe=_QUERY_SAFE))}" if query else "")

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
        """Cookie values as werkzeug parses them: not percent-decoded; a quoted value unquoted."""
        out: dict[str, str] = {}
        for part in (self.headers.get("Cookie") or "").split(";"):
            key, eq, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not key or not eq:
                continue
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = _COOKIE_UNSLASH.sub(_cookie_unslash, value[1:-1].encode()).decode(errors="replace")
            out.setdefault(key, value)
        return out


# URLs as werkzeug (3.x) builds ``url``/``base_url``: quote, then decode back to an IRI every
# escape except controls, space, "%" and the part's own delimiters.
_PATH_SAFE = "!$&'()*+,/:;=@%"
_QUERY_SAFE = "!$&'()*+,/:;=?@%"
_ALWAYS_QUOTED = bytes((*range(0x21), 0x25, 0x7F)).decode()


def _requote(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    return quote(error.object[error.start : error.end], safe=""), error.end


codecs.register_error("modelfleet.url_quote", _requote)


def _partial_unquote(kept: str) -> Callable[[str], str]:
    pattern = re.compile("((?:%(?:" + "|".join(f"{ord(c):02X}" for c in sorted(kept)) + "))+)", re.I)

    def unquote_part(value: str) -> str:
        parts = iter(pattern.split(value))
        out = []
        for part in parts:
            out.append(unquote(part, "utf-8", "modelfleet.url_quote"))
            out.append(next(parts, ""))
        return "".join(out)

    return unquote_part


_iri_path = _partial_unquote(_ALWAYS_QUOTED + "/?#")
_iri_query = _partial_unquote(_ALWAYS_QUOTED + "&=+#")
_COOKIE_UNSLASH = re.compile(rb"\\([0-3][0-7]{2}|.)")


def _cookie_unslash(match: re.Match[bytes]) -> bytes:
    value = match.group(1)
    return value if len(value) == 1 else int(value, 8).to_bytes(1, "big")


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
