"""Pods as replicas: what ``ComputeTarget.replicas`` reports, read from the API's Pod objects.

Pure: plain dicts in (the client's ``sanitize_for_serialization`` of a Pod, i.e. the API's
JSON), ``ReplicaInfo`` out; both the target (``target.py``) and the in-cluster router
(``discovery.py``) read pods this way, so they agree on what Ready means.

The mapping (Kubernetes 1.20 and later all serve these fields):

- ``metadata.deletionTimestamp`` set                   -> DRAINING (Terminating)
- phase Failed or Succeeded (evicted, refused by the   -> STOPPED, detail: reason and message
  node): the ReplicaSet replaces it
- condition ``Ready`` True, ``status.podIP`` set       -> READY, address ``podIP:5001``
- never Ready, and an init container or the replica    -> INIT_FAILED, detail: the container,
  container terminated with an error or waits in          its reason, exit code and the last
  CrashLoopBackOff (init() raised, fetch failed)          line of its termination message
- ``PodScheduled`` False (e.g. Unschedulable), or a    -> STARTING, detail: the reason and
  container waiting on ImagePullBackOff/ErrImagePull      message (shown in service.error)
- Ready once, not Ready now                            -> UNHEALTHY (the kubelet restarts it)
- otherwise                                            -> STARTING

"Ready once" cannot be read from one Pod object (the kubelet keeps no such flag), so the
caller passes the uids it has seen Ready; a restarted replica container (``restartCount`` > 0)
after one was Ready counts as Ready once too.

Replica index: pods have none, so a generation's pods are numbered by creation time (then
name); the newest has the highest index and is removed first, as a ReplicaSet prefers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from modelfleet.targets.base import ReplicaInfo, ReplicaState
from modelfleet.targets.kubernetes.manifests import REPLICA_PORT, SERVICE_LABEL

GENERATION_LABEL = "modelfleet.io/generation"

_FAILING = ("CrashLoopBackOff", "Error", "RunContainerError", "CreateContainerError", "CreateContainerConfigError")
_PULLING = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName")


def condition(pod: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return None


def is_ready(pod: Mapping[str, Any]) -> bool:
    c = condition(pod, "Ready")
    return bool(c and c.get("status") == "True" and pod.get("status", {}).get("podIP"))


def generation_of(pod: Mapping[str, Any]) -> int | None:
    value = (pod.get("metadata", {}).get("labels") or {}).get(GENERATION_LABEL)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _failure(statuses: Iterable[Mapping[str, Any]], what: str) -> str | None:
    """A container that terminated with an error or waits in a crash loop, said in one line."""
    for s in statuses:
        state = s.get("state") or {}
        last = (s.get("lastState") or {}).get("terminated") or {}
        term = state.get("terminated") or {}
        waiting = (state.get("waiting") or {}).get("reason")
        if term and term.get("exitCode", 0) != 0:
            said = f"{what} {s.get('name')} exited with status {term.get('exitCode')} ({term.get('reason') or 'Error'})"
            return said + _message(term)
        if waiting in _FAILING:
            code = last.get("exitCode")
            tail = f", last exit status {code}" if code is not None else ""
            return f"{what} {s.get('name')}: {waiting} after {s.get('restartCount', 0)} restarts{tail}{_message(last)}"
    return None


def _message(terminated: Mapping[str, Any]) -> str:
    """The last line of a terminated container's message (its termination log, or with
    ``FallbackToLogsOnError`` the tail of its log: the fetcher's one-line reason)."""
    lines = [line for line in str(terminated.get("message") or "").splitlines() if line.strip()]
    return f": {lines[-1].strip()[:500]}" if lines else ""


def _start_failure(status: Mapping[str, Any]) -> str | None:
    return _failure(status.get("initContainerStatuses") or [], "init container") or _failure(
        status.get("containerStatuses") or [], "container"
    )


def _waiting_detail(pod: Mapping[str, Any]) -> str | None:
    """Why a pod that is not failing has not started yet (Unschedulable, image pulls)."""
    scheduled = condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        return f"{scheduled.get('reason') or 'Pending'}: {scheduled.get('message') or 'not scheduled yet'}"
    status = pod.get("status", {})
    for s in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (s.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _PULLING:
            return f"{waiting['reason']}: {waiting.get('message') or s.get('image')}"
    if status.get("reason") or status.get("message"):
        return f"{status.get('reason') or 'Pending'}: {status.get('message') or ''}".rstrip(": ")
    return None


def replica_of(pod: Mapping[str, Any], index: int, ever_ready: Collection[str]) -> ReplicaInfo | None:
    """One pod as a replica; None for a pod that is not a modelfleet replica."""
    meta = pod.get("metadata", {})
    service = (meta.get("labels") or {}).get(SERVICE_LABEL)
    generation = generation_of(pod)
    if service is None or generation is None:
        return None
    status = pod.get("status", {})
    containers = status.get("containerStatuses") or []
    restarts = sum(int(s.get("restartCount", 0)) for s in containers)
    ip = status.get("podIP")
    address = f"{ip}:{REPLICA_PORT}" if ip else None
    was_ready = meta.get("uid") in ever_ready or is_ready(pod)
    detail: str | None = None
    if meta.get("deletionTimestamp"):
        state = ReplicaState.DRAINING
    elif status.get("phase") in ("Failed", "Succeeded"):
        # terminal (evicted, or refused by the node): its ReplicaSet no longer counts it and
        # starts another in its place
        state = ReplicaState.STOPPED
        detail = f"{status.get('reason') or status['phase']}: {status.get('message') or 'pod ended'}"
    elif is_ready(pod):
        state = ReplicaState.READY
    elif not was_ready and (failure := _start_failure(status)):
        state, detail = ReplicaState.INIT_FAILED, failure
    elif was_ready:
        state, detail = ReplicaState.UNHEALTHY, _failure(containers, "container") or "not Ready"
    else:
        state, detail = ReplicaState.STARTING, _waiting_detail(pod)
    return ReplicaInfo(
        id=meta.get("name", ""),
        service=service,
        generation=generation,
        index=index,
        state=state,
        pid=None,
        address=address,
        restarts=restarts,
        log_path=None,
        detail=detail,
    )


def replicas_of(pods: Iterable[Mapping[str, Any]], ever_ready: Collection[str] = ()) -> list[ReplicaInfo]:
    """Pods of any services and generations as replicas, indexed per (service, generation)."""

    def key(p: Mapping[str, Any]) -> tuple[str, str]:
        meta = p.get("metadata", {})
        return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))

    counters: dict[tuple[str, int], int] = {}
    out: list[ReplicaInfo] = []
    for pod in sorted(pods, key=key):
        labels = pod.get("metadata", {}).get("labels") or {}
        gen = generation_of(pod)
        if SERVICE_LABEL not in labels or gen is None:
            continue
        group = (labels[SERVICE_LABEL], gen)
        index = counters.get(group, 0)
        counters[group] = index + 1
        info = replica_of(pod, index, ever_ready)
        if info is not None:
            out.append(info)
    return out
