"""Allocates (and touches) 600 MB in init(), past any small memory_gb_limit."""

HELD: list[bytes] = []


def init() -> None:
    HELD.append(b"\x01" * (600 * 1024 * 1024))


def run(raw_data: str) -> str:
    return "ok"
