"""Does a registry hold an image tag? The OCI distribution API's manifest HEAD, as v1 asked ACR
before building an environment's image.

    HEAD /v2/<repository>/manifests/<tag>    Accept: the OCI and Docker manifest and index types
      200 -> present; 404 -> absent (MANIFEST_UNKNOWN, or NAME_UNKNOWN for a new repository)
      401 + WWW-Authenticate: Bearer realm=...,service=...,scope=...
          -> GET realm?service=...&scope=repository:<repository>:pull (the user's credential as
             Basic auth, or anonymous), then the HEAD again with the token: ACR, Docker Hub, GHCR
      401 + WWW-Authenticate: Basic -> the HEAD again with the user's credential
      a 401 after a credential, or a token endpoint refusing it -> RegistryAuthError, saying which

https always, except to a loopback registry or with ``insecure=True`` (a registry inside a
private network with no certificate): a credential never crosses a network in clear otherwise.
A token realm gets the credential only over https (or loopback), whatever the registry said.
``docker.io`` and one-word repositories mean Docker Hub (``registry-1.docker.io``,
``library/<name>``), as docker spells them.

Standard library only: the CLI and the Kubernetes controller call it; no engine is needed.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field

from modelfleet.errors import ConfigError, TargetError

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DOCKER_HUB = "registry-1.docker.io"
_REPOSITORY_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


class RegistryAuthError(TargetError):
    """The registry (or its token endpoint) refused the credential, or asked for one and none was given."""


@dataclass(frozen=True)
class ImageRef:
    host: str  # host[:port] of the registry's API
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"


@dataclass(frozen=True)
class Credential:
    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def parse_reference(reference: str) -> ImageRef:
    """``host[:port]/repo/path:tag`` (or Docker Hub's ``name:tag``, ``user/name:tag``)."""
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        raise ConfigError(f"image reference must end in :TAG, e.g. myacr.azurecr.io/models:1a2b (got {reference!r})")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, rest
    else:
        host, repository = DOCKER_HUB, name
    if host in ("docker.io", "index.docker.io"):
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPOSITORY_RE.match(repository):
        raise ConfigError(
            f"image repository {repository!r} is not valid: lowercase letters, digits and . _ - separated "
            f"path parts (in {reference!r})"
        )
    if not _TAG_RE.match(tag):
        raise ConfigError(f"image tag {tag!r} is not valid: up to 128 of A-Z a-z 0-9 _ . - (in {reference!r})")
    return ImageRef(host, repository, tag)


def is_loopback(host: str) -> bool:
    name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    return name in ("localhost", "::1") or name.startswith("127.")


def manifest_exists(
    ref: ImageRef, credential: Credential | None = None, *, insecure: bool = False, timeout: float = 15.0
) -> bool:
    """True when the registry holds ``ref``'s tag, False when it answers that it does not."""
    scheme = "http" if insecure or is_loopback(ref.host) else "https"
    path = f"/v2/{ref.repository}/manifests/{urllib.parse.quote(ref.tag)}"
    status, headers = _head(scheme, ref.host, path, None, timeout)
    if status == 401:
        challenge = headers.get("www-authenticate", "")
        kind = challenge.split(" ", 1)[0].lower()
        if kind == "bearer":
            token = _bearer_token(ref, challenge, credential, insecure, timeout)
            status, headers = _head(scheme, ref.host, path, f"Bearer {token}", timeout)
        elif kind == "basic" and credential is not None:
            status, headers = _head(scheme, ref.host, path, credential.basic(), timeout)
        if status == 401:
            raise RegistryAuthError(_refused(ref, credential, "the registry"))
    if status == 200:
        return True
    if status == 404:
        return False
    if status == 403:
        raise RegistryAuthError(
            f"registry {ref.host} answered 403 for {ref.repository}: the credential"
            f"{' for ' + credential.username if credential else ''} may not pull from it"
        )
    raise TargetError(f"registry {ref.host} answered HTTP {status} to HEAD {path}; expected 200 or 404")


def _refused(ref: ImageRef, credential: Credential | None, who: str) -> str:
    if credential is None:
        return (
            f"{who} of {ref.host} asks for a credential to read {ref.repository}; give one (env build-image: "
            "--registry-username and $MODELFLEET_REGISTRY_PASSWORD; a deploy: $MODELFLEET_REGISTRY_USERNAME and "
            "$MODELFLEET_REGISTRY_PASSWORD where Model.deploy runs)"
        )
    return (
        f"{who} of {ref.host} refused the credential of user {credential.username!r} for {ref.repository} "
        "(401): check the user name and password or token (the password is not shown)"
    )


def _bearer_token(ref: ImageRef, challenge: str, credential: Credential | None, insecure: bool, timeout: float) -> str:
    params = dict(_CHALLENGE_RE.findall(challenge))
    realm = params.get("realm")
    if not realm:
        raise TargetError(f"registry {ref.host} asked for a bearer token but named no realm ({challenge!r})")
    parts = urllib.parse.urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(f"registry {ref.host}'s token realm {realm!r} is not an http(s) URL")
    if parts.scheme == "http" and not (insecure or is_loopback(parts.netloc)):
        raise TargetError(
            f"registry {ref.host}'s token realm {realm!r} is plain http on a network; the credential is not "
            "sent there (pass insecure only for a registry on a private network you trust)"
        )
    query = {"scope": f"repository:{ref.repository}:pull"}
    if params.get("service"):
        query["service"] = params["service"]
    path = (parts.path or "/") + "?" + (parts.query + "&" if parts.query else "") + urllib.parse.urlencode(query)
    auth = credential.basic() if credential is not None else None
    conn = _connection(parts.scheme, parts.netloc, timeout)
    try:
        conn.request("GET", path, headers={"Authorization": auth} if auth else {})
        response = conn.getresponse()
        body = response.read(1 << 20)
    except OSError as e:
        raise TargetError(f"cannot reach the token endpoint {realm} of registry {ref.host}: {e}") from None
    finally:
        conn.close()
    if response.status in (401, 403):
        raise RegistryAuthError(_refused(ref, credential, "the token endpoint"))
    if response.status != 200:
        raise TargetError(f"the token endpoint {realm} of registry {ref.host} answered HTTP {response.status}")
    try:
        answer = json.loads(body)
        token = answer.get("token") or answer.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise TargetError(f"the token endpoint {realm} of registry {ref.host} answered with no token")
    return token


def _connection(scheme: str, netloc: str, timeout: float) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(netloc, timeout=timeout, context=ssl.create_default_context())
    return http.client.HTTPConnection(netloc, timeout=timeout)


def _head(scheme: str, host: str, path: str, auth: str | None, timeout: float) -> tuple[int, dict[str, str]]:
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    if auth:
        headers["Authorization"] = auth
    conn = _connection(scheme, host, timeout)
    try:
        conn.request("HEAD", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    except ssl.SSLError as e:
        raise TargetError(
            f"registry {host}: TLS failed ({e.reason}); a registry with no certificate on a private network "
            "needs insecure (plain http)"
        ) from None
    except OSError as e:
        raise TargetError(f"cannot reach registry {host} over {scheme}: {e}") from None
    finally:
        conn.close()
