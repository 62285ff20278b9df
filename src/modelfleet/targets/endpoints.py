"""An endpoint's line in the router's table: target-neutral data, as ``base.RouteEntry`` is.

An endpoint (v1's ``AksEndpoint``) is published through ``ComputeTarget.publish`` like a
service, as an :class:`EndpointEntry`: a ``RouteEntry`` (its auth, keys and body limit; no
replicas of its own) with its versions, each the internal service ``<endpoint>:<version>``
that the reconciler runs and publishes as any other (``router/versions.py`` says how the router
splits traffic between them). A target's router side recognises the entry by its type
(``targets/routing.RouterTable`` for the local cluster). The Kubernetes target does not yet:
endpoints are refused there before anything is stored (``sdk/endpoint.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelfleet.router.versions import VersionShare
from modelfleet.targets.base import RouteEntry

__all__ = ["EndpointEntry", "VersionShare"]


@dataclass(frozen=True)
class EndpointEntry(RouteEntry):
    """``service`` is the endpoint's name; ``versions`` its versions, exactly one the default."""

    versions: tuple[VersionShare, ...] = ()
