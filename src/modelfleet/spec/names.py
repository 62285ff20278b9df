"""Name rules: services (v1's), models, and ``name:version`` references."""

from __future__ import annotations

from modelfleet.errors import ConfigError
from modelfleet.spec.checks import _MODEL_NAME_RE, _SERVICE_NAME_RE, _kind

# --------------------------------------------------------------------------- names


def validate_service_name(name: object) -> str:
    """v1's service-name rule: 3-32 lowercase letters, digits and dashes, starting with a
    letter and ending with a letter or digit (v1 ``webservice_name_validation``)."""
    if not isinstance(name, str) or not 3 <= len(name) <= 32 or not _SERVICE_NAME_RE.fullmatch(name):
        raise ConfigError(
            "service name must be 3-32 characters of lowercase letters, digits and dashes, "
            f"starting with a letter and ending with a letter or digit (got {name!r})"
        )
    return name


def validate_model_name(name: object) -> str:
    """v1's model-name rule: 1-255 letters, digits, dashes, periods or underscores, starting
    with a letter or digit."""
    if not isinstance(name, str) or len(name) > 255 or not _MODEL_NAME_RE.fullmatch(name):
        raise ConfigError(
            "model name must be 1-255 letters, digits, dashes, periods or underscores, "
            f"starting with a letter or digit (got {name!r})"
        )
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
