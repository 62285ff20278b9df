"""Showing a deployment's environment build as it happens.

The control plane records each build step as a ``build`` event of the service (see
``control/environments.py``). ``BuildProgress`` prints the new ones for the generation being
deployed: one line per step, and the installer's summary lines indented under it. On a
terminal it also keeps a progress bar on the last line, with the step count and the seconds
the current step has taken, redrawn on every poll, so a long install shows it is alive:

    myservice: [3/5] installing 2 package(s) and the replica runtime
    myservice:     Resolved 9 packages in 12ms
    [#############-----------------] 3/5  installing 2 package(s) and the ...  14 s
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO


def render_bar(step: int, steps: int, message: str, elapsed_s: float, width: int) -> str:
    """One line, at most ``width`` characters: a bar of ``step`` of ``steps`` (the current step
    counted half done), the step, the message cut to fit, and the step's seconds."""
    steps = max(steps, 1)
    step = min(max(step, 0), steps)
    bar_width = 30 if width >= 80 else 10
    filled = round(bar_width * (step - 0.5) / steps) if step < steps else bar_width
    bar = "[" + "#" * filled + "-" * (bar_width - filled) + "]"
    head = f"{bar} {step}/{steps}  "
    tail = f"  {elapsed_s:.0f} s"
    room = max(width - len(head) - len(tail), 0)
    text = message if len(message) <= room else message[: max(room - 3, 0)] + "..."
    return (head + text.ljust(room) + tail)[:width]


class BuildProgress:
    """Prints the build events of one service as ``show`` is handed them (each poll)."""

    def __init__(self, service: str, stream: TextIO | None = None, now: Any = time.monotonic) -> None:
        self.service = service
        self.stream = stream or sys.stdout
        self._now = now
        self._seen = 0
        self._generation: int | None = None
        self._current: tuple[int, int, str, float] | None = None  # step, steps, message, started
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar_shown = False

    def show(self, events: list[dict[str, Any]], generation: int) -> None:
        """Print the events of ``generation`` not printed yet, then redraw the bar."""
        if generation != self._generation:
            self._generation, self._seen = generation, 0
        mine = [e for e in events if e.get("generation") == generation and "message" in e]
        for event in mine[self._seen :]:
            self._print(event)
        self._seen = len(mine)
        self._draw()

    def close(self) -> None:
        self._clear()
        self._current = None

    def _print(self, event: dict[str, Any]) -> None:
        self._clear()
        indent = "    " if event.get("detail") else f"[{event.get('step')}/{event.get('steps')}] "
        self.stream.write(f"{self.service}: {indent}{event['message']}\n")
        if not event.get("detail"):
            step, steps = int(event.get("step", 1)), int(event.get("steps", 1))
            self._current = (step, steps, str(event["message"]), self._now()) if step < steps else None
        self.stream.flush()

    def _draw(self) -> None:
        if not self._tty or self._current is None:
            return
        step, steps, message, started = self._current
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r" + render_bar(step, steps, message, self._now() - started, width))
        self.stream.flush()
        self._bar_shown = True

    def _clear(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\x1b[2K")
            self._bar_shown = False
