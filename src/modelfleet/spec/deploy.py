"""Deployment settings: ``DeploySpec`` and the v1 ``deploy_configuration`` entry points.

v1 names and defaults (azureml-core ``AksWebservice.deploy_configuration``)::

    cpu_cores 0.1   memory_gb 0.5   cpu_cores_limit/memory_gb_limit none   gpu_cores 0
    autoscale_enabled: on unless num_replicas is given   min 1  max 10  refresh 1 s  target 70 %
    auth_enabled True   token_auth_enabled False   scoring_timeout_ms 60000
    replica_max_concurrent_requests 1   max_request_wait_time 500 ms
    liveness: period_seconds 10  initial_delay_seconds 310  timeout_seconds 2
              success_threshold 1  failure_threshold 3
    collect_model_data False   enable_app_insights False   blobfuse_enabled True

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
  (100 MiB), ``port`` (local only; v1's LocalWebservice setting).

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
    _opt_str,
    _positive,
    _str_map,
)

# --------------------------------------------------------------------------- deploy settings


@dataclass(frozen=True)
class ProbeSpec:
    """v1 liveness probe (``livenessProbeRequirements``); every value at least 1, as v1."""

    period_seconds: int = 10
    initial_delay_seconds: int = 310
    timeout_seconds: int = 2
    success_threshold: int = 1
    failure_threshold: int = 3

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _int(f.name, getattr(self, f.name), 1)


@dataclass(frozen=True)
class AutoscaleSpec:
    """v1 ``autoScaler``; ``down_delay_seconds`` is modelfleet's (how long utilization must stay
    under target before replicas are removed). Messages use the flat v1 names."""

    enabled: bool = True
    min_replicas: int = 1
    max_replicas: int = 10
    refresh_seconds: int = 1
    target_utilization: int = 70
    down_delay_seconds: int = 60

    def __post_init__(self) -> None:
        _bool("autoscale_enabled", self.enabled)
        _int("autoscale_min_replicas", self.min_replicas, 1)
        _int("autoscale_max_replicas", self.max_replicas, 1)
        _int("autoscale_refresh_seconds", self.refresh_seconds, 1)
        _int("autoscale_target_utilization", self.target_utilization, 1, 100)
        _int("autoscale_down_delay_seconds", self.down_delay_seconds, 0)
        if self.min_replicas > self.max_replicas:
            raise ConfigError(
                f"autoscale_min_replicas ({self.min_replicas}) cannot be greater than "
                f"autoscale_max_replicas ({self.max_replicas})"
            )


# Flat v1 keyword -> field of the nested value.
_AUTOSCALE_FLAT = {
    "autoscale_enabled": "enabled",
    "autoscale_min_replicas": "min_replicas",
    "autoscale_max_replicas": "max_replicas",
    "autoscale_refresh_seconds": "refresh_seconds",
    "autoscale_target_utilization": "target_utilization",
    "autoscale_down_delay_seconds": "down_delay_seconds",
}
_PROBE_FLAT = {f.name: f.name for f in dataclasses.fields(ProbeSpec)}


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
    cpu_cores: float = 0.1
    memory_gb: float = 0.5
    cpu_cores_limit: float | None = None
    memory_gb_limit: float | None = None
    gpu_cores: int = 0
    num_replicas: int | None = None
    autoscale: AutoscaleSpec = field(default_factory=AutoscaleSpec)
    auth_enabled: bool = True
    token_auth_enabled: bool = False
    primary_key: str | None = field(default=None, repr=False)
    secondary_key: str | None = field(default=None, repr=False)
    scoring_timeout_ms: int = 60000
    replica_max_concurrent_requests: int = 1
    max_request_wait_time: int = 500
    liveness: ProbeSpec = field(default_factory=ProbeSpec)
    collect_model_data: bool = False
    enable_app_insights: bool = False
    namespace: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    compute_target_name: str | None = None
    blobfuse_enabled: bool = True
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    port: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised values are written once, here
        if self.compute_type not in COMPUTE_TYPES:
            raise ConfigError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)} (got {self.compute_type!r})")
        set_(self, "cpu_cores", _positive("cpu_cores", self.cpu_cores))
        set_(self, "memory_gb", _positive("memory_gb", self.memory_gb))
        if self.cpu_cores_limit is not None:
            set_(self, "cpu_cores_limit", _positive("cpu_cores_limit", self.cpu_cores_limit))
            if self.cpu_cores_limit < self.cpu_cores:
                raise ConfigError(
                    f"cpu_cores_limit must be greater than or equal to cpu_cores "
                    f"(got {self.cpu_cores_limit} < {self.cpu_cores})"
                )
        if self.memory_gb_limit is not None:
            set_(self, "memory_gb_limit", _positive("memory_gb_limit", self.memory_gb_limit))
            if self.memory_gb_limit < self.memory_gb:
                raise ConfigError(
                    f"memory_gb_limit must be greater than or equal to memory_gb "
                    f"(got {self.memory_gb_limit} < {self.memory_gb})"
                )
        _int("gpu_cores", self.gpu_cores, 0)
        if self.num_replicas is not None:
            _int("num_replicas", self.num_replicas, 1)
        if not isinstance(self.autoscale, AutoscaleSpec):
            raise ConfigError(f"autoscale must be an AutoscaleSpec (got {_kind(self.autoscale)})")
        if not isinstance(self.liveness, ProbeSpec):
            raise ConfigError(f"liveness must be a ProbeSpec (got {_kind(self.liveness)})")
        for name in ("auth_enabled", "token_auth_enabled", "collect_model_data", "enable_app_insights"):
            _bool(name, getattr(self, name))
        _bool("blobfuse_enabled", self.blobfuse_enabled)
        for name in ("primary_key", "secondary_key", "description", "compute_target_name", "namespace"):
            _opt_str(name, getattr(self, name))
        _int("scoring_timeout_ms", self.scoring_timeout_ms, 1)
        _int("replica_max_concurrent_requests", self.replica_max_concurrent_requests, 1)
        _int("max_request_wait_time", self.max_request_wait_time, 0)
        _int("max_body_bytes", self.max_body_bytes, 1)
        if self.namespace is not None and (len(self.namespace) > 63 or not _NAMESPACE_RE.fullmatch(self.namespace)):
            raise ConfigError(
                "namespace must be a Kubernetes namespace: up to 63 lowercase letters, digits and "
                f"dashes, starting and ending with a letter or digit (got {self.namespace!r})"
            )
        set_(self, "tags", _str_map("tags", self.tags))
        set_(self, "properties", _str_map("properties", self.properties))
        self._check_rules()

    def _check_rules(self) -> None:
        if self.autoscale.enabled and self.num_replicas is not None:
            raise ConfigError(
                f"autoscale enabled and num_replicas provided (num_replicas={self.num_replicas}); "
                "set autoscale_enabled=False for a fixed replica count, or leave num_replicas out"
            )
        if not self.autoscale.enabled and self.num_replicas is None:
            raise ConfigError("autoscale disabled but num_replicas not provided; give num_replicas (at least 1)")
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

    # v1 exposed these flat attributes on its configuration object; scripts that read
    # ``dc.autoscale_max_replicas`` or ``dc.period_seconds`` keep working.
    @property
    def autoscale_enabled(self) -> bool:
        return self.autoscale.enabled

    @property
    def autoscale_min_replicas(self) -> int:
        return self.autoscale.min_replicas

    @property
    def autoscale_max_replicas(self) -> int:
        return self.autoscale.max_replicas

    @property
    def autoscale_refresh_seconds(self) -> int:
        return self.autoscale.refresh_seconds

    @property
    def autoscale_target_utilization(self) -> int:
        return self.autoscale.target_utilization

    @property
    def autoscale_down_delay_seconds(self) -> int:
        return self.autoscale.down_delay_seconds

    @property
    def period_seconds(self) -> int:
        return self.liveness.period_seconds

    @property
    def initial_delay_seconds(self) -> int:
        return self.liveness.initial_delay_seconds

    @property
    def timeout_seconds(self) -> int:
        return self.liveness.timeout_seconds

    @property
    def success_threshold(self) -> int:
        return self.liveness.success_threshold

    @property
    def failure_threshold(self) -> int:
        return self.liveness.failure_threshold

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
        scale: dict[str, Any] = {}
        probe: dict[str, Any] = {}
        fields = {f.name for f in dataclasses.fields(self)}
        for key, value in changes.items():
            if key in _AUTOSCALE_FLAT:
                scale[_AUTOSCALE_FLAT[key]] = value
            elif key in _PROBE_FLAT:
                probe[key] = value
            elif key in fields:
                direct[key] = value
            else:
                known = sorted(fields | set(_AUTOSCALE_FLAT) | set(_PROBE_FLAT))
                raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(known)}")
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
            del d["primary_key"], d["secondary_key"]
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
        _check_keys("deploymentconfig.json", d, ["computeType", *_V1_TOP_LEVEL, "port"])
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
        kwargs: dict[str, Any] = {}
        for path, param in _V1_DEPLOY_KEYS:
            section = d.get(path[0]) if len(path) == 2 else d
            if section is None:
                continue
            if len(path) == 2:
                _check_keys(path[0], section, _V1_SECTIONS[path[0]])
            value = section.get(path[-1])
            if value is None:
                continue
            if param in kwargs and kwargs[param] != value:
                raise ConfigError(
                    f"gpu given twice with different values in deploymentconfig.json "
                    f"(gpuCores={d.get('gpuCores')!r}, containerResourceRequirements.gpu={value!r})"
                )
            kwargs[param] = value
        try:
            return aks_deploy_configuration(compute_type=compute, **kwargs)
        except ConfigError as e:
            json_key = next(
                (".".join(p) for p, param in _V1_DEPLOY_KEYS if e.message.startswith(param + " ") and _has_path(d, p)),
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
        a, p = self.autoscale, self.liveness
        scaler: dict[str, Any] = {"autoscaleEnabled": a.enabled}
        if a.enabled:
            scaler.update(
                minReplicas=a.min_replicas,
                maxReplicas=a.max_replicas,
                refreshPeriodInSeconds=a.refresh_seconds,
                targetUtilization=a.target_utilization,
                scaleDownDelaySeconds=a.down_delay_seconds,
            )
        resources: dict[str, Any] = {"cpu": self.cpu_cores, "memoryInGB": self.memory_gb}
        if self.cpu_cores_limit is not None:
            resources["cpuLimit"] = self.cpu_cores_limit
        if self.memory_gb_limit is not None:
            resources["memoryInGBLimit"] = self.memory_gb_limit
        out = {
            "computeType": self.compute_type,
            "autoScaler": scaler,
            "containerResourceRequirements": resources,
            "gpuCores": self.gpu_cores,
            "authEnabled": self.auth_enabled,
            "tokenAuthEnabled": self.token_auth_enabled,
            "appInsightsEnabled": self.enable_app_insights,
            "dataCollection": {"storageEnabled": self.collect_model_data},
            "scoringTimeoutMs": self.scoring_timeout_ms,
            "maxConcurrentRequestsPerContainer": self.replica_max_concurrent_requests,
            "maxQueueWaitMs": self.max_request_wait_time,
            "livenessProbeRequirements": {
                "periodSeconds": p.period_seconds,
                "initialDelaySeconds": p.initial_delay_seconds,
                "timeoutSeconds": p.timeout_seconds,
                "successThreshold": p.success_threshold,
                "failureThreshold": p.failure_threshold,
            },
            "blobfuseEnabled": self.blobfuse_enabled,
            "maxBodyBytes": self.max_body_bytes,
            "tags": dict(self.tags),
            "properties": dict(self.properties),
        }
        if self.num_replicas is not None:
            out["numReplicas"] = self.num_replicas
        for key, value in (
            ("namespace", self.namespace),
            ("computeTargetName", self.compute_target_name),
            ("description", self.description),
        ):
            if value is not None:
                out[key] = value
        if include_keys and (self.primary_key or self.secondary_key):
            out["keys"] = {
                k: v
                for k, v in (("primaryKey", self.primary_key), ("secondaryKey", self.secondary_key))
                if v is not None
            }
        return out


# JSON path -> aks_deploy_configuration keyword. Two spellings of the GPU count exist in v1:
# the CLI read top-level ``gpuCores``; the service payload had ``containerResourceRequirements.gpu``.
_V1_DEPLOY_KEYS: list[tuple[tuple[str, ...], str]] = [
    (("autoScaler", "autoscaleEnabled"), "autoscale_enabled"),
    (("autoScaler", "minReplicas"), "autoscale_min_replicas"),
    (("autoScaler", "maxReplicas"), "autoscale_max_replicas"),
    (("autoScaler", "refreshPeriodInSeconds"), "autoscale_refresh_seconds"),
    (("autoScaler", "targetUtilization"), "autoscale_target_utilization"),
    (("autoScaler", "scaleDownDelaySeconds"), "autoscale_down_delay_seconds"),
    (("containerResourceRequirements", "cpu"), "cpu_cores"),
    (("containerResourceRequirements", "memoryInGB"), "memory_gb"),
    (("containerResourceRequirements", "cpuLimit"), "cpu_cores_limit"),
    (("containerResourceRequirements", "memoryInGBLimit"), "memory_gb_limit"),
    (("gpuCores",), "gpu_cores"),
    (("containerResourceRequirements", "gpu"), "gpu_cores"),
    (("dataCollection", "storageEnabled"), "collect_model_data"),
    (("authEnabled",), "auth_enabled"),
    (("tokenAuthEnabled",), "token_auth_enabled"),
    (("appInsightsEnabled",), "enable_app_insights"),
    (("scoringTimeoutMs",), "scoring_timeout_ms"),
    (("maxConcurrentRequestsPerContainer",), "replica_max_concurrent_requests"),
    (("maxQueueWaitMs",), "max_request_wait_time"),
    (("numReplicas",), "num_replicas"),
    (("keys", "primaryKey"), "primary_key"),
    (("keys", "secondaryKey"), "secondary_key"),
    (("livenessProbeRequirements", "periodSeconds"), "period_seconds"),
    (("livenessProbeRequirements", "initialDelaySeconds"), "initial_delay_seconds"),
    (("livenessProbeRequirements", "timeoutSeconds"), "timeout_seconds"),
    (("livenessProbeRequirements", "successThreshold"), "success_threshold"),
    (("livenessProbeRequirements", "failureThreshold"), "failure_threshold"),
    (("namespace",), "namespace"),
    (("computeTargetName",), "compute_target_name"),
    (("blobfuseEnabled",), "blobfuse_enabled"),
    (("maxBodyBytes",), "max_body_bytes"),
    (("tags",), "tags"),
    (("properties",), "properties"),
    (("description",), "description"),
]
_V1_SECTIONS: dict[str, list[str]] = {}
for _path, _ in _V1_DEPLOY_KEYS:
    if len(_path) == 2:
        _V1_SECTIONS.setdefault(_path[0], []).append(_path[1])
_V1_SECTIONS["dataCollection"].append("eventHubEnabled")  # v1 REST field; no event hubs here
_V1_TOP_LEVEL = list(dict.fromkeys(p[0] for p, _ in _V1_DEPLOY_KEYS))


def _has_path(d: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    section = d.get(path[0]) if len(path) == 2 else d
    return isinstance(section, Mapping) and section.get(path[-1]) is not None


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
    compute_type: str = "aks",
) -> DeploySpec:
    """v1 ``AksWebservice.deploy_configuration``: same parameters, order and defaults.

    ``None`` means "not given", as in v1. Autoscaling is on unless ``num_replicas`` is given;
    key auth is on unless token auth is asked for.
    """
    scale_given = {
        name: value
        for name, value in (
            ("autoscale_min_replicas", autoscale_min_replicas),
            ("autoscale_max_replicas", autoscale_max_replicas),
            ("autoscale_refresh_seconds", autoscale_refresh_seconds),
            ("autoscale_target_utilization", autoscale_target_utilization),
            ("autoscale_down_delay_seconds", autoscale_down_delay_seconds),
        )
        if value is not None
    }
    if autoscale_enabled is not None:
        _bool("autoscale_enabled", autoscale_enabled)
    enabled = autoscale_enabled if autoscale_enabled is not None else num_replicas is None
    if not enabled and scale_given:
        name = next(iter(scale_given))
        raise ConfigError(
            f"{name} provided without enabling autoscaling (num_replicas={num_replicas!r}, "
            f"autoscale_enabled={autoscale_enabled!r}); drop num_replicas and set autoscale_enabled=True "
            f"to autoscale, or drop {name}"
        )
    autoscale = AutoscaleSpec(
        enabled=enabled,
        **{_AUTOSCALE_FLAT[k]: v for k, v in scale_given.items()},
    )
    probe = {
        k: v
        for k, v in (
            ("period_seconds", period_seconds),
            ("initial_delay_seconds", initial_delay_seconds),
            ("timeout_seconds", timeout_seconds),
            ("success_threshold", success_threshold),
            ("failure_threshold", failure_threshold),
        )
        if v is not None
    }
    if auth_enabled is None:
        auth_enabled = token_auth_enabled is not True
    given: dict[str, Any] = {
        "compute_type": compute_type,
        "cpu_cores": cpu_cores,
        "memory_gb": memory_gb,
        "cpu_cores_limit": cpu_cores_limit,
        "memory_gb_limit": memory_gb_limit,
        "gpu_cores": gpu_cores,
        "num_replicas": num_replicas,
        "auth_enabled": auth_enabled,
        "token_auth_enabled": token_auth_enabled,
        "primary_key": primary_key,
        "secondary_key": secondary_key,
        "scoring_timeout_ms": scoring_timeout_ms,
        "replica_max_concurrent_requests": replica_max_concurrent_requests,
        "max_request_wait_time": max_request_wait_time,
        "collect_model_data": collect_model_data,
        "enable_app_insights": enable_app_insights,
        "namespace": namespace,
        "tags": tags,
        "properties": properties,
        "description": description,
        "compute_target_name": compute_target_name,
        "blobfuse_enabled": blobfuse_enabled,
        "max_body_bytes": max_body_bytes,
    }
    return DeploySpec(
        autoscale=autoscale,
        liveness=ProbeSpec(**probe),
        **{k: v for k, v in given.items() if v is not None},
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
