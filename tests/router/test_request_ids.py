"""Request ids (issue 12, "v1 behaviours"): the rules of router/ids.py as plain data, then
every combination of x-ms-request-id, x-request-id and x-ms-client-request-id (absent, short,
100 and 101 characters) against azmlinfsrv directly and through the router to a real replica.

The reference is found through MODELFLEET_REFERENCE_SERVER (see tests/replica_scripts/harness.py);
the parity test is skipped only when it is absent.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator

import httpx
import pytest

from modelfleet.router.ids import MSG_MSID, MSG_XID, IdsTooLong, RequestIds
from replica_scripts.harness import Server, reference_server, request, start_reference, start_replica
from router_upstream import RouterThread, serve_on

NAMES = ("x-ms-request-id", "x-request-id", "x-ms-client-request-id")
UUID = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'


def _parse(lines: bytes) -> dict[bytes, bytes]:
    out = {}
    for line in lines.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            out[name] = value
    return out


def test_rules_as_plain_data() -> None:
    ids = RequestIds()
    got = _parse(ids.lines(None, None, None))  # type: ignore[arg-type]
    assert UUID.match(got[b"x-request-id"]) and got[b"x-ms-request-id"] == got[b"x-request-id"]
    assert b"x-ms-client-request-id" not in got
    got = _parse(ids.lines(b"ms", None, None))  # type: ignore[arg-type]
    assert got[b"x-ms-request-id"] == got[b"x-ms-client-request-id"] == b"ms" and UUID.match(got[b"x-request-id"])
    got = _parse(ids.lines(None, b"x", b"cl"))  # type: ignore[arg-type]
    assert got == {b"x-ms-request-id": b"cl", b"x-request-id": b"x", b"x-ms-client-request-id": b"cl"}
    got = _parse(ids.lines(b"ms", b"x", b"cl"))  # type: ignore[arg-type]
    assert got == {b"x-ms-request-id": b"ms", b"x-request-id": b"x", b"x-ms-client-request-id": b"cl"}
    assert _parse(ids.lines(b"", b"", b""))[b"x-request-id"] != b""  # type: ignore[arg-type]
    assert ids.lines(None, b"a" * 100, b"c" * 100).__class__ is bytes
    long_x = ids.lines(b"m" * 101, b"a" * 101, None)
    assert isinstance(long_x, IdsTooLong) and long_x.message == MSG_XID and long_x.lines == b""
    long_ms = ids.lines(None, b"x", b"c" * 101)
    assert isinstance(long_ms, IdsTooLong) and long_ms.message == MSG_MSID
    assert long_ms.lines == b"x-request-id: x\r\n"
    assert ids.lines(None, "é".encode() * 60, None).__class__ is bytes  # 60 characters, 120 bytes


VALUES = {"absent": None, "short": "{name}-1", "100": "{initial}" * 100, "101": "{initial}" * 101}
COMBOS = list(itertools.product(VALUES, repeat=3))


def _sent(combo: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name, kind in zip(NAMES, combo, strict=True):
        template = VALUES[kind]
        if template is not None:
            out[name] = template.format(name=name, initial=name[2])
    return out


def _comparable(status: int, headers: dict[str, str], body: bytes, sent: dict[str, str]) -> dict[str, object]:
    """Ids the client sent stay; generated ones become <g1>, <g2>... by first appearance."""
    generated: dict[str, str] = {}
    ids: dict[str, str | None] = {}
    for name in NAMES:
        value = headers.get(name)
        if value is not None and value not in sent.values():
            assert UUID.match(value.encode()), (name, value)
            value = generated.setdefault(value, f"<g{len(generated) + 1}>")
        ids[name] = value
    message = json.loads(body).get("message") if status != 200 else None
    return {"status": status, "ids": ids, "message": message}


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, RouterThread]]:
    if reference_server() is None:
        pytest.skip("azmlinfsrv (the v1 reference server) not found; set MODELFLEET_REFERENCE_SERVER")
    tmp = tmp_path_factory.mktemp("ids")
    reference = start_reference("plain_sum.py", tmp)
    replica = start_replica("plain_sum.py", tmp)
    rt = RouterThread()
    try:
        assert replica.port is not None
        serve_on(rt, "svc", [replica.port])
        reference.wait_ready(timeout=60)
        yield reference, rt
    finally:
        rt.close()
        replica.stop()
        reference.stop()


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_ids_through_the_router_match_the_reference(
    both: tuple[Server, RouterThread], combo: tuple[str, str, str]
) -> None:
    reference, rt = both
    sent = _sent(combo)
    assert reference.port is not None
    ref = request(reference.port, "POST", "/score", BODY, sent)
    expected = _comparable(ref.status, ref.headers, ref.body, sent)
    with httpx.Client(timeout=30) as c:
        ours = c.post(rt.url("svc"), content=BODY, headers=sent)
    actual = _comparable(ours.status_code, {k.lower(): v for k, v in ours.headers.items()}, ours.content, sent)
    assert actual == expected
    assert expected["status"] in (200, 431)
