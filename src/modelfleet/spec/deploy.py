"""Deployment settings: ``DeploySpec`` and the v1 ``deploy_configuration`` entry points.

Each setting is declared once, in the classes below, with ``setting()`` (``spec/fields.py``):
type, v1 default (azureml-core ``AksWebservice.deploy_configuration``), bounds, v1 JSON path
and help. ``SETTINGS`` is that table under v1's flat keywords; validation,
``to_v1_json``/``from_v1_json``, ``replace``, the flat v1 attributes and the CLI's flags are
derived from it. ``aks_deploy_configuration`` spells v1's keywords out (editors and type
checkers read them); a test keeps them equal to the table and to v1's list.

v1's cross-field rules, kept: autoscale enabled together with num_replicas is an error;
autoscale disabled without num_replicas is an error; autoscale_* values given while autoscale
is off are an error; min <= max; key auth and token auth cannot both be on; limits >= requests.

Where modelfleet differs from v1, on purpose:

- v1 also refused ``autoscale_max_replicas=4`` when ``autoscale_enabled`` was left out, although
  autoscaling is on by default then. Here autoscale_* values are accepted whenever autoscaling
  is on in effect (no num_replicas given). Every call v1 accepted means the same thing here.
- ``max_request_wait_time`` may be 0 (answer 503 at once, never queue); v1 required > 0.
- ``autoscale_target_utilization`` is capped at 100 (v1 only required > 0).
- Types are checked: ``True`` where an integer belongs, or the string ``"1"``, is an error.
- Additions with names of their own: ``autoscale_down_delay_seconds`` (60), ``max_body_bytes``
  (100 MiB), ``model_cache_size`` and ``model_cache_memory_gb`` (the bounds of a replica's
  models loaded on demand, ``modelfleet.replica.models``; unbounded when not given),
  ``max_batch_size`` and ``max_batch_delay_ms`` (dynamic batching: the script's
  ``run_batch(items)``, ``modelfleet.replica.batching``; off at 1), ``scale_to_zero_after_seconds``
  (off) and ``cold_start_wait_ms`` (30000: scale to zero, README "Scale to zero"), ``port``
  (local only; v1's LocalWebservice setting).

v1 JSON files are read as they are. Unknown keys are a ``ConfigError`` that names the key and the
known ones. Keys v1 had that mean nothing here (Docker image steps, GPU base images, Spark,
event hubs, ...) are accepted and have no effect; ``v1_notes`` lists the ones that were set, so
the CLI can say so. ``computeType`` ``aci`` and ``aksendpoint`` are refused with a message.
The conversions are classmethods: ``DeploySpec.from_v1_json`` / ``to_v1_json`` and
``InferenceSpec.from_v1_json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.spec.checks import (
    _NAMESPACE_RE,
    COMPUTE_TYPES,
    DEFAULT_MAX_BODY_BYTES,
    _bool,
    _check_keys,
    _int,
    _kind,
)
from modelfleet.spec.fields import Setting, json_get, json_put, json_sections, setting, settings_of, validate_settings


def _kubernetes_namespace(name: str, value: str) -> None:
    if len(value) > 63 or not _NAMESPACE_RE.fullmatch(value):
        raise ConfigError(
            f"{name} must be a Kubernetes namespace: up to 63 lowercase letters, digits and "
            f"dashes, starting and ending with a letter or digit (got {value!r})"
        )


# --------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class ProbeSpec:
    """v1 liveness probe (``livenessProbeRequirements``); every value at least 1, as v1."""

    period_seconds: int = setting(
        "int", 10, "livenessProbeRequirements.periodSeconds", "how often the liveness probe runs (s)", lo=1
    )
    initial_delay_seconds: int = setting(
        "int", 310, "livenessProbeRequirements.initialDelaySeconds", "seconds from start to the first probe", lo=1
    )
    timeout_seconds: int = setting(
        "int", 2, "livenessProbeRequirements.timeoutSeconds", "seconds one probe may take", lo=1
    )
    success_threshold: int = setting(
        "int", 1, "livenessProbeRequirements.successThreshold", "passes in a row that count as alive", lo=1
    )
    failure_threshold: int = setting(
        "int", 3, "livenessProbeRequirements.failureThreshold", "failures in a row before a restart", lo=1
    )

    def __post_init__(self) -> None:
        validate_settings(self, _PROBE)


@dataclass(frozen=True)
class AutoscaleSpec:
    """v1 ``autoScaler``; ``down_delay_seconds`` is modelfleet's (how long utilization must stay
    under target before replicas are removed). Messages use the flat v1 names."""

    enabled: bool = setting(
        "bool", True, "autoScaler.autoscaleEnabled", "scale with load (on unless num_replicas is given)"
    )
    min_replicas: int = setting("int", 1, "autoScaler.minReplicas", "fewest replicas when autoscaling", lo=1)
    max_replicas: int = setting("int", 10, "autoScaler.maxReplicas", "most replicas when autoscaling", lo=1)
    refresh_seconds: int = setting(
        "int", 1, "autoScaler.refreshPeriodInSeconds", "seconds between autoscaling decisions", lo=1
    )
    target_utilization: int = setting(
        "int", 70, "autoScaler.targetUtilization", "percent of replica capacity to keep busy", lo=1, hi=100
    )
    down_delay_seconds: int = setting(
        "int", 60, "autoScaler.scaleDownDelaySeconds", "seconds under target before scaling down", lo=0
    )

    def __post_init__(self) -> None:
        validate_settings(self, _AUTOSCALE)
        if self.min_replicas > self.max_replicas:
            raise ConfigError(
                f"autoscale_min_replicas ({self.min_replicas}) cannot be greater than "
                f"autoscale_max_replicas ({self.max_replicas})"
            )


@dataclass(frozen=True)
class DeploySpec:
    """Every v1 ``AksWebservice.deploy_configuration`` setting, with its v1 name and default.

    ``compute_type`` is the kind of configuration, v1's ``computeType``: ``aks`` and
    ``kubernetes`` are the same cluster service (where it runs is the deploy target's
    business); ``local`` is ``LocalWebservice``'s (one replica, no autoscaling, optional port).
    Keys are secrets: they are left out of ``repr``, and of ``to_dict``/``to_v1_json`` unless
    asked for.
    """

    compute_type: str = "aks"
    cpu_cores: float = setting("number", 0.1, "containerResourceRequirements.cpu", "CPU cores reserved per replica")
    memory_gb: float = setting("number", 0.5, "containerResourceRequirements.memoryInGB", "memory (GB) per replica")
    cpu_cores_limit: float | None = setting(
        "number", None, "containerResourceRequirements.cpuLimit", "most CPU cores a replica may use"
    )
    memory_gb_limit: float | None = setting(
        "number", None, "containerResourceRequirements.memoryInGBLimit", "most memory (GB) a replica may use"
    )
    # v1 has two spellings: the CLI read top-level gpuCores, the service payload had
    # containerResourceRequirements.gpu. Both are read; the first is written.
    gpu_cores: int = setting("int", 0, ("gpuCores", "containerResourceRequirements.gpu"), "GPUs per replica", lo=0)
    num_replicas: int | None = setting("int", None, "numReplicas", "a fixed replica count (no autoscaling)", lo=1)
    autoscale: AutoscaleSpec = field(default_factory=AutoscaleSpec)
    auth_enabled: bool = setting("bool", True, "authEnabled", "key auth (on unless token auth is asked for)")
    token_auth_enabled: bool = setting("bool", False, "tokenAuthEnabled", "token (JWT) auth instead of keys")
    primary_key: str | None = setting(
        "text", None, "keys.primaryKey", "the primary key (default: 256 random bits)", secret=True
    )
    secondary_key: str | None = setting(
        "text", None, "keys.secondaryKey", "the secondary key (default: 256 random bits)", secret=True
    )
    scoring_timeout_ms: int = setting(
        "int", 60000, "scoringTimeoutMs", "milliseconds a scoring call may take (then 504)", lo=1
    )
    replica_max_concurrent_requests: int = setting(
        "int", 1, "maxConcurrentRequestsPerContainer", "requests one replica serves at once", lo=1
    )
    max_request_wait_time: int = setting(
        "int", 500, "maxQueueWaitMs", "milliseconds to wait for a free replica (then 503)", lo=0
    )
    liveness: ProbeSpec = field(default_factory=ProbeSpec)
    collect_model_data: bool = setting(
        "bool", False, "dataCollection.storageEnabled", "store inputs and outputs (ModelDataCollector)"
    )
    enable_app_insights: bool = setting("bool", False, "appInsightsEnabled", "record each request's timings")
    namespace: str | None = setting("text", None, "namespace", "Kubernetes namespace", check=_kubernetes_namespace)
    tags: dict[str, str] = setting("map", {}, "tags", "a tag, KEY=VALUE (repeatable)", flag="--tag")
    properties: dict[str, str] = setting(
        "map", {}, "properties", "a property, KEY=VALUE (repeatable)", flag="--property"
    )
    description: str | None = setting("text", None, "description", "what the service is")
    compute_target_name: str | None = setting("text", None, "computeTargetName", "v1's compute target name")
    blobfuse_enabled: bool = setting("bool", True, "blobfuseEnabled", "v1's model download setting (kept)")
    max_body_bytes: int = setting(
        "int", DEFAULT_MAX_BODY_BYTES, "maxBodyBytes", "largest request body the router accepts (bytes)", lo=1
    )
    # Models loaded on demand (``modelfleet.replica.models.load``): the per-replica LRU's bounds.
    model_cache_size: int | None = setting(
        "int", None, "modelCache.maxModels", "most models one replica keeps loaded (models.load)", lo=1
    )
    model_cache_memory_gb: float | None = setting(
        "number", None, "modelCache.memoryInGB", "most memory (GB) of models one replica keeps loaded"
    )
    # Dynamic batching (``modelfleet.replica.batching``): 1 is off. A batching replica admits
    # replica_max_concurrent_requests x max_batch_size requests (``admitted_per_replica``).
    max_batch_size: int = setting(
        "int", 1, "batching.maxBatchSize", "requests gathered into one run_batch() call (1: off)", lo=1, hi=1024
    )
    max_batch_delay_ms: int = setting(
        "int", 5, "batching.maxBatchDelayMs", "most ms a batch waits for more requests after its first", lo=0, hi=10000
    )
    # Scale to zero (control/README "Scale to zero"): off when None; autoscale_min_replicas
    # keeps v1's >= 1. While at zero the router holds requests max_request_wait_time +
    # cold_start_wait_ms for the replica the first of them asks for.
    scale_to_zero_after_seconds: int | None = setting(
        "int", None, "scaleToZeroAfterSeconds", "seconds without a request before the last replica stops (off)",
        lo=1, hi=86400,
    )  # fmt: skip
    cold_start_wait_ms: int = setting(
        "int", 30000, "coldStartWaitMs", "ms more a request waits while a replica starts from zero", lo=0, hi=600000
    )
    port: int | None = None

    def __post_init__(self) -> None:
        if self.compute_type not in COMPUTE_TYPES:
            raise ConfigError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)} (got {self.compute_type!r})")
        if not isinstance(self.autoscale, AutoscaleSpec):
            raise ConfigError(f"autoscale must be an AutoscaleSpec (got {_kind(self.autoscale)})")
        if not isinstance(self.liveness, ProbeSpec):
            raise ConfigError(f"liveness must be a ProbeSpec (got {_kind(self.liveness)})")
        validate_settings(self, _OWN)
        self._check_rules()

    def _check_rules(self) -> None:
        for limit, request in (("cpu_cores_limit", "cpu_cores"), ("memory_gb_limit", "memory_gb")):
            if getattr(self, limit) is not None and getattr(self, limit) < getattr(self, request):
                raise ConfigError(
                    f"{limit} must be greater than or equal to {request} "
                    f"(got {getattr(self, limit)} < {getattr(self, request)})"
                )
        if self.autoscale.enabled and self.num_replicas is not None:
            raise ConfigError(
                f"autoscale enabled and num_replicas provided (num_replicas={self.num_replicas}); "
                "set autoscale_enabled=False for a fixed replica count, or leave num_replicas out"
            )
        if not self.autoscale.enabled and self.num_replicas is None:
            raise ConfigError("autoscale disabled but num_replicas not provided; give num_replicas (at least 1)")
        if self.scale_to_zero_after_seconds is not None and not self.autoscale.enabled:
            raise ConfigError(
                f"scale_to_zero_after_seconds={self.scale_to_zero_after_seconds} needs autoscaling: the "
                "autoscaler stops the last replica and starts one again; drop num_replicas (autoscale_enabled=True) "
                "or drop scale_to_zero_after_seconds"
            )
        if self.auth_enabled and self.token_auth_enabled:
            raise ConfigError(
                "cannot enable both key and token auth: auth_enabled and token_auth_enabled "
                "cannot both be true; set auth_enabled=False to use tokens"
            )
        if self.compute_type == "local":
            if self.autoscale.enabled or self.num_replicas != 1:
                raise ConfigError(
                    "compute_type 'local' runs exactly one replica without autoscaling "
                    f"(got num_replicas={self.num_replicas}, autoscale_enabled={self.autoscale.enabled})"
                )
            if self.token_auth_enabled:
                raise ConfigError("token_auth_enabled is not supported for compute_type 'local'")
            if self.port is not None:
                _int("port", self.port, 1, 65535)
        elif self.port is not None:
            raise ConfigError(
                f"port applies only to compute_type 'local' (got port={self.port!r} with "
                f"compute_type {self.compute_type!r}); the router assigns the scoring port"
            )

    def value(self, s: Setting) -> Any:
        """The value of setting ``s`` (one of ``SETTINGS``), nested or not."""
        return getattr(getattr(self, s.group) if s.group else self, s.name)

    def admitted_per_replica(self) -> int:
        """Requests one replica takes at once: replica_max_concurrent_requests calls of the
        script, each of up to max_batch_size requests when batching."""
        return self.replica_max_concurrent_requests * self.max_batch_size

    def initial_replicas(self) -> int:
        """Replicas to start: ``num_replicas`` when autoscale is off, else the autoscale minimum."""
        if self.autoscale.enabled:
            return self.autoscale.min_replicas
        assert self.num_replicas is not None  # guaranteed by _check_rules
        return self.num_replicas

    def replace(self, **changes: Any) -> DeploySpec:
        """A copy with ``changes`` applied and validated again (``service.update``).

        Takes field names and the flat v1 names (``autoscale_max_replicas``, ``period_seconds``,
        ...). As in v1: giving ``num_replicas`` without ``autoscale_enabled`` turns autoscaling
        off; ``autoscale_enabled=True`` without ``num_replicas`` drops the fixed count; turning
        one kind of auth on without mentioning the other turns the other off.
        """
        direct: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {"autoscale": {}, "liveness": {}}
        fields = {f.name for f in dataclasses.fields(self)}
        for key, value in changes.items():
            s = BY_FLAT.get(key)
            if s is not None and s.group is not None:
                nested[s.group][s.name] = value
            elif key in fields:
                direct[key] = value
            else:
                known = sorted(fields | set(BY_FLAT))
                raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(known)}")
        scale, probe = nested["autoscale"], nested["liveness"]
        if "autoscale" not in direct and "enabled" not in scale and direct.get("num_replicas") is not None:
            scale["enabled"] = False
        if scale.get("enabled") is True and "num_replicas" not in direct:
            direct["num_replicas"] = None
        if direct.get("token_auth_enabled") is True and "auth_enabled" not in direct:
            direct["auth_enabled"] = False
        if direct.get("auth_enabled") is True and "token_auth_enabled" not in direct:
            direct["token_auth_enabled"] = False
        autoscale = direct.pop("autoscale", self.autoscale)
        liveness = direct.pop("liveness", self.liveness)
        if scale:
            autoscale = dataclasses.replace(autoscale, **scale)
        if probe:
            liveness = dataclasses.replace(liveness, **probe)
        return dataclasses.replace(self, autoscale=autoscale, liveness=liveness, **direct)

    # ------------------------------------------------------------------ storage form

    def to_dict(self, include_keys: bool = False) -> dict[str, Any]:
        """Plain JSON-able dict of every field; ``from_dict`` gives back an equal spec.
        The keys are secrets and are left out unless ``include_keys``."""
        d = dataclasses.asdict(self)
        if not include_keys:
            for s in _OWN:
                if s.secret:
                    del d[s.name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeploySpec:
        """Inverse of ``to_dict``; missing keys take their defaults, unknown keys are an error."""
        d = _check_keys("deploy spec", d, [f.name for f in dataclasses.fields(cls)])
        kwargs = dict(d)
        if "autoscale" in kwargs:
            a = _check_keys("autoscale", kwargs["autoscale"], [f.name for f in dataclasses.fields(AutoscaleSpec)])
            kwargs["autoscale"] = AutoscaleSpec(**a)
        if "liveness" in kwargs:
            p = _check_keys("liveness", kwargs["liveness"], [f.name for f in dataclasses.fields(ProbeSpec)])
            kwargs["liveness"] = ProbeSpec(**p)
        return cls(**kwargs)

    # ------------------------------------------------------------------ v1 deploymentconfig.json

    @classmethod
    def from_v1_json(cls, d: Mapping[str, Any]) -> DeploySpec:
        """Read a v1 ``deploymentconfig.json`` (already parsed) as the v1 CLI did.

        JSON ``null`` means "not given", as in v1. ``tags``, ``properties``, ``description``,
        ``blobfuseEnabled``, ``maxBodyBytes`` and ``autoScaler.scaleDownDelaySeconds`` are
        modelfleet's additions (v1 took tags and description from CLI flags).
        """
        _check_keys("deploymentconfig.json", d, ["computeType", *_V1_SECTIONS, "port"])
        compute = d.get("computeType")
        if not isinstance(compute, str):
            raise ConfigError(
                f"computeType is required in deploymentconfig.json: one of {', '.join(COMPUTE_TYPES)} "
                f"(got {_kind(compute)})"
            )
        compute = compute.lower()
        if compute == "local":
            extra = [k for k in d if k not in ("computeType", "port") and d[k] is not None]
            if extra:
                raise ConfigError(
                    f"key {extra[0]!r} does not apply to computeType 'local' (allowed: computeType, port); "
                    "remove it, or set computeType to 'aks'"
                )
            return local_deploy_configuration(port=d.get("port"))
        if compute not in ("aks", "kubernetes"):
            raise ConfigError(
                f"computeType {compute!r} is not supported; use one of {', '.join(COMPUTE_TYPES)} "
                "(a v1 'aci' file usually becomes 'aks' with the same cpu and memory)"
            )
        if d.get("port") is not None:
            raise ConfigError(f"port applies only to computeType 'local' (got computeType {compute!r})")
        for top, keys in _V1_SECTIONS.items():
            if keys and d.get(top) is not None:
                _check_keys(top, d[top], keys)
        kwargs: dict[str, Any] = {}
        read_at: dict[str, str] = {}
        for s in SETTINGS:
            for path in s.v1:
                value = json_get(d, path)
                if value is None:
                    continue
                if s.flat in kwargs and kwargs[s.flat] != value:
                    raise ConfigError(
                        f"{path.rpartition('.')[2]} given twice with different values in deploymentconfig.json "
                        f"({read_at[s.flat]}={kwargs[s.flat]!r}, {path}={value!r})"
                    )
                kwargs[s.flat], read_at[s.flat] = value, path
        try:
            return aks_deploy_configuration(compute_type=compute, **kwargs)
        except ConfigError as e:
            json_key = next(
                (
                    path
                    for s in SETTINGS
                    for path in s.v1
                    if e.message.startswith(s.flat + " ") and json_get(d, path) is not None
                ),
                None,
            )
            where = f"{json_key} in deploymentconfig.json" if json_key else "deploymentconfig.json"
            raise ConfigError(f"{where}: {e.message}") from None

    def to_v1_json(self, include_keys: bool = False) -> dict[str, Any]:
        """This spec as a v1 ``deploymentconfig.json`` that ``from_v1_json`` reads back equal
        (keys only with ``include_keys``; a local spec keeps only computeType and port)."""
        if self.compute_type == "local":
            out: dict[str, Any] = {"computeType": "local"}
            if self.port is not None:
                out["port"] = self.port
            return out
        out = {"computeType": self.compute_type}
        for s in SETTINGS:
            if s.secret and not include_keys:
                continue
            if s.group == "autoscale" and s.name != "enabled" and not self.autoscale.enabled:
                continue  # v1 refuses autoscaler values while autoscaling is off
            value = self.value(s)
            if value is not None:
                json_put(out, s.v1[0], dict(value) if isinstance(value, dict) else value)
        return out


_PROBE = settings_of(ProbeSpec, group="liveness")
_AUTOSCALE = settings_of(AutoscaleSpec, "autoscale_", group="autoscale")
_OWN = settings_of(DeploySpec)
_NESTED = {"autoscale": _AUTOSCALE, "liveness": _PROBE}
# Every setting under its flat v1 keyword, in DeploySpec's field order (nested ones in place).
SETTINGS: list[Setting] = [
    s for f in dataclasses.fields(DeploySpec) for s in _NESTED.get(f.name, [o for o in _OWN if o.name == f.name])
]
BY_FLAT: dict[str, Setting] = {s.flat: s for s in SETTINGS}
_V1_SECTIONS = json_sections(SETTINGS)
_V1_SECTIONS["dataCollection"].append("eventHubEnabled")  # v1 REST field; no event hubs here


def _flat_property(s: Setting) -> property:
    return property(lambda spec: spec.value(s), doc=s.help)


# v1 exposed the nested values as flat attributes of its configuration object; scripts that
# read ``dc.autoscale_max_replicas`` or ``dc.period_seconds`` keep working.
for _s in _AUTOSCALE + _PROBE:
    setattr(DeploySpec, _s.flat, _flat_property(_s))
del _s


# --------------------------------------------------------------------------- v1 entry points


def aks_deploy_configuration(
    autoscale_enabled: bool | None = None,
    autoscale_min_replicas: int | None = None,
    autoscale_max_replicas: int | None = None,
    autoscale_refresh_seconds: int | None = None,
    autoscale_target_utilization: int | None = None,
    collect_model_data: bool | None = None,
    auth_enabled: bool | None = None,
    cpu_cores: float | None = None,
    memory_gb: float | None = None,
    enable_app_insights: bool | None = None,
    scoring_timeout_ms: int | None = None,
    replica_max_concurrent_requests: int | None = None,
    max_request_wait_time: int | None = None,
    num_replicas: int | None = None,
    primary_key: str | None = None,
    secondary_key: str | None = None,
    tags: Mapping[str, str] | None = None,
    properties: Mapping[str, str] | None = None,
    description: str | None = None,
    gpu_cores: int | None = None,
    period_seconds: int | None = None,
    initial_delay_seconds: int | None = None,
    timeout_seconds: int | None = None,
    success_threshold: int | None = None,
    failure_threshold: int | None = None,
    namespace: str | None = None,
    token_auth_enabled: bool | None = None,
    compute_target_name: str | None = None,
    cpu_cores_limit: float | None = None,
    memory_gb_limit: float | None = None,
    blobfuse_enabled: bool | None = None,
    *,
    autoscale_down_delay_seconds: int | None = None,
    max_body_bytes: int | None = None,
    model_cache_size: int | None = None,
    model_cache_memory_gb: float | None = None,
    max_batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
    scale_to_zero_after_seconds: int | None = None,
    cold_start_wait_ms: int | None = None,
    compute_type: str = "aks",
) -> DeploySpec:
    """v1 ``AksWebservice.deploy_configuration``: same parameters, order and defaults.

    ``None`` means "not given", as in v1. Autoscaling is on unless ``num_replicas`` is given;
    key auth is on unless token auth is asked for.
    """
    given = {name: value for name, value in locals().items() if value is not None}  # the parameters
    del given["compute_type"]
    return _from_keywords(compute_type, given)


def _from_keywords(compute_type: str, given: dict[str, Any]) -> DeploySpec:
    """``aks_deploy_configuration``'s body: v1 keywords given (not None) -> a DeploySpec."""
    values: dict[str | None, dict[str, Any]] = {None: {}, "autoscale": {}, "liveness": {}}
    for flat, value in given.items():
        values[BY_FLAT[flat].group][BY_FLAT[flat].name] = value
    direct, scale, probe = values[None], values["autoscale"], values["liveness"]
    asked = scale.pop("enabled", None)
    if asked is not None:
        _bool("autoscale_enabled", asked)
    enabled = asked if asked is not None else "num_replicas" not in direct
    if not enabled and scale:
        name = next(flat for flat in given if BY_FLAT[flat].group == "autoscale" and flat != "autoscale_enabled")
        raise ConfigError(
            f"{name} provided without enabling autoscaling (num_replicas={direct.get('num_replicas')!r}, "
            f"autoscale_enabled={asked!r}); drop num_replicas and set autoscale_enabled=True "
            f"to autoscale, or drop {name}"
        )
    if "auth_enabled" not in direct:
        direct["auth_enabled"] = direct.get("token_auth_enabled") is not True
    return DeploySpec(
        compute_type=compute_type,
        autoscale=AutoscaleSpec(enabled=enabled, **scale),
        liveness=ProbeSpec(**probe),
        **direct,
    )


def local_deploy_configuration(port: int | None = None) -> DeploySpec:
    """v1 ``LocalWebservice.deploy_configuration``: one replica, no auth, no autoscaling.
    ``port`` 1-65535, or None (or 0, which v1 treated the same) for any free port."""
    if port == 0 and not isinstance(port, bool):
        port = None
    return DeploySpec(
        compute_type="local",
        num_replicas=1,
        autoscale=AutoscaleSpec(enabled=False),
        auth_enabled=False,
        port=port,
    )
