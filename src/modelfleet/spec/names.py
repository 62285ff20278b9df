"""The name rules, written once: services (v1's), endpoint versions, models, and ``name:version`` references.

Every layer that takes a name checks it here, so they cannot drift apart: the SDK and CLI
before anything is stored, the store when a model is registered, the admin API on its
``/v1/services/<name>`` paths and the router when it is handed a ``ServiceRoute``.
"""

from __future__ import annotations

import re

from modelfleet.errors import ConfigError
from modelfleet.spec.checks import _kind

SERVICE_NAME_RULE = (
    "3-32 characters of lowercase letters, digits and dashes, starting with a letter and ending with a letter or digit"
)
MODEL_NAME_RULE = "1-255 letters, digits, dashes, periods or underscores, starting with a letter or digit"
# An endpoint's version (v1 AksEndpoint's ``version_name``: "blue", "green"); not a model version.
VERSION_NAME_RULE = (
    "1-32 characters of lowercase letters, digits and dashes, starting with a letter and ending with a letter or digit"
)
VERSION_NAME_PATTERN = r"^[a-z](?:[-a-z0-9]{0,30}[a-z0-9])?$"
_VERSION_NAME_RE = re.compile(VERSION_NAME_PATTERN)
# Joins an endpoint's name and a version's into the internal service name the version runs as
# ("fraud:blue"): a service name cannot hold it, so the two can never collide.
VERSION_SEPARATOR = ":"
# v1: "up to 1,000 models per deployment" (one container serves them all).
MAX_MODELS_PER_DEPLOYMENT = 1000

# v1 ``webservice_name_validation``: 3-32 characters; the trailing dash is forbidden too.
# Anchored, so that it means the same as a JSON Schema ``pattern`` (the admin API's OpenAPI).
SERVICE_NAME_PATTERN = r"^[a-z](?:[-a-z0-9]{1,30}[a-z0-9])$"
_SERVICE_NAME_RE = re.compile(SERVICE_NAME_PATTERN)
# v1 ``model_name_validation``.
_MODEL_NAME_RE = re.compile(r"[a-zA-Z0-9][-._a-zA-Z0-9]{0,254}")


def is_service_name(name: object) -> bool:
    return isinstance(name, str) and _SERVICE_NAME_RE.fullmatch(name) is not None


def is_version_name(name: object) -> bool:
    return isinstance(name, str) and _VERSION_NAME_RE.fullmatch(name) is not None


def is_version_service_name(name: object) -> bool:
    """``<endpoint>:<version>``: the internal service an endpoint's version runs as (never a
    name a user can give a service: service names hold no ``VERSION_SEPARATOR``)."""
    if not isinstance(name, str):
        return False
    endpoint, sep, version = name.partition(VERSION_SEPARATOR)
    return bool(sep) and is_service_name(endpoint) and is_version_name(version)


def version_service_name(endpoint: str, version: str) -> str:
    """The internal service name of ``endpoint``'s version ``version`` (both checked)."""
    return f"{validate_service_name(endpoint)}{VERSION_SEPARATOR}{validate_version_name(version)}"


def validate_version_name(name: object) -> str:
    """An endpoint version's name (``VERSION_NAME_RULE``); ``ConfigError`` names it and the value."""
    if not is_version_name(name):
        raise ConfigError(f"version_name must be {VERSION_NAME_RULE} (got {name!r})")
    assert isinstance(name, str)
    return name


def is_model_name(name: object) -> bool:
    return isinstance(name, str) and _MODEL_NAME_RE.fullmatch(name) is not None


def validate_service_name(name: object) -> str:
    """v1's service-name rule (``SERVICE_NAME_RULE``); ``ConfigError`` names it and the value."""
    if not is_service_name(name):
        raise ConfigError(f"service name must be {SERVICE_NAME_RULE} (got {name!r})")
    assert isinstance(name, str)
    return name


def validate_model_name(name: object, what: str = "model name") -> str:
    """v1's model-name rule (``MODEL_NAME_RULE``); ``ConfigError`` names ``what`` (the
    parameter the caller passed: ``model_name`` for ``Model.register``), the rule and the value."""
    if not is_model_name(name):
        raise ConfigError(f"{what} must be {MODEL_NAME_RULE} (got {name!r})")
    assert isinstance(name, str)
    return name


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """``"name:3"`` -> ``("name", 3)``; ``"name"`` -> ``("name", None)`` (the CLI's ``-m``)."""
    if not isinstance(ref, str):
        raise ConfigError(f"model reference must be NAME or NAME:VERSION (got {_kind(ref)})")
    name, sep, version = ref.partition(":")
    validate_model_name(name)
    if not sep:
        return name, None
    if not version.isdigit() or not version.isascii() or int(version) < 1:
        raise ConfigError(f"model version must be a whole number of at least 1, as in {name}:3 (got {ref!r})")
    return name, int(version)


def check_model_count(count: int) -> None:
    """v1's limit of ``MAX_MODELS_PER_DEPLOYMENT`` models in one deployment; ``ConfigError``
    names the limit and the count asked for."""
    if count > MAX_MODELS_PER_DEPLOYMENT:
        raise ConfigError(
            f"a deployment holds at most {MAX_MODELS_PER_DEPLOYMENT:,} models (v1's limit); got {count:,}: "
            "split the models over several services"
        )
