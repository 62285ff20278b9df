"""The one error tree of modelfleet.

Every error carries the HTTP status it maps to and a message that says what went wrong
and what to do next: the field, the allowed values, the value found, the command to run.
Foreign exceptions are translated into these at one boundary each (SQLite "database is
locked" in ``store/db.py``, ``ApiException`` in ``targets/kubernetes/api.py``); everything
above those boundaries sees only this tree. The data path answers its own errors (401, 405,
502, 504, ...) as precomputed HTTP answers (``router/routes.py``, ``replica/limits.py``), not
as exceptions: raising one per refused request would cost the hot path for nothing.

Imports: stdlib only, so that router and replica processes can use it.
"""

from __future__ import annotations

import json


class ModelfleetError(Exception):
    """Base of every modelfleet error; ``http_status`` is what the HTTP layer answers."""

    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> bytes:
        """The JSON body every modelfleet HTTP error carries: ``{"message": ...}``."""
        return error_body(self.message)


class ConfigError(ModelfleetError, ValueError):
    """A setting, name or file is invalid; the message names the field and the allowed values."""

    http_status = 400


class NotFound(ModelfleetError, LookupError):
    """A model, service, environment or workspace that does not exist."""

    http_status = 404


class Conflict(ModelfleetError):
    """The thing already exists (a service name in use) or is in a state that forbids the call."""

    http_status = 409


class PayloadTooLarge(ModelfleetError):
    http_status = 413


class Overloaded(ModelfleetError):
    """No replica had capacity within ``max_request_wait_time``."""

    http_status = 503


class BuildError(ModelfleetError):
    """An environment could not be built; the message carries the installer's error."""

    http_status = 500


class TargetError(ModelfleetError):
    """The compute target could not do what was asked (start a replica, fit another one)."""

    http_status = 500


class DeploymentFailed(ModelfleetError):
    """A deployment ended Failed; the message says why and where the logs are."""

    http_status = 500


class StoreBusy(ModelfleetError):
    """The workspace database stayed locked by another process past the retry budget."""

    http_status = 503


class ClusterUnavailable(ModelfleetError):
    """The local cluster daemon is not running and could not be started."""

    http_status = 503


def error_body(message: str) -> bytes:
    """Encode ``{"message": message}`` as the bytes of a JSON body."""
    return json.dumps({"message": message}).encode()
