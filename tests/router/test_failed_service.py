"""Issue 12, defect 6: a service whose replicas all failed init() says so and why (503 without
Retry-After), instead of "no capacity, retry"; waiting requests get the same answer at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from modelfleet.router.auth import KeyAuth
from modelfleet.router.proxy import ServiceRoute, Upstream
from router_upstream import RouterThread, UpstreamProcess, serve_on

BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
KEY = {"authorization": "Bearer k1"}
REASON = "every replica failed init(): ValueError: model file is corrupt"


def test_failed_service_answers_503_with_the_reason_and_no_retry_after(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    serve_on(router, "svc", [], auth=KeyAuth("k1", "k2"), max_wait_s=20)
    waited: dict[str, object] = {}

    def wait() -> None:
        t0 = time.monotonic()
        waited["r"] = httpx.post(router.url("svc"), content=BODY, headers=KEY, timeout=30)
        waited["took"] = time.monotonic() - t0

    t = threading.Thread(target=wait)
    t.start()
    deadline = time.monotonic() + 10
    while router.stats()["svc"]["queued"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    router.call(lambda: router.router.set_service_failed("svc", REASON))
    t.join(30)
    r = waited["r"]
    assert isinstance(r, httpx.Response)
    assert r.status_code == 503 and "retry-after" not in r.headers
    assert REASON in r.json()["message"] and "failed" in r.json()["message"]
    assert waited["took"] < 10  # answered when marked, not at the end of max_wait_s (20 s)
    with httpx.Client(timeout=10) as c:
        r = c.post(router.url("svc"), content=BODY, headers=KEY)
        assert r.status_code == 503 and "retry-after" not in r.headers and REASON in r.json()["message"]
        assert c.post(router.url("svc"), content=BODY).status_code == 401  # no reason without a key
        # An update of the route keeps the mark; clearing it gives "no capacity, retry" again.
        route = ServiceRoute("svc", auth=KeyAuth("k1", "k2"), max_wait_s=0.2)
        router.call(lambda: router.router.set_service(route))
        assert c.post(router.url("svc"), content=BODY, headers=KEY).status_code == 503
        assert REASON in c.post(router.url("svc"), content=BODY, headers=KEY).json()["message"]
        router.call(lambda: router.router.set_service_failed("svc", None))
        r = c.post(router.url("svc"), content=BODY, headers=KEY)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and REASON not in r.text
        router.call(lambda: router.router.set_service_failed("svc", REASON))
        # A replica listed again clears the mark: the service serves.
        up = upstreams()
        router.call(lambda: router.router.set_replicas("svc", [Upstream("svc-0", "127.0.0.1", up.port)]))
        assert c.post(router.url("svc"), content=BODY, headers=KEY).status_code == 200
