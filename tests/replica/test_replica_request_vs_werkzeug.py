"""The request a @rawhttp run() receives (``AMLRequest``, a small copy of the parts of Flask's
request that v1 scripts use) against werkzeug's own Request, which azmlinfsrv hands to run():
for the same request, every property and method that scripts use gives the same answer.

Why a copy and not werkzeug itself: werkzeug (with markupsafe) would join the replica runtime
that every environment installs: about 2 MB and 25-40 ms more cold start per replica, and a pin
that a script's own Flask may disagree with. This test keeps the copy honest instead.
"""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet.replica import compat
from modelfleet.replica.entry import Call

werkzeug_test = pytest.importorskip("werkzeug.test")
werkzeug_wrappers = pytest.importorskip("werkzeug.wrappers")

HOST = "replica:5001"
BOUNDARY = "----modelfleet"
MULTIPART = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="field"\r\n\r\n'
    "value one\r\n"
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="field"\r\n\r\n'
    "value two\r\n"
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="upload"; filename="data.csv"\r\n'
    "Content-Type: text/csv\r\n\r\n"
    "a,b\n1,2\n\r\n"
    f"--{BOUNDARY}--\r\n"
).encode()

# (name, method, path, query, headers, body)
CASES: list[tuple[str, str, str, str, list[tuple[str, str]], bytes]] = [
    ("plain POST", "POST", "/score", "", [("Content-Type", "text/plain")], b"hello"),
    ("JSON", "POST", "/score", "", [("Content-Type", "application/json")], b'{"data": [[1, 2]]}'),
    ("JSON with charset", "POST", "/score", "", [("Content-Type", "application/json; charset=utf-8")], b"[1]"),
    ("JSON+suffix type", "POST", "/score", "", [("Content-Type", "application/vnd.api+json")], b"{}"),
    ("bad JSON", "POST", "/score", "", [("Content-Type", "application/json")], b"{bad"),
    ("JSON body, text type", "POST", "/score", "", [("Content-Type", "text/plain")], b'{"a": 1}'),
    ("no content type", "POST", "/score", "", [], b'{"a": 1}'),
    ("GET with query", "GET", "/score", "a=1&b=%5B1,2%5D&a=2&c=&d=caf%C3%A9", [], b""),
    ("GET without query", "GET", "/score", "", [], b""),
    ("form", "POST", "/score", "q=1", [("Content-Type", "application/x-www-form-urlencoded")], b"x=1&y=two&x=3"),
    ("multipart", "POST", "/score", "", [("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")], MULTIPART),
    ("headers", "POST", "/score", "", [("X-Custom", "hi"), ("X-Multi", "a"), ("X-Multi", "b")], b"x"),
    ("cookies", "GET", "/score", "", [("Cookie", "session=abc; theme=dark%20blue; session=second")], b""),
    ("utf-8 body", "POST", "/score", "", [("Content-Type", "text/plain; charset=utf-8")], "héllo".encode()),
]


def _werkzeug(method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes) -> Any:
    environ = werkzeug_test.EnvironBuilder(
        method=method, path=path, query_string=query, base_url=f"http://{HOST}/", headers=headers, data=body or None
    ).get_environ()
    # WSGI servers (gunicorn under azmlinfsrv) join a repeated header's values with ",".
    for name, _ in headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        if sum(1 for n, _ in headers if n.lower() == name.lower()) > 1 and key in environ:
            environ[key] = ",".join(v for n, v in headers if n.lower() == name.lower())
    return werkzeug_wrappers.Request(environ)


def _ours(method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes) -> Any:
    raw = [("Host", HOST), *headers]
    if body:
        raw.append(("Content-Length", str(len(body))))
    call = Call(method, path, query.encode(), [(k.encode(), v.encode("latin-1")) for k, v in raw], body)
    return compat.AMLRequest(call)


def _observe(request: Any) -> dict[str, Any]:
    """What v1 scripts read from the request, as plain values (the body before the form: in
    werkzeug, parsing a form consumes the body unless it was read first)."""
    body = (request.get_data(), request.get_data(as_text=True))
    files = request.files
    return {
        "method": request.method,
        "path": request.path,
        "full_path": request.full_path,
        "url": request.url,
        "base_url": request.base_url,
        "host": request.host,
        "host_url": request.host_url,
        "url_root": request.url_root,
        "query_string": request.query_string,
        "args": request.args.to_dict(flat=False),
        "args.get": (request.args.get("a"), request.args.get("a", type=int), request.args.get("zz", "dflt")),
        "args.getlist": request.args.getlist("a"),
        "content_type": request.content_type,
        "mimetype": request.mimetype,
        "content_length": request.content_length,
        "is_json": request.is_json,
        "get_json silent": request.get_json(silent=True),
        "get_json force silent": request.get_json(force=True, silent=True),
        "data": request.data,
        "get_data": body,
        "form": request.form.to_dict(flat=False),
        "files": {
            name: [(f.filename, f.content_type, f.mimetype, f.read()) for f in files.getlist(name)] for name in files
        },
        "values": request.values.to_dict(flat=False),
        "header X-Custom": request.headers.get("X-Custom"),
        "header x-multi": request.headers.get("x-multi"),
        "header getlist X-Multi": request.headers.getlist("X-Multi"),
        "header missing": request.headers.get("X-Missing", "none"),
        "Content-Type in headers": "Content-Type" in request.headers,
        "cookies": dict(request.cookies),
    }


@pytest.mark.parametrize(("name", "method", "path", "query", "headers", "body"), CASES, ids=[c[0] for c in CASES])
def test_aml_request_answers_as_werkzeug_does(
    name: str, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    theirs = _werkzeug(method, path, query, headers, body)
    try:
        expected = _observe(theirs)
    finally:
        theirs.close()  # uploaded files are temporary files
    actual = _observe(_ours(method, path, query, headers, body))
    assert actual == expected


def test_get_json_without_a_json_type_raises_in_both() -> None:
    # werkzeug raises UnsupportedMediaType, the copy ValueError: either way run() raised, and
    # both servers answer that request 500 ("run() failed").
    theirs = _werkzeug("POST", "/score", "", [("Content-Type", "text/plain")], b"{}")
    ours = _ours("POST", "/score", "", [("Content-Type", "text/plain")], b"{}")
    with pytest.raises(Exception, match="415|Content-Type"):
        theirs.get_json()
    with pytest.raises(ValueError, match="Content-Type was not 'application/json'"):
        ours.get_json()
