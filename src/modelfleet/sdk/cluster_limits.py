"""What a service on a Kubernetes compute target cannot have yet, refused before anything is
stored (a deploy or an update), so that nothing is silently lost."""

from __future__ import annotations

from modelfleet.errors import ConfigError
from modelfleet.spec import DeploySpec


def refuse_unsupported_on_cluster(spec: DeploySpec, target: str) -> None:
    # collect_model_data is supported: a pod's "ship" sidecar uploads its records to the blob
    # store and the target's controller lays them into the workspace (targets/kubernetes/ship.py).
    # Scale to zero holds requests in the router while a replica starts from none; the in-cluster
    # router's scaler does not act on that signal yet (router/autoscale.py has the rules), so a
    # Kubernetes service set to it would never come back from zero.
    if spec.scale_to_zero_after_seconds is not None:
        raise ConfigError(
            f"scale_to_zero_after_seconds is not supported on Kubernetes compute target {target!r} yet: its "
            "router does not start a replica for a service at zero; leave it out (autoscale_min_replicas "
            "keeps at least 1), or deploy to the local cluster"
        )
