"""A service generation's environment: ``envs.resolve`` wired to the workspace.

The reconciler calls ``resolve_for_service`` from a worker thread while it plans a roll-out.
It builds the cache settings from the workspace (``envs.CacheSettings.from_workspace``: the
workspace's ``.modelfleet/envs``, the machine-wide ``~/.cache/modelfleet/envs`` unless the
workspace's ``envs.machine_cache`` setting says otherwise), appends everything the builder
and the installer print to the service's ``logs/build.log`` (so ``service.get_logs()`` shows
an installer's error), and turns each build step into a ``build`` event of the service:

    {"generation": 3, "step": 3, "steps": 5, "message": "installing 2 package(s) ...", "detail": false}

which ``wait_for_deployment(show_output=True)`` and the CLI print as they arrive. The last
event of a generation carries the outcome, ``{"generation", "hash", "python", "source"}``,
which ``modelfleet env prune`` reads to keep the environments that services still run in.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from modelfleet import envs
from modelfleet.envs.audit import AuditReport, audit_pins, installed_pins
from modelfleet.errors import ModelfleetError
from modelfleet.spec import EnvironmentSpec
from modelfleet.store.registry import Store

BUILD_EVENT = "build"
BUILD_LOG = "build.log"


def settings_for(store: Store) -> envs.CacheSettings:
    return envs.CacheSettings.from_workspace(store.get_setting, store.root, Path.home())


def resolve_for_service(
    store: Store, service: str, generation: int, spec: EnvironmentSpec
) -> tuple[envs.Resolved, dict[str, str]]:
    """The environment's interpreter, found or built, and the variables a replica started
    from it needs (a built environment must not see the daemon's PYTHONPATH)."""
    logs = store.runtime_dir / "services" / service / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def progress(step: envs.Step) -> None:
        data = {"generation": generation, "step": step.step, "steps": step.steps, "message": step.message}
        store.add_event(service, BUILD_EVENT, {**data, "detail": step.detail})

    with open(logs / BUILD_LOG, "a", encoding="utf-8") as log:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        log.write(f"--- {stamp} generation {generation}: environment {spec.name!r}\n")
        log.flush()
        try:
            resolved = envs.resolve(spec, settings_for(store), log=log, progress=progress)
        except ModelfleetError as exc:
            log.write(f"environment {spec.name!r} failed: {exc.message}\n")
            hint = f"the build log is in the service's logs: service.get_logs(), `modelfleet service logs -n {service}`"
            raise type(exc)(f"{exc.message}\n{hint}") from None
    outcome = {"generation": generation, "hash": resolved.hash, "python": resolved.python, "source": resolved.source}
    store.add_event(service, BUILD_EVENT, outcome)
    isolation = {"PYTHONPATH": ""} if resolved.hash is not None else {}
    return resolved, isolation


def usage(store: Store) -> dict[str, list[str]]:
    """Environment hash → the services that run in it or are about to: each service's latest
    specification, and the environment of the generation it serves (from its build events)."""
    used: dict[str, list[str]] = {}
    for record in store.list_services():
        hashes: set[str] = set()
        spec = EnvironmentSpec.from_dict(record.config.get("environment") or {"name": "default"})
        if envs.needs_build(spec):
            with contextlib.suppress(ModelfleetError):  # a spec that cannot build has no environment
                hashes.add(envs.canonicalize(spec).hash)
        wanted = {record.generation, record.serving_generation}
        for event in store.list_events(record.name, kind=BUILD_EVENT):
            if event.get("hash") and event.get("generation") in wanted:
                hashes.add(event["hash"])
        for digest in hashes:
            used.setdefault(digest, []).append(record.name)
    return used


def specs_named(store: Store, name: str) -> dict[str, EnvironmentSpec]:
    """Hash → specification, for the environments called ``name`` (or whose hash starts with
    it) among the workspace's services and its cache."""
    found: dict[str, EnvironmentSpec] = {}
    for record in store.list_services():
        spec = EnvironmentSpec.from_dict(record.config.get("environment") or {"name": "default"})
        if spec.name == name and envs.needs_build(spec):
            found[envs.canonicalize(spec).hash] = spec
    for env in envs.list_cached(settings_for(store).workspace_cache, "workspace"):
        if env.name == name or (len(name) >= 6 and env.hash.startswith(name)):
            found.setdefault(env.hash, EnvironmentSpec.from_dict(env.metadata["spec"]))
    return found


def audit_subjects(store: Store, name: str | None) -> list[tuple[str, list[str] | str]]:
    """What ``modelfleet env audit`` checks: (label, resolved ``Name==version`` pins) for a built
    environment, (label, interpreter path) for one that runs in an existing interpreter.
    ``name`` None: every environment the workspace's services use."""
    subjects: dict[str, tuple[str, list[str] | str]] = {}
    cached = {e.hash: e for e in envs.list_cached(settings_for(store).workspace_cache, "workspace")}
    for record in store.list_services():
        spec = EnvironmentSpec.from_dict(record.config.get("environment") or {"name": "default"})
        if name is not None and spec.name != name:
            continue
        if envs.needs_build(spec):
            with contextlib.suppress(ModelfleetError):
                digest = envs.canonicalize(spec).hash
                if digest in cached:
                    subjects[digest] = (
                        f"{spec.name} ({digest[:12]})",
                        list(cached[digest].metadata.get("installed", [])),
                    )
        else:
            python = spec.python_executable or sys.executable
            subjects[python] = (f"{spec.name} (interpreter {python})", python)
    if name is not None:
        for digest, env in cached.items():
            if env.name == name or (len(name) >= 6 and digest.startswith(name)):
                subjects.setdefault(digest, (f"{env.name} ({digest[:12]})", list(env.metadata.get("installed", []))))
    return list(subjects.values())


def audit_environment(store: Store, spec: EnvironmentSpec) -> AuditReport:
    """Audit the packages of the environment ``spec`` resolves to. Building it (on a cache
    miss) lands it in the same caches a deploy looks in, so a deploy after this builds nothing."""
    resolved = envs.resolve(spec, settings_for(store))
    return audit_pins(installed_pins(resolved.python))
