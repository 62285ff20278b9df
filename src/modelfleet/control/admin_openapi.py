"""The admin API's OpenAPI 3.0 document: served at ``GET /v1/openapi.json`` (behind the token,
like every admin route) and what ``tests/control/test_admin_openapi.py`` fuzzes the daemon against."""

from __future__ import annotations

from typing import Any

from modelfleet.spec.names import SERVICE_NAME_PATTERN

__all__ = ["OPENAPI"]

_MESSAGE = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}},
}


def _answer(description: str, schema: dict[str, Any] = _MESSAGE) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_REFUSED = {
    "401": _answer("admin token missing or invalid"),
    "400": _answer("a malformed request (bad Content-Length, a chunked body, a bad service name)"),
    "413": _answer("a body over the admin API's limit"),
}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "service name: v1's rule (3-32 characters, lowercase letters, digits, dashes)",
    "schema": {"type": "string", "pattern": SERVICE_NAME_PATTERN},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "modelfleet daemon admin API",
        "version": "1",
        "description": "Loopback only. The SDK and CLI call it to make the control plane act; every "
        "route needs the bearer token in <workspace>/.modelfleet/runtime/admin.token.",
    },
    "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
    "security": [{"token": []}],
    "paths": {
        "/v1/status": {
            "get": {
                "summary": "the cluster, its services, replicas and router counters",
                "responses": {"200": _answer("status", {"type": "object"}), **_REFUSED},
            }
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "this document",
                "responses": {"200": _answer("the OpenAPI document", {"type": "object"}), **_REFUSED},
            }
        },
        "/v1/services/{name}/sync": {
            "post": {
                "summary": "the stored service changed: reconcile it now",
                "parameters": [_NAME],
                "responses": {
                    "202": _answer("reconciling"),
                    "404": _answer("no such service in the workspace"),
                    **_REFUSED,
                },
            }
        },
        "/v1/services/{name}": {
            "delete": {
                "summary": "drain and stop the service's replicas, then forget it (idempotent)",
                "parameters": [_NAME],
                "responses": {"200": _answer("deleted"), **_REFUSED},
            }
        },
        "/v1/shutdown": {
            "post": {
                "summary": "stop the daemon gracefully (in-flight requests finish)",
                "responses": {"202": _answer("shutting down"), **_REFUSED},
            }
        },
    },
}
