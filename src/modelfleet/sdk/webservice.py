"""``Webservice`` and its v1 flavours: a deployed service, as the SDK sees it."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelfleet.errors import ClusterUnavailable, ConfigError, Conflict, DeploymentFailed, ModelfleetError, NotFound
from modelfleet.sdk import service_meta
from modelfleet.sdk.capacity import refuse_never_fits
from modelfleet.sdk.cluster_limits import refuse_unsupported_on_cluster
from modelfleet.sdk.compute import COMPUTE_TARGET_KEY, AksCompute, KubernetesCompute, service_target
from modelfleet.sdk.keys import check_key, new_key
from modelfleet.sdk.progress import BuildProgress
from modelfleet.sdk.registered import RegisteredModel
from modelfleet.sdk.service_config import build_config, model_refs
from modelfleet.sdk.workspace_base import WorkspaceBase
from modelfleet.spec import DeploySpec, EnvironmentSpec, aks_deploy_configuration, local_deploy_configuration
from modelfleet.spec.deploy import BY_FLAT
from modelfleet.spec.names import (
    VERSION_SEPARATOR,
    is_version_service_name,
    validate_version_name,
    version_service_name,
)
from modelfleet.store.endpoints import (
    ENDPOINT_KEY,
    check_versions,
    default_version,
    endpoint_state,
    is_endpoint_config,
    weights,
    with_traffic,
    with_version,
    without_version,
)
from modelfleet.store.models import string_map
from modelfleet.store.registry import ServiceRecord

ROUTER_PORT_SETTING = "router_port"
GRPC_PORT_SETTING = "router_grpc_port"  # control/daemon.py writes it
ROUTER_SCHEME_SETTING = "router_scheme"
ROUTER_URI_HOST_SETTING = "router_uri_host"  # written by the daemon: a name the TLS certificate covers
# wait_for_deployment polls the record: every 20 ms at first (a fork-served replica is Ready
# in tens of milliseconds), backing off to every 200 ms for a long build. A poll is two short
# reads of the workspace.
_FIRST_POLL_S, _POLL_S = 0.02, 0.2


class Webservice:
    """A service in a workspace (v1: ``azureml.core.Webservice``).

    ``Webservice(ws, name)`` looks it up; every property reads the workspace afresh, so
    ``state`` follows the control plane.
    """

    def __init__(self, workspace: WorkspaceBase, name: str) -> None:
        self.workspace = workspace
        self.name = name
        self._record()  # NotFound now rather than on first use

    @classmethod
    def _listed(cls, workspace: WorkspaceBase, name: str) -> Webservice:
        """One that ``list`` has just read from the workspace: not looked up again."""
        service = super().__new__(cls)
        service.workspace = workspace
        service.name = name
        return service

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workspace={self.workspace.name!r}, name={self.name!r}, state={self.state!r})"

    def _record(self) -> ServiceRecord:
        return self.workspace.store.get_service(self.name)

    def _spec(self) -> DeploySpec:
        return DeploySpec.from_dict(self._record().config["deploy"])

    # -- v1 properties ---------------------------------------------------------------------

    @property
    def state(self) -> str:
        return str(self._record().state)

    @property
    def error(self) -> str | None:
        return self._record().detail

    @property
    def compute_type(self) -> str:
        return _compute_type(self._spec())

    @property
    def auth_enabled(self) -> bool:
        return self._spec().auth_enabled

    @property
    def token_auth_enabled(self) -> bool:
        return self._spec().token_auth_enabled

    @property
    def tags(self) -> dict[str, str]:
        return self._metadata().tags

    @property
    def properties(self) -> dict[str, str]:
        return self._metadata().properties

    @property
    def description(self) -> str | None:
        return self._metadata().description

    def _metadata(self) -> service_meta.Metadata:
        return service_meta.current(self.workspace.store, self._record())

    @property
    def environment(self) -> EnvironmentSpec:
        """The environment the replicas run in (v1's ``environment``)."""
        return EnvironmentSpec.from_dict(self._record().config["environment"])

    @property
    def image_id(self) -> str:
        """modelfleet builds no image per service: a service's image is its environment, and
        its id the environment's hash (the tag ``modelfleet env image-context`` writes)."""
        from modelfleet.envs.canonical import canonicalize

        return canonicalize(self.environment).hash

    @property
    def models(self) -> list[dict[str, Any]]:
        return list(self._record().config["models"])

    def _base_uri(self) -> str | None:
        root = _router_root(self.workspace, self._record())
        return f"{root}/api/v1/service/{self.name}" if root else None

    @property
    def cluster(self) -> str | None:
        """The local cluster that owns and runs this service (``host:folder#hex``; see the
        README's shared workspace), or None for a service on another compute target."""
        return self._record().cluster

    @property
    def scoring_uri(self) -> str | None:
        base = self._base_uri()
        return f"{base}/score" if base else None

    @property
    def swagger_uri(self) -> str | None:
        base = self._base_uri()
        return f"{base}/swagger.json" if base else None

    @property
    def grpc_address(self) -> str | None:
        """``host:port`` of the Open Inference Protocol's gRPC API that serves this service
        (model name: the service's name), or None while not known. On a Kubernetes target: the
        router Service's host (the target's ``router_uri``) and its gRPC port."""
        record = self._record()
        target = service_target(self.workspace, record.config)
        if target is not None:
            from modelfleet.targets.kubernetes.manifests import ROUTER_GRPC_PORT

            host = urlsplit(target.router_uri).hostname if target.router_uri else None
            return f"{host}:{ROUTER_GRPC_PORT}" if host else None
        store = self.workspace.store
        port = store.get_setting(GRPC_PORT_SETTING, cluster=record.cluster)
        if port is None:
            return None
        return f"{store.get_setting(ROUTER_URI_HOST_SETTING, cluster=record.cluster) or '127.0.0.1'}:{port}"

    # -- v1 methods --------------------------------------------------------------------------

    def update_deployment_state(self) -> None:
        """v1: refresh the object from the service's current state. Every property here reads
        the workspace afresh already; this checks the service still exists (NotFound if not)."""
        self._record()

    def add_tags(self, tags: dict[str, str]) -> None:
        """Add or change tags; running replicas are not touched."""
        new = string_map(tags, "tags")
        meta = self._metadata()
        self._save_metadata(service_meta.Metadata({**meta.tags, **new}, meta.properties, meta.description))

    def remove_tags(self, tags: list[str]) -> None:
        """Remove the tags with these keys (a key that is not there is not an error)."""
        drop = set(service_meta.key_list(tags, "remove_tags"))
        meta = self._metadata()
        kept = {k: v for k, v in meta.tags.items() if k not in drop}
        self._save_metadata(service_meta.Metadata(kept, meta.properties, meta.description))

    def add_properties(self, properties: dict[str, str]) -> None:
        """Add or change properties; running replicas are not touched."""
        new = string_map(properties, "properties")
        meta = self._metadata()
        self._save_metadata(service_meta.Metadata(meta.tags, {**meta.properties, **new}, meta.description))

    def _save_metadata(self, meta: service_meta.Metadata) -> None:
        self._record()  # NotFound for a deleted service, not an event of nobody
        service_meta.save(self.workspace.store, self.name, meta)

    @staticmethod
    def check_for_existing_webservice(
        workspace: WorkspaceBase,
        name: str,
        overwrite: bool = False,
        request_func: Callable[[WorkspaceBase, str], Any] | None = None,
        check_func: Callable[[Any], Any] | None = None,
    ) -> None:
        """v1: raise if a service ``name`` exists, or with ``overwrite`` delete it.

        ``request_func(workspace, name)`` looks the service up (default: its serialized form,
        or None when there is none); ``check_func(content)`` says whether what was found
        counts as an existing service (default: anything found does)."""
        request = request_func if request_func is not None else _existing_service
        check = check_func if check_func is not None else bool
        content = request(workspace, name)
        if content is None or not check(content):
            return
        if not overwrite:
            raise Conflict(
                f'there is already a service named "{name}" in workspace "{workspace.name}"; '
                "pass overwrite=True to replace it"
            )
        Webservice(workspace, name).delete()

    def wait_for_deployment(self, show_output: bool = False, timeout_sec: float | None = None) -> None:
        """Wait until the latest deployment or update is serving, or raise DeploymentFailed."""
        deadline = time.monotonic() + timeout_sec if timeout_sec else None
        last = None
        progress = BuildProgress(self.name) if show_output else None
        pause = _FIRST_POLL_S
        while True:
            record = self._record()
            outcome = self._outcome(record.generation)
            line = f"{record.state}" + (f": {record.detail}" if record.detail else "")
            if show_output and line != last:
                print(f"{self.name}: {line}", flush=True)
                last = line
            if progress is not None:  # the environment build's steps, as the control plane records them
                progress.show(self.workspace.store.list_events(self.name, kind="build"), record.generation)
                if outcome is not None or (deadline is not None and time.monotonic() > deadline):
                    progress.close()
            if outcome is not None:
                if outcome["outcome"] == "succeeded":
                    if show_output:
                        print(f'{self.name}: deployment operation finished, operation "Succeeded"', flush=True)
                    return
                raise DeploymentFailed(
                    f"service {self.name} deployment failed: {outcome.get('message')}; current state {record.state}"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise DeploymentFailed(
                    f"service {self.name} still {record.state} after {timeout_sec} s; "
                    f"see `modelfleet service logs -n {self.name}`"
                )
            time.sleep(pause)
            pause = min(pause * 1.5, _POLL_S)

    def _outcome(self, generation: int) -> dict[str, Any] | None:
        for event in self.workspace.store.list_events(self.name, kind="deployment")[::-1]:
            if event.get("generation") == generation and event.get("outcome") in ("succeeded", "failed"):
                return event
        return None

    def get_keys(self) -> tuple[str, str]:
        record = self._record()
        if not DeploySpec.from_dict(record.config["deploy"]).auth_enabled:
            raise ConfigError(f"key auth is off for service {self.name} (auth_enabled=False)")
        assert record.primary_key is not None and record.secondary_key is not None  # auth on: keys were made
        return record.primary_key, record.secondary_key

    def regen_key(self, key: str, set_key: str | None = None) -> None:
        """Replace the primary or secondary key; the router refuses the old one at once."""
        if key not in ("Primary", "Secondary"):
            raise ConfigError(f"key must be 'Primary' or 'Secondary' (got {key!r})")
        self.get_keys()
        value = check_key("set_key", set_key) if set_key is not None else new_key()
        if key == "Primary":
            self.workspace.store.set_service_keys(self.name, primary_key=value)
        else:
            self.workspace.store.set_service_keys(self.name, secondary_key=value)
        self._notify_cluster()

    def get_token(self) -> tuple[str, int]:
        """A fresh access token for this service and its refresh-by time (epoch seconds).

        The token is a JWT signed by the cluster's own key, valid for this service only, for
        an hour; ask for a new one by ``refresh_by`` (half-way through its life)."""
        from modelfleet.control.credentials import signing_key
        from modelfleet.router.auth import issue_token

        if not self.token_auth_enabled:
            raise ConfigError(
                f"token auth is not enabled for service {self.name} (token_auth_enabled=False); "
                "use get_keys(), or update the service with token_auth_enabled=True, auth_enabled=False"
            )
        return issue_token(signing_key(self.workspace.path), self.name, now=time.time())

    def get_scale_events(self) -> list[dict[str, Any]]:
        events = self.workspace.store.list_events(self.name, kind="scale")
        return [{k: e[k] for k in ("time", "from", "to", "reason", "utilization") if k in e} for e in events]

    def run(self, input_data: Any, timeout: float = 90.0) -> Any:
        """POST ``input_data`` to the scoring URI with this service's key; the decoded answer."""
        return self._run(input_data, timeout)

    def _run(self, input_data: Any, timeout: float, version: str | None = None) -> Any:
        uri = self.scoring_uri
        if uri is None:
            raise ModelfleetError(f"service {self.name} has no scoring URI yet; is the cluster running?")
        body = input_data if isinstance(input_data, str | bytes) else json.dumps(input_data)
        headers = {"Content-Type": "application/json"}
        if version is not None:  # an endpoint's version, pinned (router/versions.py)
            headers["azureml-model-deployment"] = version
        if self.auth_enabled:
            headers["Authorization"] = f"Bearer {self.get_keys()[0]}"
        elif self.token_auth_enabled:
            headers["Authorization"] = f"Bearer {self.get_token()[0]}"
        import http.client  # here: a listing never sends a request

        parts = urlsplit(uri)
        host = parts.hostname or "127.0.0.1"
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            from modelfleet.control.tls import client_context

            # verifies the certificate; the cluster's own (self-signed) one is trusted as well
            context = client_context(self.workspace.store, self.workspace.path)
            conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
        try:
            conn.request("POST", parts.path, body=body, headers=headers)
            response = conn.getresponse()
            content = response.read()
        except ConnectionRefusedError:
            # the router is the daemon's: nothing listening means the cluster is down
            raise ClusterUnavailable(
                f"nothing answers at {uri}: the local cluster is not running; start it with `modelfleet cluster start`"
            ) from None
        finally:
            conn.close()
        if response.status != 200:
            raise ModelfleetError(
                "Received bad response from service. More information can be found by calling "
                f"`.get_logs()` on the webservice object.\nResponse Code: {response.status}\n"
                f"Content: {content[:2000]!r}"
            )
        try:
            return json.loads(content)
        except ValueError:
            return content.decode(errors="replace")

    def get_logs(self, num_lines: int = 5000, init: bool = False, replica: int | None = None) -> str:
        """The environment build's log, then each replica's output (stdout, stderr and the
        server's JSON line per request), then the router's request timings (services with
        ``enable_app_insights``); the last ``num_lines`` lines. ``replica=N``: replica N's log
        only. Rotated files (``replica-0.log.1`` ...) are read too, oldest first.

        On a Kubernetes compute target: each pod's state, then its last ``num_lines`` lines, from
        what the pod uploaded to the blob store (the workspace's copy; the target has an upload
        credential) when there is some, else from pods/log (``KubernetesCompute.logs``)."""
        from modelfleet.telemetry.logfiles import chain, tail

        target = service_target(self.workspace, self._record().config)
        if target is not None:  # pods: their states, and their uploaded log or pods/log
            return target.logs(self.name, num_lines)
        lines: list[str] = []
        for path in self.log_paths(replica):
            files = chain(path)
            if not files:
                continue  # no environment was built or looked up yet, or nothing traced
            lines.append(f"=== {path.name} ===\n")
            lines.extend(tail(files, num_lines))
        return "".join(lines[-num_lines:]) if num_lines > 0 else ""

    def log_paths(self, replica: int | None = None) -> list[Path]:
        """The current log files (``service logs --follow`` follows these; rotation renames
        them to ``<name>.1`` ...)."""
        logs_dir = self.workspace.store.runtime_dir / "services" / self.name / "logs"
        if replica is not None:
            if not isinstance(replica, int) or isinstance(replica, bool) or replica < 0:
                raise ConfigError(f"replica must be a replica index >= 0 (got {replica!r})")
            return [logs_dir / f"replica-{replica}.log"]
        replicas = sorted(logs_dir.glob("replica-*.log"), key=lambda p: (len(p.name), p.name))
        return [logs_dir / "build.log", *replicas, logs_dir / "router.log"]

    def update(self, models: list[Any] | None = None, inference_config: Any = None, **settings: Any) -> None:
        """New models, inference config or settings; replicas are replaced with no failed request.

        Like v1, this returns at once; ``wait_for_deployment()`` waits for the outcome. A
        failed update leaves the old replicas serving and the reason in ``error``.
        """
        meta_changes = {k: settings.pop(k) for k in service_meta.METADATA_SETTINGS if k in settings}
        if meta_changes:
            self._update_metadata(**meta_changes)
        if settings or models is not None or inference_config is not None:
            spec = DeploySpec.from_dict(self._record().config["deploy"])
            self._update(models, inference_config, spec.replace(**settings) if settings else spec)

    def _update_metadata(self, tags: Any = None, properties: Any = None, description: Any = ...) -> None:
        """v1's update semantics: ``tags`` replace the service's tags, ``properties`` are added
        to its properties, ``description`` replaces it."""
        meta = self._metadata()
        new_tags = string_map(tags, "tags") if tags is not None else meta.tags
        new_props = (
            {**meta.properties, **string_map(properties, "properties")} if properties is not None else meta.properties
        )
        if description is not ... and description is not None and not isinstance(description, str):
            raise ConfigError(f"description must be a string (got {type(description).__name__})")
        new_description = meta.description if description is ... else description
        self._save_metadata(service_meta.Metadata(new_tags, new_props, new_description))

    def _update(self, models: list[Any] | None, inference_config: Any, spec: DeploySpec) -> None:
        record = self._record()
        target = service_target(self.workspace, record.config)
        if target is None:  # a cluster's nodes are not this machine
            refuse_never_fits(spec)
        else:
            refuse_unsupported_on_cluster(spec, target.name)
        new_models = (
            models
            if models is not None
            else [RegisteredModel(self.workspace, m["name"], version=m["version"]) for m in record.config["models"]]
        )
        if inference_config is not None:
            inference = inference_config.to_spec()
            # what build_config does not make (the compute target) stays as it was
            config = {**record.config, **build_config(self.workspace, new_models, inference, spec)}
        else:
            config = dict(record.config)
            config["deploy"] = spec.to_dict()
            config["models"] = model_refs(new_models)
        store = self.workspace.store
        if spec.auth_enabled and not record.primary_key:
            store.set_service_keys(
                self.name,
                primary_key=spec.primary_key or new_key(),
                secondary_key=spec.secondary_key or new_key(),
            )
        store.update_service_config(self.name, config)
        self._notify_cluster(start=True)

    def delete(self) -> None:
        target = service_target(self.workspace, self._record().config)
        if target is not None:  # its controller sees it gone and deletes its objects
            self.workspace.store.delete_service(self.name)
            target.ensure_controller()
            return
        cluster = self.workspace.cluster()
        if cluster.info() is not None:
            cluster.delete(self.name)
        else:
            self.workspace.store.delete_service(self.name)

    def serialize(self) -> dict[str, Any]:
        record = self._record()
        meta = service_meta.current(self.workspace.store, record)
        return _serialized(record, _router_root(self.workspace, record), meta)

    @staticmethod
    def serialize_all(workspace: WorkspaceBase, services: Sequence[Webservice] | None = None) -> list[dict[str, Any]]:
        """``serialize()`` of many services of ``workspace`` at once: a few queries in all, not
        a dozen per service (``service list`` of 1,000 services). ``services`` None: every
        service ``list()`` gives, read once. Services deleted since they were listed are left out."""
        records = workspace.store.list_services()
        if services is None:
            listed = [r for r in records if not is_version_service_name(r.name)]  # as list() leaves them
        else:
            by_name = {r.name: r for r in records}
            listed = [by_name[s.name] for s in services if s.name in by_name]
        specs = _deploy_specs(listed)
        v1: dict[int, dict[str, Any]] = {}  # each distinct spec's deploymentConfig, made once
        metas = service_meta.current_of_all(workspace.store, listed, specs)
        roots: dict[Any, str | None] = {}  # by compute target, or by owning local cluster
        out = []
        for record in listed:
            where = (record.config.get(COMPUTE_TARGET_KEY), record.cluster)
            if where not in roots:
                roots[where] = _router_root(workspace, record)
            spec = specs[record.name]
            if id(spec) not in v1:
                v1[id(spec)] = spec.to_v1_json()
            out.append(_serialized(record, roots[where], metas[record.name], spec, _copied(v1[id(spec)])))
            if is_endpoint_config(record.config):  # its state and models are its versions'
                endpoint = AksEndpoint._listed(workspace, record.name)
                assert isinstance(endpoint, AksEndpoint)
                out[-1].update(state=endpoint.state, error=endpoint.error, models=endpoint.models)
                out[-1]["computeType"] = "AKSENDPOINT"
        return out

    def _notify_cluster(self, start: bool = False) -> None:
        target = service_target(self.workspace, self._record().config)
        if target is not None:  # its controller reads the change within a second
            target.ensure_controller()
            return
        cluster = self.workspace.cluster()
        if start:
            cluster.ensure_running()
        elif cluster.info() is None:
            return  # the daemon reads the new state from the workspace when it starts
        cluster.sync(self.name)

    @staticmethod
    def list(
        workspace: WorkspaceBase,
        compute_type: str | None = None,
        image_name: str | None = None,
        image_id: str | None = None,
        model_name: str | None = None,
        model_id: str | None = None,
        tags: Sequence[Any] | None = None,
        properties: Sequence[Any] | None = None,
    ) -> list[Webservice]:
        """The workspace's services, filtered as v1 did: every filter given must hold.

        ``compute_type``: ``"AKS"`` or ``"Local"`` (any case; v1's ``"ACI"`` matches none).
        ``model_name`` / ``model_id`` (``"name:version"``): services serving that model.
        ``image_name`` / ``image_id``: services whose environment has that name / hash (a
        service's image is its environment here). ``tags`` / ``properties``: a list whose items
        are ``"key"`` (present) or ``["key", "value"]``.
        """
        tag_conds = service_meta.conditions(tags, "tags")
        prop_conds = service_meta.conditions(properties, "properties")
        for flag, value in (
            ("compute_type", compute_type),
            ("image_name", image_name),
            ("image_id", image_id),
            ("model_name", model_name),
            ("model_id", model_id),
        ):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{flag} must be a string (got {type(value).__name__})")
        services = []
        records = workspace.store.list_services()
        metas = service_meta.current_of_all(workspace.store, records) if tag_conds or prop_conds else {}
        for record in records:
            if is_version_service_name(record.name):
                continue  # an endpoint's version: listed with its endpoint (AksEndpoint.versions)
            flavour = AksEndpoint if is_endpoint_config(record.config) else _flavour(record.config["deploy"])
            service = flavour._listed(workspace, record.name)
            if compute_type is not None:
                spec = DeploySpec.from_dict(record.config["deploy"])
                if _compute_type(spec).lower() != compute_type.lower():
                    continue
            refs = [f"{m['name']}:{m['version']}" for m in record.config["models"]]
            if model_name is not None and model_name not in {r.partition(":")[0] for r in refs}:
                continue
            if model_id is not None and model_id not in refs:
                continue
            if image_name is not None and record.config["environment"].get("name") != image_name:
                continue
            if image_id is not None and service.image_id != image_id:
                continue
            if tag_conds or prop_conds:
                meta = metas[record.name]
                if not (
                    service_meta.matches(meta.tags, tag_conds) and service_meta.matches(meta.properties, prop_conds)
                ):
                    continue
            services.append(service)
        return services

    def __new__(cls, workspace: WorkspaceBase, name: str) -> Webservice:
        if cls is Webservice:
            record = workspace.store.get_service(name)
            cls = _flavour(record.config["deploy"])
            if is_endpoint_config(record.config):
                cls = AksEndpoint
            elif is_version_service_name(name):
                cls = EndpointVersion
        return super().__new__(cls)


class AksWebservice(Webservice):
    """A service with v1's AKS settings, deployed to the local cluster (or, later, Kubernetes)."""

    # v1's explicit keyword parameters, not **kwargs: editors and type checkers list them.
    deploy_configuration = staticmethod(aks_deploy_configuration)

    @staticmethod
    def plan_replicas(
        target_rps: float, request_seconds: float, target_utilization: float = 70, max_concurrent: int = 1
    ) -> int:
        """v1's replica calculator: ceil(target rps × request seconds ÷ target utilization ÷
        per-replica concurrency), ``target_utilization`` in percent (as
        ``autoscale_target_utilization``), ``max_concurrent`` as
        ``replica_max_concurrent_requests``. 20 rps of 10 s at 70 % need 286 replicas."""
        from modelfleet.router.autoscale import replicas_for

        for field_name, value in (("target_rps", target_rps), ("request_seconds", request_seconds)):
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"{field_name} must be a number greater than 0 (got {value!r})")
        lo, hi = BY_FLAT["autoscale_target_utilization"].lo, BY_FLAT["autoscale_target_utilization"].hi
        assert lo is not None and hi is not None  # the table bounds it on both sides
        if not isinstance(target_utilization, int | float) or not lo <= target_utilization <= hi:
            raise ConfigError(f"target_utilization must be between {lo} and {hi} percent (got {target_utilization!r})")
        if not isinstance(max_concurrent, int) or isinstance(max_concurrent, bool) or max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be an integer of at least 1 (got {max_concurrent!r})")
        return replicas_for(target_rps, request_seconds, target_utilization, max_concurrent)


class LocalWebservice(Webservice):
    """v1's local deployment: one replica, auth off, on the local cluster."""

    deploy_configuration = staticmethod(local_deploy_configuration)


# -- endpoints (v1's AksEndpoint) ------------------------------------------------------------
#
# Words: a *version* is an endpoint's named deployment ("blue", "green"); a *model version* is
# a registered model's number. Storage and rules: store/endpoints.py; routing: router/versions.py.


@dataclass(frozen=True)
class EndpointDeployConfig:
    """What ``AksEndpoint.deploy_configuration`` returns: an AksWebservice configuration (the
    version's settings, and the endpoint's auth) with the version's name and share."""

    spec: DeploySpec
    version_name: str
    traffic_percentile: float | None = None
    is_default: bool | None = None
    is_control_version_type: bool | None = None
    mirror_percentile: float | None = None

    def version_entry(self) -> dict[str, Any]:
        return _version_entry(
            self.traffic_percentile, self.is_default, self.mirror_percentile, self.is_control_version_type
        )


def endpoint_deploy_configuration(
    version_name: str | None = None,
    traffic_percentile: float | None = None,
    is_default: bool | None = None,
    is_control_version_type: bool | None = None,
    *,
    mirror_percentile: float | None = None,
    **settings: Any,
) -> EndpointDeployConfig:
    """v1 ``AksEndpoint.deploy_configuration``: every ``AksWebservice.deploy_configuration``
    setting (same names and defaults), plus the first version's ``version_name`` (required),
    ``traffic_percentile``, ``is_default`` and ``is_control_version_type``. ``mirror_percentile``
    (modelfleet) is refused above 0 for now: mirroring is not built yet."""
    if version_name is None:
        raise ConfigError("version_name is required: the name of the endpoint's first version, e.g. 'blue'")
    validate_version_name(version_name)
    spec = aks_deploy_configuration(**settings)
    config = EndpointDeployConfig(
        spec, version_name, traffic_percentile, is_default, is_control_version_type, mirror_percentile
    )
    check_versions(with_version({}, version_name, **_share_changes(config.version_entry()), create=True))
    return config


def _version_entry(
    traffic_percentile: float | None,
    is_default: bool | None,
    mirror_percentile: float | None,
    is_control_version_type: bool | None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if traffic_percentile is not None:
        entry["traffic_percentile"] = traffic_percentile
    if is_default is not None:
        entry["is_default"] = is_default
    if mirror_percentile is not None:
        entry["mirror_percentile"] = mirror_percentile
    if is_control_version_type is not None:
        if not isinstance(is_control_version_type, bool):
            raise ConfigError(f"is_control_version_type must be True or False (got {is_control_version_type!r})")
        entry["is_control_version_type"] = is_control_version_type
    return entry


def _share_changes(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("traffic_percentile", "is_default", "mirror_percentile") if k in entry}


def version_spec(spec: DeploySpec) -> DeploySpec:
    """A version's own settings: auth is the endpoint's, so the version's service has none."""
    return spec.replace(auth_enabled=False, token_auth_enabled=False, primary_key=None, secondary_key=None)


def endpoint_config(spec: DeploySpec, versions: Mapping[str, Any]) -> dict[str, Any]:
    """The endpoint's stored config (store/endpoints.py): its versions, its auth settings."""
    return {ENDPOINT_KEY: {"versions": dict(versions)}, "deploy": spec.to_dict(), "models": [], "environment": {}}


class AksEndpoint(AksWebservice):
    """One scoring URI with named versions behind it (v1: ``azureml.core.webservice.AksEndpoint``).

    ``AksEndpoint(ws, name)`` or ``Webservice(ws, name)`` looks it up. Each version is a
    deployment of its own (models, inference config, replicas, autoscaling, limits); the router
    splits the endpoint's requests between them by ``traffic_percentile``, the default version
    taking what the others leave. Keys and tokens are the endpoint's.
    """

    deploy_configuration = staticmethod(endpoint_deploy_configuration)  # type: ignore[assignment]

    def __init__(self, workspace: WorkspaceBase, name: str) -> None:
        super().__init__(workspace, name)
        if not is_endpoint_config(self._record().config):
            raise NotFound(f'"{name}" is a service, not an endpoint; use Webservice(ws, "{name}")')

    def _versions(self) -> dict[str, dict[str, Any]]:
        return dict(self._record().config[ENDPOINT_KEY]["versions"])

    @property
    def versions(self) -> dict[str, EndpointVersion]:
        """Version name -> the version (v1: ``versions``)."""
        return {v: EndpointVersion._of(self, v) for v in sorted(self._versions())}

    @property
    def default_version(self) -> str:
        return default_version(self._versions())

    @property
    def traffic(self) -> dict[str, float]:
        """Each version's share of requests in percent while all are healthy (a version that is
        not healthy gets none and its share goes to the default)."""
        return weights(self._versions())

    @property
    def state(self) -> str:
        """Transitioning while a version is; otherwise the default version's state, or
        Unhealthy when the default is Healthy and another version is not."""
        versions = self._versions()
        states = {v: self.workspace.store.get_service(version_service_name(self.name, v)).state for v in versions}
        return endpoint_state(states, default_version(versions))

    @property
    def error(self) -> str | None:
        errors = [f"{n}: {v.error}" for n, v in self.versions.items() if v.error and v.state != "Healthy"]
        return "; ".join(errors) or None

    @property
    def models(self) -> list[dict[str, Any]]:
        return [m for v in self.versions.values() for m in v.models]

    def create_version(
        self,
        version_name: str,
        *,
        models: Sequence[RegisteredModel] | None = None,
        inference_config: Any = None,
        traffic_percentile: float | None = None,
        is_default: bool | None = None,
        is_control_version_type: bool | None = None,
        mirror_percentile: float | None = None,
        **settings: Any,
    ) -> EndpointVersion:
        """Add a version with its own models, inference config and ``AksWebservice`` settings
        (v1 names and defaults); it takes ``traffic_percentile`` percent of requests once it is
        Healthy (``is_default=True``: what the others leave). Returns at once, as v1 did;
        ``wait_for_deployment()`` waits for it. Everything but the name is a keyword (v1's
        positional order differs; a keyword means the same in both)."""
        entry = _version_entry(traffic_percentile, is_default, mirror_percentile, is_control_version_type)
        return self._add_version(version_name, models, inference_config, aks_deploy_configuration(**settings), entry)

    def _add_version(
        self,
        version_name: str,
        models: Sequence[RegisteredModel] | None,
        inference_config: Any,
        spec: DeploySpec,
        entry: dict[str, Any],
    ) -> EndpointVersion:
        validate_version_name(version_name)
        if models is None or inference_config is None:
            raise ConfigError("create_version needs models=[...] and inference_config=InferenceConfig(...)")
        record = self._record()
        versions = with_version(
            record.config[ENDPOINT_KEY]["versions"], version_name, **_share_changes(entry), create=True
        )
        versions[version_name].update(entry)
        refuse_never_fits(spec)
        internal = version_service_name(self.name, version_name)
        config = build_config(self.workspace, list(models), inference_config.to_spec(), version_spec(spec))
        store = self.workspace.store
        store.create_service(
            internal, config, primary_key=None, secondary_key=None, overwrite=True, cluster=record.cluster
        )
        service_meta.save(
            store, internal, service_meta.Metadata(dict(spec.tags), dict(spec.properties), spec.description)
        )
        self._save_versions(versions)
        return EndpointVersion._of(self, version_name)

    def update_version(
        self,
        version_name: str,
        *,
        models: Sequence[RegisteredModel] | None = None,
        inference_config: Any = None,
        traffic_percentile: float | None = None,
        is_default: bool | None = None,
        is_control_version_type: bool | None = None,
        mirror_percentile: float | None = None,
        rollout: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        """Change a version: its share or default-ness (the router follows at once, no replica
        is touched), and/or its models, inference config or settings (its replicas are replaced
        with no failed request, as ``Webservice.update`` does). ``None`` leaves a value as it is.
        ``rollout={"steps": [10, 50, 100], "interval_s": 60, "max_error_rate": 0.01,
        "max_p99_ms": None}``: the cluster's daemon moves the version's share step by step and
        rolls back by itself past a bound (``control/rollout.py``); returns at once, the steps
        are in ``get_events()``."""
        record = self._record()
        rollout_config = None
        if rollout is not None:
            if traffic_percentile is not None or is_default is not None:
                raise ConfigError(
                    "rollout: a rollout sets the version's share step by step (at 100 it becomes the default); "
                    "leave traffic_percentile and is_default out"
                )
            from modelfleet.sdk import endpoint_compare  # here: a listing needs none of it

            rollout_config = endpoint_compare.request_rollout(
                self.workspace, self.name, record.config, version_name, rollout
            )
        entry = _version_entry(traffic_percentile, is_default, mirror_percentile, is_control_version_type)
        versions = with_version(
            record.config[ENDPOINT_KEY]["versions"], version_name, **_share_changes(entry), create=False
        )
        versions[version_name].update({k: v for k, v in entry.items() if k == "is_control_version_type"})
        version = EndpointVersion._of(self, version_name)
        for key in ("auth_enabled", "token_auth_enabled", "primary_key", "secondary_key"):
            if key in settings:
                raise ConfigError(f"{key} is the endpoint's, not a version's: use endpoint.update({key}=...)")
        if models is not None or inference_config is not None or settings:
            version.update(list(models) if models is not None else None, inference_config, **settings)
        if rollout_config is not None:
            config = self._record().config
            config = {**config, ENDPOINT_KEY: {**rollout_config[ENDPOINT_KEY], "versions": versions}}
            self.workspace.store.update_service_config(self.name, config)
            self.workspace.cluster().sync(self.name)  # the daemon starts the rollout
        elif versions != record.config[ENDPOINT_KEY]["versions"]:
            self._save_versions(versions)

    def compare(self, version_a: str, version_b: str) -> dict[str, Any]:
        """Two versions side by side from the running cluster: each one's requests, errors
        (5xx), error_rate, p50_ms and p99_ms since the cluster started (or the version was
        published), and ``agreement`` where one mirrors the other (``sdk/endpoint_compare.py``)."""
        from modelfleet.sdk import endpoint_compare

        return endpoint_compare.compare(self.workspace, self.name, self._versions(), version_a, version_b)

    @property
    def rollout(self) -> dict[str, Any] | None:
        """The latest rollout asked for: its version, spec, status (requested, running,
        completed, rolled_back, cancelled, failed) and reason; None when there was none."""
        found = self._record().config[ENDPOINT_KEY].get("rollout")
        return dict(found) if isinstance(found, dict) else None

    def get_events(self) -> list[dict[str, Any]]:
        """The endpoint's rollout events, oldest first (each step, hold, rollback, completion)."""
        from modelfleet.sdk import endpoint_compare

        return endpoint_compare.events(self.workspace, self.name)

    def delete_version(self, version_name: str) -> None:
        """Remove a version: the router stops sending it requests at once, then its replicas
        drain and stop. The default version and the only version cannot be deleted."""
        record = self._record()
        versions = without_version(record.config[ENDPOINT_KEY]["versions"], version_name)
        self._save_versions(versions, deleted=version_name)

    def set_traffic(self, shares: Mapping[str, float]) -> None:
        """The whole split at once: ``{"blue": 90, "green": 10}``; versions left out get 0 and
        the default takes what the others leave (``modelfleet endpoint traffic``)."""
        self._save_versions(with_traffic(self._versions(), shares))

    def _save_versions(self, versions: Mapping[str, Any], deleted: str | None = None) -> None:
        record = self._record()
        config = {**record.config, ENDPOINT_KEY: {**record.config[ENDPOINT_KEY], "versions": dict(versions)}}
        store = self.workspace.store
        store.update_service_config(self.name, config)
        cluster = self.workspace.cluster()
        if cluster.info() is not None:
            cluster.sync(self.name)  # the daemon deletes a version no longer listed
        elif deleted is not None:
            with contextlib.suppress(NotFound):
                store.delete_service(version_service_name(self.name, deleted))

    def update(self, models: list[Any] | None = None, inference_config: Any = None, **settings: Any) -> None:
        """v1 ``AksEndpoint.update``: the endpoint's own settings (``auth_enabled``,
        ``token_auth_enabled``, ``enable_app_insights``, ``description``, ``tags``,
        ``properties``). A version's models and settings change with ``update_version``."""
        if models is not None or inference_config is not None:
            raise ConfigError("an endpoint's models belong to its versions: use update_version(name, models=...)")
        allowed = {"auth_enabled", "token_auth_enabled", "enable_app_insights", *service_meta.METADATA_SETTINGS}
        unknown = sorted(set(settings) - allowed)
        if unknown:
            raise ConfigError(
                f"{unknown[0]} is a version's setting: use update_version(name, {unknown[0]}=...); "
                f"an endpoint takes {', '.join(sorted(allowed))}"
            )
        meta_changes = {k: settings.pop(k) for k in service_meta.METADATA_SETTINGS if k in settings}
        if meta_changes:
            self._update_metadata(**meta_changes)
        if settings:
            record = self._record()
            spec = DeploySpec.from_dict(record.config["deploy"]).replace(**settings)
            if spec.auth_enabled and not record.primary_key:
                self.workspace.store.set_service_keys(self.name, primary_key=new_key(), secondary_key=new_key())
            self.workspace.store.update_service_config(self.name, {**record.config, "deploy": spec.to_dict()})
            self._notify_cluster(start=True)

    def _update(self, models: list[Any] | None, inference_config: Any, spec: DeploySpec) -> None:
        raise ConfigError(
            f"{self.name} is an endpoint: its models and settings belong to its versions; use "
            f"update_version(name, ...) or `modelfleet endpoint version update -n {self.name} --version-name NAME`"
        )

    def wait_for_deployment(self, show_output: bool = False, timeout_sec: float | None = None) -> None:
        """Wait until every version's latest deployment or update is serving (DeploymentFailed
        names the version that failed)."""
        for version in self.versions.values():
            version.wait_for_deployment(show_output, timeout_sec)

    def get_logs(self, num_lines: int = 5000, init: bool = False, replica: int | None = None) -> str:
        return "".join(f"=== version {n} ===\n{v.get_logs(num_lines, init, replica)}" for n, v in self.versions.items())

    def get_scale_events(self) -> list[dict[str, Any]]:
        return [{**e, "version": n} for n, v in self.versions.items() for e in v.get_scale_events()]

    def delete(self) -> None:
        """Delete the endpoint and every version (drained, then stopped)."""
        record = self._record()
        cluster = self.workspace.cluster()
        if cluster.info() is not None:
            cluster.delete(self.name)  # the daemon deletes the versions first
            return
        for version in record.config[ENDPOINT_KEY]["versions"]:
            with contextlib.suppress(NotFound):
                self.workspace.store.delete_service(version_service_name(self.name, version))
        self.workspace.store.delete_service(self.name)

    def serialize(self) -> dict[str, Any]:
        out = super().serialize()
        out["state"], out["error"], out["models"] = self.state, self.error, self.models
        out["computeType"] = "AKSENDPOINT"
        out["versions"] = {n: v.serialize() for n, v in self.versions.items()}
        return out


class EndpointVersion(AksWebservice):
    """One version of an endpoint: a deployment with its own models, settings and replicas,
    served through its endpoint's scoring URI (its ``name`` is the internal ``<endpoint>:<version>``)."""

    endpoint_name: str
    version_name: str

    @classmethod
    def _of(cls, endpoint: AksEndpoint, version: str) -> EndpointVersion:
        out = cls._listed(endpoint.workspace, version_service_name(endpoint.name, version))
        assert isinstance(out, EndpointVersion)
        out.endpoint_name, out.version_name = endpoint.name, version
        return out

    def __init__(self, workspace: WorkspaceBase, name: str) -> None:
        super().__init__(workspace, name)
        self.endpoint_name, _, self.version_name = name.partition(VERSION_SEPARATOR)

    def _entry(self) -> dict[str, Any]:
        versions = self.workspace.store.get_service(self.endpoint_name).config[ENDPOINT_KEY]["versions"]
        if self.version_name not in versions:
            raise NotFound(f"endpoint {self.endpoint_name} has no version {self.version_name}")
        return dict(versions[self.version_name])

    @property
    def traffic_percentile(self) -> float:
        return float(self._entry().get("traffic_percentile", 0.0))

    @property
    def is_default(self) -> bool:
        return bool(self._entry().get("is_default"))

    @property
    def is_control_version_type(self) -> bool:
        return bool(self._entry().get("is_control_version_type"))

    @property
    def mirror_percentile(self) -> float:
        return float(self._entry().get("mirror_percentile", 0.0))

    def _base_uri(self) -> str | None:
        root = _router_root(self.workspace, self._record())
        return f"{root}/api/v1/service/{self.endpoint_name}" if root else None

    def get_keys(self) -> tuple[str, str]:
        return AksEndpoint(self.workspace, self.endpoint_name).get_keys()

    def run(self, input_data: Any, timeout: float = 90.0) -> Any:
        """Score through the endpoint, pinned to this version (``azureml-model-deployment``)."""
        return AksEndpoint(self.workspace, self.endpoint_name)._run(input_data, timeout, self.version_name)

    def delete(self) -> None:
        AksEndpoint(self.workspace, self.endpoint_name).delete_version(self.version_name)

    def _notify_cluster(self, start: bool = False) -> None:
        cluster = self.workspace.cluster()
        if start:
            cluster.ensure_running()
        elif cluster.info() is None:
            return
        cluster.sync(self.endpoint_name)  # the endpoint syncs its versions' services

    def serialize(self) -> dict[str, Any]:
        out = super().serialize()
        out.update(
            name=self.version_name,
            endpoint=self.endpoint_name,
            trafficPercentile=self.traffic_percentile,
            isDefault=self.is_default,
            isControlVersionType=self.is_control_version_type,
        )
        return out


def _existing_service(workspace: WorkspaceBase, name: str) -> dict[str, Any] | None:
    try:
        return Webservice(workspace, name).serialize()
    except NotFound:
        return None


def _router_root(workspace: WorkspaceBase, record: ServiceRecord) -> str | None:
    """``scheme://host:port`` of the router that serves ``record``'s service, or None while it
    is not known (no cluster has run yet; an attached cluster without its URI). A local service
    is served by its owning cluster's router (a teammate's, in a shared workspace)."""
    target = service_target(workspace, record.config)
    if target is not None:  # the cluster's router, where the compute target says it is reached
        return target.router_uri or None
    store = workspace.store
    owner = record.cluster
    port = store.get_setting(ROUTER_PORT_SETTING, cluster=owner)
    if port is None:
        return None
    scheme = store.get_setting(ROUTER_SCHEME_SETTING, cluster=owner) or "http"
    host = store.get_setting(ROUTER_URI_HOST_SETTING, cluster=owner) or "127.0.0.1"
    return f"{scheme}://{host}:{port}"


def _deploy_specs(records: Sequence[ServiceRecord]) -> dict[str, DeploySpec]:
    """Each record's deploy spec by service name, parsed once for all the services deployed with
    the same settings (a fleet deployed by one script: ``service list`` of 1,000 spent a third
    of its time parsing one spec a thousand times)."""
    parsed: dict[str, DeploySpec] = {}
    out = {}
    for record in records:
        deploy = record.config["deploy"]
        key = json.dumps(deploy, sort_keys=True, default=str)
        spec = parsed.get(key)
        if spec is None:
            spec = parsed[key] = DeploySpec.from_dict(deploy)
        out[record.name] = spec
    return out


def _copied(value: Any) -> Any:
    """A copy of JSON-like data (dicts and lists copied, the rest shared): each service's own."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


def _serialized(
    record: ServiceRecord,
    router_root: str | None,
    meta: service_meta.Metadata,
    spec: DeploySpec | None = None,
    v1_json: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if spec is None:
        spec = DeploySpec.from_dict(record.config["deploy"])
    base = f"{router_root}/api/v1/service/{record.name}" if router_root else None
    return {
        "name": record.name,
        "state": record.state,
        "error": record.detail,
        "computeType": _compute_type(spec),
        "scoringUri": f"{base}/score" if base else None,
        "swaggerUri": f"{base}/swagger.json" if base else None,
        "generation": record.generation,
        "servingGeneration": record.serving_generation,
        "models": record.config["models"],
        "createdTime": record.created_time,
        "updatedTime": record.updated_time,
        "tags": meta.tags,
        "properties": meta.properties,
        "description": meta.description,
        "environment": record.config["environment"].get("name"),
        "deploymentConfig": spec.to_v1_json() if v1_json is None else v1_json,
        "cluster": record.cluster,  # last: tsv consumers' columns stay where they were
    }


def _compute_type(spec: DeploySpec) -> str:
    return "Local" if spec.compute_type == "local" else "AKS"


def _flavour(deploy: dict[str, Any]) -> type[Webservice]:
    return LocalWebservice if deploy.get("compute_type") == "local" else AksWebservice


__all__ = [
    "AksCompute",
    "AksEndpoint",
    "AksWebservice",
    "EndpointDeployConfig",
    "EndpointVersion",
    "KubernetesCompute",
    "LocalWebservice",
    "Webservice",
]
