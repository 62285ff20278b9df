"""Typed, validated configuration: the v1 deploy and inference settings as frozen values.

Everything that configures a service enters through here: the SDK's
``AksWebservice.deploy_configuration`` / ``LocalWebservice.deploy_configuration`` /
``InferenceConfig`` / ``Environment``, the CLI's v1 ``deploymentconfig.json`` and
``inferenceconfig.json`` files, and the workspace store (``to_dict``/``from_dict``). Each value
is checked once, in ``__post_init__``; a bad one raises ``ConfigError`` naming the field, the
allowed range and the value found, e.g. "autoscale_target_utilization must be between 1 and 100
(got 150)". Stdlib only: router and replica processes import this module.

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
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError

DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024
COMPUTE_TYPES = ("aks", "kubernetes", "local")

# v1 ``webservice_name_validation``: the trailing dash is forbidden too.
_SERVICE_NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# v1 ``model_name_validation``.
_MODEL_NAME_RE = re.compile(r"[a-zA-Z0-9][-._a-zA-Z0-9]*")
# Kubernetes namespace (RFC 1123 label), as v1 documents it.
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PYTHON_VERSION_RE = re.compile(r"\d+(\.\d+){0,2}")


# --------------------------------------------------------------------------- value checks


def _kind(v: object) -> str:
    return f"{type(v).__name__} {v!r}"


def _int(name: str, v: object, lo: int, hi: int | None = None) -> int:
    # bool is an int subclass; True where a count belongs is a mistake, not 1.
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer (got {_kind(v)})")
    if hi is not None and not lo <= v <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi} (got {v})")
    if v < lo:
        raise ConfigError(f"{name} must be at least {lo} (got {v})")
    return v


def _positive(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{name} must be a number (got {_kind(v)})")
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be greater than 0 (got {v})")
    return float(v)


def _bool(name: str, v: object) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false (got {_kind(v)})")
    return v


def _opt_str(name: str, v: object) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{name} must be a non-empty string or None (got {_kind(v)})")
    return v


def _str_map(name: str, v: object) -> dict[str, str]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{name} must be a dict of strings to strings (got {_kind(v)})")
    for k, val in v.items():
        if not isinstance(k, str) or not isinstance(val, str):
            raise ConfigError(f"{name} must map strings to strings (got {k!r}: {_kind(val)})")
    return dict(v)


def _str_tuple(name: str, v: object) -> tuple[str, ...]:
    if isinstance(v, str) or not isinstance(v, Iterable):
        raise ConfigError(f"{name} must be a list of strings (got {_kind(v)})")
    items = tuple(v)
    for item in items:
        if not isinstance(item, str) or not item.strip() or "\n" in item:
            raise ConfigError(f"{name} entries must be non-empty one-line strings (got {_kind(item)})")
    return items


def _check_keys(where: str, d: object, known: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where} must be an object (got {_kind(d)})")
    known = list(known)
    for key in d:
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in {where}; known keys: {', '.join(known)}")
    return d


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
            raise ConfigError(
                f"compute_type must be one of {', '.join(COMPUTE_TYPES)} (got {self.compute_type!r})"
            )
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
        if self.namespace is not None and (
            len(self.namespace) > 63 or not _NAMESPACE_RE.fullmatch(self.namespace)
        ):
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
            raise ConfigError(
                "autoscale disabled but num_replicas not provided; give num_replicas (at least 1)"
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
            a = _check_keys(
                "autoscale", kwargs["autoscale"], [f.name for f in dataclasses.fields(AutoscaleSpec)]
            )
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
                (
                    ".".join(p)
                    for p, param in _V1_DEPLOY_KEYS
                    if e.message.startswith(param + " ") and _has_path(d, p)
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

# Keys v1 had that have no effect in modelfleet: accepted, reported by ``v1_notes`` when set.
_V1_IGNORED: dict[str, dict[str, str]] = {
    "deploy": {},
    "inference": {
        "extraDockerfileSteps": "modelfleet builds no Docker image from it",
        "enableGpu": "GPUs are requested with gpu_cores in the deployment configuration",
        "baseImage": "modelfleet builds no Docker image from it",
        "baseImageRegistry": "modelfleet builds no Docker image from it",
        "cudaVersion": "modelfleet builds no Docker image from it",
    },
    "environment": {
        "docker": "modelfleet builds no Docker image from it",
        "spark": "Spark packages are not installed",
        "databricks": "Databricks libraries are not installed",
        "inferencingStackVersion": "the scoring stack is modelfleet's own",
        "assetId": "environments are identified by their contents",
        "r": "R environments are not supported",
    },
}


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


# --------------------------------------------------------------------------- names


def validate_service_name(name: object) -> str:
    """v1's service-name rule: 3-32 lowercase letters, digits and dashes, starting with a
    letter and ending with a letter or digit (v1 ``webservice_name_validation``)."""
    if not isinstance(name, str) or not 3 <= len(name) <= 32 or not _SERVICE_NAME_RE.fullmatch(name):
        raise ConfigError(
            "service name must be 3-32 characters of lowercase letters, digits and dashes, "
            f"starting with a letter and ending with a letter or digit (got {name!r})"
        )
    return name


def validate_model_name(name: object) -> str:
    """v1's model-name rule: 1-255 letters, digits, dashes, periods or underscores, starting
    with a letter or digit."""
    if not isinstance(name, str) or len(name) > 255 or not _MODEL_NAME_RE.fullmatch(name):
        raise ConfigError(
            "model name must be 1-255 letters, digits, dashes, periods or underscores, "
            f"starting with a letter or digit (got {name!r})"
        )
    return name


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """``"name:3"`` -> ``("name", 3)``; ``"name"`` -> ``("name", None)`` (the CLI's ``-m``)."""
    if not isinstance(ref, str):
        raise ConfigError(f"model reference must be NAME or NAME:VERSION (got {_kind(ref)})")
    name, sep, version = ref.partition(":")
    validate_model_name(name)
    if not sep:
        return name, None
    if not version.isdigit() or not version.isascii() or int(version) < 1:
        raise ConfigError(f"model version must be a whole number of at least 1, as in {name}:3 (got {ref!r})")
    return name, int(version)


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class EnvironmentSpec:
    """What a replica's Python environment holds.

    ``python_executable`` set: that interpreter as it is (v1 ``userManagedDependencies``);
    nothing is installed into it, and any ``pip_requirements`` are what it must already
    satisfy. Otherwise, with no requirements: the interpreter running modelfleet. With
    ``pip_requirements``: an environment built from them, on ``python_version`` when given.
    ``conda_only_packages`` are the conda (non-pip) dependencies of a v1 conda specification,
    kept so the builder can try them with pip or say why it cannot.
    """

    name: str
    version: str | None = None
    python_executable: str | None = None
    pip_requirements: tuple[str, ...] = ()
    python_version: str | None = None
    environment_variables: dict[str, str] = field(default_factory=dict)
    conda_only_packages: tuple[str, ...] = ()
    conda_channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 255:
            raise ConfigError(
                f"environment name must be a non-empty string of at most 255 characters (got {self.name!r})"
            )
        if isinstance(self.version, int) and not isinstance(self.version, bool):
            set_(self, "version", str(self.version))  # v1 files write "version": "1" or 1
        _opt_str("environment version", self.version)
        _opt_str("python_executable", self.python_executable)
        for name in ("pip_requirements", "conda_only_packages", "conda_channels"):
            set_(self, name, _str_tuple(name, getattr(self, name)))
        if self.python_version is not None and (
            not isinstance(self.python_version, str) or not _PYTHON_VERSION_RE.fullmatch(self.python_version)
        ):
            raise ConfigError(f"python_version must look like 3.11 or 3.11.4 (got {self.python_version!r})")
        env = _str_map("environment_variables", self.environment_variables)
        for key in env:
            if not key or "=" in key or "\0" in key:
                raise ConfigError(f"environment variable name must be non-empty, without '=' (got {key!r})")
        set_(self, "environment_variables", env)
        if self.python_executable is not None and self.python_version is not None:
            raise ConfigError(
                f"environment {self.name!r}: python_executable (user-managed) cannot be combined with "
                f"python_version {self.python_version!r}; give one or the other"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("pip_requirements", "conda_only_packages", "conda_channels"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnvironmentSpec:
        d = _check_keys("environment spec", d, [f.name for f in dataclasses.fields(cls)])
        return cls(**d)

    @classmethod
    def from_pip_requirements(cls, name: str, text: str) -> EnvironmentSpec:
        """From the text of a requirements.txt: one requirement per line, comments dropped."""
        lines = [line.split(" #")[0].strip() for line in text.splitlines()]
        return cls(name=name, pip_requirements=tuple(x for x in lines if x and not x.startswith("#")))

    @classmethod
    def from_conda(
        cls, name: str, conda: Mapping[str, Any], environment_variables: Mapping[str, str] | None = None
    ) -> EnvironmentSpec:
        """From a v1 conda specification (``condaDependencies``, or a parsed conda YAML file):
        ``python=X`` becomes python_version, the ``pip:`` list pip_requirements, the rest
        conda_only_packages (``pip`` itself is implied and dropped)."""
        conda = _check_keys(
            "conda dependencies", conda, ["name", "channels", "dependencies", "prefix", "variables"]
        )
        pip: list[str] = []
        other: list[str] = []
        python_version = None
        deps = conda.get("dependencies") or []
        if not isinstance(deps, list):
            raise ConfigError(f"conda dependencies must be a list (got {_kind(deps)})")
        for dep in deps:
            if isinstance(dep, Mapping):
                _check_keys("conda dependency", dep, ["pip"])
                pip.extend(_str_tuple("pip dependencies", dep.get("pip") or []))
            elif isinstance(dep, str):
                # conda spells a pin python=3.8, python==3.8.1, "python 3.8" or python=3.8.*
                m = re.fullmatch(r"python(?:(?:\s*==?\s*|\s+)([\d.]+?)(?:\.\*)?)?", dep.strip())
                if m:
                    python_version = m.group(1)
                elif re.match(r"python\s*[<>!~]", dep.strip()):
                    raise ConfigError(f"conda dependency {dep!r}: pin the Python version as python=3.X")
                elif not re.fullmatch(r"pip(\s*[=<>!~].*)?", dep.strip()):
                    other.append(dep.strip())
            else:
                raise ConfigError(f"conda dependencies must be strings or a pip list (got {_kind(dep)})")
        variables = dict(conda.get("variables") or {})
        variables.update(environment_variables or {})
        return cls(
            name=name,
            pip_requirements=tuple(pip),
            python_version=python_version,
            environment_variables=variables,
            conda_only_packages=tuple(other),
            conda_channels=_str_tuple("channels", conda.get("channels") or []),
        )

    @classmethod
    def from_conda_yaml(cls, name: str, text: str, source: str = "conda file") -> EnvironmentSpec:
        """From the text of a conda environment file (``condaFile``, ``from_conda_specification``)."""
        return cls.from_conda(name, parse_conda_yaml(text, source))

    @classmethod
    def from_v1_json(cls, d: Mapping[str, Any], base_dir: str | os.PathLike[str]) -> EnvironmentSpec:
        """A v1 serialized ``Environment`` (the ``environment`` object of inferenceconfig.json).
        ``python.condaDependenciesFile`` is read relative to ``base_dir``."""
        known_top = ["name", "version", "environmentVariables", "python", *_V1_IGNORED["environment"]]
        d = _check_keys("environment", d, known_top)
        if d.get("r"):
            raise ConfigError("environment.r: R environments are not supported by modelfleet")
        name = d.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"environment.name is required (got {_kind(name)})")
        variables = _str_map("environment.environmentVariables", d.get("environmentVariables") or {})
        py = _check_keys(
            "environment.python",
            d.get("python") or {},
            [
                "userManagedDependencies",
                "interpreterPath",
                "condaDependenciesFile",
                "baseCondaEnvironment",
                "condaDependencies",
            ],
        )
        if py.get("userManagedDependencies"):
            interpreter = py.get("interpreterPath")
            # v1's default "python" meant "the image's python"; here that is this interpreter.
            executable = None if interpreter in (None, "python", "python3") else interpreter
            return cls(
                name=name,
                version=d.get("version"),
                python_executable=executable,
                environment_variables=variables,
            )
        conda: Mapping[str, Any] = py.get("condaDependencies") or {}
        if py.get("condaDependenciesFile"):
            path = Path(base_dir, py["condaDependenciesFile"])
            conda = parse_conda_yaml(_read(path, "environment.python.condaDependenciesFile"), str(path))
        spec = cls.from_conda(name, conda, variables)
        return dataclasses.replace(spec, version=d.get("version"))


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {str(path)!r} ({e.strerror})") from None


def parse_conda_yaml(text: str, source: str = "conda file") -> dict[str, Any]:
    """Parse the YAML subset conda environment files use (stdlib only, so no YAML library):
    ``key: scalar``, ``key:`` followed by a block list of scalars, one nested ``- pip:`` list,
    a ``variables:`` mapping, flow lists ``[a, b]``, quotes and comments. Anything else is a
    ConfigError naming the line, rather than a silent misreading."""
    out: dict[str, Any] = {}
    key: str | None = None  # top-level key whose block we are in
    pip: list[str] | None = None
    pip_indent = -1

    def scalar(s: str) -> str:
        s = s.strip()
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
            return s[1:-1]
        return s

    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if indent == 0 and not body.startswith("-"):
            m = re.fullmatch(r"([A-Za-z_][\w-]*)\s*:\s*(.*)", body)
            if not m:
                raise ConfigError(f"{source}, line {number}: cannot read {raw.strip()!r}")
            key, value, pip = m.group(1), m.group(2), None
            if not value:
                out[key] = None
            elif value.startswith("["):
                out[key] = [scalar(x) for x in value.strip("[]").split(",") if x.strip()]
            else:
                out[key] = scalar(value)
            continue
        if key is None or (out[key] is not None and not isinstance(out[key], (list, dict))):
            raise ConfigError(f"{source}, line {number}: unexpected {raw.strip()!r}")
        if body.startswith("-"):
            item = body[1:].strip()
            if pip is not None and indent > pip_indent:
                pip.append(scalar(item))
                continue
            if out[key] is None:
                out[key] = []
            if not isinstance(out[key], list):
                raise ConfigError(f"{source}, line {number}: unexpected list item {raw.strip()!r}")
            if re.fullmatch(r"pip\s*:", item):
                pip, pip_indent = [], indent
                out[key].append({"pip": pip})
            elif re.fullmatch(r"[\w.-]+\s*:(\s.*)?", item):  # "a: b"; "channel::pkg" is a package
                raise ConfigError(f"{source}, line {number}: nested mapping {item!r} is not supported")
            else:
                pip = None
                out[key].append(scalar(item))
        else:
            m = re.fullmatch(r"([^:\s]+)\s*:\s*(.*)", body)
            if not m or isinstance(out[key], list):
                raise ConfigError(f"{source}, line {number}: cannot read {raw.strip()!r}")
            if out[key] is None:
                out[key] = {}
            out[key][m.group(1)] = scalar(m.group(2))
    return out


# --------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class InferenceSpec:
    """v1 ``InferenceConfig``: the entry script, its folder and the environment.

    With ``source_directory`` (an absolute path) the folder is snapshotted and
    ``entry_script`` is a path inside it; without, that file alone is shipped, and a relative
    ``entry_script`` is relative to the current folder (v1's rule). ``environment`` None
    means the deploying interpreter. ``InferenceSpec.resolve`` turns v1's user-relative
    paths into absolute ones.
    """

    entry_script: str
    source_directory: str | None = None
    environment: EnvironmentSpec | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.entry_script, str) or not self.entry_script:
            raise ConfigError(f"entry_script must be a path to a .py file (got {_kind(self.entry_script)})")
        _opt_str("description", self.description)
        if self.environment is not None and not isinstance(self.environment, EnvironmentSpec):
            raise ConfigError(
                f"environment must be an EnvironmentSpec or None (got {_kind(self.environment)})"
            )
        if self.source_directory is None:
            return
        _opt_str("source_directory", self.source_directory)
        if not os.path.isabs(self.source_directory):
            raise ConfigError(f"source_directory must be an absolute path (got {self.source_directory!r})")
        norm = os.path.normpath(self.entry_script)
        if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
            raise ConfigError(
                f"entry_script must be a path inside source_directory {self.source_directory!r} "
                f"(got {self.entry_script!r})"
            )

    def entry_script_path(self) -> Path:
        """The entry script's path on this machine (relative to the current folder when
        neither it nor ``source_directory`` is absolute)."""
        return Path(self.source_directory or "", self.entry_script)

    def check_files(self) -> None:
        """The one I/O check: the source directory and the entry script exist."""
        if self.source_directory is not None and not os.path.isdir(self.source_directory):
            raise ConfigError(f"source_directory {self.source_directory!r} is not a folder")
        if not self.entry_script_path().is_file():
            raise ConfigError(
                f"entry_script {str(self.entry_script_path())!r} does not exist or is not a file"
            )

    @classmethod
    def resolve(
        cls,
        entry_script: str | os.PathLike[str],
        source_directory: str | os.PathLike[str] | None = None,
        environment: EnvironmentSpec | None = None,
        description: str | None = None,
        *,
        base_dir: str | os.PathLike[str],
    ) -> InferenceSpec:
        """v1 paths to spec form: ``source_directory`` is relative to ``base_dir`` and
        ``entry_script`` to ``source_directory`` (v1's rule), or to ``base_dir`` without one."""
        entry = os.fspath(entry_script)
        if source_directory is None:
            return cls(os.path.abspath(os.path.join(base_dir, entry)), None, environment, description)
        folder = os.path.abspath(os.path.join(base_dir, os.fspath(source_directory)))
        if os.path.isabs(entry):
            entry = os.path.relpath(entry, folder)
        return cls(os.path.normpath(entry), folder, environment, description)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_script": self.entry_script,
            "source_directory": self.source_directory,
            "environment": self.environment.to_dict() if self.environment else None,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InferenceSpec:
        d = _check_keys(
            "inference spec", d, ["entry_script", "source_directory", "environment", "description"]
        )
        env = d.get("environment")
        return cls(
            entry_script=d.get("entry_script"),  # type: ignore[arg-type]  # checked in __post_init__
            source_directory=d.get("source_directory"),
            environment=EnvironmentSpec.from_dict(env) if env is not None else None,
            description=d.get("description"),
        )

    @classmethod
    def from_v1_json(cls, d: Mapping[str, Any], base_dir: str | os.PathLike[str]) -> InferenceSpec:
        """Read a v1 ``inferenceconfig.json`` (already parsed); ``base_dir`` is the file's folder.

        ``sourceDirectory`` is relative to the file's folder; ``entryScript`` and ``condaFile``
        to ``sourceDirectory`` (or the file's folder). ``condaFile`` is read here. Checks
        that the entry script exists.
        """
        known = [
            "entryScript",
            "sourceDirectory",
            "runtime",
            "condaFile",
            "environment",
            *_V1_IGNORED["inference"],
        ]
        d = _check_keys("inferenceconfig.json", d, known)
        entry = d.get("entryScript")
        if not isinstance(entry, str) or not entry:
            raise ConfigError(f"entryScript is required in inferenceconfig.json (got {_kind(entry)})")
        runtime = d.get("runtime")
        if runtime is not None and str(runtime).lower() != "python":
            raise ConfigError(f"runtime must be 'python' (got {runtime!r}); spark-py is not supported")
        source = _opt_str("sourceDirectory", d.get("sourceDirectory"))
        folder = os.path.join(base_dir, source) if source else os.fspath(base_dir)
        environment = None
        if d.get("environment") is not None:
            if d.get("condaFile"):
                raise ConfigError("inferenceconfig.json gives both environment and condaFile; keep one")
            environment = EnvironmentSpec.from_v1_json(d["environment"], folder)
        elif d.get("condaFile"):
            path = Path(folder, _opt_str("condaFile", d["condaFile"]) or "")
            parsed = parse_conda_yaml(_read(path, "condaFile"), str(path))
            environment = EnvironmentSpec.from_conda(str(parsed.get("name") or "project_environment"), parsed)
        spec = cls.resolve(entry, source, environment, base_dir=base_dir)
        spec.check_files()
        return spec


# --------------------------------------------------------------------------- notes


def v1_notes(d: Mapping[str, Any], kind: str) -> list[str]:
    """For a v1 file of ``kind`` "deploy" or "inference": one line per v1 key that was set but
    has no effect in modelfleet, for the CLI to print. Empty when nothing was lost."""
    notes: list[str] = []
    if kind == "deploy":
        if d.get("appInsightsEnabled"):
            notes.append(
                "appInsightsEnabled: no Application Insights; use the Prometheus metrics and service logs"
            )
        if isinstance(d.get("dataCollection"), Mapping) and d["dataCollection"].get("eventHubEnabled"):
            notes.append(
                "dataCollection.eventHubEnabled: no event hubs; collected data is stored in the workspace"
            )
        return notes
    for key, why in _V1_IGNORED["inference"].items():
        if d.get(key):
            notes.append(f"{key}: ignored ({why})")
    env = d.get("environment")
    if isinstance(env, Mapping):
        docker = env.get("docker")
        if isinstance(docker, Mapping) and (docker.get("enabled") or docker.get("baseDockerfile")):
            notes.append(f"environment.docker: ignored ({_V1_IGNORED['environment']['docker']})")
        for key in ("spark", "databricks"):
            section = env.get(key)
            if isinstance(section, Mapping) and any(v for k, v in section.items() if k != "precachePackages"):
                notes.append(f"environment.{key}: ignored ({_V1_IGNORED['environment'][key]})")
        py = env.get("python")
        if isinstance(py, Mapping) and py.get("baseCondaEnvironment"):
            notes.append(
                "environment.python.baseCondaEnvironment: ignored "
                "(environments are built from their own list)"
            )
    return notes
