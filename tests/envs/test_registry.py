"""The image look-up (envs/registry.py) against a real registry: Debian's docker-registry,
open, behind htpasswd (Basic) and behind a token endpoint (Bearer, as ACR and Docker Hub),
with images put in by skopeo from an OCI layout of a generated build context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from http_support import QuietHandler, serving
from modelfleet.envs.image import write_image_context
from modelfleet.envs.registry import Credential, RegistryAuthError, manifest_exists, parse_reference
from modelfleet.errors import ConfigError, TargetError
from modelfleet.spec import EnvironmentSpec
from registry_support import PASSWORD, USER, running_registry, skopeo_push, write_oci_layout


def pushed_context(tmp_path: Path, host: str, credential: tuple[str, str] | None = None) -> str:
    """An environment's context written as an OCI image (one layer: the context under /build)
    and pushed with skopeo to the registry under the context's own tag; returns that reference."""
    tag = write_image_context(EnvironmentSpec(name="env"), tmp_path / "ctx", f"{host}/models/env")
    layout = tmp_path / "layout"
    write_oci_layout(layout, "v1", tmp_path / "ctx")
    skopeo_push(layout, "v1", tag, credential)
    return tag


def test_an_open_registry_answers_present_and_absent(tmp_path: Path) -> None:
    with running_registry(tmp_path / "reg") as registry:
        tag = pushed_context(tmp_path, registry.host)
        ref = parse_reference(tag)
        assert ref.host == registry.host and ref.repository == "models/env"
        assert manifest_exists(ref) is True
        assert manifest_exists(parse_reference(tag + "-cuda")) is False  # same repository, no such tag
        assert manifest_exists(parse_reference(f"{registry.host}/never/pushed:{ref.tag}")) is False
    with pytest.raises(TargetError, match="cannot reach registry"):
        manifest_exists(ref, timeout=2)  # stopped


def test_basic_auth_needs_the_right_credential(tmp_path: Path) -> None:
    with running_registry(tmp_path / "reg", auth="htpasswd") as registry:
        tag = pushed_context(tmp_path, registry.host, (USER, PASSWORD))
        ref = parse_reference(tag)
        good = Credential(USER, PASSWORD)
        assert manifest_exists(ref, good) is True
        assert manifest_exists(parse_reference(tag + "-cuda"), good) is False
        with pytest.raises(RegistryAuthError, match="asks for a credential to read models/env"):
            manifest_exists(ref)
        with pytest.raises(RegistryAuthError, match="refused the credential of user 'mf-user'") as refused:
            manifest_exists(ref, Credential(USER, "wrong-password"))
        assert "wrong-password" not in str(refused.value)


def test_the_bearer_token_flow_as_acr_and_docker_hub_ask(tmp_path: Path) -> None:
    with running_registry(tmp_path / "reg", auth="token") as registry:
        tag = pushed_context(tmp_path, registry.host, (USER, PASSWORD))
        ref = parse_reference(tag)
        good = Credential(USER, PASSWORD)
        assert manifest_exists(ref, good) is True
        assert manifest_exists(parse_reference(tag + "-cuda"), good) is False
        with pytest.raises(RegistryAuthError, match="the token endpoint of .* refused the credential") as refused:
            manifest_exists(ref, Credential(USER, "wrong-password"))
        assert "wrong-password" not in str(refused.value)
        # anonymous: the endpoint gives a token, whose access the registry then checks (pull only)
        assert manifest_exists(ref) is True


@contextlib.contextmanager
def challenging(challenge: str) -> Iterator[str]:
    """A server that answers every request 401 with ``challenge``: a registry's first answer."""

    class Handler(QuietHandler):
        def do_HEAD(self) -> None:  # noqa: N802
            self.send_response(401)
            self.send_header("WWW-Authenticate", challenge)
            self.end_headers()

    with serving(Handler) as port:
        yield f"127.0.0.1:{port}"


def test_a_credential_never_goes_to_a_plain_http_realm_off_this_machine() -> None:
    challenge = 'Bearer realm="http://10.255.255.1/token",service="x"'
    refused = pytest.raises(TargetError, match="plain http on a network; the credential is not sent")
    with challenging(challenge) as host, refused:
        manifest_exists(parse_reference(f"{host}/models/env:abc"), Credential(USER, PASSWORD))


def test_image_references() -> None:
    assert str(parse_reference("myacr.azurecr.io/models/env:1a2b")) == "myacr.azurecr.io/models/env:1a2b"
    assert parse_reference("python:3.11-slim").repository == "library/python"
    assert parse_reference("docker.io/user/img:v1").host == "registry-1.docker.io"
    assert parse_reference("localhost:5000/img:v1").host == "localhost:5000"
    with pytest.raises(ConfigError, match="must end in :TAG"):
        parse_reference("127.0.0.1:5000/img")
    with pytest.raises(ConfigError, match="image repository 'Models/env' is not valid"):
        parse_reference("127.0.0.1:5000/Models/env:v1")
