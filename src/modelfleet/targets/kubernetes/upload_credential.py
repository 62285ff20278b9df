"""The pods' write credential for the blob store: what the "ship" sidecar uploads collected
model data with (``ship.py``). Designed as the read credential is (``manifests.blob_secret``):

- it is given from the environment (``modelfleet k8s upload-credential --sas-env VAR``) or to
  ``set_upload_credential``, checked here, and written into one Secret in the target's
  namespace (``manifests.upload_secret_name``: one per blob store URL), never into the
  workspace, which records only which form was given (``blob_store_upload_auth``);
- the sidecar reads it through optional ``secretKeyRef``s, so a store that needs none (one
  that takes the pods' identity, or a loopback test server) works without a Secret;
- a credential for a plain ``http://`` blob store other than a loopback address is refused
  (it would travel in clear with every upload).

Apart from the read one: a read SAS (every init container holds it) need not allow writes,
and a write SAS need not allow reads.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client
from kubernetes.client.rest import ApiException

from modelfleet.errors import ConfigError
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.api import api_error

__all__ = ["auth_of", "check_upload_credential", "write_upload_secret"]

_SAS_RE = re.compile(r"^[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]{3,8192}$")  # URL query characters
_TOKEN_RE = re.compile(r"^[\x21-\x7e]{8,8192}$")  # visible ASCII, no spaces


def check_upload_credential(blob_store: str | None, sas: str | None, token: str | None) -> None:
    """Refused, naming the field, with what is allowed; no message holds the value."""
    if not blob_store:
        raise ConfigError(
            "the compute target has no blob_store: the pods upload collected data to it; attach it with blob_store=URL"
        )
    for name, value, pattern, what in (
        ("sas", sas, _SAS_RE, "a URL query string such as an Azure SAS token with write permission (sv=...&sig=...)"),
        ("token", token, _TOKEN_RE, "8-8192 visible ASCII characters, no spaces"),
    ):
        if value is None:
            continue
        text = value.strip().lstrip("?") if isinstance(value, str) else None
        if not text or not pattern.match(text) or (name == "sas" and "=" not in text):
            raise ConfigError(f"upload credential {name} must be {what} (the value is not shown)")
    parts = urlsplit(blob_store)
    host = parts.hostname or ""
    if (sas or token) and parts.scheme == "http" and not (host in ("localhost", "::1") or host.startswith("127.")):
        raise ConfigError(
            f"the upload credential would travel in clear with every upload to the http:// blob_store {blob_store!r}: "
            "use an https:// blob_store (plain http:// is allowed only to a loopback address)"
        )


def auth_of(sas: str | None, token: str | None) -> str | None:
    """Which forms were given ("sas", "token", "sas+token"), never their values."""
    return "+".join(k for k, v in (("sas", sas), ("token", token)) if v) or None


def write_upload_secret(
    api: client.ApiClient, namespace: str, blob_store: str, sas: str | None, token: str | None
) -> str:
    """Create or replace the upload Secret (none given: delete it); returns its name."""
    core = client.CoreV1Api(api)
    secret: dict[str, Any] = m.upload_secret(blob_store, namespace, sas, token)
    name = secret["metadata"]["name"]
    try:
        if not (sas or token):
            try:
                core.delete_namespaced_secret(name, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
            return name
        try:
            core.create_namespaced_secret(namespace, secret)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_secret(name, namespace, secret)
    except ApiException as exc:
        raise api_error(f"write Secret {name}", exc) from exc
    return name
