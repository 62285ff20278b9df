"""A stand-in for the kubelet, for tests: no container engine can run on these machines.

What it does, as a kubelet would, from the objects in the API server and nothing else:

- registers a Node (allocatable cpu, memory, pods) and keeps its Ready condition fresh, so the
  real scheduler places pods on it and the real node controller leaves it alone;
- watches the Pods bound to it and runs each from its PodSpec: the init containers one after
  the other, then the containers, each a process with the container's ``command`` + ``args``
  (``$(VAR)`` expanded), ``env`` (values, ``fieldRef``, ``configMapKeyRef``,
  ``secretKeyRef``, ``optional`` ones left unset when missing) and ``workingDir``; an init
  container that fails with ``terminationMessagePolicy: FallbackToLogsOnError`` gets its log's
  tail as its termination message, as the kubelet does;
- gives each pod its own loopback address 127.X.Y.N and sets it as ``status.podIP`` (X.Y from
  the test process's pid, so two test runs at once never share an address, and never
  127.0.0.x, where other tests listen); patches the
  pod's status (phase, conditions, container states, ``restartCount``) and runs the
  ``httpGet`` readiness and liveness probes against that address;
- restarts a container that exits (``restartPolicy: Always``), with a growing back-off, and a
  container whose liveness probe fails;
- when a pod is deleted, runs each running container's ``lifecycle.preStop`` hook (``exec``
  as the container's own command would run, ``httpGet`` against the pod's address, or
  ``sleep``), then stops its processes (SIGTERM, then SIGKILL when the grace period, which the
  hooks count against, is over) and removes the pod object, as the kubelet confirms a deletion.

What it imitates instead of doing: there is no image. ``image_python(image)`` (supplied by the
test) names the Python interpreter an image stands for; ``python``/``python3`` as a command
is that interpreter and ``PATH`` starts at its folder. Volumes (``emptyDir``, ``configMap``,
``secret``) are folders under the pod's work dir, and every mount path in the command, args,
env values and working dir is rewritten to its folder, since a process cannot get its own
root file system here; for the same reason a container that mounts its service-account
token gets ``KUBECONFIG`` pointing at a kubeconfig made of it. There is no network
namespace: a pod's processes bind the pod's loopback address. Container logs are files
(``log_path``), not the pods/log API.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k8s_control_plane import die_with_parent
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("node_standin")

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_MAX_BACKOFF_S = 10.0
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_HEARTBEAT_S = 5.0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, unknown ones kept, ``$$`` is ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


class PodFailed(Exception):
    """The pod cannot be run by the stand-in; the reason goes into its status."""


@dataclass
class _Container:
    spec: dict[str, Any]
    init: bool
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    ready: bool = False
    started_at: str | None = None
    waiting: str | None = "ContainerCreating"
    terminated: dict[str, Any] | None = None
    liveness_failed: bool = False


@dataclass
class _Pod:
    namespace: str
    name: str
    uid: str
    ip: str
    dir: Path
    obj: dict[str, Any]
    containers: list[_Container] = field(default_factory=list)
    init_containers: list[_Container] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)  # its processes were signalled
    initialized: bool = False
    failure: str | None = None
    thread: threading.Thread | None = None
    deleting: bool = False
    mounts: dict[str, dict[str, str]] = field(default_factory=dict)  # per container, once prepared
    status_lock: threading.Lock = field(default_factory=threading.Lock)


class NodeStandIn:
    """One stand-in node. ``start()`` registers it and begins watching; ``stop()`` ends every
    process it started and deletes the Node."""

    def __init__(
        self,
        api: client.ApiClient,
        name: str,
        workdir: Path,
        image_python: Callable[[str], str],
        api_server: tuple[str, int],
        *,
        cpu: str = "4",
        memory: str = "8Gi",
        max_pods: int = 20,
        subnet: str | None = None,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.name = name
        self.workdir = workdir
        self.image_python = image_python
        self.api_server = api_server
        self.capacity = {"cpu": cpu, "memory": memory, "pods": str(max_pods)}
        self.subnet = subnet or loopback_subnet()
        self._free_ips = [f"{self.subnet}.{n}" for n in range(1, max_pods + 1)]
        self._pods: dict[str, _Pod] = {}  # by uid
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch: watch.Watch | None = None

    # ------------------------------------------------------------------ node

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "status": {
                "capacity": self.capacity,
                "allocatable": self.capacity,
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.name},
                ],
                "conditions": [self._ready_condition()],
                "nodeInfo": {
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                    "kernelVersion": os.uname().release,
                    "osImage": "modelfleet node stand-in",
                    "containerRuntimeVersion": "standin://0",
                    "kubeletVersion": "v1.20.2",
                    "kubeProxyVersion": "v1.20.2",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }
        self.core.create_node(node)
        for target in (self._heartbeat, self._watch_pods):
            t = threading.Thread(target=target, name=f"standin-{self.name}-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def _ready_condition(self) -> dict[str, str]:
        now = _now()
        return {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "node stand-in is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    def _heartbeat(self) -> None:
        while not self._stop.wait(_HEARTBEAT_S):
            try:
                self.core.patch_node_status(self.name, {"status": {"conditions": [self._ready_condition()]}})
            except Exception as e:  # a missed heartbeat is retried; the grace period is 40 s
                log.warning("heartbeat of node %s failed: %s", self.name, e)

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        with self._lock:
            pods = list(self._pods.values())
        for pod in pods:
            self._end_pod(pod, grace=2.0)
        for t in self._threads:
            t.join(timeout=10)
        with contextlib.suppress(ApiException):
            self.core.delete_node(self.name)

    # ------------------------------------------------------------------ pods

    def _watch_pods(self) -> None:
        # Each watch resumes from the last resourceVersion seen, so no event falls between two
        # (a pod force-deleted in the gap would otherwise leave its processes running); after
        # 410 Gone it starts over from a fresh list.
        selector = f"spec.nodeName={self.name}"
        version: str | None = None
        while not self._stop.is_set():
            self._watch = watch.Watch()
            args: dict[str, Any] = {"field_selector": selector, "timeout_seconds": 30}
            if version:
                args["resource_version"] = version
            try:
                for event in self._watch.stream(self.core.list_pod_for_all_namespaces, **args):
                    if self._stop.is_set():
                        break
                    obj = self.api.sanitize_for_serialization(event["object"])
                    version = obj["metadata"].get("resourceVersion") or version
                    self._on_event(event["type"], obj)
            except Exception as e:
                if isinstance(e, ApiException) and e.status == 410:
                    version = None
                elif not self._stop.is_set():
                    log.warning("pod watch on %s restarts after: %s", self.name, e)
                    time.sleep(0.5)

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        uid = meta["uid"]
        with self._lock:
            pod = self._pods.get(uid)
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            if pod is None and kind != "DELETED":  # deleted before it ran: only the confirmation is due
                pod = _Pod(meta["namespace"], meta["name"], uid, "", self.workdir / "none", obj)
            if pod is not None and not pod.deleting:
                pod.deleting = True
                grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
                threading.Thread(target=self._delete_pod, args=(pod, float(grace)), daemon=True).start()
            return
        if pod is not None or obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        with self._lock:
            if not self._free_ips:
                log.warning("no loopback address left for pod %s", meta["name"])
                return
            ip = self._free_ips.pop(0)
            pod = _Pod(
                namespace=meta["namespace"],
                name=meta["name"],
                uid=uid,
                ip=ip,
                dir=self.workdir / f"{meta['namespace']}_{meta['name']}",
                obj=obj,
                init_containers=[_Container(c, True) for c in obj["spec"].get("initContainers") or []],
                containers=[_Container(c, False) for c in obj["spec"]["containers"]],
            )
            self._pods[uid] = pod
        pod.thread = threading.Thread(target=self._run_pod, args=(pod,), name=f"pod-{pod.name}", daemon=True)
        pod.thread.start()

    def _delete_pod(self, pod: _Pod, grace: float) -> None:
        self._end_pod(pod, grace, pre_stop=True)
        if self._stop.is_set():
            # stop() ended the pod: the node goes away with the control plane, whose API may be
            # gone already, and there is nobody left to confirm the deletion to
            return
        # The kubelet confirms a graceful deletion by deleting with grace 0 once the containers ended.
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                pod.name,
                pod.namespace,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.uid)),
            )

    def _end_pod(self, pod: _Pod, grace: float, pre_stop: bool = False) -> None:
        pod.stopping.set()
        deadline = time.monotonic() + grace
        if pre_stop:
            self._run_pre_stop_hooks(pod, deadline)
        _terminate(pod, deadline)
        pod.ended.set()
        if pod.thread is not None and pod.thread is not threading.current_thread():
            pod.thread.join(timeout=10)
        _terminate(pod, deadline)  # anything the pod's thread started before it saw `stopping`
        with self._lock:
            if self._pods.pop(pod.uid, None) is not None:
                self._free_ips.append(pod.ip)
        if pod.ip:
            shutil.rmtree(pod.dir, ignore_errors=True)

    def _run_pre_stop_hooks(self, pod: _Pod, deadline: float) -> None:
        """As the kubelet: each running container's preStop hook, one container after the other,
        before its SIGTERM and within the grace period; a failed hook is logged, not fatal."""
        for c in pod.containers:
            hook = (c.spec.get("lifecycle") or {}).get("preStop")
            if not hook or c.proc is None or c.proc.poll() is not None:
                continue
            left = max(0.1, deadline - time.monotonic())
            try:
                if "exec" in hook:
                    self._exec_hook(pod, c, hook["exec"]["command"], left)
                elif "httpGet" in hook:
                    get = hook["httpGet"]
                    port = _port_of(c.spec, get["port"])
                    url = f"http://{pod.ip}:{port}{get.get('path', '/')}"
                    _http_ok(url, left)
                elif "sleep" in hook:
                    time.sleep(min(float(hook["sleep"]["seconds"]), left))
                else:
                    log.warning("pod %s/%s: preStop %s is not imitated", pod.namespace, pod.name, sorted(hook))
            except Exception as e:
                log.warning("pod %s/%s: preStop of %s failed: %s", pod.namespace, pod.name, c.spec["name"], e)

    def _exec_hook(self, pod: _Pod, c: _Container, command: list[str], timeout: float) -> None:
        m = pod.mounts.get(c.spec["name"], {})
        env = {k: _rewrite(v, m) for k, v in self._environment(pod, c).items()}
        argv, cwd = self._argv(_Container({**c.spec, "command": command, "args": []}, False), env, m)
        log.info("pod %s/%s: preStop of %s: %s", pod.namespace, pod.name, c.spec["name"], argv)
        with open(self.log_path(pod.namespace, pod.name, c.spec["name"]), "ab") as out:
            done = subprocess.run(
                die_with_parent(argv),
                env=env,
                cwd=cwd or pod.dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"exit code {done.returncode}")

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.workdir / f"{namespace}_{pod}" / "logs" / f"{container}.log"

    def pod_pids(self) -> dict[str, list[int]]:
        """Pids of the running processes, by pod name (tests check that deletion ends them)."""
        with self._lock:
            pods = list(self._pods.values())
        return {
            p.name: [c.proc.pid for c in p.init_containers + p.containers if c.proc and c.proc.poll() is None]
            for p in pods
        }

    # ------------------------------------------------------------------ one pod

    def _run_pod(self, pod: _Pod) -> None:
        try:
            mounts = self._prepare_volumes(pod)
            pod.mounts = mounts
            self._patch_status(pod)
            for c in pod.init_containers:
                while not pod.stopping.is_set():
                    code = self._run_to_end(pod, c, mounts)
                    if code == 0 or pod.stopping.is_set():
                        break
                    c.restarts += 1
                    c.waiting = "CrashLoopBackOff"
                    self._patch_status(pod)
                    pod.stopping.wait(min(_MAX_BACKOFF_S, 2.0 ** (c.restarts - 1)))
                if pod.stopping.is_set():
                    return
            pod.initialized = True
            for c in pod.containers:
                self._launch(pod, c, mounts)
            self._patch_status(pod)
            self._supervise(pod, mounts)
        except PodFailed as e:
            pod.failure = str(e)
            log.warning("pod %s/%s failed: %s", pod.namespace, pod.name, e)
            self._patch_status(pod)
        except Exception:
            log.exception("pod %s/%s: stand-in error", pod.namespace, pod.name)
        finally:
            # The containers die with this thread (die_with_parent: the parent-death signal
            # follows the thread that started them), so it outlives the deletion's preStop
            # hooks and SIGTERM; ending earlier would signal them at once, cutting requests
            # in flight, as no kubelet does.
            if pod.stopping.is_set():
                pod.ended.wait(timeout=600)

    def _prepare_volumes(self, pod: _Pod) -> dict[str, dict[str, str]]:
        """Folders for the pod's volumes; returns, per container name, mount path -> folder."""
        vol_dirs: dict[str, Path] = {}
        for vol in pod.obj["spec"].get("volumes") or []:
            d = pod.dir / "volumes" / vol["name"]
            d.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in vol:
                pass
            elif "configMap" in vol:
                cm = self._read_with_retry(
                    lambda v=vol: self.core.read_namespaced_config_map(v["configMap"]["name"], pod.namespace)
                )
                for key, value in (cm.data or {}).items():
                    (d / key).write_text(value)
            elif "secret" in vol:
                secret = self._read_with_retry(
                    lambda v=vol: self.core.read_namespaced_secret(v["secret"]["secretName"], pod.namespace)
                )
                for key, value in (secret.data or {}).items():
                    (d / key).write_bytes(base64.b64decode(value))
            else:
                raise PodFailed(f"volume {vol['name']}: only emptyDir, configMap and secret are imitated")
            vol_dirs[vol["name"]] = d
        out: dict[str, dict[str, str]] = {}
        for c in (pod.obj["spec"].get("initContainers") or []) + pod.obj["spec"]["containers"]:
            out[c["name"]] = {
                m["mountPath"].rstrip("/") or "/": str(vol_dirs[m["name"]] / m.get("subPath", ""))
                for m in c.get("volumeMounts") or []
            }
        return out

    def _read_with_retry(self, read: Callable[[], Any]) -> Any:
        # The kubelet waits for a referenced ConfigMap or Secret to appear, as here; a 403 is
        # waited out too: the Node authorizer learns of a pod's binding a moment after it.
        deadline = time.monotonic() + 30
        while True:
            try:
                return read()
            except ApiException as e:
                if e.status not in (403, 404) or time.monotonic() > deadline:
                    raise PodFailed(f"cannot read a volume's source: {e.status} {e.reason}") from e
                time.sleep(0.5)

    def _environment(self, pod: _Pod, c: _Container) -> dict[str, str]:
        spec = pod.obj["spec"]
        interpreter = self._interpreter(c.spec["image"])
        env = {
            "PATH": f"{Path(interpreter).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(pod.dir),
            "HOSTNAME": pod.name,
            # The kubelet tells every container where the API server is.
            "KUBERNETES_SERVICE_HOST": self.api_server[0],
            "KUBERNETES_SERVICE_PORT": str(self.api_server[1]),
        }
        fields = {
            "metadata.name": pod.name,
            "metadata.namespace": pod.namespace,
            "metadata.uid": pod.uid,
            "spec.nodeName": self.name,
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": pod.ip,
            "status.hostIP": "127.0.0.1",
        }
        for item in c.spec.get("env") or []:
            name = item["name"]
            if "value" in item or "valueFrom" not in item:
                env[name] = expand(item.get("value", ""), env)
                continue
            src = item["valueFrom"]
            if "fieldRef" in src:
                path = src["fieldRef"]["fieldPath"]
                if path not in fields:
                    raise PodFailed(f"env {name}: fieldRef {path} is not imitated")
                env[name] = fields[path]
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                cm = self.core.read_namespaced_config_map(ref["name"], pod.namespace)
                env[name] = (cm.data or {})[ref["key"]]
            elif "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                try:
                    data = self.core.read_namespaced_secret(ref["name"], pod.namespace).data or {}
                except ApiException as e:
                    if e.status != 404 or not ref.get("optional"):
                        raise
                    data = {}
                if ref["key"] in data or not ref.get("optional"):
                    env[name] = base64.b64decode(data[ref["key"]]).decode()
            else:
                raise PodFailed(f"env {name}: {sorted(src)} is not imitated")
        return env

    def _interpreter(self, image: str) -> str:
        try:
            return self.image_python(image)
        except Exception as e:
            raise PodFailed(f"image {image}: no local interpreter stands for it ({e})") from e

    def _argv(self, c: _Container, env: dict[str, str], mounts: dict[str, str]) -> tuple[list[str], str | None]:
        command = c.spec.get("command")
        if not command:
            raise PodFailed(f"container {c.spec['name']}: no command (an image's entrypoint is not imitated)")
        argv = [_rewrite(expand(a, env), mounts) for a in [*command, *(c.spec.get("args") or [])]]
        if argv[0] in ("python", "python3"):
            argv[0] = self._interpreter(c.spec["image"])
        elif "/" not in argv[0]:
            found = shutil.which(argv[0], path=env["PATH"])
            if found is None:
                raise PodFailed(f"container {c.spec['name']}: {argv[0]} not found on PATH")
            argv[0] = found
        workdir = c.spec.get("workingDir")
        return argv, _rewrite(workdir, mounts) if workdir else None

    def _spawn(self, pod: _Pod, c: _Container, mounts: dict[str, dict[str, str]]) -> subprocess.Popen[bytes]:
        m = mounts.get(c.spec["name"], {})
        env = {k: _rewrite(v, m) for k, v in self._environment(pod, c).items()}
        if SERVICE_ACCOUNT_MOUNT in m and "KUBECONFIG" not in env:
            env["KUBECONFIG"] = str(self._in_cluster_kubeconfig(pod, c, Path(m[SERVICE_ACCOUNT_MOUNT])))
        argv, cwd = self._argv(c, env, m)
        log_file = self.log_path(pod.namespace, pod.name, c.spec["name"])
        log_file.parent.mkdir(parents=True, exist_ok=True)
        if cwd:
            Path(cwd).mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(
                die_with_parent(argv),  # started by the pod's thread, which lives as long as the pod
                env=env,
                cwd=cwd or pod.dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: a deletion ends its children too
            )
        c.proc, c.started_at, c.waiting, c.terminated, c.ready = proc, _now(), None, None, False
        c.liveness_failed = False
        return proc

    def _in_cluster_kubeconfig(self, pod: _Pod, c: _Container, account: Path) -> Path:
        """The pod's service-account credentials as a kubeconfig: a client reads the in-cluster
        files from fixed paths, which cannot be rewritten, so ``config.load_config()`` (which
        prefers ``$KUBECONFIG`` and falls back to in-cluster) finds them here instead."""
        host, port = self.api_server
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "in-cluster",
                    "cluster": {"server": f"https://{host}:{port}", "certificate-authority": str(account / "ca.crt")},
                }
            ],
            "users": [{"name": "service-account", "user": {"tokenFile": str(account / "token")}}],
            "contexts": [
                {
                    "name": "in-cluster",
                    "context": {"cluster": "in-cluster", "user": "service-account", "namespace": pod.namespace},
                }
            ],
            "current-context": "in-cluster",
        }
        path = pod.dir / f"kubeconfig-{c.spec['name']}.json"
        path.write_text(json.dumps(cfg))
        return path

    def _run_to_end(self, pod: _Pod, c: _Container, mounts: dict[str, dict[str, str]]) -> int:
        proc = self._spawn(pod, c, mounts)
        self._patch_status(pod)
        code = proc.wait()
        c.terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": _now()}
        if code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            # the kubelet's fallback: the log's last 80 lines, at most 2048 bytes
            tail = self.log_path(pod.namespace, pod.name, c.spec["name"]).read_bytes()[-2048:]
            c.terminated["message"] = "\n".join(tail.decode(errors="replace").splitlines()[-80:])
        return code

    def _launch(self, pod: _Pod, c: _Container, mounts: dict[str, dict[str, str]]) -> None:
        self._spawn(pod, c, mounts)
        for kind in ("readinessProbe", "livenessProbe"):
            probe = c.spec.get(kind)
            if probe:
                t = threading.Thread(target=self._probe_loop, args=(pod, c, c.proc, kind, probe), daemon=True)
                t.start()
        if not c.spec.get("readinessProbe"):
            c.ready = True

    def _supervise(self, pod: _Pod, mounts: dict[str, dict[str, str]]) -> None:
        """restartPolicy Always: a container that exits, or fails its liveness probe, restarts."""
        restart_at: dict[int, float] = {}
        while not pod.stopping.wait(0.2):
            for i, c in enumerate(pod.containers):
                assert c.proc is not None
                if c.liveness_failed and c.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(c.proc.pid, signal.SIGKILL)
                    c.proc.wait()
                code = c.proc.poll()
                if code is None or pod.stopping.is_set():
                    continue
                if i not in restart_at:
                    c.terminated = {"exitCode": code, "reason": "Error" if code else "Completed", "finishedAt": _now()}
                    c.restarts += 1
                    c.ready = False
                    c.waiting = "CrashLoopBackOff"
                    restart_at[i] = time.monotonic() + min(_MAX_BACKOFF_S, 2.0 ** (c.restarts - 1))
                    self._patch_status(pod)
                elif time.monotonic() >= restart_at[i]:
                    del restart_at[i]
                    self._launch(pod, c, mounts)
                    self._patch_status(pod)

    def _probe_loop(self, pod: _Pod, c: _Container, proc: Any, kind: str, probe: dict[str, Any]) -> None:
        get = probe.get("httpGet")
        if get is None:
            return  # exec and tcpSocket probes are not imitated: the container counts as passing
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in c.spec.get("ports") or [] if p.get("name") == port)
        url = f"{get.get('scheme', 'HTTP').lower()}://{get.get('host') or pod.ip}:{port}{get.get('path', '/')}"
        period = probe.get("periodSeconds", 10)
        timeout = probe.get("timeoutSeconds", 1)
        need_ok, need_fail = probe.get("successThreshold", 1), probe.get("failureThreshold", 3)
        ok = fail = 0
        if pod.stopping.wait(probe.get("initialDelaySeconds", 0)):
            return
        while c.proc is proc and proc.poll() is None and not pod.stopping.is_set():
            passed = _http_ok(url, timeout)
            ok, fail = (ok + 1, 0) if passed else (0, fail + 1)
            if kind == "readinessProbe":
                ready = c.ready
                if ok >= need_ok:
                    ready = True
                elif fail >= need_fail:
                    ready = False
                if ready != c.ready:
                    c.ready = ready
                    self._patch_status(pod)
            elif fail >= need_fail:
                c.liveness_failed = True
                return
            if pod.stopping.wait(period):
                return

    # ------------------------------------------------------------------ status

    def _container_status(self, c: _Container) -> dict[str, Any]:
        state: dict[str, Any]
        if c.proc is not None and c.proc.poll() is None:
            state = {"running": {"startedAt": c.started_at}}
        elif c.waiting:
            state = {"waiting": {"reason": c.waiting}}
        elif c.terminated:
            state = {"terminated": c.terminated}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        status: dict[str, Any] = {
            "name": c.spec["name"],
            "image": c.spec["image"],
            "imageID": "",
            "ready": c.ready if not c.init else bool(c.terminated and c.terminated["exitCode"] == 0),
            "restartCount": c.restarts,
            "state": state,
        }
        if not c.init:
            status["started"] = "running" in state
        if c.terminated and "terminated" not in state:
            status["lastState"] = {"terminated": c.terminated}
        return status

    def _patch_status(self, pod: _Pod) -> None:
        with pod.status_lock:  # one patch at a time per pod, so a stale one never lands last
            if not pod.stopping.is_set():
                self._send_status(pod)

    def _send_status(self, pod: _Pod) -> None:
        now = _now()
        running = pod.initialized and all(c.proc is not None and c.proc.poll() is None for c in pod.containers)
        ready = running and all(c.ready for c in pod.containers)

        def cond(kind: str, value: bool) -> dict[str, str]:
            return {"type": kind, "status": "True" if value else "False", "lastTransitionTime": now}

        status: dict[str, Any] = {
            "phase": "Running" if running else ("Failed" if pod.failure else "Pending"),
            "hostIP": "127.0.0.1",
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": pod.obj.get("status", {}).get("startTime") or now,
            "conditions": [
                cond("Initialized", pod.initialized),
                cond("Ready", ready),
                cond("ContainersReady", ready),
                cond("PodScheduled", True),
            ],
            "initContainerStatuses": [self._container_status(c) for c in pod.init_containers],
            "containerStatuses": [self._container_status(c) for c in pod.containers],
        }
        if pod.failure:
            status["reason"], status["message"] = "StandInUnsupported", pod.failure
        pod.obj.setdefault("status", {})["startTime"] = status["startTime"]
        try:
            self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": status})
        except ApiException as e:
            if e.status != 404:
                log.warning("status of pod %s/%s not patched: %s", pod.namespace, pod.name, e.reason)


def _terminate(pod: _Pod, deadline: float) -> None:
    """SIGTERM to each running container's process group, SIGKILL to what is left at ``deadline``."""
    procs = [c.proc for c in pod.init_containers + pod.containers if c.proc is not None and c.proc.poll() is None]
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)


def _port_of(spec: dict[str, Any], port: int | str) -> int:
    """A hook's or probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in spec.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise PodFailed(f"container {spec['name']}: no port named {port!r}")


def _rewrite(value: str, mounts: dict[str, str]) -> str:
    """Mount paths in a string -> the folders standing in for them (longest mount path first)."""
    for mount in sorted(mounts, key=len, reverse=True):
        value = re.sub(re.escape(mount) + r"(?=/|$|[\s:=,;])", lambda _m, d=mounts[mount]: d, value)
    return value


def _http_ok(url: str, timeout: float) -> bool:
    # As the kubelet: any status from 200 to 399 passes; an HTTPS probe checks no certificate.
    context = ssl._create_unverified_context() if url.startswith("https:") else None  # noqa: S323
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return 200 <= r.status < 400
    except urllib.error.HTTPError as e:
        return 200 <= e.code < 400
    except OSError:
        return False


def loopback_subnet(pid: int | None = None) -> str:
    """``127.X.Y`` for this process: X.Y from the pid, never 127.0.0 (all of 127/8 is loopback on Linux)."""
    pid = os.getpid() if pid is None else pid
    x, y = (pid >> 8) % 255 + 1, pid % 256
    return f"127.{x}.{y}"
