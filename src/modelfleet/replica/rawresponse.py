"""What a ``@rawhttp`` run() may return: ``AMLResponse``, v1's Flask response subclass, without
Flask. The server sends it through ``responses.encode_result`` (streamed when its body is a
generator)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any

from modelfleet.replica.rawrequest import Headers


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
