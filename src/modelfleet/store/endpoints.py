"""Endpoints in the workspace: one scoring URI with named versions behind it (v1's ``AksEndpoint``).

Words: a *version* is an endpoint's named deployment ("blue", "green"); a *model version* is a
registered model's number. They are never mixed up here.

Storage, on the services table so that an endpoint and a service can never share a name:

- the endpoint is a row named after it whose config holds ``"endpoint"``: its versions, each
  ``{"traffic_percentile", "is_default", "mirror_percentile"}``; its ``"deploy"`` holds the
  endpoint's auth settings and body limit; its keys are the row's keys (keys belong to the
  endpoint, not to a version);
- each version is a service row of its own, ``<endpoint>:<version>`` (``spec/names.py``: a
  service name cannot hold ``:``), with its own models, inference config and deploy settings,
  run by the reconciler as any service is (replicas, autoscaler, health, logs) with auth off:
  the router checks the endpoint's credentials before it picks a version.

The rules on versions are pure functions over the versions mapping (``check_versions``,
``with_version``, ``without_version``, ``with_traffic``), each raising ``ConfigError`` that
names the field and the allowed values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.spec.names import VERSION_SEPARATOR, validate_version_name

ENDPOINT_KEY = "endpoint"  # in a service row's config: this row is an endpoint

Versions = dict[str, dict[str, Any]]


def is_endpoint_config(config: Mapping[str, Any]) -> bool:
    return isinstance(config.get(ENDPOINT_KEY), dict)


def endpoint_of(service: str) -> str | None:
    """The endpoint whose version runs as ``service``, or None for a plain service."""
    endpoint, sep, _ = service.partition(VERSION_SEPARATOR)
    return endpoint if sep else None


def default_version(versions: Mapping[str, Mapping[str, Any]]) -> str:
    for name, v in versions.items():
        if v.get("is_default"):
            return name
    raise ConfigError("the endpoint has no default version")


def _percent(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{field} must be a number from 0 to 100 (got {value!r})")
    if not 0 <= value <= 100:
        raise ConfigError(f"{field} must be from 0 to 100 (got {value!r})")
    return float(value)


def check_versions(versions: Mapping[str, Mapping[str, Any]]) -> None:
    """Exactly one default; non-default traffic_percentile values adding up to at most 100; a
    mirror (``mirror_percentile`` > 0: it gets a copy of that share of the requests the other
    versions serve, its answers discarded, ``router/mirror.py``) is not the default and takes
    no traffic share. A mirror is never mirrored itself: copies go only from the versions that
    serve (the router sends no copy of a mirrored copy, nor of a request pinned to a mirror)."""
    if not versions:
        raise ConfigError("an endpoint needs at least one version")
    defaults = sorted(n for n, v in versions.items() if v.get("is_default"))
    if len(defaults) != 1:
        raise ConfigError(
            f"is_default: exactly one version of an endpoint is the default (got {len(defaults)}: {defaults})"
        )
    total = 0.0
    for name, v in versions.items():
        validate_version_name(name)
        pct = _percent(f"traffic_percentile of version {name}", v.get("traffic_percentile", 0.0))
        mirror = _percent(f"mirror_percentile of version {name}", v.get("mirror_percentile", 0.0))
        if mirror > 0 and v.get("is_default"):
            raise ConfigError(
                f"mirror_percentile of version {name}: the default version cannot be a mirror "
                f"(allowed: 0 for the default, got {mirror:g}); make another version the default first"
            )
        if mirror > 0 and pct > 0:
            raise ConfigError(
                f"mirror_percentile of version {name}: a mirror takes no traffic share "
                f"(traffic_percentile {pct:g}); set traffic_percentile=0 or mirror_percentile=0"
            )
        if not v.get("is_default"):
            total += pct
    if total > 100 + 1e-9:
        shares = ", ".join(
            f"{n}={v.get('traffic_percentile', 0):g}" for n, v in versions.items() if not v.get("is_default")
        )
        raise ConfigError(
            f"traffic_percentile: the non-default versions' shares add up to {total:g} ({shares}); "
            "they must add up to at most 100 (the default version takes what they leave)"
        )


def with_version(
    versions: Mapping[str, Mapping[str, Any]],
    name: str,
    *,
    traffic_percentile: float | None = None,
    is_default: bool | None = None,
    mirror_percentile: float | None = None,
    create: bool,
) -> Versions:
    """``versions`` with ``name`` added (``create``) or changed, checked. A version made the
    default takes what the others leave; the one that was the default gets 0 until given a share."""
    validate_version_name(name)
    out = {n: dict(v) for n, v in versions.items()}
    if create and name in out:
        raise ConfigError(f"version_name: the endpoint already has a version {name!r}; use update_version")
    if not create and name not in out:
        raise ConfigError(f"version_name: no version {name!r} (versions: {', '.join(sorted(out)) or 'none'})")
    if is_default is not None and not isinstance(is_default, bool):
        raise ConfigError(f"is_default must be True or False (got {is_default!r})")
    entry = out.setdefault(name, {"traffic_percentile": 0.0, "is_default": False, "mirror_percentile": 0.0})
    if traffic_percentile is not None:
        entry["traffic_percentile"] = _percent("traffic_percentile", traffic_percentile)
    if mirror_percentile is not None:
        entry["mirror_percentile"] = _percent("mirror_percentile", mirror_percentile)
    if is_default:
        for other, v in out.items():
            if other != name and v.get("is_default"):
                v["is_default"] = False
                v["traffic_percentile"] = 0.0
        entry["is_default"] = True
    elif is_default is False and entry.get("is_default"):
        raise ConfigError(
            f"is_default: version {name} is the default; make another version the default instead "
            "(update_version(other, is_default=True))"
        )
    if not any(v.get("is_default") for v in out.values()):
        entry["is_default"] = True  # an endpoint's first version is its default
    check_versions(out)
    return out


def without_version(versions: Mapping[str, Mapping[str, Any]], name: str) -> Versions:
    if name not in versions:
        raise ConfigError(f"version_name: no version {name!r} (versions: {', '.join(sorted(versions))})")
    if len(versions) == 1:
        raise ConfigError(f"version {name} is the endpoint's only version; delete the endpoint instead")
    if versions[name].get("is_default"):
        raise ConfigError(
            f"version {name} is the default version; make another version the default first "
            "(update_version(other, is_default=True)), then delete it"
        )
    return {n: dict(v) for n, v in versions.items() if n != name}


def with_traffic(versions: Mapping[str, Mapping[str, Any]], shares: Mapping[str, float]) -> Versions:
    """The whole split at once (``modelfleet endpoint traffic blue=90 green=10``): the named
    non-default versions get their shares, the others 0; the default takes what is left, and a
    share given for it must be exactly that."""
    out = {n: dict(v) for n, v in versions.items()}
    unknown = sorted(set(shares) - set(out))
    if unknown:
        raise ConfigError(f"traffic: no version {unknown[0]!r} (versions: {', '.join(sorted(out))})")
    default = default_version(out)
    for name, v in out.items():
        if name != default:
            v["traffic_percentile"] = _percent(f"traffic of {name}", shares.get(name, 0.0))
    check_versions(out)
    if default in shares:
        left = 100.0 - sum(v["traffic_percentile"] for n, v in out.items() if n != default)
        given = _percent(f"traffic of {default}", shares[default])
        if abs(given - left) > 1e-9:
            raise ConfigError(
                f"traffic of {default}: the default version takes what the others leave, {left:g} "
                f"(got {given:g}); leave it out or give it {left:g}"
            )
    return out


def weights(versions: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Each version's share of traffic when all are healthy, in percent."""
    default = default_version(versions)
    out = {n: 0.0 if n == default else float(v.get("traffic_percentile", 0.0)) for n, v in versions.items()}
    out[default] = max(0.0, 100.0 - sum(out.values()))
    return out


def endpoint_state(states: Mapping[str, str], default: str) -> str:
    """An endpoint's state from its versions' (version -> state): Transitioning while one is;
    otherwise the default version's, or Unhealthy when the default is Healthy and another
    version is not (it serves, but not as configured)."""
    if "Transitioning" in states.values():
        return "Transitioning"
    main = states.get(default, "Failed")
    if main != "Healthy":
        return main
    return "Healthy" if all(s == "Healthy" for s in states.values()) else "Unhealthy"
