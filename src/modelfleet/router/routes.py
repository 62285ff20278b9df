"""What the router knows about each service, and every answer it can give without a replica.

``ServiceRoute`` is a service's settings as the control plane hands them over; ``Upstream`` is
one replica's address; ``ServiceState`` is what the router keeps per service between
``set_service`` and ``remove_service`` (dispatcher, replica addresses, timers and the answers
built once for it). The canned 401/404/405/413/502/503/504 answers are bytes built here once
(JSON body included), so nothing on the request path formats them; the header tables say
which headers cross the router as they are.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from modelfleet import __version__
from modelfleet.errors import ConfigError, error_body
from modelfleet.router.auth import AuthCheck
from modelfleet.router.dispatch import Dispatch
from modelfleet.spec.names import MODEL_NAME_RULE, is_model_name, is_version_service_name, validate_service_name
from modelfleet.telemetry.counters import ServiceMetrics

__all__ = [
    "BUSY_HEADER",
    "C_400",
    "C_400_SMUGGLING",
    "C_408",
    "C_401_INVALID",
    "C_401_MISSING",
    "C_404",
    "C_405_ROOT",
    "C_HEALTH",
    "REQ_SPECIAL",
    "RESP_SKIP",
    "Canned",
    "Decision",
    "ServiceRoute",
    "ServiceState",
    "Upstream",
    "Versions",
    "error_answer",
    "route",
    "status_line",
]


@dataclass(frozen=True)
class ServiceRoute:
    """How the router serves one service. ``auth`` is any object with ``check`` (or None)."""

    name: str
    auth: AuthCheck | None = None
    max_concurrent: int = 1
    max_wait_s: float = 0.5
    timeout_s: float = 60.0
    max_body_bytes: int = 100 * 1024 * 1024
    trace: bool = False  # enable_app_insights: each request's timings go to the router's tracer

    def __post_init__(self) -> None:
        if not is_version_service_name(self.name):  # an endpoint's version runs as "<endpoint>:<version>"
            validate_service_name(self.name)  # the one rule, from spec/names.py
        if not isinstance(self.max_concurrent, int) or self.max_concurrent < 1:
            raise ConfigError(f"replica_max_concurrent_requests must be an integer >= 1 (got {self.max_concurrent!r})")
        if not self.max_wait_s >= 0:
            raise ConfigError(f"max_request_wait_time must be >= 0 seconds (got {self.max_wait_s!r})")
        if not self.timeout_s > 0:
            raise ConfigError(f"scoring_timeout_ms must be > 0 (got {self.timeout_s!r} s)")
        if not isinstance(self.max_body_bytes, int) or self.max_body_bytes < 0:
            raise ConfigError(f"max_body_bytes must be an integer >= 0 (got {self.max_body_bytes!r})")
        if self.auth is not None and not callable(getattr(self.auth, "check", None)):
            raise ConfigError(f"auth must have a check(header) method or be None (got {self.auth!r})")


SECRET_HEADER = b"x-modelfleet-replica-secret"
_SECRET_RE = re.compile(rb"^[\x21-\x7e]{16,512}$")


@dataclass(frozen=True)
class Upstream:
    """One replica's address: TCP ``host:port``, or the Unix domain socket ``unix_path`` (the
    local cluster's replicas listen in its private directory; host and port then only name
    it in logs). ``secret``: the replica's service's own secret (never the same for two
    services), sent to the replica with every request as ``x-modelfleet-replica-secret``
    inside ``head_lines`` (built once per replica, in ``Router.set_replicas``). A replica
    given one refuses every request but ``GET /`` without it, so neither a replica of another
    service (local replicas of a root daemon all run as ``nobody`` and can reach each other's
    sockets) nor another pod (Kubernetes replicas listen on TCP) can score it around the
    router. The local target makes one per service, the Kubernetes target keeps it in the
    service's Secret (``replicaSecret``). Clients' own copies of that header are dropped,
    never forwarded."""

    id: str
    host: str
    port: int
    unix_path: str | None = None
    secret: bytes | None = None

    def __post_init__(self) -> None:
        if self.unix_path is not None and (not isinstance(self.unix_path, str) or not self.unix_path):
            raise ConfigError(f"replica {self.id}: unix_path must be a non-empty path (got {self.unix_path!r})")
        if self.secret is not None and (not isinstance(self.secret, bytes) or not _SECRET_RE.match(self.secret)):
            raise ConfigError(
                f"replica {self.id}: secret must be 16-512 bytes of visible ASCII (no spaces or control characters)"
            )

    @property
    def key(self) -> tuple[str, int]:
        """The connection pool's key: (host, port), or (unix_path, -1)."""
        return (self.unix_path, -1) if self.unix_path is not None else (self.host, self.port)

    def head_lines(self) -> bytes:
        """The header lines the router adds to every request to this replica."""
        host = b"localhost" if self.unix_path is not None else f"{self.host}:{self.port}".encode()
        lines = b"host: " + host + b"\r\n"
        if self.secret is not None:
            lines += SECRET_HEADER + b": " + self.secret + b"\r\n"
        return lines


# -- precomputed answers ----------------------------------------------------------------

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class Canned:
    """A whole answer built once: head lines (without date/request ids) and JSON body."""

    __slots__ = ("status", "head", "body")

    def __init__(self, status: int, body: bytes, extra: Sequence[tuple[str, str]] = ()) -> None:
        self.status = status
        self.body = body
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])]
        lines.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        lines += [f"{k}: {v}\r\n".encode() for k, v in extra]
        self.head = b"".join(lines)


def error_answer(status: int, message: str, extra: Sequence[tuple[str, str]] = ()) -> Canned:
    return Canned(status, error_body(message), extra)


C_HEALTH = Canned(200, b'{"status": "Healthy"}')
C_404 = error_answer(
    404,
    "no such service or route; scoring URLs look like /api/v1/service/<name>/score, and "
    "`modelfleet service list` shows the deployed names",
)
C_405_ROOT = error_answer(405, "only GET is allowed on /", [("allow", "GET")])
C_400 = error_answer(400, "malformed HTTP request")
C_400_SMUGGLING = error_answer(
    400,
    "malformed HTTP request: Content-Length together with Transfer-Encoding, or more than one "
    "Content-Length, is refused (request smuggling)",
)
C_408 = error_answer(408, "the request's headers did not arrive within the router's header timeout")
C_401_MISSING = error_answer(401, "missing", [("www-authenticate", "Bearer")])
C_401_INVALID = error_answer(401, "invalid", [("www-authenticate", "Bearer")])


class Timed(Hashable, Protocol):
    """A request on a replica, as the scoring timeout sees it (``cycle.Cycle``)."""

    def timed_out(self) -> None: ...


class Versions(Protocol):
    """An endpoint's versions (``versions.EndpointState``): which one serves a request."""

    def pick(self, pin: bytes | None, session: bytes | None) -> tuple[ServiceState | None, Canned | None, bytes]: ...
    def refresh(self, services: Mapping[bytes, ServiceState]) -> None: ...


class ServiceState:
    """Everything the router keeps per service, from set_service to remove_service.

    An endpoint's front (``versions``) is one too: its route holds the endpoint's auth and body
    limit, and ``endpoint`` picks the version's service that serves each request. A version's
    own service (``<endpoint>:<version>``) is reached only through its endpoint: its paths
    answer 404 (decisions built so, nothing checked per request)."""

    def __init__(self, route: ServiceRoute) -> None:
        self.route = route
        self.endpoint: Versions | None = None
        self.dispatch = Dispatch(route.name, route.max_concurrent, route.max_wait_s)
        # id -> (upstream, pool key, header lines added for it); holds listed replicas and retiring ones
        # that still have requests in flight.
        self.addresses: dict[str, tuple[Upstream, tuple[str, int], bytes]] = {}
        # Queue timer: fires at the dispatcher's next_wakeup (deadlines, busy back-off).
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")
        # Scoring timeout: requests on a replica, oldest first, with the time each was sent.
        # One timer per service, armed for the oldest, instead of one per request (a timer
        # handle costs ~2 us; an OrderedDict entry ~0.2 us). Sent order is deadline order.
        self.sending: OrderedDict[Timed, float] = OrderedDict()
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.drains: list[tuple[frozenset[str], asyncio.Future[None]]] = []
        self.removed = False
        self.failed: str | None = None  # why the service cannot serve (its replicas failed init())
        self.c503_failed: Canned | None = None
        self.metrics = ServiceMetrics()  # plain counters, exported on scrape (telemetry/metrics.py)
        self._build(route)

    def _build(self, r: ServiceRoute) -> None:
        n = r.name
        self.c405_score = error_answer(
            405, f"only GET and POST are allowed on /api/v1/service/{n}/score", [("allow", "GET, POST")]
        )
        self.c405_swagger = error_answer(
            405, f"only GET is allowed on /api/v1/service/{n}/swagger.json", [("allow", "GET")]
        )
        self.c413 = c413 = error_answer(
            413,
            f"request body is larger than the {r.max_body_bytes} bytes service '{n}' accepts; send a "
            "smaller payload or raise the service's body limit",
        )
        self.c502 = error_answer(
            502,
            f"a replica of service '{n}' failed while handling the request; it is being checked, and "
            f"`modelfleet service logs -n {n}` shows its log",
        )
        self.c503 = error_answer(
            503,
            f"no replica of service '{n}' had capacity within max_request_wait_time "
            f"({round(r.max_wait_s * 1000)} ms); retry later, or raise autoscale_max_replicas or "
            "replica_max_concurrent_requests",
            [("retry-after", "1")],
        )
        self.c504 = error_answer(
            504,
            f"service '{n}' did not answer within scoring_timeout_ms ({round(r.timeout_s * 1000)} ms); "
            "raise scoring_timeout_ms or make run() faster",
        )
        # What route() decides for this service, built once (no allocation per request).
        auth = r.auth is not None
        self.d_score = Decision(self, None, auth, b"/score")
        self.d_score_413 = Decision(self, c413, auth, b"")
        self.d_swagger = Decision(self, None, False, b"/swagger.json")
        self.d_swagger_413 = Decision(self, c413, False, b"")
        self.d_405_score = Decision(self, self.c405_score, False, b"")
        self.d_405_swagger = Decision(self, self.c405_swagger, False, b"")
        # another path under the service's prefix: 404, counted as the service's answer
        self.d_404 = Decision(self, C_404, False, b"")
        if is_version_service_name(n):  # reached through its endpoint only
            self.d_score = self.d_score_413 = self.d_swagger = self.d_swagger_413 = self.d_404
            self.d_405_score = self.d_405_swagger = self.d_404

    def update(self, route: ServiceRoute) -> None:
        self.route = route
        self._build(route)
        self.set_failed(self.failed)

    def set_failed(self, reason: str | None) -> None:
        """Mark the service failed (answers 503 saying why, with no Retry-After) or, with
        ``None``, able to serve again."""
        self.failed = reason
        if reason is None:
            self.c503_failed = None
            return
        n = self.route.name
        self.c503_failed = error_answer(
            503,
            f"service '{n}' failed: {reason}. It answers no request until it is fixed and updated "
            f"(`modelfleet service show -n {n}`, `modelfleet service logs -n {n}`); retrying will not help",
        )


# -- header tables -------------------------------------------------------------------------

(H_FORWARD, H_DROP, H_AUTH, H_LENGTH, H_TE, H_EXPECT, H_MSID, H_XID, H_CLID, H_DEADLINE, H_PIN, H_SESSION, H_MODEL,
 H_MODEL_VERSION, H_CONN) = range(15)  # fmt: skip
# Request headers not forwarded as they are (hop-by-hop, reframed, or router-owned). H_CONN:
# dropped too, and the head said how its connection goes (the client's HTTP version is then
# asked of the parser: see client.on_headers_complete).
REQ_SPECIAL = {
    b"connection": H_CONN,
    b"keep-alive": H_CONN,
    b"proxy-connection": H_CONN,
    b"te": H_DROP,
    b"trailer": H_DROP,
    b"upgrade": H_DROP,
    b"host": H_DROP,
    SECRET_HEADER: H_DROP,  # only the router may send it
    b"azureml-model-deployment": H_PIN,  # an endpoint's version (versions.py): read; the router sends its own
    b"x-modelfleet-session": H_SESSION,  # an endpoint's sticky key (versions.py): read, and forwarded
    b"authorization": H_AUTH,  # keys never reach the replica (or its logs)
    b"content-length": H_LENGTH,
    b"transfer-encoding": H_TE,
    b"expect": H_EXPECT,
    b"x-ms-request-id": H_MSID,
    b"x-request-id": H_XID,
    b"x-ms-client-request-id": H_CLID,
    b"x-request-timeout-ms": H_DEADLINE,  # the caller's deadline; the replica gets what is left (cycle.py)
    b"x-ms-model": H_MODEL,  # model-aware routing (affinity.py): read, and sent on (the URL's model wins)
    b"x-ms-model-version": H_MODEL_VERSION,  # with x-ms-model: read, and forwarded
}
# Response headers not forwarded as they are.
RESP_SKIP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
        b"x-ms-request-id",
        b"x-request-id",
        b"x-ms-client-request-id",
        b"azureml-model-deployment",  # an endpoint's answers carry the router's own (versions.py)
    ]
)
BUSY_HEADER = b"x-modelfleet-busy"
_status_lines: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes) -> bytes:
    line = _status_lines.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, b""))
        if len(_status_lines) < 128:
            _status_lines[(status, reason)] = line
    return line


# -- routing -------------------------------------------------------------------------------

SERVICE_PREFIX = b"/api/v1/service/"


class Decision:
    """What a request's head decides before any I/O: the service (or ``None``), the answer the
    router gives itself (or ``None``: forward it to a replica, at ``path``), and whether the
    service's credentials must be checked first (a failed check answers 401 instead). ``model``:
    the model named by the URL (``/models/<model>/score``), routed by (affinity.py)."""

    __slots__ = ("service", "answer", "check_auth", "path", "model")

    def __init__(
        self,
        service: ServiceState | None,
        answer: Canned | None,
        check_auth: bool,
        path: bytes,
        model: bytes | None = None,
    ) -> None:
        self.service = service
        self.answer = answer
        self.check_auth = check_auth
        self.path = path
        self.model = model

    def __repr__(self) -> str:
        name = self.service.route.name if self.service is not None else None
        status = self.answer.status if self.answer is not None else None
        return f"<Decision service={name} answer={status} check_auth={self.check_auth} path={self.path!r}>"


D_404 = Decision(None, C_404, False, b"")
C_404_MODEL = error_answer(
    404,
    f"the model name in /api/v1/service/<name>/models/<model>/score must be {MODEL_NAME_RULE}",
)
D_HEALTH = Decision(None, C_HEALTH, False, b"")
D_405_ROOT = Decision(None, C_405_ROOT, False, b"")

# The Open Inference Protocol (V2): the server's own health and metadata are the router's
# answers; a model's (a service's) paths go to its replicas (replica/v2.py) after its
# credentials, as /score does. ``<service>.<model>`` names one model of a multi-model service
# (service names hold no dot).
V2_PREFIX = b"/v2/models/"
D_V2_LIVE = Decision(None, Canned(200, b'{"live": true}'), False, b"")
D_V2_READY = Decision(None, Canned(200, b'{"ready": true}'), False, b"")
D_V2_SERVER = Decision(
    None,
    Canned(
        200,
        json.dumps({"name": "modelfleet", "version": __version__, "extensions": ["binary_tensor_data"]}).encode(),
    ),
    False,
    b"",
)
D_405_V2_GET = Decision(None, error_answer(405, "only GET is allowed on this V2 path", [("allow", "GET")]), False, b"")
D_405_V2_INFER = Decision(
    None, error_answer(405, "only POST is allowed on a V2 infer path", [("allow", "POST")]), False, b""
)
_V2_SERVER_PATHS = {b"/v2": D_V2_SERVER, b"/v2/health/live": D_V2_LIVE, b"/v2/health/ready": D_V2_READY}


def route_v2(method: bytes, path: bytes, length: int, table: Mapping[bytes, ServiceState]) -> Decision:
    """``route()`` for paths under ``/v2``: a new Decision for a model's path (the replica gets
    the path as it came), a prebuilt one for the rest."""
    server = _V2_SERVER_PATHS.get(path)
    if server is not None:
        return server if method == b"GET" else D_405_V2_GET
    if not path.startswith(V2_PREFIX):
        return D_404
    rest = path[11:]
    cut = rest.find(b"/")
    name = rest if cut < 0 else rest[:cut]
    service, _, model_name = name.partition(b".")
    svc = table.get(service)
    if svc is None or svc.d_score is svc.d_404:  # unknown, or an endpoint's version (reached through it)
        return D_404
    # <service>.<model>: one model of a multi-model service, routed to the replicas holding it
    model = model_name if model_name and is_model_name(model_name.decode("latin-1")) else None
    if model_name and model is None:
        return svc.d_404
    tail = b"" if cut < 0 else rest[cut:]
    if tail.startswith(b"/versions/"):
        version_cut = tail.find(b"/", 10)
        tail = b"" if version_cut < 0 else tail[version_cut:]
    if tail == b"/infer":
        if method != b"POST":
            return D_405_V2_INFER
        if length > svc.route.max_body_bytes:
            return svc.d_score_413
        return Decision(svc, None, svc.d_score.check_auth, path, model)
    if tail == b"" or tail == b"/ready":
        return Decision(svc, None, svc.d_score.check_auth, path, model) if method == b"GET" else D_405_V2_GET
    return svc.d_404


def _route_model(method: bytes, model: bytes, length: int, svc: ServiceState) -> Decision:
    """``/api/v1/service/<name>/models/<model>/score``: /score's decision, routed by ``model``."""
    if method != b"POST" and method != b"GET":
        return svc.d_405_score
    if not is_model_name(model.decode("latin-1")):
        return Decision(svc, C_404_MODEL, False, b"")
    if length > svc.route.max_body_bytes:
        return svc.d_score_413
    return Decision(svc, None, svc.d_score.check_auth, b"/score", model)


def route(method: bytes, path: bytes, length: int, table: Mapping[bytes, ServiceState]) -> Decision:
    """Where a request goes, from its method, path (no query string), Content-Length (-1 when
    absent) and the services by name. Pure: the same inputs give the same decision.

    ``GET /``: health. ``POST|GET /api/v1/service/<name>/score``: the service's replicas, after
    its credentials. ``GET /api/v1/service/<name>/swagger.json``: a replica, no credentials.
    Another method on those paths: 405; any other path or unknown name: 404; a body declared
    larger than the service accepts: 413 (after the credentials, on /score). ``/v2``: the Open
    Inference Protocol (``route_v2``). ``/api/v1/service/<name>/models/<model>/score``: as
    /score, sent to the replica as /score routed by the model (``Decision.model``, affinity.py);
    a model name outside v1's rule: 404 saying the rule."""
    if path.startswith(SERVICE_PREFIX):
        rest = path[16:]
        cut = rest.find(b"/")
        svc = table.get(rest[:cut]) if cut > 0 else None
        if svc is None:
            return D_404
        tail = rest[cut:]
        if tail == b"/score":
            if method != b"POST" and method != b"GET":
                return svc.d_405_score
            return svc.d_score_413 if length > svc.route.max_body_bytes else svc.d_score
        if tail == b"/swagger.json":
            if method != b"GET":
                return svc.d_405_swagger
            return svc.d_swagger_413 if length > svc.route.max_body_bytes else svc.d_swagger
        if tail.startswith(b"/models/") and tail.endswith(b"/score") and svc.d_score is not svc.d_404:
            return _route_model(method, tail[8:-6], length, svc)
        return svc.d_404
    if path == b"/":
        return D_HEALTH if method == b"GET" else D_405_ROOT
    if path.startswith(b"/v2"):
        return route_v2(method, path, length, table)
    return D_404
