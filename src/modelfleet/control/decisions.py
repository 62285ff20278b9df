"""What the reconciler should do next for one service: a pure function over plain values.

``decide(desired, memory, observed)`` takes the service's desired generation and replica count,
what the reconciler remembers (which generation serves, which one failed and why) and the
replicas the compute target reports, and returns the actions to take and the service's state.
It reads no clock, store or socket; ``control/reconcile.py`` carries the actions out through
the target and calls it again whenever a replica changes state (and every second).

Rules, in order:

1. A generation other than the serving one and the failed one is *rolling out*. Its replicas
   are started beside the serving ones (``Start``). If any of them fails before it was ever
   Ready (``INIT_FAILED``), the generation is stopped and marked failed (``Stop`` + ``Fail``):
   with nothing serving the service is Failed, otherwise the old generation serves on. Once
   all of them are Ready, ``Replace`` switches the router to them and retires the rest
   (drained first): so an update never leaves a moment with no Ready replica behind the
   router, and a failed one never takes the service down.
2. Otherwise the serving generation is kept at the desired count: ``Scale`` up adds replicas
   at once; ``Scale`` down names its victims (not-Ready first, then the highest indexes),
   which the target drains before stopping. New replicas that fail to start are removed and
   the desired count lowered by as many (``StartFailed``).
3. Replicas of any other generation are stopped (``Stop``), drained first.
4. The state: Transitioning while the first generation rolls out; Failed when it failed;
   Healthy when every replica of the serving generation is Ready (replicas still starting for
   a scale-up are not counted); Unhealthy ("k of n replicas ready") otherwise. A serving
   generation scaled to zero (``scale_to_zero_after_seconds``: the only way the desired count
   is 0) is Healthy with the detail "scaled to zero", and "scaled to zero; starting a replica"
   while the first one comes back: it answers every request it can hold.

Draining replicas are the target's business from the moment they are removed: they are
ignored here. Worked example: generation 2 of a service serving generation 1 with two Ready
replicas, desired 2. With no replica of generation 2 yet: ``[Start(2, 2)]``, state Healthy
"updating to generation 2". With both Ready: ``[Replace(new=2, old=(1,))]``, Healthy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelfleet.targets.base import ReplicaInfo, ReplicaState

HEALTHY, UNHEALTHY, TRANSITIONING, FAILED = "Healthy", "Unhealthy", "Transitioning", "Failed"
SCALED_TO_ZERO = "scaled to zero"  # the state detail of a Healthy service with no replica

_GONE = (ReplicaState.DRAINING, ReplicaState.STOPPED)


@dataclass(frozen=True)
class Desired:
    """The service as stored: its latest generation, and how many replicas should serve."""

    generation: int
    replicas: int


@dataclass(frozen=True)
class Memory:
    """What the reconciler remembers between passes."""

    serving: int | None = None  # the generation the router sends to
    failed: int | None = None  # a generation that failed; not retried until the stored one changes
    failure: str | None = None  # why it failed


@dataclass(frozen=True)
class Start:
    """Run ``replicas`` replicas of ``generation`` (the target's ``apply``)."""

    generation: int
    replicas: int


@dataclass(frozen=True)
class Replace:
    """Every replica of ``new`` is Ready: serve it, then retire ``old`` (drained first)."""

    new: int
    old: tuple[int, ...]


@dataclass(frozen=True)
class Scale:
    """Change the serving generation's count; ``remove`` go first when it shrinks."""

    generation: int
    replicas: int
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stop:
    """Remove every replica of ``generation`` (drained first)."""

    generation: int


@dataclass(frozen=True)
class Fail:
    """``generation`` could not start: remember it, with ``reason``, and do not retry it."""

    generation: int
    reason: str


@dataclass(frozen=True)
class StartFailed:
    """``count`` new replicas of the serving generation failed to start; serve ``replicas``."""

    count: int
    replicas: int
    reason: str


Action = Start | Replace | Scale | Stop | Fail | StartFailed


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    state: str
    detail: str | None


def decide(desired: Desired, memory: Memory, observed: Sequence[ReplicaInfo]) -> Decision:
    """The next actions and the service's state (module docstring: the rules)."""
    live: dict[int, list[ReplicaInfo]] = {}
    for r in observed:
        if r.state not in _GONE:
            live.setdefault(r.generation, []).append(r)
    gen, serving = desired.generation, memory.serving
    actions: list[Action] = []

    if gen not in (serving, memory.failed):
        new = live.get(gen, [])
        failed = [r for r in new if r.state is ReplicaState.INIT_FAILED]
        if failed:
            r0 = failed[0]
            reason = f"{_why(failed)}; see service.get_logs() or `modelfleet service logs -n {r0.service}`"
            actions += [Stop(gen), Fail(gen, reason)]
            state, detail = _after_failure(gen, reason, serving, live)
        else:
            if len(new) != desired.replicas:
                actions.append(Start(gen, desired.replicas))
            elif all(r.state is ReplicaState.READY for r in new):
                old = tuple(sorted(g for g in live if g != gen))
                return Decision((Replace(new=gen, old=old),), HEALTHY, None)
            # what holds a starting replica back (a Pending pod: Unschedulable, an image pull)
            waiting = next((r.detail for r in new if r.state is not ReplicaState.READY and r.detail), None)
            if serving is None:
                state, detail = TRANSITIONING, waiting
            else:
                state, detail = HEALTHY, f"updating to generation {gen}" + (f": {waiting}" if waiting else "")
        actions += [Stop(g) for g in sorted(live) if g not in (gen, serving)]
        return Decision(tuple(actions), state, detail)

    actions += [Stop(g) for g in sorted(live) if g != serving]
    if serving is None:  # the stored generation failed and nothing serves
        return Decision(tuple(actions), FAILED, memory.failure or "the deployment failed")
    current = live.get(serving, [])
    failed = [r for r in current if r.state is ReplicaState.INIT_FAILED]
    if failed:
        count = desired.replicas - len(failed)
        reason = f"{len(failed)} new replica(s) failed to start: {_why(failed)}"
        actions += [StartFailed(len(failed), count, reason), Scale(serving, count, tuple(r.id for r in failed))]
    elif len(current) < desired.replicas:
        actions.append(Scale(serving, desired.replicas))
    elif len(current) > desired.replicas:
        # not-Ready replicas go first (they serve nothing), then the highest indexes
        ordered = sorted(current, key=lambda r: (r.state is ReplicaState.READY, -r.index))
        victims = tuple(r.id for r in ordered[: len(current) - desired.replicas])
        actions.append(Scale(serving, desired.replicas, victims))
    note = None
    if memory.failed == gen and memory.failure:
        note = f"update to generation {gen} failed: {memory.failure}; still serving generation {serving}"
    if not failed and all(r.new for r in current) and (current or desired.replicas == 0):
        # at zero, or its first replica starting again: nothing is wrong (scale to zero)
        zero = SCALED_TO_ZERO if not current else f"{SCALED_TO_ZERO}; starting a replica"
        return Decision(tuple(actions), HEALTHY, zero if note is None else f"{zero}; {note}")
    state, detail = _health(current, note)
    return Decision(tuple(actions), state, detail)


def _why(failed: Sequence[ReplicaInfo]) -> str:
    return failed[0].detail or "replica failed to start"


def _after_failure(
    gen: int, reason: str, serving: int | None, live: dict[int, list[ReplicaInfo]]
) -> tuple[str, str | None]:
    if serving is None:
        return FAILED, reason
    note = f"update to generation {gen} failed: {reason}; still serving generation {serving}"
    return _health(live.get(serving, []), note)


def _health(replicas: Sequence[ReplicaInfo], note: str | None) -> tuple[str, str | None]:
    counted = [r for r in replicas if not r.new and r.state is not ReplicaState.INIT_FAILED]
    ready = sum(r.state is ReplicaState.READY for r in counted)
    if counted and ready == len(counted):
        return HEALTHY, note
    return UNHEALTHY, f"{ready} of {len(counted)} replicas ready"
