"""What a service on a Kubernetes compute target cannot have yet, refused before anything is
stored (a deploy or an update), so that nothing is silently lost."""

from __future__ import annotations

from modelfleet.errors import ConfigError
from modelfleet.spec import DeploySpec


def refuse_unsupported_on_cluster(spec: DeploySpec, target: str) -> None:
    # The replica writes collected records to a folder of the local workspace; a pod has no such
    # folder, and nothing ships its records to the workspace's blob store yet: they would be lost.
    if spec.collect_model_data:
        raise ConfigError(
            f"collect_model_data=True is not supported on Kubernetes compute target {target!r} yet: a pod's "
            "collected records would not reach the workspace; deploy with collect_model_data=False, or to "
            "the local cluster"
        )
    # Scale to zero holds requests in the router while a replica starts from none; the in-cluster
    # router's scaler does not act on that signal yet (router/autoscale.py has the rules), so a
    # Kubernetes service set to it would never come back from zero.
    if spec.scale_to_zero_after_seconds is not None:
        raise ConfigError(
            f"scale_to_zero_after_seconds is not supported on Kubernetes compute target {target!r} yet: its "
            "router does not start a replica for a service at zero; leave it out (autoscale_min_replicas "
            "keeps at least 1), or deploy to the local cluster"
        )
