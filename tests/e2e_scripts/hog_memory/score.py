"""Allocates (and touches) as many megabytes as each request asks for, and keeps them."""

import json

HELD: list[bytes] = []


def init() -> None:
    pass


def run(raw_data: str) -> dict[str, int]:
    megabytes = int(json.loads(raw_data)["mb"])
    HELD.append(b"\x01" * (megabytes * 1024 * 1024))
    return {"held_mb": sum(len(b) for b in HELD) // (1024 * 1024)}
