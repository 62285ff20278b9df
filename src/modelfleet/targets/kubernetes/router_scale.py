"""The router Deployment's own size: out on routing time, back in on CPU, as v1's documentation
says azureml-fe does, decided by the router pod that holds the Lease (``scaler.py``).

- **Routing time** is the router's event-loop lag: how late a timer due now actually runs.
  Every request a router pod handles waits that long for its loop before its head is read or
  its answer relayed, so the lag is the router's own share of each request's latency, and it
  grows exactly when one pod's single loop is saturated, which is what another pod relieves.
  ``LoadProbe`` measures it on the autoscaler's own 0.25 s timer, with no hook in the data path.
- **CPU** is the process's CPU seconds per wall second (``time.process_time``); the loop runs
  on one core, so 1.0 is a full one.

Rules (``RouterScaleSettings``, read from the router Deployment's annotation
``modelfleet.io/router-scale``, which ``k8s router install`` writes and a user may edit):

1. Out: the mean lag over the last ``window_s`` is above ``out_lag_ms`` and the Deployment is
   under ``max_replicas`` → one more pod; then nothing for ``cooldown_s`` (a new pod must first
   take its share of the traffic before the lag says anything again).
2. In: the mean CPU over the last ``in_window_s`` is under ``in_cpu`` and the Deployment is
   over ``min_replicas`` → one pod fewer, with the same cool-down.
3. Both windows must be full (samples covering the whole window) before either rule fires, and
   a new count is patched through ``deployments/scale`` (the router's Role grants that).

Known limit: the holder decides from its own pod's figures; the other pods' are not gathered
(the Service spreads clients evenly, so one pod's load stands for the others').
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from modelfleet.errors import ConfigError

__all__ = ["ANNOTATION", "LoadProbe", "RouterScaleSettings", "RouterScaleState", "decide"]

ANNOTATION = "modelfleet.io/router-scale"


@dataclass(frozen=True)
class RouterScaleSettings:
    min_replicas: int = 2
    max_replicas: int = 10
    # a loop 50 ms late on average for a minute is a saturated pod, not a busy moment
    out_lag_ms: float = 50.0
    window_s: float = 60.0
    in_cpu: float = 0.2
    in_window_s: float = 300.0
    cooldown_s: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(
                f"router-scale: need 1 <= min_replicas <= max_replicas (got {self.min_replicas}, {self.max_replicas})"
            )
        for name in ("out_lag_ms", "window_s", "in_cpu", "in_window_s", "cooldown_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"router-scale: {name} must be >= 0 (got {getattr(self, name)})")

    def annotation(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str] | None) -> RouterScaleSettings | None:
        """The Deployment's settings; None when it has none (router scaling off)."""
        raw = (annotations or {}).get(ANNOTATION)
        if raw is None:
            return None
        try:
            return cls(**json.loads(raw))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"annotation {ANNOTATION} is not valid router-scale settings ({exc})") from exc


@dataclass
class RouterScaleState:
    samples: deque[tuple[float, float, float]] = field(default_factory=deque)  # (time, lag ms, cpu)
    quiet_until: float = 0.0


def _mean(samples: deque[tuple[float, float, float]], since: float, index: int) -> float | None:
    """The mean of one column over the samples since ``since``; None when they do not cover it."""
    if not samples or samples[0][0] > since:
        return None
    values = [s[index] for s in samples if s[0] >= since]
    return sum(values) / len(values) if values else None


def decide(replicas: int, settings: RouterScaleSettings, state: RouterScaleState, now: float) -> tuple[int, str]:
    """The router Deployment's new size and why ("" when it stays)."""
    keep = max(settings.window_s, settings.in_window_s)
    while state.samples and state.samples[0][0] < now - keep - 1.0:
        state.samples.popleft()
    if now < state.quiet_until:
        return replicas, ""
    lag = _mean(state.samples, now - settings.window_s, 1)
    if lag is not None and lag > settings.out_lag_ms and replicas < settings.max_replicas:
        state.quiet_until = now + settings.cooldown_s
        return replicas + 1, f"routing time {lag:.1f} ms > {settings.out_lag_ms:g} ms for {settings.window_s:g} s"
    cpu = _mean(state.samples, now - settings.in_window_s, 2)
    if cpu is not None and cpu < settings.in_cpu and replicas > settings.min_replicas:
        state.quiet_until = now + settings.cooldown_s
        return replicas - 1, f"CPU {cpu:.2f} < {settings.in_cpu:g} for {settings.in_window_s:g} s"
    return replicas, ""


class LoadProbe:
    """Loop lag and CPU, sampled each time the autoscaler's timer fires."""

    def __init__(self, clock: Any = time.monotonic, cpu_clock: Any = time.process_time) -> None:
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._due: float | None = None
        self._at = clock()
        self._cpu = cpu_clock()

    def expect(self, delay_s: float) -> None:
        """A timer was just set to fire in ``delay_s``."""
        self._due = self._clock() + delay_s

    def sample(self, state: RouterScaleState) -> None:
        """The timer fired: how late it was, and the CPU used since the last sample."""
        now, cpu = self._clock(), self._cpu_clock()
        if self._due is not None and now > self._at:
            lag_ms = max(0.0, now - self._due) * 1000
            state.samples.append((now, lag_ms, (cpu - self._cpu) / (now - self._at)))
        self._at, self._cpu = now, cpu
