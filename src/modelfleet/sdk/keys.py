"""Service keys: generated ones, and the check a caller-chosen one must pass."""

from __future__ import annotations

import secrets

from modelfleet.errors import ConfigError

KEY_BYTES = 32  # 256 bits of randomness per key
_KEY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))  # visible ASCII: safe in a header


def new_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


def check_key(field_name: str, value: object) -> str:
    """A caller-chosen key must fit in ``Authorization: Bearer <key>``; the message never
    repeats the key."""
    if not isinstance(value, str) or not value or not set(value) <= _KEY_CHARS:
        raise ConfigError(
            f"{field_name} must be a non-empty string of visible ASCII characters (no spaces or line "
            "breaks); leave it out to get a generated 256-bit key"
        )
    return value
