"""Swagger 2.0 and OpenAPI 3.0/3.1 documents for the replica, built once at start.

The documents are the ones azmlinfsrv serves for the same script: the service's three routes,
a Bearer security scheme, and ``ServiceInput``/``ServiceOutput`` taken from inference-schema's
samples (``{"type": "object", "example": {}}`` when run() is not decorated). A ``swagger.json``
(or ``swagger2.json``, ``swagger3.json``, ``swagger3.1.json``) in the app root replaces the
generated document of that version, as in v1. Versions are asked for with ``?version=`` (2,
2.0, 3, 3.0, 3.1; default 2); the answers are ready-made bytes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("modelfleet.replica")

ALL_VERSIONS = ("2.0", "3.0", "3.1")  # what inference-schema reports for an undecorated run()


@dataclass(frozen=True)
class _Builder:
    version: str
    aliases: tuple[str, ...]
    user_files: tuple[str, ...]


_BUILDERS = (
    _Builder("2", ("2", "2.0"), ("swagger.json", "swagger2.json")),
    _Builder("3", ("3", "3.0"), ("swagger3.json",)),
    _Builder("3.1", ("3.1",), ("swagger3.1.json",)),
)
VALID_VERSIONS = frozenset(a for b in _BUILDERS for a in b.aliases)

_ERROR_RESPONSE = {"type": "object", "properties": {"message": {"type": "string"}}}
_DEFAULT_ERROR = "The service failed to execute due to an error."
_HEALTH_200 = "If service is up and running, this response will be returned with the content 'Healthy'"
_SCORE_200 = "The service processed the input correctly and provided a result prediction, if applicable."
_PAYLOAD = "The input payload for executing the real-time machine learning service."


def _info(name: str, version: str) -> dict[str, Any]:
    return {
        "title": name,
        "description": f"API specification for the Azure Machine Learning service {name}",
        "version": version,
    }


def _bearer() -> dict[str, Any]:
    return {"type": "apiKey", "name": "Authorization", "in": "header", "description": "For example: Bearer abc123"}


def swagger2(name: str, version: str, prefix: str, inp: Any, out: Any) -> dict[str, Any]:
    error = {"description": _DEFAULT_ERROR, "schema": {"$ref": "#/definitions/ErrorResponse"}}
    return {
        "swagger": "2.0",
        "info": _info(name, version),
        "schemes": ["https"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {"Bearer": _bearer()},
        "paths": {
            f"{prefix}/": {
                "get": {
                    "operationId": "ServiceHealthCheck",
                    "description": "Simple health check endpoint to ensure the service is up at any given point.",
                    "responses": {
                        "200": {
                            "description": _HEALTH_200,
                            "schema": {"type": "string"},
                            "examples": {"application/json": "Healthy"},
                        },
                        "default": error,
                    },
                }
            },
            f"{prefix}/score": {
                "post": {
                    "operationId": "RunMLService",
                    "description": "Run web service's model and get the prediction output",
                    "security": [{"Bearer": []}],
                    "parameters": [
                        {
                            "name": "serviceInputPayload",
                            "in": "body",
                            "description": _PAYLOAD,
                            "schema": {"$ref": "#/definitions/ServiceInput"},
                        }
                    ],
                    "responses": {
                        "200": {"description": _SCORE_200, "schema": {"$ref": "#/definitions/ServiceOutput"}},
                        "default": error,
                    },
                }
            },
            f"{prefix}/swagger.json": {
                "get": {
                    "operationId": "GetSwaggerSpec",
                    "description": "Get the Swagger specification.",
                    "parameters": [
                        {"name": "version", "in": "query", "required": False, "type": "integer", "enum": [2, 3]}
                    ],
                    "responses": {
                        "200": {"description": "The Swagger specification.", "schema": {"type": "string"}},
                        "default": error,
                    },
                }
            },
        },
        "definitions": {"ServiceInput": inp, "ServiceOutput": out, "ErrorResponse": _ERROR_RESPONSE},
    }


def openapi3(name: str, version: str, prefix: str, inp: Any, out: Any, openapi: str) -> dict[str, Any]:
    def error() -> dict[str, Any]:
        ref = {"$ref": "#/components/schemas/ErrorResponse"}
        return {"description": _DEFAULT_ERROR, "content": {"application/json": {"schema": ref}}}

    return {
        "openapi": openapi,
        "info": _info(name, version),
        "security": [{"Bearer": []}],
        "paths": {
            f"{prefix}/": {
                "get": {
                    "operationId": "ServiceHealthCheck",
                    "description": "Simple health check endpoint to ensure the service is up at any given point.",
                    "responses": {
                        "200": {
                            "description": _HEALTH_200,
                            "content": {"text/plain": {"schema": {"type": "string", "example": "Healthy"}}},
                        },
                        "default": error(),
                    },
                }
            },
            f"{prefix}/score": {
                "post": {
                    "operationId": "RunMLService",
                    "description": "Run web service's model and get the prediction output",
                    "security": [{"Bearer": []}],
                    "requestBody": {
                        "description": _PAYLOAD,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ServiceInput"}}},
                    },
                    "responses": {
                        "200": {
                            "description": _SCORE_200,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ServiceOutput"}}},
                        },
                        "default": error(),
                    },
                }
            },
            f"{prefix}/swagger.json": {
                "get": {
                    "operationId": "GetSwaggerSpec",
                    "description": "Get the Swagger specification.",
                    "parameters": [
                        {
                            "name": "version",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "enum": [2, 3]},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The Swagger specification.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "default": error(),
                    },
                }
            },
        },
        "components": {
            "schemas": {"ServiceInput": inp, "ServiceOutput": out, "ErrorResponse": _ERROR_RESPONSE},
            "securitySchemes": {"Bearer": _bearer()},
        },
    }


def _schemas(run: Callable[..., Any]) -> tuple[list[str], Any, Any]:
    """(supported versions, input schema, output schema) for run(), from inference-schema."""
    if "inference_schema.schema_util" not in sys.modules:
        return list(ALL_VERSIONS), {"type": "object", "example": {}}, {"type": "object", "example": {}}
    from inference_schema import schema_util  # type: ignore[import-untyped]

    versions = list(schema_util.get_supported_versions(run))
    if not schema_util.is_schema_decorated(run):
        return versions, {"type": "object", "example": {}}, {"type": "object", "example": {}}
    return versions, schema_util.get_input_schema(run), schema_util.get_output_schema(run)


def _read_user_file(app_root: str, names: tuple[str, ...]) -> Any:
    for filename in names:
        path = os.path.join(app_root, filename)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            continue
        logger.info("Loaded the user's swagger file %s", path)
        return data
    return None


class SwaggerDocs:
    """Every swagger answer, as (status, JSON body bytes), keyed by the ``version`` asked for."""

    def __init__(
        self,
        run: Callable[..., Any],
        app_root: str,
        service_name: str,
        service_version: str,
        path_prefix: str,
    ) -> None:
        prefix = f"/{path_prefix.strip('/')}" if path_prefix else ""
        versions, inp, out = _schemas(run)
        self.documents: dict[str, bytes] = {}
        supported: list[str] = []
        for builder in _BUILDERS:
            doc = _read_user_file(app_root, builder.user_files)
            if doc is None and any(a in versions for a in builder.aliases):
                if builder.version == "2":
                    doc = swagger2(service_name, service_version, prefix, inp, out)
                else:
                    openapi = "3.1.0" if builder.version == "3.1" else "3.0.3"
                    doc = openapi3(service_name, service_version, prefix, inp, out, openapi)
            if doc:
                body = json.dumps(doc).encode()
                for alias in builder.aliases:
                    self.documents[alias] = body
                supported.append(builder.version)
        self.supported = sorted(supported)

    def answer(self, version: str) -> tuple[int, bytes]:
        """(200, document) or (404, error message body) for ``?version=<version>``."""
        listed = ", ".join(self.supported)
        if version not in VALID_VERSIONS:
            message = f"Swagger version [{version}] is not valid. Supported versions: [{listed}]."
            return 404, json.dumps({"message": message}).encode()
        doc = self.documents.get(version)
        if doc is None:
            message = (
                f"Swagger version [{version}] is not supported for the scoring script. "
                f"Supported swagger versions: [{listed}]."
            )
            return 404, json.dumps({"message": message}).encode()
        return 200, doc
