"""The one boundary where the Kubernetes client's errors become modelfleet's (``TargetError``,
with what was being done, the status and the API server's own message)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes.client.rest import ApiException

from modelfleet.errors import TargetError

__all__ = ["api_error", "call", "delete_if_present", "upsert"]

T = TypeVar("T")


def call(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ApiException as exc:
        raise api_error(what, exc) from exc
    except OSError as exc:  # urllib3's connection errors are OSErrors
        raise TargetError(f"Kubernetes API: {what} failed: cannot reach the API server ({exc})") from exc


def api_error(what: str, exc: ApiException) -> TargetError:
    try:
        message = f": {json.loads(exc.body)['message']}"
    except Exception:
        message = ""
    return TargetError(f"Kubernetes API: {what} failed: {exc.status} {exc.reason}{message}")


def upsert(what: str, create: Callable[[], Any], update: Callable[[], Any]) -> None:
    try:
        create()
        return
    except ApiException as exc:
        if exc.status != 409:
            raise api_error(what, exc) from exc
    except OSError as exc:
        raise TargetError(f"Kubernetes API: {what} failed: cannot reach the API server ({exc})") from exc
    call(what, update)


def delete_if_present(what: str, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except ApiException as exc:
        if exc.status != 404:
            raise api_error(what, exc) from exc
    except OSError as exc:
        raise TargetError(f"Kubernetes API: {what} failed: cannot reach the API server ({exc})") from exc
