"""The replica: one process serving one v1 entry script (``score.py``) over HTTP.

``python -m modelfleet.replica [flags]`` and ``modelfleet serve [flags]`` both land in
``main(argv)``: the only place that reads ``sys.argv`` and ``os.environ``. It builds a
``ReplicaConfig`` (``config.py``), exports the variables v1 scripts read, and hands over to
``server.serve``. Exit status: 0 after a clean stop, 2 for bad flags or settings, 3 when the
script cannot be loaded or its init() raised (the traceback is on stderr).

Modules: ``entry`` (the script core, no HTTP); the HTTP side: ``server`` (process lifecycle),
``protocol`` (one connection), ``shared`` (what every connection reads), ``limits``, ``app``
(the v1 routes), ``scoring`` (run() on a worker, plain or streamed answers), ``batching``
(run_batch() over concurrent requests, opt-in), ``stream``,
``ids``, ``access``, ``listen`` (Unix socket), ``responses`` (reply bytes), ``workers``
(threads running run()), ``swagger``, ``models`` (models loaded on demand, an LRU); and
``compat`` with ``rawrequest``, ``rawresponse`` and ``v1model`` (the ``azureml.*`` names v1
scripts import). Importing this package loads none of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run a replica in the foreground; returns the process exit status."""
    if os.environ.get("MODELFLEET_REPLICA_NOT_DUMPABLE") == "1":  # first: see replica/config.py
        _not_dumpable()
    from modelfleet.errors import ConfigError
    from modelfleet.replica.config import parse_config

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_config(args, os.environ, os.getcwd())
    except SystemExit as ex:  # argparse: --help (0) or a usage error (2)
        return int(ex.code or 0) if isinstance(ex.code, int) else 2
    except ConfigError as ex:
        print(f"modelfleet serve: {ex.message}", file=sys.stderr)
        return 2
    # The router's secret is for the HTTP layer only: score.py, its logs and its child
    # processes never see it.
    os.environ.pop("MODELFLEET_REPLICA_SECRET", None)
    # What v1 scripts read from the environment, set as azmlinfsrv sets it.
    os.environ["AML_APP_ROOT"] = config.app_root
    os.environ["AZUREML_ENTRY_SCRIPT"] = config.entry_script
    if config.model_dir:
        os.environ["AZUREML_MODEL_DIR"] = config.model_dir
    from modelfleet.replica.server import serve

    return serve(config)


def _not_dumpable() -> None:
    """PR_SET_DUMPABLE 0: this process's /proc files (environ, mem) belong to root and no
    process of the same user may trace it. Linux only; elsewhere a line on stderr says so."""
    import ctypes

    try:
        failed = ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0  # 4: PR_SET_DUMPABLE
    except (OSError, AttributeError):
        failed = True
    if failed:
        print("modelfleet serve: could not make the replica not dumpable (PR_SET_DUMPABLE)", file=sys.stderr)
