"""What the protocol's refusals look like, without numpy: the replica answers them before it
has loaded the numpy side of ``oip/`` (``rest.py``, ``signature.py``), which it does on its
first V2 call only (numpy is not part of every replica's environment)."""

from __future__ import annotations

import json

__all__ = ["HEADER_LENGTH", "InferError", "error_body"]

HEADER_LENGTH = "inference-header-content-length"


class InferError(ValueError):
    """A request the protocol refuses: answered 400 (gRPC INVALID_ARGUMENT) with the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def error_body(message: str) -> bytes:
    """The protocol's error object (``error``); ``message`` too, as every modelfleet error has."""
    return json.dumps({"error": message, "message": message}).encode()
