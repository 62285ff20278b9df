"""The control plane of one attached Kubernetes compute target: the same ``Reconciler`` as the
local cluster, with ``KubernetesTarget`` and a planner that makes pod templates.

    python -m modelfleet.control.k8s_controller --workspace PATH --compute-target NAME [--detach]

One process per (workspace, compute target), held by an exclusive lock on
``runtime/k8s-<NAME>.lock`` (a second one exits at once); ``Model.deploy(...,
deployment_target=target)`` starts it on demand (``ensure_controller``). Every second it
reads the workspace: services whose config names this compute target get a controller (the
reconciler then follows their changes by itself), and services gone from the workspace are
deleted from the cluster, so ``service.delete()`` works whoever carries it out. Services of
other targets are left alone. At start, objects of services the workspace no longer holds
(deleted while no controller ran) are removed.

The planner (``kubernetes_planner``) turns a stored service into ``manifests.ServiceSource``:
the models and the snapshot by digest, fetched by each pod's init container from the blob
store the compute target names (``blob_store``: a URL the pods can reach), and the image
tagged with the environment's hash (with an ``image_registry``, looked up there first:
``ImageCheck``). A compute target without a blob store is refused with a
message saying why: blobs on a laptop's disk are out of a cluster's reach.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from modelfleet.control.credentials import signing_public_key
from modelfleet.control.k8s_router import api_client
from modelfleet.control.k8s_uploads import LogRetention, prune_log_uploads, sync_log_uploads, sync_uploads
from modelfleet.control.reconcile import COMPUTE_TARGET_KEY, Planner, Reconciler
from modelfleet.envs.canonical import canonicalize
from modelfleet.envs.image import DEFAULT_REPOSITORY, image_tag, image_variant, write_image_context
from modelfleet.envs.registry import Credential, is_loopback, manifest_exists, parse_reference
from modelfleet.errors import ConfigError, NotFound, TargetError
from modelfleet.spec import DeploySpec, EnvironmentSpec
from modelfleet.store.computes import ComputeRecord
from modelfleet.store.registry import ServiceRecord, Store
from modelfleet.targets.base import GenerationSpec, Probe, ReplicaPlan
from modelfleet.targets.kubernetes import kaniko
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.target import KubernetesPlan, KubernetesTarget

log = logging.getLogger("modelfleet.control.k8s")

DEFAULT_IMAGE_REPOSITORY = "modelfleet-replica"
_PASS_S = 1.0
_START_TIMEOUT_S = 30.0
_ROLE_RECHECK_S = 30.0
_HPA_RECHECK_S = 5.0
_UPLOADS_S = 2.0  # how often the pods' uploaded model data is laid into the workspace
# after the upload credential is removed, the last segments the pods' sidecars sent are still laid
_LOGS_AFTER_S = 300.0
_PRUNE_S = 30.0  # how often the laid pod logs are pruned (k8s_uploads.logs_to_prune)


def service_source(store: Store, record: ServiceRecord, spec: DeploySpec, compute: ComputeRecord) -> m.ServiceSource:
    settings = compute.settings
    blob_store = settings.get("blob_store")
    if not blob_store:
        raise ConfigError(
            f"compute target {compute.name} has no blob_store: its pods fetch models and source from a blob store "
            "they can reach (an http(s):// URL serving the workspace's blobs), and this workspace's blobs are on "
            "this machine's disk; attach it again with blob_store=URL"
        )
    config = record.config
    models = []
    for ref in config.get("models", []):
        model = store.get_model(ref["name"], int(ref["version"]))
        files = tuple(m.ModelFile(f.relpath, f.digest) for f in model.files)
        models.append(m.ModelLayout(model.name, model.version, files))
    inference = config["inference"]
    env = config.get("environment") or {"name": "default"}
    image = settings.get("image") or environment_image(settings, EnvironmentSpec.from_dict(env), spec.gpu_cores > 0)
    return m.ServiceSource(
        name=record.name,
        deploy=spec,
        image=image,
        entry_script=inference["entry_script"],
        blob_store=blob_store,
        models=tuple(models),
        snapshot=inference.get("snapshot"),
        source_name=inference.get("source_name") or "source",
        environment_variables=dict(env.get("environment_variables") or {}),
        namespace=settings.get("namespace") or "default",
        # with the pods' write credential set (sdk/k8s_uploads.py), every pod uploads its log
        ship_logs=bool(settings.get("blob_store_upload_auth")),
        upload_credential_set=settings.get("blob_store_upload_set"),
    )


def environment_image(settings: Mapping[str, Any], env: EnvironmentSpec, gpu: bool) -> str:
    """The tag ``modelfleet env build-image NAME --registry R [--gpu]`` makes for ``env``:
    ``R/<image_repository or modelfleet-env>:<hash>[-cuda]`` with an ``image_registry``, else
    ``<image_repository or modelfleet-replica>:<hash>[-cuda]``."""
    registry = settings.get("image_registry")
    repository = settings.get("image_repository")
    if registry:
        repository = f"{str(registry).rstrip('/')}/{repository or DEFAULT_REPOSITORY}"
    return image_tag(canonicalize(env).hash, repository or DEFAULT_IMAGE_REPOSITORY, image_variant(env.base_image, gpu))


class ImageCheck:
    """At deploy, with an ``image_registry``: is the service's image there? A miss refuses the
    generation, naming the tag and the command that builds it, or (``image_build="kaniko"``)
    starts an in-cluster build and goes on: the pods pull the image once the Job has pushed
    it (until then the kubelet reports, and retries, the pull). A found tag is remembered, as
    a pushed tag stays. ``credential``: for the look-up, from the controller's environment."""

    def __init__(self, compute: ComputeRecord, credential: Credential | None = None) -> None:
        self.compute = compute
        self.credential = credential
        self.found: set[str] = set()

    def __call__(self, src: m.ServiceSource, env: EnvironmentSpec, gpu: bool) -> None:
        settings = self.compute.settings
        registry = settings.get("image_registry")
        if not registry or settings.get("image") or src.image in self.found:
            return
        ref = parse_reference(src.image)
        if manifest_exists(ref, self.credential):
            self.found.add(src.image)
            return
        if settings.get("image_build") != "kaniko":
            repository = src.image.rsplit(":", 1)[0].removeprefix(f"{str(registry).rstrip('/')}/")
            command = f"modelfleet env build-image {shlex.quote(env.name)} --registry {registry} --push"
            command += f" --repository {repository}" if repository != DEFAULT_REPOSITORY else ""
            command += " --gpu" if gpu else ""
            command += f" --base-image {shlex.quote(env.base_image)}" if env.base_image else ""
            raise ConfigError(
                f"image {src.image} is not in registry {registry}: build and push it with `{command}`, "
                f'or attach {self.compute.name} with image_build="kaniko" to build it in the cluster'
            )
        build = kaniko_build(env, src.image, gpu, src.effective_namespace)
        api = api_client(settings.get("kubeconfig"), settings.get("context"))
        try:
            started = kaniko.start_build(api, build)
        finally:
            api.close()
        log.info(
            "service %s: image %s not in the registry; %s",
            src.name,
            src.image,
            f"Job {kaniko.build_name(src.image)} builds it" if started else "its build Job runs already",
        )


def kaniko_build(env: EnvironmentSpec, tag: str, gpu: bool, namespace: str) -> kaniko.BuildSource:
    """What an in-cluster build of ``tag`` for ``env`` is made from: the image context (as
    ``env build-image`` writes it) as a .tar.gz; a loopback registry is spoken to in plain http."""
    with tempfile.TemporaryDirectory(prefix="modelfleet-kaniko-") as folder:
        write_image_context(env, Path(folder) / "ctx", tag.rsplit(":", 1)[0], gpu=gpu)
        context = kaniko.context_archive(Path(folder) / "ctx")
    insecure = is_loopback(parse_reference(tag).host)
    return kaniko.BuildSource(tag, canonicalize(env).hash, context, namespace, insecure)


def upload_settings(compute: ComputeRecord) -> tuple[Any, ...]:
    """What of a compute target's settings the planner puts in a pod template for uploads:
    whether its pods ship their log (``blob_store_upload_auth``), where to, and when the
    credential was last set (``blob_store_upload_set``: a rotated one rolls the pods that upload)."""
    settings = compute.settings
    auth, stamp = settings.get("blob_store_upload_auth"), settings.get("blob_store_upload_set")
    return (bool(auth), settings.get("blob_store"), stamp)


def current_compute(store: Store, compute: ComputeRecord) -> ComputeRecord:
    """The compute target's record as the workspace holds it now (``compute`` once detached)."""
    try:
        return store.computes.get(compute.name)
    except NotFound:
        return compute


def kubernetes_planner(compute: ComputeRecord, credential: Credential | None = None) -> Planner:
    check_image = ImageCheck(compute, credential)

    def plan(store: Store, record: ServiceRecord, spec: DeploySpec) -> ReplicaPlan:
        # the record as it is now: an upload credential set since the controller started counts
        src = service_source(store, record, spec, current_compute(store, compute))
        env = EnvironmentSpec.from_dict(record.config.get("environment") or {"name": "default"})
        check_image(src, env, spec.gpu_cores > 0)
        return KubernetesPlan(
            service=record.name,
            generation=record.generation,
            python="python",  # the image's; the pod spec says how the replica starts
            app_root=Path(m.APP_ROOT),
            entry_script=Path(m.APP_ROOT) / src.source_name / src.entry_script,
            environment=m.replica_environment(src),
            max_concurrent=spec.replica_max_concurrent_requests,
            probe=Probe(
                period_s=float(spec.liveness.period_seconds),
                timeout_s=float(spec.liveness.timeout_seconds),
                failure_threshold=spec.liveness.failure_threshold,
                startup_deadline_s=float(spec.liveness.initial_delay_seconds),
            ),
            source=src,
        )

    return plan


def runs_on(record: ServiceRecord) -> str | None:
    """The compute target a service was deployed to; None for the local cluster."""
    value = record.config.get(COMPUTE_TARGET_KEY)
    return str(value) if value else None


class KubernetesController:
    def __init__(
        self, store: Store, compute: ComputeRecord, target: KubernetesTarget, credential: Credential | None = None
    ) -> None:
        self.store = store
        self.compute = compute
        self.target = target
        self._adoptions: set[asyncio.Task[int]] = set()
        self._role_for: set[str] | None = None  # the services the router's Role was last made for
        self._role_at = 0.0
        self._hpa_at = 0.0
        self._uploads_at = 0.0
        self._uploads_seen: tuple[Any, ...] | None = None  # upload_settings() at the last pass
        self._applied: set[str] = set()  # services whose Deployment this process applied as planned now
        self._logs_until = 0.0  # sync uploaded logs until then (the credential was removed)
        self._pruned_at = time.monotonic()  # the first prune once the pod watch has listed the pods
        self._planner = kubernetes_planner(compute, credential)
        self._hpa_notes: dict[str, str | None] = {}
        self.reconciler = Reconciler(store, target, self._planner, compute_target=compute.name)
        target.on_scaled = self._adopt

    def _adopt(self, service: str, generation: int, replicas: int) -> None:
        """The router's autoscaler patched a Deployment's scale: that count is the service's
        from now on (a scale event is recorded), so the reconciler does not undo it."""
        controller = self.reconciler.controllers.get(service)
        if controller is None or controller.serving_generation != generation or controller.spec is None:
            return
        if not controller.spec.autoscale.enabled or replicas == controller.replica_count:
            return
        log.info("service %s: the router's autoscaler set %d replicas", service, replicas)
        task = asyncio.get_running_loop().create_task(
            controller.scale_to(replicas, "the router's autoscaler (deployments/scale)", None)
        )
        self._adoptions.add(task)
        task.add_done_callback(self._adoptions.discard)

    def _mine(self) -> set[str]:
        return {r.name for r in self.store.list_services() if runs_on(r) == self.compute.name}

    async def collect_orphans(self) -> None:
        """Remove the objects of services this workspace no longer holds."""
        mine = await asyncio.to_thread(self._mine)
        found = await asyncio.to_thread(self.target.services)
        for service in sorted(found - mine):
            log.info("service %s: not in the workspace any more; removing its objects", service)
            await self.target.delete(service, 0.0)

    async def run_pass(self) -> None:
        mine = await asyncio.to_thread(self._mine)
        known = set(self.reconciler.controllers)
        now = time.monotonic()
        if mine != self._role_for or now - self._role_at >= _ROLE_RECHECK_S:
            # before a new service publishes its route, since the router reads its Secret then;
            # and now and again, for a router installed (or its Role replaced) since
            await asyncio.to_thread(self.target.sync_router_role, mine)
            self._role_for, self._role_at = mine, now
        if now - self._hpa_at >= _HPA_RECHECK_S:
            self._hpa_at = now
            await self._report_foreign_autoscalers()
        if now - self._uploads_at >= _UPLOADS_S:
            self._uploads_at = now
            compute = await asyncio.to_thread(current_compute, self.store, self.compute)
            await self._follow_upload_settings(compute)
            await self._sync_uploads(compute)
        for name in sorted(mine - known):
            log.info("service %s: following it", name)
            self.reconciler.sync(name)
        for name in sorted(known - mine):
            log.info("service %s: deleted from the workspace; deleting it from the cluster", name)
            await self.reconciler.delete(name)

    async def _follow_upload_settings(self, compute: ComputeRecord) -> None:
        """``set_upload_credential`` reaches services already deployed: when the target's upload
        settings change, every service is planned again (``ServiceController.replan``), and one
        whose pod template changed (the "ship" sidecar added, or taken away when it collects no
        data) is applied: its Deployment rolls, readiness-gated. An unchanged plan applies
        nothing. A service this process has not applied yet (a credential set while no
        controller ran) is applied once as planned now: an equal template rolls nothing (the
        Deployment's pod-template-hash is the same)."""
        settings = upload_settings(compute)
        changed = self._uploads_seen is not None and settings != self._uploads_seen
        if self._uploads_seen is not None and self._uploads_seen[0] and not settings[0]:
            self._logs_until = time.monotonic() + _LOGS_AFTER_S
        self._uploads_seen = settings
        if changed:
            log.info("compute target %s: upload settings changed; planning its services again", compute.name)
        for name, controller in list(self.reconciler.controllers.items()):
            try:
                if changed:
                    if await controller.replan():
                        log.info("service %s: pod template changed with the upload settings; rolling", name)
                    self._applied.add(name)
                elif name not in self._applied and controller.serving_generation is not None:
                    await self._apply_as_planned(name, controller.serving_generation, controller.replica_count)
                    self._applied.add(name)
            except Exception as exc:  # the API server or the planner: tried again at the next change
                log.warning("service %s: not planned again for the upload settings (%s)", name, exc)
        self._applied &= set(self.reconciler.controllers)

    async def _apply_as_planned(self, name: str, generation: int, replicas: int) -> None:
        record = await asyncio.to_thread(self.store.get_service, name)
        if record.generation != generation:
            return  # an update rolls out: its generation was planned with the settings of now
        plan = await asyncio.to_thread(self._planner, self.store, record, DeploySpec.from_dict(record.config["deploy"]))
        await self.target.apply(GenerationSpec(plan, replicas))

    async def _sync_uploads(self, compute: ComputeRecord) -> None:
        """The model data the pods of services that collect it uploaded, into the workspace's
        data folder (``k8s_uploads.py``): ``modelfleet data export`` reads it from there; and,
        with the target's upload credential (or for a while after it was removed), every
        service's pods' output, where ``service.get_logs()`` reads it."""
        ship_logs = bool(compute.settings.get("blob_store_upload_auth")) or time.monotonic() < self._logs_until
        for name, controller in list(self.reconciler.controllers.items()):
            if controller.spec is None:
                continue
            syncs = [("model data", sync_uploads)] if controller.spec.collect_model_data else []
            syncs += [("log", sync_log_uploads)] if ship_logs else []
            for what, sync in syncs:
                try:  # the segments laid are deleted from the workspace's own blob folder
                    added = await asyncio.to_thread(sync, self.store, name, True)
                except Exception as exc:  # the blob store unreachable: try again next time
                    log.warning("service %s: uploaded %s not read (%s)", name, what, exc)
                    continue
                if added:
                    log.info("service %s: %d bytes of %s from its pods", name, added, what)
        if time.monotonic() - self._pruned_at >= _PRUNE_S:
            self._pruned_at = time.monotonic()
            for name in list(self.reconciler.controllers):
                await self._prune_logs(name)

    async def _prune_logs(self, name: str) -> None:
        """The laid logs of ``name``'s pods, bounded as a local replica's are (``k8s_uploads``:
        retention): its pods' own ``MODELFLEET_LOG_BACKUPS``, and the last few pods gone."""
        running = {r.id for r in self.target.replicas(name)}
        try:
            record = await asyncio.to_thread(self.store.get_service, name)
            env = (record.config.get("environment") or {}).get("environment_variables") or {}
            backups = str(env.get("MODELFLEET_LOG_BACKUPS") or "")
            retention = LogRetention(backups=int(backups)) if backups.isdigit() else LogRetention()
            pruned = await asyncio.to_thread(prune_log_uploads, self.store, name, running, time.time(), retention)
        except Exception as exc:  # a file gone meanwhile, the service deleted: next time
            log.warning("service %s: pod logs not pruned (%s)", name, exc)
            return
        if pruned.files:
            log.info(
                "service %s: %d old pod log file(s) deleted (%d bytes, %d segment(s))",
                name,
                pruned.files,
                pruned.bytes,
                pruned.segments,
            )

    async def _report_foreign_autoscalers(self) -> None:
        """modelfleet never creates an HPA; one aimed at a service's Deployment is said in its
        state detail (``service.error``) and a scale event, until it is gone."""
        found = await asyncio.to_thread(self.target.foreign_autoscalers)
        for name, controller in self.reconciler.controllers.items():
            note = (
                f"{found[name]}: modelfleet scales this service itself (its autoscale settings); delete the HPA"
                if name in found
                else None
            )
            if note != self._hpa_notes.get(name):
                event = (controller.replica_count, note, None) if note else None
                await controller.note_scaling(note, event)
                self._hpa_notes[name] = note
                if note:
                    log.warning("service %s: %s", name, note)

    async def run(self, stopping: asyncio.Event) -> None:
        await self.collect_orphans()
        while not stopping.is_set():
            try:
                await self.run_pass()
            except Exception:
                log.exception("compute target %s: pass failed", self.compute.name)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), _PASS_S)
        # Pods outlive this process: only the controllers and the watch stop.
        controllers = list(self.reconciler.controllers.values())
        self.reconciler.controllers.clear()
        await asyncio.gather(*(c.close() for c in controllers))
        await self.target.close(0.0)


def _token_key_pem(root: Path) -> str:
    key = signing_public_key(root)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


async def serve(store: Store, compute: ComputeRecord, credential: Credential | None = None) -> None:
    settings = compute.settings
    api = api_client(settings.get("kubeconfig"), settings.get("context"))
    target = KubernetesTarget(api, settings.get("namespace") or "default", lambda: _token_key_pem(store.root))
    controller = KubernetesController(store, compute, target, credential)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info("compute target %s: reconciling namespace %s", compute.name, target.namespace)
    try:
        await controller.run(stopping)
    finally:
        api.close()


def registry_credential(environ: Mapping[str, str]) -> Credential | None:
    """The image registry's credential for the deploy's look-up, as ``env build-image`` takes
    it: ``MODELFLEET_REGISTRY_USERNAME`` and ``MODELFLEET_REGISTRY_PASSWORD`` in the
    environment of whoever starts the controller (``Model.deploy``); none: anonymous."""
    user, password = environ.get("MODELFLEET_REGISTRY_USERNAME"), environ.get("MODELFLEET_REGISTRY_PASSWORD")
    return Credential(user, password) if user and password else None


def lock_path(store: Store, compute: str) -> Path:
    return store.runtime_dir / f"k8s-{compute}.lock"


def log_path(store: Store, compute: str) -> Path:
    return store.runtime_dir / f"k8s-{compute}.log"


def running_pid(store: Store, compute: str) -> int | None:
    """The pid of the controller holding the lock, or None when none runs."""
    path = lock_path(store, compute)
    if not path.exists():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


def ensure_controller(store: Store, compute: str) -> int:
    """Start the compute target's controller unless one runs; returns its pid."""
    pid = running_pid(store, compute)
    if pid is not None:
        return pid
    store.runtime_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "modelfleet.control.k8s_controller", "--workspace", str(store.root)]
    argv += ["--compute-target", compute, "--detach"]
    with open(log_path(store, compute), "ab") as out:
        # it forks into the background; this returns once it holds the lock, or has failed
        subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            close_fds=True,
            timeout=_START_TIMEOUT_S,
            check=False,
        )
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = running_pid(store, compute)
        if pid is not None and pid > 0:
            return pid
        time.sleep(0.05)
    raise TargetError(f"the controller of compute target {compute} did not start; see {log_path(store, compute)}")


def stop_controller(store: Store, compute: str, timeout: float = 30.0) -> bool:
    """SIGTERM to the running controller, and wait until it has gone; False when none ran."""
    pid = running_pid(store, compute)
    if pid is None or pid <= 0:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(store, compute) is None:
            return True
        time.sleep(0.05)
    raise TargetError(f"the controller of compute target {compute} (pid {pid}) did not stop in {timeout:.0f} s")


def _detach() -> None:
    """Fork; the parent exits at once and the child leads a session of its own. The starter
    (``ensure_controller``) then waits for the lock file to name the child."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()


def _lock(fd: int) -> bool:
    # A moment's retry: running_pid() elsewhere may hold the lock shared for an instant.
    for _ in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.05)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelfleet-k8s-controller", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--compute-target", required=True)
    parser.add_argument("--detach", action="store_true", help="fork into the background once the lock is held")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.detach:  # before the store is opened: no database connection crosses the fork
        _detach()
    store = Store.open(args.workspace)
    try:
        compute = store.computes.get(args.compute_target)
        path = lock_path(store, compute.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _lock(fd):
            log.info("a controller for %s already runs", compute.name)
            os.close(fd)
            return 0
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        try:
            asyncio.run(serve(store, compute, registry_credential(os.environ)))
        finally:
            os.close(fd)
        return 0
    finally:
        store.close()


if __name__ == "__main__":
    raise SystemExit(main())
