"""The replica's settings: one frozen value, built from argv and an environment mapping.

``parse_config(argv, environ, cwd)`` is pure (it reads only its arguments), so tests build
configurations without touching ``os.environ``; ``modelfleet.replica.main`` is the only caller
that passes the real ones. Flag names, defaults and precedence follow ``azmlinfsrv`` 1.5:

- ``--entry_script`` wins over ``AZUREML_ENTRY_SCRIPT``; a flag path is taken relative to the
  current folder, an environment path relative to ``AML_APP_ROOT`` (then to the source folder,
  since v1 writes it as ``<source dir>/<script>`` but the local supervisor writes it relative to
  the source folder).
- ``--model_dir`` wins over ``AZUREML_MODEL_DIR``; ``--worker_count`` over ``WORKER_COUNT``;
  ``--access_control_allow_origins`` over ``AML_CORS_ORIGINS``.
- ``--port`` defaults to 5001 whatever ``SERVER_PORT`` says (the reference overwrites it too).
- ``AML_APP_ROOT`` defaults to the current folder; ``AZUREML_SOURCE_DIRECTORY`` is joined to it.
- ``SCORING_TIMEOUT_MS`` (default one hour), ``SERVICE_NAME``, ``SERVICE_VERSION`` and
  ``SERVICE_PATH_PREFIX`` (swagger), ``SERVER_VERSION_LOG_RESPONSE_ENABLED`` (x-ms-server-version).

modelfleet's own settings, which the local target and ``control/layout.py`` set (telemetry):

- ``MODELFLEET_LOG_FILE`` (the replica appends its stdout/stderr there itself and rotates it at
  ``MODELFLEET_LOG_MAX_BYTES``, default 10 MiB, keeping ``MODELFLEET_LOG_BACKUPS``, default 3);
- ``MODELFLEET_DATA_DIR`` (model data collection on: the service's data folder),
  ``MODELFLEET_MODELS`` (``name:version,...``), ``MODELFLEET_REPLICA_ID`` (file names),
  ``MODELFLEET_COLLECT_FLUSH_S`` (default 1), ``MODELFLEET_COLLECT_MAX_PENDING`` (default
  10000), ``MODELFLEET_STATS_FILE`` (collection counters, read by the daemon's metrics).

Connection limits and timeouts (a flag wins over its variable). The header limits are
gunicorn's, which azmlinfsrv runs on, so a request v1 accepted is accepted here too; past
them the answer is gunicorn's status (414, 431) with a JSON ``{"message": ...}`` body:

- ``--limit-request-line`` / ``MODELFLEET_LIMIT_REQUEST_LINE`` (default 4094 bytes; 414 past it);
- ``--limit-request-fields`` / ``MODELFLEET_LIMIT_REQUEST_FIELDS`` (default 100 header fields; 431);
- ``--limit-request-field-size`` / ``MODELFLEET_LIMIT_REQUEST_FIELD_SIZE`` (default 8190 bytes
  for one ``name: value`` line; 431). The whole head is also bounded, by fields x (size + 2)
  + line, so memory per connection stays bounded while headers arrive.
- ``--header-timeout`` / ``MODELFLEET_HEADER_TIMEOUT_S`` (default 20 s, as the router): a request
  whose head has not fully arrived this long after its first byte, or whose body stalls this
  long, is answered 408 and its connection closed (slowloris). gunicorn has no such timeout: a
  slow client holds one of azmlinfsrv's sync workers (and so, with one worker, every other
  client) until the worker timeout (300 s) kills it.
- ``--keep-alive`` / ``MODELFLEET_KEEP_ALIVE_S`` (default 5 s, uvicorn's): an idle keep-alive
  connection is closed after this long. Longer than the router's pool reuse window (1.5 s), so
  the router never sends on a connection the replica is closing.
- ``--send-timeout`` / ``MODELFLEET_SEND_TIMEOUT_S`` (default 60 s): a client that takes none of
  an answer for this long is cut off and what is buffered for it dropped; for a streamed answer
  the script's generator is ended too (stream.py), so such a client holds no slot.
- ``--unix-socket PATH``: listen on a Unix domain socket (mode 0600) instead of TCP.
- ``--max-batch-size`` / ``MODELFLEET_MAX_BATCH_SIZE`` (default 1: off) and
  ``--max-batch-delay-ms`` / ``MODELFLEET_MAX_BATCH_DELAY_MS`` (default 5): dynamic batching,
  the script's ``run_batch(items)`` called with up to that many concurrent requests, gathered
  for at most that long after the first (``batching.py``; the deploy settings of the same names).
- ``MODELFLEET_REPLICA_SECRET``: when set, every request but ``GET /`` must carry it in
  ``x-modelfleet-replica-secret`` (403 otherwise); ``main`` removes it from the environment
  before the script is loaded. The local target gives each service its own, the Kubernetes
  target puts it in the service's Secret (``replicaSecret``).
- ``MODELFLEET_REPLICA_NOT_DUMPABLE=1``: ``main`` makes the process not dumpable
  (``PR_SET_DUMPABLE`` 0) first thing, before the script is loaded, so that other processes
  of the same user (a root daemon runs every service's replicas as ``nobody``) can neither
  read its ``/proc/PID/environ``, where the secret still lies, nor trace it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from modelfleet import __version__
from modelfleet.errors import ConfigError

DEFAULT_PORT = 5001
DEFAULT_HOST = "127.0.0.1"
DEFAULT_SCORING_TIMEOUT_MS = 3600 * 1000
MAX_BODY_BYTES = 100 * 1024 * 1024
# gunicorn's defaults (azmlinfsrv runs on gunicorn); see the module docstring.
LIMIT_REQUEST_LINE = 4094
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 8190
HEADER_TIMEOUT_S = 20.0  # the router's too (Apache's RequestReadTimeout header=20)
KEEP_ALIVE_S = 5.0
SEND_TIMEOUT_S = 60.0
SECRET_ENV = "MODELFLEET_REPLICA_SECRET"
BATCH_SIZE_ENV = "MODELFLEET_MAX_BATCH_SIZE"
BATCH_DELAY_ENV = "MODELFLEET_MAX_BATCH_DELAY_MS"
MAX_BATCH_SIZE = 1024  # the deploy setting's bound too (spec/deploy.py)
MAX_BATCH_DELAY_MS = 10_000
DEFAULT_BATCH_DELAY_MS = 5
NOT_DUMPABLE_ENV = "MODELFLEET_REPLICA_NOT_DUMPABLE"


@dataclass(frozen=True)
class ReplicaConfig:
    """Everything a replica needs, resolved to absolute paths and checked ranges."""

    entry_script: str
    app_root: str
    model_dir: str | None = None
    source_dir: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    port_file: str | None = None
    worker_count: int = 1
    max_concurrent: int = 0
    max_batch_size: int = 1  # 1: no batching (batching.py)
    max_batch_delay_ms: int = DEFAULT_BATCH_DELAY_MS
    scoring_timeout_ms: int = DEFAULT_SCORING_TIMEOUT_MS
    cors_origins: tuple[str, ...] = ()
    service_name: str = "ML service"
    service_version: str = "1.0"
    service_path_prefix: str = ""
    server_version: str | None = f"modelfleet/{__version__}"
    max_body_bytes: int = MAX_BODY_BYTES
    access_log: bool = False
    keep_alive_timeout_s: float = KEEP_ALIVE_S
    header_timeout_s: float = HEADER_TIMEOUT_S
    send_timeout_s: float = SEND_TIMEOUT_S
    limit_request_line: int = LIMIT_REQUEST_LINE
    limit_request_fields: int = LIMIT_REQUEST_FIELDS
    limit_request_field_size: int = LIMIT_REQUEST_FIELD_SIZE
    unix_socket: str | None = None
    secret: str | None = field(default=None, repr=False)  # never printed
    # telemetry (see the module docstring)
    log_file: str | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    data_dir: str | None = None
    models: tuple[tuple[str, str], ...] = ()
    replica_id: str = ""
    collect_flush_s: float = 1.0
    collect_max_pending: int = 10_000
    stats_file: str | None = None
    ignored: tuple[str, ...] = ()  # azmlinfsrv settings accepted for compatibility but not used

    def __post_init__(self) -> None:
        _check_range("port", self.port, 0, 65535)
        _check_range("worker_count", self.worker_count, 1, 1024)
        _check_range("max_concurrent", self.max_concurrent, 0, 1_000_000)
        _check_range("max_batch_size", self.max_batch_size, 1, MAX_BATCH_SIZE)
        _check_range("max_batch_delay_ms", self.max_batch_delay_ms, 0, MAX_BATCH_DELAY_MS)
        _check_range("scoring_timeout_ms", self.scoring_timeout_ms, 1, 10**12)
        _check_range("max_body_bytes", self.max_body_bytes, 1, 2**62)
        _check_range("MODELFLEET_LOG_MAX_BYTES", self.log_max_bytes, 1024, 2**50)
        _check_range("MODELFLEET_LOG_BACKUPS", self.log_backups, 1, 1000)
        _check_range("MODELFLEET_COLLECT_MAX_PENDING", self.collect_max_pending, 1, 10**8)
        _check_range("limit_request_line", self.limit_request_line, 64, 1 << 20)
        _check_range("limit_request_fields", self.limit_request_fields, 1, 32768)
        _check_range("limit_request_field_size", self.limit_request_field_size, 64, 1 << 20)
        timeouts = (
            ("header_timeout", self.header_timeout_s),
            ("keep_alive", self.keep_alive_timeout_s),
            ("send_timeout", self.send_timeout_s),
        )
        for name, seconds in timeouts:
            if not 0.1 <= seconds <= 86400:
                raise ConfigError(f"{name} must be between 0.1 and 86400 seconds (got {seconds})")
        if self.secret is not None and not self.secret:
            raise ConfigError(f"{SECRET_ENV} is set but empty; unset it or give it a value")
        if not 0.01 <= self.collect_flush_s <= 3600:
            raise ConfigError(
                f"MODELFLEET_COLLECT_FLUSH_S must be between 0.01 and 3600 seconds (got {self.collect_flush_s})"
            )
        if not os.path.isfile(self.entry_script):
            raise ConfigError(
                f"entry_script {self.entry_script!r} is not a file; pass --entry_script with the path "
                "of your score.py (relative to the current folder) or set AZUREML_ENTRY_SCRIPT"
            )


def _check_range(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{field} must be between {low} and {high} (got {value})")


def _int_setting(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer (got {raw!r})") from None


def _float_setting(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number (got {raw!r})") from None


def _models(raw: str) -> tuple[tuple[str, str], ...]:
    """``name:version,name:version`` -> pairs (the service's models, for collected records)."""
    pairs = []
    for item in raw.split(","):
        name, _, version = item.strip().rpartition(":")
        if name:
            pairs.append((name, version))
    return tuple(pairs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelfleet serve",
        description="Run one v1 entry script (init() once, run() per request) behind the v1 scoring routes.",
    )
    p.add_argument("--entry_script", help="path of the scoring script (default: AZUREML_ENTRY_SCRIPT)")
    p.add_argument("--model_dir", help="model folder, exported as AZUREML_MODEL_DIR")
    p.add_argument("--port", help=f"port to listen on; 0 picks a free one (default {DEFAULT_PORT})")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--worker_count", help="threads running run() (default: WORKER_COUNT or 1)")
    p.add_argument("--access_control_allow_origins", help="CORS origins, comma separated (AML_CORS_ORIGINS)")
    p.add_argument("--port-file", dest="port_file", help="write the bound port here once listening")
    p.add_argument(
        "--max-concurrent",
        dest="max_concurrent",
        default="0",
        help="answer 503 at once when this many requests are running (default 0: no limit, wait)",
    )
    p.add_argument(
        "--max-batch-size",
        dest="max_batch_size",
        help=f"call run_batch(items) with up to this many concurrent requests (default 1: off; {BATCH_SIZE_ENV})",
    )
    p.add_argument(
        "--max-batch-delay-ms",
        dest="max_batch_delay_ms",
        help="longest wait, from a batch's first request, for more to join it "
        f"(default {DEFAULT_BATCH_DELAY_MS}; {BATCH_DELAY_ENV})",
    )
    p.add_argument("--access-log", dest="access_log", action="store_true", help="log one line per request")
    p.add_argument("--unix-socket", dest="unix_socket", help="listen on this Unix domain socket (mode 0600), not TCP")
    p.add_argument(
        "--limit-request-line",
        dest="limit_request_line",
        help=f"longest request line in bytes; 414 past it (default {LIMIT_REQUEST_LINE})",
    )
    p.add_argument(
        "--limit-request-fields",
        dest="limit_request_fields",
        help=f"most request header fields; 431 past it (default {LIMIT_REQUEST_FIELDS})",
    )
    p.add_argument(
        "--limit-request-field-size",
        dest="limit_request_field_size",
        help=f"longest request header line in bytes; 431 past it (default {LIMIT_REQUEST_FIELD_SIZE})",
    )
    p.add_argument(
        "--header-timeout",
        dest="header_timeout",
        help=f"seconds to receive a request's headers (or a stalled body) before 408 (default {HEADER_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--send-timeout",
        dest="send_timeout",
        help=f"seconds a client may take nothing of an answer before it is cut off (default {SEND_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--keep-alive", dest="keep_alive", help=f"seconds an idle connection is kept open (default {KEEP_ALIVE_S:g})"
    )
    # azmlinfsrv flags accepted so that its command lines work unchanged; they have no effect here.
    for flag in _IGNORED_FLAGS:
        p.add_argument(f"--{flag}", help=argparse.SUPPRESS)
    return p


_IGNORED_FLAGS = ("appinsights_instrumentation_key", "health_port", "config_file")


def parse_config(argv: Sequence[str], environ: Mapping[str, str], cwd: str) -> ReplicaConfig:
    """Build the configuration from flags and environment (flags win, as in azmlinfsrv).

    Raises ``SystemExit`` for unknown flags (argparse) and ``ConfigError`` for bad values.
    """
    args = _parser().parse_args(list(argv))
    app_root = os.path.abspath(os.path.join(cwd, environ.get("AML_APP_ROOT") or cwd))
    source_env = environ.get("AZUREML_SOURCE_DIRECTORY")
    source_dir = os.path.join(app_root, source_env) if source_env else None

    if args.entry_script:
        entry_script = os.path.realpath(os.path.join(cwd, args.entry_script))
    elif environ.get("AZUREML_ENTRY_SCRIPT"):
        relative = environ["AZUREML_ENTRY_SCRIPT"].replace("/", os.sep)
        entry_script = os.path.join(app_root, relative)
        if not os.path.isfile(entry_script) and source_dir:
            entry_script = os.path.join(source_dir, relative)
    else:
        raise ConfigError("entry_script is required: pass --entry_script PATH or set AZUREML_ENTRY_SCRIPT")

    model_dir = args.model_dir or environ.get("AZUREML_MODEL_DIR") or None
    if args.model_dir:
        model_dir = os.path.abspath(os.path.join(cwd, args.model_dir))

    worker_raw = args.worker_count or environ.get("WORKER_COUNT") or "1"
    cors_raw = args.access_control_allow_origins
    if cors_raw is None:
        cors_raw = environ.get("AML_CORS_ORIGINS", "")
    origins = tuple(o.strip() for o in cors_raw.split(",") if o.strip())

    version_enabled = environ.get("SERVER_VERSION_LOG_RESPONSE_ENABLED", "true").lower() == "true"

    def setting(flag: str | None, env: str, default: object) -> str:
        return flag if flag is not None else (environ.get(env) or str(default))

    return ReplicaConfig(
        entry_script=entry_script,
        app_root=app_root,
        model_dir=model_dir,
        source_dir=source_dir,
        host=args.host,
        port=_int_setting("port", args.port) if args.port is not None else DEFAULT_PORT,
        port_file=os.path.join(cwd, args.port_file) if args.port_file else None,
        worker_count=_int_setting("worker_count", worker_raw),
        max_concurrent=_int_setting("max_concurrent", args.max_concurrent),
        max_batch_size=_int_setting("max_batch_size", setting(args.max_batch_size, BATCH_SIZE_ENV, 1)),
        max_batch_delay_ms=_int_setting(
            "max_batch_delay_ms", setting(args.max_batch_delay_ms, BATCH_DELAY_ENV, DEFAULT_BATCH_DELAY_MS)
        ),
        scoring_timeout_ms=_int_setting(
            "SCORING_TIMEOUT_MS", environ.get("SCORING_TIMEOUT_MS") or str(DEFAULT_SCORING_TIMEOUT_MS)
        ),
        cors_origins=origins,
        service_name=environ.get("SERVICE_NAME", "ML service"),
        service_version=environ.get("SERVICE_VERSION", "1.0"),
        service_path_prefix=environ.get("SERVICE_PATH_PREFIX", ""),
        server_version=f"modelfleet/{__version__}" if version_enabled else None,
        access_log=args.access_log,
        log_file=environ.get("MODELFLEET_LOG_FILE") or None,
        log_max_bytes=_int_setting("MODELFLEET_LOG_MAX_BYTES", environ.get("MODELFLEET_LOG_MAX_BYTES") or "10485760"),
        log_backups=_int_setting("MODELFLEET_LOG_BACKUPS", environ.get("MODELFLEET_LOG_BACKUPS") or "3"),
        data_dir=environ.get("MODELFLEET_DATA_DIR") or None,
        models=_models(environ.get("MODELFLEET_MODELS", "")),
        replica_id=environ.get("MODELFLEET_REPLICA_ID") or f"replica-{os.getpid()}",
        collect_flush_s=_float_setting("MODELFLEET_COLLECT_FLUSH_S", environ.get("MODELFLEET_COLLECT_FLUSH_S") or "1"),
        collect_max_pending=_int_setting(
            "MODELFLEET_COLLECT_MAX_PENDING", environ.get("MODELFLEET_COLLECT_MAX_PENDING") or "10000"
        ),
        stats_file=environ.get("MODELFLEET_STATS_FILE") or None,
        limit_request_line=_int_setting(
            "limit_request_line",
            setting(args.limit_request_line, "MODELFLEET_LIMIT_REQUEST_LINE", LIMIT_REQUEST_LINE),
        ),
        limit_request_fields=_int_setting(
            "limit_request_fields",
            setting(args.limit_request_fields, "MODELFLEET_LIMIT_REQUEST_FIELDS", LIMIT_REQUEST_FIELDS),
        ),
        limit_request_field_size=_int_setting(
            "limit_request_field_size",
            setting(args.limit_request_field_size, "MODELFLEET_LIMIT_REQUEST_FIELD_SIZE", LIMIT_REQUEST_FIELD_SIZE),
        ),
        header_timeout_s=_float_setting(
            "header_timeout", setting(args.header_timeout, "MODELFLEET_HEADER_TIMEOUT_S", HEADER_TIMEOUT_S)
        ),
        keep_alive_timeout_s=_float_setting(
            "keep_alive", setting(args.keep_alive, "MODELFLEET_KEEP_ALIVE_S", KEEP_ALIVE_S)
        ),
        send_timeout_s=_float_setting(
            "send_timeout", setting(args.send_timeout, "MODELFLEET_SEND_TIMEOUT_S", SEND_TIMEOUT_S)
        ),
        unix_socket=os.path.join(cwd, args.unix_socket) if args.unix_socket else None,
        secret=environ.get(SECRET_ENV),
        ignored=tuple(f"--{f}" for f in _IGNORED_FLAGS if getattr(args, f) is not None),
    )
