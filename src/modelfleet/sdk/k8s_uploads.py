"""The pods' write credential for a Kubernetes compute target's blob store, with which the
pods of a service deployed with ``collect_model_data=True`` upload what they collect
(``targets/kubernetes/ship.py``; the workspace reads it back: ``control/k8s_uploads.py``).

    from modelfleet.sdk.k8s_uploads import set_upload_credential
    set_upload_credential(target, sas=os.environ["TEAM_WRITE_SAS"])   # or token=...; neither removes it

It goes into a Secret in the target's namespace and nowhere else
(``targets/kubernetes/upload_credential.py``); the workspace records which form was given
(``compute show``: ``blob_store_upload_auth``). Services already deployed follow: the target's
controller (started here if it does not run) plans them again, and their Deployments roll to pods
with the sidecar, or without it once the credential is removed (``control/k8s_controller.py``).
"""

from __future__ import annotations

from datetime import datetime, timezone

from modelfleet.sdk.compute import KIND, KubernetesCompute

__all__ = ["set_upload_credential"]


def set_upload_credential(target: KubernetesCompute, sas: str | None = None, token: str | None = None) -> str:
    """Write (or, with neither, remove) the pods' upload credential; returns the Secret's name.
    Services already deployed to ``target`` roll to it (their controller notices the change)."""
    from modelfleet.control.k8s_controller import runs_on
    from modelfleet.control.k8s_router import api_client
    from modelfleet.targets.kubernetes.upload_credential import auth_of, check_upload_credential, write_upload_secret

    settings = target.settings
    blob_store = settings.get("blob_store")
    check_upload_credential(blob_store, sas, token)
    api = api_client(settings.get("kubeconfig"), settings.get("context"))
    try:
        name = write_upload_secret(api, target.namespace, str(blob_store), sas, token)
    finally:
        api.close()
    settings.pop("blob_store_upload_auth", None)
    auth = auth_of(sas, token)
    if auth:
        settings["blob_store_upload_auth"] = auth
    # when, never what: the pods that upload carry it in their template, so a credential set
    # again (a SAS rotated, in the same form) rolls them and their sidecar reads the new one
    settings["blob_store_upload_set"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    store = target.workspace.store
    store.computes.attach(target.name, KIND, settings, overwrite=True)
    if any(runs_on(record) == target.name for record in store.list_services()):
        target.ensure_controller()  # it rolls the services already deployed to the new template
    return name
